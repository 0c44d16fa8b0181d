"""Arabic text normalization: one config dataclass, one function.

Every step is a named option of `NormalizeConfig`; the config is saved with every
model (inside the tokenizer files), so inference normalizes exactly like training.

Two implementations of the same thing:

* `normalize_reference` calls camel-tools' functions one after another. It is the
  definition of what each step means.
* `normalize` is the fast path used everywhere else: the per-character steps
  (diacritics, tatweel, alef, alef maksura, teh marbuta, digits) are single-character
  replacements in camel-tools, so they fold into one `str.translate` table.
  `tests/test_normalize.py` checks the two agree on real text and on random Unicode.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import asdict, dataclass

import numpy as np
import regex

from camel_tools.utils.charsets import AR_DIAC_CHARSET, EMOJI_ALL_CHARSET
from camel_tools.utils.dediac import dediac_ar
from camel_tools.utils.normalize import (
    normalize_alef_ar,
    normalize_alef_maksura_ar,
    normalize_teh_marbuta_ar,
    normalize_unicode,
)

from arlm.config import check, option

TATWEEL = "\u0640"
ALEF_VARIANTS = "\u0623\u0625\u0622\u0671"  # أ إ آ ٱ
ALEF = "\u0627"
ALEF_MAKSURA, YEH = "\u0649", "\u064a"
TEH_MARBUTA, HEH = "\u0629", "\u0647"
EASTERN_DIGITS = "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669"  # ٠..٩
PERSIAN_DIGITS = "\u06f0\u06f1\u06f2\u06f3\u06f4\u06f5\u06f6\u06f7\u06f8\u06f9"  # ۰..۹

@dataclass
class NormalizeConfig:
    """What `normalize` does, step by step, in this order.

    unicode:      "NFKC" (default; also folds presentation forms such as ﻻ into لا and
                  expands ﷼ ﷽ as camel-tools does), "NFC", or "none".
    diacritics:   remove the harakat, tanwin, shadda, sukun and dagger alef (default on).
    tatweel:      remove the kashida ـ used only for stretching words (default on).
    alef:         أ إ آ ٱ → ا (default on): hamza spelling is inconsistent in real text.
    alef_maksura: ى → ي (default on).
    teh_marbuta:  ة → ه (default on).
    digits:       Eastern-Arabic ٠-٩ and Persian ۰-۹ → 0-9 (default on).
    latin:        "keep" Latin letters as they are (default), "lower" them, or "drop" them.
    punctuation:  "keep" (default: the tokenizer splits it off as its own tokens) or "drop".
    emoji:        "keep" (default) or "drop".
    invisible:    remove zero-width and bidi control characters (U+200B-U+200F, U+202A-U+202E,
                  U+2060-U+2069, U+FEFF; default on): scraped text is full of them, and a word
                  with a hidden right-to-left mark is otherwise a different word.
    Whitespace is always collapsed to single spaces and stripped.
    """

    # The field order is part of the format: the translation table is cached on the
    # tuple of values (`_lookup_table`), so append new fields at the end.
    unicode: str = option("NFKC", "Unicode normalization form", choices=("NFKC", "NFC", "none"))
    diacritics: bool = option(True, "remove the harakat, tanwin, shadda, sukun and dagger alef")
    tatweel: bool = option(True, "remove the kashida used only for stretching words")
    alef: bool = option(True, "fold the hamza forms of alef into a bare alef")
    alef_maksura: bool = option(True, "fold alef maksura into yeh")
    teh_marbuta: bool = option(True, "fold teh marbuta into heh")
    digits: bool = option(True, "Eastern-Arabic and Persian digits to 0-9")
    latin: str = option("keep", "Latin letters: keep, lower or drop them", choices=("keep", "lower", "drop"))
    punctuation: str = option("keep", "punctuation: keep (as tokens of its own) or drop it", choices=("keep", "drop"))
    emoji: str = option("keep", "emoji: keep or drop them", choices=("keep", "drop"))
    invisible: bool = option(True, "remove zero-width and bidi control characters")

    def __post_init__(self) -> None:
        check(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NormalizeConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown normalization option(s): {', '.join(sorted(unknown))}")
        return cls(**d)


_LATIN = regex.compile(r"\p{Latin}+")
_PUNCT = regex.compile(r"[\p{P}\p{S}]")
# Emoji: anything camel-tools lists as an emoji character, plus the joiners and
# variation selectors that glue emoji sequences together.
_EMOJI = regex.compile(
    "[" + "".join(regex.escape(c) for c in sorted({ch for e in EMOJI_ALL_CHARSET for ch in e})) + "\u200d\ufe0f\u20e3]"
)
_SPACE = regex.compile(r"\s+")
_INVISIBLE = regex.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


_DELETE = 0xFFFFFFFF  # marks a code point the lookup table removes


def _lookup_table(cfg: NormalizeConfig) -> np.ndarray:
    """Code point → code point for the Arabic block (U+0000..U+07FF); _DELETE removes it."""
    lut = np.arange(0x800, dtype=np.uint32)
    if cfg.diacritics:
        lut[[ord(c) for c in AR_DIAC_CHARSET]] = _DELETE
    if cfg.tatweel:
        lut[ord(TATWEEL)] = _DELETE
    if cfg.alef:
        lut[[ord(c) for c in ALEF_VARIANTS]] = ord(ALEF)
    if cfg.alef_maksura:
        lut[ord(ALEF_MAKSURA)] = ord(YEH)
    if cfg.teh_marbuta:
        lut[ord(TEH_MARBUTA)] = ord(HEH)
    if cfg.digits:
        for d in range(10):
            lut[ord(EASTERN_DIGITS[d])] = lut[ord(PERSIAN_DIGITS[d])] = ord("0") + d
    return lut


@functools.lru_cache(maxsize=32)
def _lut_for(key: tuple) -> np.ndarray:
    return _lookup_table(NormalizeConfig(*key))


def _map_chars(s: str, lut: np.ndarray) -> str:
    """Apply the per-character steps to a whole string at once (UTF-32 view + numpy)."""
    cps = np.frombuffer(s.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    mapped = np.where(cps < 0x800, lut[np.minimum(cps, 0x7FF)], cps)
    return mapped[mapped != _DELETE].tobytes().decode("utf-32-le", "surrogatepass")


def _unicode_reference(s: str, form: str) -> str:
    if form == "NFKC":
        return normalize_unicode(s, compatibility=True)
    if form == "NFC":
        return normalize_unicode(s, compatibility=False)
    return s


# camel-tools expands these two ligatures itself before NFKC (NFKC alone would not).
_LIGATURES = {"\ufdfc": "ريال", "\ufdfd": "بسم الله الرحمن الرحيم"}


def _unicode(s: str, form: str) -> str:
    """Same result as `_unicode_reference`, but skips the work for text that is already
    normal (the common case: `is_normalized` is a fast quick-check)."""
    if form == "none":
        return s
    if form == "NFKC":
        for lig, expansion in _LIGATURES.items():
            if lig in s:
                s = s.replace(lig, expansion)
    return s if unicodedata.is_normalized(form, s) else unicodedata.normalize(form, s)


def _finish(s: str, cfg: NormalizeConfig) -> str:
    """The steps that are not single-character maps (the same in both paths)."""
    if cfg.invisible:
        s = _INVISIBLE.sub("", s)
    if cfg.latin == "lower":
        s = _LATIN.sub(lambda m: m.group(0).lower(), s)
    elif cfg.latin == "drop":
        s = _LATIN.sub(" ", s)
    if cfg.emoji == "drop":
        s = _EMOJI.sub(" ", s)
    if cfg.punctuation == "drop":
        s = _PUNCT.sub(" ", s)
    return " ".join(s.split())


def _stable(s: str, cfg: NormalizeConfig) -> bool:
    # Deleting or mapping a character can expose a new composition (ا + ـ + ٓ → ا + ٓ,
    # which NFC composes to آ). Such rare strings go round once more, which makes
    # normalize idempotent by construction.
    return cfg.unicode == "none" or unicodedata.is_normalized(cfg.unicode, s)


def normalize(text: str, cfg: NormalizeConfig | None = None) -> str:
    """Normalize Arabic text as `cfg` says (the fast path; equal to `normalize_reference`)."""
    cfg = cfg or DEFAULT
    lut = _lut_for(tuple(asdict(cfg).values()))
    for _ in range(8):  # terminates after 1 pass almost always, 2 on contrived input
        # Mapping first makes the (slow) Unicode normalization a no-op quick-check on
        # diacritized text; a second map catches what NFKC decomposed (ﻷ → لأ).
        s = _map_chars(text, lut)
        u = _unicode(s, cfg.unicode)
        if u is not s and u != s:
            s = _map_chars(u, lut)
        out = _finish(s, cfg)
        if out == text or _stable(out, cfg):
            return out
        text = out
    return out


def normalize_reference(text: str, cfg: NormalizeConfig | None = None) -> str:
    """The same normalization, calling camel-tools' functions one step at a time."""
    cfg = cfg or DEFAULT
    for _ in range(8):
        s = _unicode_reference(text, cfg.unicode)
        if cfg.diacritics:
            s = dediac_ar(s)
        if cfg.tatweel:
            s = s.replace(TATWEEL, "")
        if cfg.alef:
            s = normalize_alef_ar(s)
        if cfg.alef_maksura:
            s = normalize_alef_maksura_ar(s)
        if cfg.teh_marbuta:
            s = normalize_teh_marbuta_ar(s)
        if cfg.digits:
            # camel-tools has no digit step; this is the plain definition.
            for d in range(10):
                s = s.replace(EASTERN_DIGITS[d], str(d)).replace(PERSIAN_DIGITS[d], str(d))
        out = _finish(s, cfg)
        if out == text or _stable(out, cfg):
            return out
        text = out
    return out


DEFAULT = NormalizeConfig()


def arabic_share(text: str) -> float:
    """Fraction of letters in `text` that are Arabic script (0.0 when there are no letters)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    return sum(1 for c in letters if "\u0600" <= c <= "\u06ff" or "\u0750" <= c <= "\u077f") / len(letters)
