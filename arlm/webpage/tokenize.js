// camel-tools' simple_word_tokenize (what arlm.tokenizer.word_tokenize computes) in
// JavaScript, from the tables of arlm.webpage.text_rules (arlm-rules.js). Tested equal to
// Python with node by tests/test_webpage.py.
//
// camel-tools splits a text on Python's whitespace, then walks each word by code point:
// where its symbol regex matches and the match is one of its symbols (a single punctuation
// or symbol character, or an emoji sequence of the emoji package), the match is a token of
// its own; with split_digits, a run of \d digits is one too; anything else stays in the word.
// The regex, written out as the backtracking engine reads it (the first alternative that
// matches wins, each part as long as it can be, never backtracked into, since nothing
// after it can fail):
//   EMOJI   = \p{RI}\p{RI} | \p{Emoji} ( \p{EMod} | FE0F 20E3? | [E0020-E007E]+ E007F )?
//   SYMBOL  = EMOJI ( 200D EMOJI )*  |  [0-9*#] 20E3  |  \p{S}  |  \p{P}
"use strict";
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory(require("./normalize.js"));
  else root.ArlmTokenize = factory(root.ArlmNormalize);
})(typeof self !== "undefined" ? self : this, function (N) {
  function makeWordTokenizer(rules) {
    if (!rules || rules.format !== "arlm-text-rules") throw new Error("not arlm's text rules (arlm-rules.js)");
    const set = (name) => N.charSet(rules[name]);
    const space = set("space"), ri = set("ri"), emoji = set("emoji"), emod = set("emod");
    const symbolClass = set("symbol_class"), digit = set("digit"), symbols = set("symbols");
    const symbolStrings = new Set(rules.symbol_strings);
    const isTag = (c) => c >= 0xe0020 && c <= 0xe007e;

    function emojiAt(cps, i) {         // EMOJI at i: its end, or -1
      const n = cps.length;
      if (i + 1 < n && ri.has(cps[i]) && ri.has(cps[i + 1])) return i + 2;
      if (i >= n || !emoji.has(cps[i])) return -1;
      let j = i + 1;
      if (j < n && emod.has(cps[j])) return j + 1;
      if (j < n && cps[j] === 0xfe0f) return j + 1 < n && cps[j + 1] === 0x20e3 ? j + 2 : j + 1;
      if (j < n && isTag(cps[j])) {
        let k = j;
        while (k < n && isTag(cps[k])) k++;
        if (k < n && cps[k] === 0xe007f) return k + 1;
      }
      return j;
    }

    function symbolAt(cps, i) {        // SYMBOL at i: its end, or -1
      let end = emojiAt(cps, i);
      if (end >= 0) {
        while (end < cps.length && cps[end] === 0x200d) {
          const next = emojiAt(cps, end + 1);
          if (next < 0) break;
          end = next;
        }
        return end;
      }
      const c = cps[i];
      if (i + 1 < cps.length && cps[i + 1] === 0x20e3 && ((c >= 0x30 && c <= 0x39) || c === 0x2a || c === 0x23)) return i + 2;
      return symbolClass.has(c) ? i + 1 : -1;
    }

    function text(cps, a, b) {
      let s = "";
      for (let k = a; k < b; k++) s += String.fromCodePoint(cps[k]);
      return s;
    }
    const isSymbol = (s, length) => (length === 1 ? symbols.has(s.codePointAt(0)) : symbolStrings.has(s));

    // Python's str.split(): the whitespace-separated words.
    function words(s) {
      const out = [];
      let word = "";
      for (const ch of s) {
        if (space.has(ch.codePointAt(0))) {
          if (word) out.push(word);
          word = "";
        } else word += ch;
      }
      if (word) out.push(word);
      return out;
    }

    return function wordTokenize(s, splitDigits) {
      const tokens = [];
      for (const word of words(s)) {
        const cps = Array.from(word, (ch) => ch.codePointAt(0));
        const n = cps.length;
        let i = 0, start = 0;
        while (i < n) {
          const end = symbolAt(cps, i);
          if (end >= 0) {
            const match = text(cps, i, end);
            if (isSymbol(match, end - i)) {
              if (i !== start) tokens.push(text(cps, start, i));
              tokens.push(match);
              i = start = end;
              continue;
            }
          }
          if (splitDigits && digit.has(cps[i])) {
            let j = i;
            while (j < n && digit.has(cps[j])) j++;
            if (i !== start) tokens.push(text(cps, start, i));
            tokens.push(text(cps, i, j));
            i = start = j;
            continue;
          }
          i++;
        }
        if (start < n) tokens.push(text(cps, start, n));
      }
      return tokens;
    };
  }

  return { makeWordTokenizer };
});
