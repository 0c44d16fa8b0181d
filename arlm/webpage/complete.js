// arlm/complete.py's rules for a word model, in JavaScript: where the word being typed
// begins, its prefix normalized as the model normalizes, the vocabulary sorted (by code
// point, as Python sorts strings) and searched by bisection, suggestions ranked by the
// model's probability with their share of every matching word's; punctuation, numbers and
// special tokens left out unless asked. Tested equal to Python by tests/test_webpage.py.
"use strict";
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory(require("./normalize.js"), require("./tokenize.js"));
  else root.ArlmComplete = factory(root.ArlmNormalize, root.ArlmTokenize);
})(typeof self !== "undefined" ? self : this, function (N, T) {
  // Python's str order (by code point) on UTF-16 strings: a surrogate (half of a code point
  // above U+FFFF) sorts after every other code unit. (A lone surrogate, which Python would
  // sort as U+D800..U+DFFF, sorts as if it began a pair; no vocabulary holds one.)
  const key = (u) => (u >= 0xe000 ? u - 0x800 : u >= 0xd800 ? u + 0x2000 : u);
  function compare(a, b) {
    const n = Math.min(a.length, b.length);
    for (let k = 0; k < n; k++) {
      const x = a.charCodeAt(k), y = b.charCodeAt(k);
      if (x !== y) return key(x) - key(y);
    }
    return a.length - b.length;
  }
  const BYTE_PIECE = /^<0x[0-9A-F]{2}>$/;
  const LAST = String.fromCodePoint(0x10ffff);

  // The special ids of vocab.json ({"special": {"pad": 0, ...}}, or at its top level).
  function specialIds(vocab) {
    const s = vocab.special || vocab;
    const out = { pad: s.pad, unk: s.unk, bos: s.bos, eos: s.eos };
    for (const [name, id] of Object.entries(out))
      if (!Number.isInteger(id)) throw new Error("vocab.json gives no id for <" + name + ">");
    return out;
  }

  // vocab: vocab.json; normalizeSpec: normalize.json; rules: arlm-rules.js's ARLM_RULES.
  function makeCompleter(vocab, normalizeSpec, rules) {
    if (vocab.kind && vocab.kind !== "word") throw new Error("this page completes words of a word model; the model's tokenizer is " + vocab.kind);
    const normalize = N.makeNormalizer(normalizeSpec);
    const wordTokenize = T.makeWordTokenizer(rules);
    const splitDigits = vocab.split_digits !== false;
    const tokens = vocab.tokens;
    const stoi = new Map(tokens.map((w, i) => [w, i]));
    const ids = specialIds(vocab);
    const specials = new Set([ids.pad, ids.unk, ids.bos, ids.eos]);
    const space = N.charSet(rules.space), nd = N.charSet(rules.nd), ps = N.charSet(rules.ps);
    const splitChars = N.charSet(rules.split_chars);
    const splits = (c) => splitChars.has(c) || (splitDigits && nd.has(c));

    function kindOf(token) {          // complete.py's _kind, by Python's categories
      if (BYTE_PIECE.test(token)) return "byte";
      const cps = Array.from(token, (ch) => ch.codePointAt(0));
      if (cps.some((c) => nd.has(c))) return "number";
      if (cps.length && cps.every((c) => ps.has(c))) return "punctuation";
      return "word";
    }
    const kinds = tokens.map((w, i) => (specials.has(i) ? "special" : kindOf(w)));
    const sortedIds = tokens.map((_, i) => i).filter((i) => !specials.has(i)).sort((a, b) => compare(tokens[a], tokens[b]) || a - b);
    const sortedWords = sortedIds.map((i) => tokens[i]);

    function bisectLeft(x, lo) {
      let hi = sortedWords.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (compare(sortedWords[mid], x) < 0) lo = mid + 1;
        else hi = mid;
      }
      return lo;
    }

    const tokenize = (text) => wordTokenize(normalize(text), splitDigits);
    const encode = (text) => tokenize(text).map((w) => (stoi.has(w) ? stoi.get(w) : ids.unk));

    // Completer.split: the trailing characters that are neither Python whitespace nor split
    // off by the tokenizer are the word being typed (`start`: where it begins, in UTF-16
    // units of `text`); `context` is what the model reads, `prefix` the normalized word.
    function split(text) {
      const chars = Array.from(text);
      let start = chars.length;
      while (start > 0) {
        const c = chars[start - 1].codePointAt(0);
        if (space.has(c) || splits(c)) break;
        start--;
      }
      const before = chars.slice(0, start).join(""), raw = chars.slice(start).join("");
      const words = raw && normalize(raw) ? tokenize(raw) : [];
      if (words.length > 1)  // normalization made several tokens (a ligature): all but the last are read
        return { context: before + " " + words.slice(0, -1).join(" ") + " ", prefix: words[words.length - 1], start: before.length };
      return { context: before, prefix: words.length ? words[0] : "", start: before.length };
    }

    // Where the word that goes on at `at` (a UTF-16 index of `text`) ends: what a chosen
    // suggestion replaces after the cursor when the cursor is inside a word.
    function wordEnd(text, at) {
      let end = at;
      while (end < text.length) {
        const c = text.codePointAt(end);
        if (space.has(c) || splits(c)) break;
        end += c > 0xffff ? 2 : 1;
      }
      return end;
    }

    const allowed = (i, punctuation, numbers) =>
      kinds[i] === "word" || (punctuation && kinds[i] === "punctuation") || (numbers && kinds[i] === "number");

    // Completer.from_distribution: probs[id] = P(next token = id) over the whole vocabulary.
    function suggest(probs, prefix, k, punctuation = false, numbers = false) {
      let ids;
      if (prefix) {
        const lo = bisectLeft(prefix, 0), hi = bisectLeft(prefix + LAST, lo);
        ids = sortedIds.slice(lo, hi).filter((i) => allowed(i, punctuation, numbers));
      } else ids = tokens.map((_, i) => i).filter((i) => allowed(i, punctuation, numbers));
      let total = 0;
      const top = [];                 // the k best so far, best first; ties keep the earlier id
      for (const i of ids) {
        const p = probs[i];
        total += p;
        if (top.length === k && p <= probs[top[k - 1]]) continue;
        let at = top.length;
        while (at > 0 && probs[top[at - 1]] < p) at--;
        top.splice(at, 0, i);
        if (top.length > k) top.pop();
      }
      return top.map((i) => ({ id: i, word: tokens[i], probability: probs[i], share: total > 0 ? probs[i] / total : 0 }));
    }

    return { normalize, tokenize, encode, split, wordEnd, suggest, kinds, sortedWords, special: ids };
  }

  return { makeCompleter, specialIds, compare };
});
