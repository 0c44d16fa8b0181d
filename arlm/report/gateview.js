// The gate view shared by the HTML report (arlm/report/page.js: page.py inlines this file
// before it) and the browser page (arlm/webpage/app.js: build_web copies this file beside it,
// loaded by its own script tag): the tokens coloured by one gate, unit and layer, the
// legend, the table of every gate for a token with the next-word guesses, and every unit at
// once on a canvas. A classic script (so it runs from file://) defining window.ArlmGateView.
// Every word and number goes into the page as text (textContent, option text), never as markup.
"use strict";
window.ArlmGateView = (function () {
  const $ = (id) => document.getElementById(id);
  const mean = (v) => v.reduce((a, b) => a + b, 0) / v.length;
  const css = (rgb) => "rgb(" + rgb.join(",") + ")";
  const ink = (rgb) => (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 140 ? "#fff" : "#111");
  const fmt = (x) => (x >= 0 ? " " : "") + x.toFixed(3);
  // invisible format characters (RLM, ZWNJ, …) spelled out, as in the terminal view
  const visible = (s) => s.replace(/\p{Cf}/gu, (c) => "⟨U+" + c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0") + "⟩");
  const mix = (a, b, x) => a.map((c, k) => Math.round(c + (b[k] - c) * x));
  const WHITE = [255, 255, 255], BLUE = [33, 102, 172], RED = [178, 24, 43];
  const ROW = 14;                    // the height of a token's row on the units canvas, in pixels

  function option(select, value, text) {
    const o = document.createElement("option");
    o.value = String(value);
    o.textContent = text;            // text, never markup
    select.appendChild(o);
  }

  // The view over the page's controls (#layer, #gate, #unit) and boxes (#tokens, #legend-lo,
  // #legend-hi, #legend-bar, #legend-label, #detail, #units, #tip).
  //   G       the gates: {names, labels, meanings, explain, sigmoid} (arlm.gates)
  //   L, H    the model's number of layers and units per layer
  //   shown   () → the record drawn now: {tokens, token_probs, top, layers}, layers[l][gate]
  //           one row of H values per token (what arlm.gates.record gives)
  //   redraw  () → called after a click or a change of the controls (the page then calls draw)
  // Fills the layer, gate and unit controls (last layer, gate o), wires the events and
  // returns {draw, detail, active}: `active` is the clicked token (-1: none).
  function create(G, L, H, shown, redraw) {
    const sel = { layer: $("layer"), gate: $("gate"), unit: $("unit") };
    const view = { active: -1 };

    function value(g, t) {
      const row = shown().layers[+sel.layer.value][g][t];
      return sel.unit.value === "mean" ? mean(row) : row[+sel.unit.value];
    }
    function range(g) {               // the colour scale of a gate: [0, 1], [-1, 1], or ±max|c|
      if (G.sigmoid.includes(g)) return [0, 1];
      if (g !== "c") return [-1, 1];
      let m = 1e-6;
      for (let t = 0; t < shown().tokens.length; t++) m = Math.max(m, Math.abs(value(g, t)));
      return [-m, m];
    }
    function colour(g, v) {
      const [lo, hi] = range(g);
      if (lo === 0) return mix(WHITE, BLUE, Math.min(1, Math.max(0, v)));
      return v >= 0 ? mix(WHITE, BLUE, Math.min(1, v / hi)) : mix(WHITE, RED, Math.min(1, v / lo));
    }

    function detail(t, box) {         // every gate of token t and the guesses after it, into box
      const s = shown(), g = sel.gate.value;
      box.replaceChildren();
      const head = document.createElement("div");
      const word = document.createElement("bdi");
      word.className = "arabic"; word.style.fontWeight = "bold"; word.textContent = visible(s.tokens[t]);
      head.append(word, document.createTextNode("  position " + (t + 1) + " of " + s.tokens.length +
        " · p(this word) = " + s.token_probs[t].toFixed(3) + " · layer " + (+sel.layer.value + 1) +
        " · " + (sel.unit.value === "mean" ? "mean of all units" : "unit " + sel.unit.value)));
      const table = document.createElement("table");
      table.className = "vals";
      G.names.forEach((h) => {
        const tr = document.createElement("tr");
        if (h === g) tr.className = "sel";
        [G.labels[h], G.meanings[h], fmt(value(h, t)), G.explain[h]].forEach((c) => {
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

    function drawUnits() {            // every unit at once: rows = tokens, columns = units
      const g = sel.gate.value, cv = $("units"), T = shown().tokens.length;
      const w = Math.max(2, Math.min(24, Math.floor(1000 / H)));
      cv.width = T ? H * w : 0; cv.height = T * ROW;
      cv.dataset.cell = String(w);
      if (!T) return;
      const rows = shown().layers[+sel.layer.value][g], ctx = cv.getContext("2d");
      for (let t = 0; t < T; t++) for (let u = 0; u < H; u++) {
        ctx.fillStyle = css(colour(g, rows[t][u]));
        ctx.fillRect(u * w, t * ROW, w, ROW);
      }
      if (sel.unit.value !== "mean") {
        ctx.strokeStyle = "#f39c12"; ctx.lineWidth = 2;
        ctx.strokeRect(+sel.unit.value * w + 1, 1, w - 2, T * ROW - 2);
      }
    }

    function draw() {                 // the tokens, the legend, the clicked token's detail, the units
      const s = shown(), g = sel.gate.value, box = $("tokens");
      if (view.active >= s.tokens.length) view.active = -1;
      box.replaceChildren();
      s.tokens.forEach((tok, t) => {
        const span = document.createElement("span");
        span.className = "tok" + (t === view.active ? " active" : "");
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
      $("legend-label").textContent = G.labels[g] + ": " + G.explain[g];
      if (view.active >= 0) detail(view.active, $("detail"));
      drawUnits();
    }

    for (let l = 0; l < L; l++) option(sel.layer, l, "layer " + (l + 1));
    G.names.forEach((g) => option(sel.gate, g, G.labels[g] + " — " + G.meanings[g]));
    option(sel.unit, "mean", "mean of all units");
    for (let u = 0; u < H; u++) option(sel.unit, u, "unit " + u);
    sel.layer.value = String(L - 1);
    sel.gate.value = "o";

    const tokens = $("tokens"), tip = $("tip");
    tokens.addEventListener("mousemove", (e) => {
      const span = e.target.closest(".tok");
      if (!span) { tip.style.display = "none"; return; }
      detail(+span.dataset.pos, tip);
      tip.style.display = "block";
      const x = Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
      const y = Math.min(e.clientY + 14, window.innerHeight - tip.offsetHeight - 8);
      tip.style.left = x + "px"; tip.style.top = y + "px";
    });
    tokens.addEventListener("mouseleave", () => { tip.style.display = "none"; });
    tokens.addEventListener("click", (e) => {
      const span = e.target.closest(".tok");
      if (!span) return;
      view.active = +span.dataset.pos;
      redraw();
    });
    $("units").addEventListener("click", (e) => {
      const cv = $("units"), r = cv.getBoundingClientRect();
      const u = Math.floor((e.clientX - r.left) * (cv.width / r.width) / +cv.dataset.cell);
      const t = Math.floor((e.clientY - r.top) * (cv.height / r.height) / ROW);
      if (u >= 0 && u < H) sel.unit.value = String(u);
      if (t >= 0 && t < shown().tokens.length) view.active = t;
      redraw();
    });
    Object.values(sel).forEach((s) => s.addEventListener("change", () => { tip.style.display = "none"; redraw(); }));

    view.draw = draw;
    view.detail = detail;
    return view;
  }

  return { create, option, visible, fmt };
})();
