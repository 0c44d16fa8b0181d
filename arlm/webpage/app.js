// arlm's browser page: suggestions as you type and the gates of what has been typed, from
// one ONNX step of the model (arlm/export.py) run by onnxruntime-web.
//
// A typing session as arlm/complete.py's TypingSession: the text is cut where the word
// being typed begins (complete.js), the text before it is read as [<eos>] + its ids, and
// the state after every id is kept, so a keystroke inside a word costs no model step (a
// filter of the kept distribution), a finished word one step, and an edit anywhere goes
// back to the last kept state that still matches. Every kept step also holds each layer's
// gates, which the gate view draws: gateview.js, the HTML report's own (arlm/report),
// copied beside this file by build_web.
//
// Every word and number is put into the page as text (textContent, option text), never as
// markup. window.arlm exposes the state for tests and the curious: ready, error, steps,
// suggestions, record(), idle().
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const BUILD = window.ARLM_BUILD, RULES = window.ARLM_RULES;
  const K = 5;
  const api = { ready: false, error: null, steps: 0, suggestions: [], split: null, text: null };
  window.arlm = api;

  function status(message, isError) {
    const el = $("status");
    el.textContent = message;
    el.className = "sub" + (isError ? " error" : "");
  }

  // --- loading: fetch beside the page over http(s); from file://, the embedded copies ----

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = src;
      s.onload = resolve;
      s.onerror = () => reject(new Error("could not load " + src + " (run arlm.webpage.build_web on this folder)"));
      document.head.appendChild(s);
    });
  }

  async function unpack(b64) {       // base64 of gzip → bytes
    const bin = atob(b64), bytes = new Uint8Array(bin.length);
    for (let k = 0; k < bin.length; k++) bytes[k] = bin.charCodeAt(k);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  async function fetchOk(name) {
    const r = await fetch(name);
    if (!r.ok) throw new Error(name + ": " + r.status + " " + r.statusText);
    return r;
  }

  async function inputs() {
    ort.env.wasm.numThreads = 1;     // one thread: no SharedArrayBuffer, no cross-origin isolation needed
    ort.env.wasm.proxy = false;
    if (location.protocol === "file:") {
      await loadScript("arlm-embed.js");
      const E = window.ARLM_EMBED;
      const vocab = E.files["vocab.json"], spec = E.files["normalize.json"], model = E.packed[BUILD.model];
      if (!vocab || !spec || !model)
        throw new Error("arlm-embed.js holds no " + (!vocab ? "vocab.json" : !spec ? "normalize.json" : BUILD.model) +
                        ": run arlm.webpage.build_web after the model is exported");
      ort.env.wasm.wasmBinary = await unpack(E.packed["ort-wasm-simd-threaded.wasm"]);
      ort.env.wasm.wasmPaths = { mjs: URL.createObjectURL(new Blob([E.ort_glue], { type: "text/javascript" })) };
      return { vocab, spec, model: await unpack(model) };
    }
    const here = new URL(".", location.href).href;
    ort.env.wasm.wasmPaths = { mjs: here + "ort-wasm-simd-threaded.mjs", wasm: here + "ort-wasm-simd-threaded.wasm" };
    const [vocab, spec, model] = await Promise.all([
      fetchOk("vocab.json").then((r) => r.json()), fetchOk("normalize.json").then((r) => r.json()),
      fetchOk(BUILD.model).then((r) => r.arrayBuffer()).then((b) => new Uint8Array(b))]);
    return { vocab, spec, model };
  }

  // --- the model: one step, the state kept per token read -------------------------------

  let session, completer, vocab, L, H, V;

  function shape(session) {          // [L, B, H] of input h: from vocab.json, else the model's own metadata
    const m = vocab.model || vocab;
    if (m.num_layers && m.hidden_size) return [m.num_layers, m.hidden_size];
    const meta = (session.inputMetadata || []).find((m) => m.name === "h");
    if (meta && meta.shape && typeof meta.shape[0] === "number" && typeof meta.shape[2] === "number") return [meta.shape[0], meta.shape[2]];
    throw new Error("the model's number of layers and hidden size are unknown (vocab.json has no num_layers, hidden_size)");
  }

  async function step(token, prev) {
    const zeros = () => new Float32Array(L * H);
    const out = await session.run({
      token: new ort.Tensor("int64", BigInt64Array.of(BigInt(token)), [1]),
      h: new ort.Tensor("float32", prev ? prev.h : zeros(), [L, 1, H]),
      c: new ort.Tensor("float32", prev ? prev.c : zeros(), [L, 1, H]),
    });
    api.steps++;
    const logProbs = out.log_probs.data;
    return { token, probs: Float64Array.from(logProbs, Math.exp), h: out.h_next.data.slice(), c: out.c_next.data.slice(),
             gates: out.gates.data.slice() };
  }

  const kept = { ids: [], after: [] };  // ids read ([eos] first) and, after each, the step's results
  let lastContext = null, lastIds = null;

  async function update(text) {
    const split = completer.split(text);
    let ids;
    if (split.context === lastContext) ids = lastIds;  // typing inside a word: nothing new to read
    else {
      ids = [completer.special.eos].concat(completer.encode(split.context));
      lastContext = split.context;
      lastIds = ids;
    }
    let same = 0;
    while (same < Math.min(ids.length, kept.ids.length) && ids[same] === kept.ids[same]) same++;
    kept.ids.length = same;           // back to the last state that still matches
    kept.after.length = same;
    for (const token of ids.slice(same)) {
      const prev = kept.after.length ? kept.after[kept.after.length - 1] : null;
      kept.after.push(await step(token, prev));
      kept.ids.push(token);
    }
    const suggestions = completer.suggest(kept.after[kept.after.length - 1].probs, split.prefix, K);
    return { text, split, suggestions };
  }

  // What is completed is the text before the cursor, wherever the cursor is (the end, once typed).
  function beforeCursor() {
    const area = $("text");
    return area.value.slice(0, area.selectionStart == null ? area.value.length : area.selectionStart);
  }

  // Updates run one at a time; text typed meanwhile is read once the current one is done.
  let running = false, again = false, waiters = [];
  async function schedule() {
    if (running) { again = true; return; }
    running = true;
    try {
      do {
        again = false;
        const result = await update(beforeCursor());
        if (result.text === beforeCursor()) show(result);
        else again = true;
      } while (again);
    } catch (e) {
      fail(e);
    } finally {
      running = false;
      waiters.splice(0).forEach((w) => w());
    }
  }
  api.idle = () => (running ? new Promise((resolve) => waiters.push(resolve)) : Promise.resolve());

  // --- what the page shows ------------------------------------------------------------

  const pct = (p) => (p >= 0.0995 ? (100 * p).toFixed(0) + "%" : p >= 0.00995 ? (100 * p).toFixed(1) + "%"
                     : p >= 0.0001 ? (100 * p).toFixed(2) + "%" : "<0.01%");
  const visible = (s) => ArlmGateView.visible(s);  // invisible format characters spelled out, as in the report

  function show(result) {
    api.text = result.text;
    api.split = result.split;
    api.suggestions = result.suggestions.map(({ word, probability, share }) => ({ word, probability, share }));
    const box = $("suggestions");
    box.replaceChildren();
    result.suggestions.forEach((s) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "sug";
      b.dataset.word = s.word;
      const w = document.createElement("bdi");
      w.textContent = visible(s.word);  // text, never markup
      const p = document.createElement("span");
      p.className = "p";
      p.dir = "ltr";
      p.textContent = pct(s.probability) + " (" + pct(s.share) + ")";
      b.append(w, p);
      b.addEventListener("click", () => choose(s.word));
      box.appendChild(b);
    });
    if (!result.suggestions.length) {
      const none = document.createElement("span");
      none.className = "none";
      none.textContent = result.split.prefix ? "no word of the vocabulary begins with this" : "nothing to suggest";
      box.appendChild(none);
    }
    status("ready · " + BUILD.model + " · " + V.toLocaleString("en") + " words · " + L + " × " + H + " LSTM units · " +
           api.steps + " model steps so far");
    renderGates(false);
  }

  // The word being typed (or none, at a boundary) replaced by `word`, with the rest of that
  // word after the cursor when the cursor is inside one; what follows the word is kept, and
  // the cursor goes after the word and one space.
  function choose(word) {
    const area = $("text"), split = api.split;
    if (!split) return;
    const rest = area.value.slice(completer.wordEnd(area.value, area.selectionEnd == null ? area.value.length : area.selectionEnd));
    const spaced = rest.startsWith(" ") ? rest : " " + rest;
    area.value = area.value.slice(0, split.start) + word + spaced;
    area.focus();
    const caret = split.start + word.length + 1;
    area.setSelectionRange(caret, caret);
    schedule();
  }

  // --- the gate view: the report's, from the kept steps ---------------------------------

  const G = BUILD.gates;
  let view;                          // ArlmGateView over the controls, made once the model is loaded

  function guesses(entry) {           // the K most likely next tokens after a step, kept with it
    if (!entry.top) {
      const probs = entry.probs, best = [];
      for (let i = 0; i < probs.length; i++) {
        if (best.length === K && probs[i] <= probs[best[K - 1]]) continue;
        let at = best.length;
        while (at > 0 && probs[best[at - 1]] < probs[i]) at--;
        best.splice(at, 0, i);
        if (best.length > K) best.pop();
      }
      entry.top = best.map((i) => [vocab.tokens[i], probs[i]]);
    }
    return entry.top;
  }

  // What arlm.gates.record gives for the text before the word being typed: per token its
  // layers' f, i, c̃, o, c, h (rows: tokens, columns: units), the top-5 guesses after it
  // (over the whole vocabulary, as record lists them) and the probability it was given.
  function record() {
    const n = kept.ids.length - 1;
    if (!completer || n < 1) return { text: lastContext || "", tokens: [], ids: [], layers: [], top: [], token_probs: [] };
    const ids = kept.ids.slice(1);
    let tokens = completer.tokenize(lastContext);
    if (tokens.length !== ids.length) tokens = ids.map((i) => vocab.tokens[i]);
    const layers = [];
    for (let l = 0; l < L; l++) {
      const layer = {};
      G.names.forEach((g) => { layer[g] = []; });
      for (let t = 1; t <= n; t++) {
        const a = kept.after[t];
        ["f", "i", "c_tilde", "o"].forEach((g, k) => layer[g].push(Array.from(a.gates.subarray((l * 4 + k) * H, (l * 4 + k + 1) * H))));
        layer.c.push(Array.from(a.c.subarray(l * H, (l + 1) * H)));
        layer.h.push(Array.from(a.h.subarray(l * H, (l + 1) * H)));
      }
      layers.push(layer);
    }
    const top = [], token_probs = [];
    for (let t = 1; t <= n; t++) {
      top.push(guesses(kept.after[t]));
      token_probs.push(kept.after[t - 1].probs[ids[t - 1]]);
    }
    return { text: lastContext, tokens, ids, layers, top, token_probs };
  }
  api.record = record;

  let shown = null;                  // the record drawn now

  function renderGates(force = true) {  // force: the controls changed; else only when new words were read
    if (!force && shown && shown.text === lastContext && shown.ids.length === kept.ids.length - 1) return;
    shown = record();
    view.draw();
  }

  function fail(e) {
    api.error = String((e && e.message) || e);
    status("error: " + api.error, true);
  }

  async function start() {
    if (typeof ort === "undefined") throw new Error("onnxruntime-web (ort.wasm.min.js) did not load");
    if (typeof ArlmGateView === "undefined") throw new Error("the gate view (gateview.js) did not load");
    const got = await inputs();
    vocab = got.vocab;
    completer = ArlmComplete.makeCompleter(vocab, got.spec, RULES);
    V = vocab.tokens.length;
    session = await ort.InferenceSession.create(got.model, { executionProviders: ["wasm"] });
    [L, H] = shape(session);
    view = ArlmGateView.create(G, L, H, () => shown, renderGates);
    const area = $("text");
    area.addEventListener("input", schedule);
    // the cursor moved without typing (keys, a click, a selection): read again only if the
    // text before it changed, not once more for every key already read by "input"
    const moved = () => { if (beforeCursor() !== api.text) schedule(); };
    for (const event of ["keyup", "click", "select", "selectionchange"]) area.addEventListener(event, moved);
    area.disabled = false;
    area.focus();
    await schedule();                 // the empty text: next-word guesses at the start of a document
    api.ready = true;
  }

  start().catch(fail);
})();
