// The web page's text code (arlm/webpage/*.js) under node, for tests/test_webpage.py: one
// JSON request per line on stdin, one JSON answer per line on stdout, so a test can ask
// thousands of questions of one node process.
//   {"op": "normalizer", "name": N, "spec": normalize_spec(...)}      → {"ok": true}
//   {"op": "normalize", "name": N, "texts": [...]}                      → {"out": [...]}
//   {"op": "rules", "rules": text_rules()}                              → {"ok": true}
//   {"op": "tokenize", "texts": [...], "split_digits": bool}            → {"out": [[token, ...], ...]}
//   {"op": "completer", "vocab": {...}, "spec": {...}}                  → {"ok": true}
//   {"op": "split", "texts": [...]} / {"op": "encode", "texts": [...]}  → {"out": [...]}
//   {"op": "probs", "probs": [...]}                                     → {"ok": true} (the distribution suggest reads)
//   {"op": "suggest", "prefix": p, "k": k, "punctuation": b, "numbers": b} → {"out": [...]}
"use strict";
const path = require("path");
const readline = require("readline");
const dir = path.join(__dirname, "..", "arlm", "webpage");
const N = require(path.join(dir, "normalize.js"));
const T = require(path.join(dir, "tokenize.js"));
const C = require(path.join(dir, "complete.js"));

const normalizers = {};
let rules = null, tokenize = null, completer = null, probs = null;

function answer(req) {
  switch (req.op) {
    case "normalizer": normalizers[req.name] = N.makeNormalizer(req.spec); return { ok: true };
    case "normalize": return { out: req.texts.map(normalizers[req.name]) };
    case "rules": rules = req.rules; tokenize = T.makeWordTokenizer(rules); return { ok: true };
    case "tokenize": return { out: req.texts.map((t) => tokenize(t, req.split_digits)) };
    case "completer": completer = C.makeCompleter(req.vocab, req.spec, rules); return { ok: true };
    case "split": return { out: req.texts.map((t) => { const s = completer.split(t); return [s.context, s.prefix]; }) };
    case "encode": return { out: req.texts.map(completer.encode) };
    case "probs": probs = Float64Array.from(req.probs); return { ok: true };
    case "suggest": return { out: completer.suggest(probs, req.prefix, req.k, req.punctuation, req.numbers) };
    default: throw new Error("unknown op " + req.op);
  }
}

readline.createInterface({ input: process.stdin, terminal: false }).on("line", (line) => {
  let reply;
  try {
    reply = answer(JSON.parse(line));
  } catch (e) {
    reply = { error: String((e && e.stack) || e) };
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
});
