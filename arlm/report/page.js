// The HTML report's behaviour, inlined into the page by arlm/report/page.py. It reads every
// number and word from the JSON element #gate-data and writes text only through
// textContent, never as markup, so a sentence cannot inject anything into the page.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("gate-data").textContent);
  const $ = (id) => document.getElementById(id);
  const sel = { sentence: $("sentence"), layer: $("layer"), gate: $("gate"), unit: $("unit") };
  let active = -1;

  function option(select, value, text) {
    const o = document.createElement("option");
    o.value = String(value);
    o.textContent = text;            // text, never markup
    select.appendChild(o);
  }
  D.sentences.forEach((s, n) => option(sel.sentence, n, (n + 1) + ": " + (s.text.length > 40 ? s.text.slice(0, 39) + "…" : s.text)));
  for (let l = 0; l < D.num_layers; l++) option(sel.layer, l, "layer " + (l + 1));
  D.gates.forEach((g) => option(sel.gate, g, D.labels[g] + " — " + D.meanings[g]));
  option(sel.unit, "mean", "mean of all units");
  for (let u = 0; u < D.hidden_size; u++) option(sel.unit, u, "unit " + u);
  sel.layer.value = String(D.num_layers - 1);
  sel.gate.value = "o";

  const sentence = () => D.sentences[+sel.sentence.value];
  const layer = () => sentence().layers[+sel.layer.value];
  const mean = (v) => v.reduce((a, b) => a + b, 0) / v.length;
  function value(g, t) {
    const row = layer()[g][t];
    return sel.unit.value === "mean" ? mean(row) : row[+sel.unit.value];
  }
  function range(g) {                 // the colour scale of a gate: [0, 1], [-1, 1], or ±max|c|
    if (D.sigmoid.includes(g)) return [0, 1];
    if (g !== "c") return [-1, 1];
    let m = 1e-6;
    for (let t = 0; t < sentence().tokens.length; t++) m = Math.max(m, Math.abs(value(g, t)));
    return [-m, m];
  }
  function colour(g, v) {
    const [lo, hi] = range(g);
    const mix = (a, b, x) => a.map((c, k) => Math.round(c + (b[k] - c) * x));
    const white = [255, 255, 255], blue = [33, 102, 172], red = [178, 24, 43];
    let rgb;
    if (lo === 0) rgb = mix(white, blue, Math.min(1, Math.max(0, v)));
    else rgb = v >= 0 ? mix(white, blue, Math.min(1, v / hi)) : mix(white, red, Math.min(1, v / lo));
    return rgb;
  }
  const css = (rgb) => "rgb(" + rgb.join(",") + ")";
  const ink = (rgb) => (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 140 ? "#fff" : "#111");
  const fmt = (x) => (x >= 0 ? " " : "") + x.toFixed(3);
  // invisible format characters (RLM, ZWNJ, …) spelled out, as in the terminal view
  const visible = (s) => s.replace(/\p{Cf}/gu, (c) => "⟨U+" + c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0") + "⟩");

  function detail(t, box) {
    const s = sentence(), g = sel.gate.value;
    box.replaceChildren();
    const head = document.createElement("div");
    const word = document.createElement("bdi");
    word.className = "arabic"; word.style.fontWeight = "bold"; word.textContent = visible(s.tokens[t]);
    head.append(word, document.createTextNode("  position " + (t + 1) + " of " + s.tokens.length +
      " · p(this word) = " + s.token_probs[t].toFixed(3) + " · layer " + (+sel.layer.value + 1) +
      " · " + (sel.unit.value === "mean" ? "mean of all units" : "unit " + sel.unit.value)));
    const table = document.createElement("table");
    table.className = "vals";
    D.gates.forEach((h) => {
      const tr = document.createElement("tr");
      if (h === g) tr.className = "sel";
      [D.labels[h], D.meanings[h], fmt(value(h, t)), D.explain[h]].forEach((c) => {
        const td = document.createElement("td"); td.textContent = c; tr.appendChild(td);
      });
      table.appendChild(tr);
    });
    const cap = document.createElement("div");
    cap.textContent = "next-word guesses after this word:";
    const ol = document.createElement("ol");
    ol.className = "guesses";
    s.top[t].forEach(([w, p]) => {
      const li = document.createElement("li"), b = document.createElement("bdi");
      b.textContent = visible(w);    // <bdi>: an Arabic word does not pull the number into its run
      li.append(b, document.createTextNode("  " + p.toFixed(3)));
      ol.appendChild(li);
    });
    box.append(head, table, cap, ol);
  }

  function render() {
    const s = sentence(), g = sel.gate.value, box = $("tokens");
    $("source").textContent = s.text;
    box.replaceChildren();
    s.tokens.forEach((tok, t) => {
      const span = document.createElement("span");
      span.className = "tok" + (t === active ? " active" : "");
      span.dataset.pos = String(t);
      span.textContent = visible(tok);  // text, never markup
      const rgb = colour(g, value(g, t));
      span.style.backgroundColor = css(rgb);
      span.style.color = ink(rgb);
      box.appendChild(span);
      box.appendChild(document.createTextNode(" "));
    });
    const [lo, hi] = range(g);
    $("legend-lo").textContent = lo.toFixed(2);
    $("legend-hi").textContent = hi.toFixed(2);
    $("legend-bar").style.background = "linear-gradient(to right, " + css(colour(g, lo)) + ", " +
      css(colour(g, (lo + hi) / 2)) + ", " + css(colour(g, hi)) + ")";
    $("legend-label").textContent = D.labels[g] + ": " + D.explain[g];
    if (active >= 0 && active < s.tokens.length) detail(active, $("detail"));
    drawUnits();
  }

  function drawUnits() {             // every unit at once: rows = tokens, columns = units
    const s = sentence(), g = sel.gate.value, rows = layer()[g], cv = $("units");
    const H = D.hidden_size, T = s.tokens.length;
    const w = Math.max(2, Math.min(24, Math.floor(1000 / H))), h = 14;
    cv.width = H * w; cv.height = T * h;
    const ctx = cv.getContext("2d");
    for (let t = 0; t < T; t++) for (let u = 0; u < H; u++) {
      ctx.fillStyle = css(colour(g, rows[t][u]));
      ctx.fillRect(u * w, t * h, w, h);
    }
    if (sel.unit.value !== "mean") {
      ctx.strokeStyle = "#f39c12"; ctx.lineWidth = 2;
      ctx.strokeRect(+sel.unit.value * w + 1, 1, w - 2, T * h - 2);
    }
    cv.dataset.cell = String(w);
  }

  $("tokens").addEventListener("mousemove", (e) => {
    const span = e.target.closest(".tok"), tip = $("tip");
    if (!span) { tip.style.display = "none"; return; }
    detail(+span.dataset.pos, tip);
    tip.style.display = "block";
    const x = Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    const y = Math.min(e.clientY + 14, window.innerHeight - tip.offsetHeight - 8);
    tip.style.left = x + "px"; tip.style.top = y + "px";
  });
  $("tokens").addEventListener("mouseleave", () => { $("tip").style.display = "none"; });
  $("tokens").addEventListener("click", (e) => {
    const span = e.target.closest(".tok");
    if (!span) return;
    active = +span.dataset.pos;
    render();
  });
  $("units").addEventListener("click", (e) => {
    const cv = $("units"), r = cv.getBoundingClientRect();
    const u = Math.floor((e.clientX - r.left) * (cv.width / r.width) / +cv.dataset.cell);
    const t = Math.floor((e.clientY - r.top) * (cv.height / r.height) / 14);
    if (u >= 0 && u < D.hidden_size) sel.unit.value = String(u);
    if (t >= 0 && t < sentence().tokens.length) active = t;
    render();
  });
  sel.sentence.addEventListener("change", () => { active = -1; $("detail").replaceChildren(); });
  Object.values(sel).forEach((s) => s.addEventListener("change", () => { $("tip").style.display = "none"; render(); }));
  render();
})();
