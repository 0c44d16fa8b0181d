// arlm.normalize.normalize in JavaScript, step for step, from the tables of
// arlm.webpage.normalize_spec (normalize.json). tests/test_webpage.py runs it with node on
// the corpus and on random text and checks it equals Python's.
//
// Python's steps and their order (arlm/normalize.py, `normalize`):
//   map     one lookup table over U+0000..U+07FF: harakat and tatweel deleted, alef forms,
//           alef maksura, teh marbuta and digits folded (spec.map: [code point, to or -1])
//   unicode NFKC (two ligatures expanded first) or NFC or none; then the map once more
//   finish  invisible marks removed, Latin lowered or dropped, emoji and punctuation dropped,
//           whitespace (Python's str.isspace) collapsed to single spaces and stripped
//   repeat  until the text is stable (at most 8 rounds), as Python does.
// Character classes come from Python's own regexes and Unicode database, never from this
// engine's, which is of another Unicode version. The one thing done here natively is
// String.prototype.normalize; code points that Python's database (spec.assigned) does not
// know are kept out of it: to Python they are starters that never compose or decompose,
// so nothing around them can change either, and normalizing the runs between them
// separately gives exactly Python's result.
"use strict";
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.ArlmNormalize = factory();
})(typeof self !== "undefined" ? self : this, function () {
  // A set of code points from sorted [first, last] ranges; has() bisects.
  function charSet(ranges) {
    const lo = new Int32Array(ranges.length), hi = new Int32Array(ranges.length);
    ranges.forEach(([a, b], k) => { lo[k] = a; hi[k] = b; });
    const small = new Uint8Array(0x800);                 // the Arabic block and below, looked up directly
    ranges.forEach(([a, b]) => { for (let c = a; c <= Math.min(b, 0x7ff); c++) small[c] = 1; });
    return {
      has(c) {
        if (c < 0x800) return small[c] === 1;
        let l = 0, h = lo.length - 1;
        while (l <= h) {
          const m = (l + h) >> 1;
          if (c < lo[m]) h = m - 1;
          else if (c > hi[m]) l = m + 1;
          else return true;
        }
        return false;
      },
    };
  }

  // Python's `" ".join(s.split())`: split on its whitespace, drop empty parts.
  function collapse(s, space) {
    const words = [];
    let word = "";
    for (const ch of s) {
      if (space.has(ch.codePointAt(0))) {
        if (word) words.push(word);
        word = "";
      } else word += ch;
    }
    if (word) words.push(word);
    return words.join(" ");
  }

  function makeNormalizer(spec) {
    if (!spec || spec.format !== "arlm-normalize") throw new Error("not an arlm normalization spec (normalize.json)");
    const cfg = spec.config;
    const lut = new Int32Array(0x800);
    for (let c = 0; c < 0x800; c++) lut[c] = c;
    spec.map.forEach(([c, to]) => { lut[c] = to; });
    const invisible = charSet(spec.invisible), latin = charSet(spec.latin), emoji = charSet(spec.emoji);
    const punct = charSet(spec.punctuation), space = charSet(spec.space), assigned = charSet(spec.assigned);
    const lower = spec.lower;

    function mapChars(s) {
      let out = "";
      for (const ch of s) {
        const c = ch.codePointAt(0);
        if (c < 0x800) {
          const to = lut[c];
          if (to === c) out += ch;
          else if (to >= 0) out += String.fromCodePoint(to);
        } else out += ch;
      }
      return out;
    }

    function unicodeForm(s) {          // Python's unicodedata.normalize(form, s), see the top
      const form = cfg.unicode;
      let out = "", run = "";
      for (const ch of s) {
        if (assigned.has(ch.codePointAt(0))) run += ch;
        else {
          out += run.normalize(form) + ch;
          run = "";
        }
      }
      return out + run.normalize(form);
    }

    function unicode(s) {
      if (cfg.unicode === "none") return s;
      if (cfg.unicode === "NFKC") for (const [lig, expansion] of spec.ligatures) if (s.includes(lig)) s = s.split(lig).join(expansion);
      return unicodeForm(s);
    }

    function each(s, f) {             // every code point through f (a string, maybe empty)
      let out = "";
      for (const ch of s) out += f(ch, ch.codePointAt(0));
      return out;
    }

    function finish(s) {
      if (cfg.invisible) s = each(s, (ch, c) => (invisible.has(c) ? "" : ch));
      if (cfg.latin === "lower") s = each(s, (ch, c) => (latin.has(c) && lower[c] !== undefined ? lower[c] : ch));
      else if (cfg.latin === "drop") {  // each run of Latin letters becomes one space
        let out = "", inRun = false;
        for (const ch of s) {
          const isLatin = latin.has(ch.codePointAt(0));
          if (!isLatin) out += ch;
          else if (!inRun) out += " ";
          inRun = isLatin;
        }
        s = out;
      }
      if (cfg.emoji === "drop") s = each(s, (ch, c) => (emoji.has(c) ? " " : ch));
      if (cfg.punctuation === "drop") s = each(s, (ch, c) => (punct.has(c) ? " " : ch));
      return collapse(s, space);
    }

    const stable = (s) => cfg.unicode === "none" || unicodeForm(s) === s;

    return function normalize(text) {
      if (typeof text !== "string") throw new TypeError("normalize: text must be a string");
      let out = text;
      for (let round = 0; round < 8; round++) {
        let s = mapChars(text);
        const u = unicode(s);
        if (u !== s) s = mapChars(u);
        out = finish(s);
        if (out === text || stable(out)) return out;
        text = out;
      }
      return out;
    };
  }

  return { makeNormalizer, charSet, collapse };
});
