"""Autocomplete and the gate view in a browser: a static page that runs an exported model.

    arlm-export --checkpoint runs/hadith --out web/      # arlm/export.py: model.onnx, vocab.json,
                                                         # normalize.json, then build_web(out)
    open web/index.html                                  # from file://, or any static host

The page types right to left, suggests the word being typed with the rules of
arlm/complete.py (the prefix normalized as the model normalizes, a sorted vocabulary
searched by bisection, the LSTM state kept per finished word: a keystroke inside a word
costs no model step), and shows every gate of every layer for what has been typed, as the
HTML report does, computed in the browser by onnxruntime-web (WebAssembly, one thread, so
no cross-origin isolation is needed).

Text is prepared in JavaScript exactly as in Python (tests/test_webpage.py runs the same
texts through both, with node): normalize.js replays `arlm.normalize.normalize` and
tokenize.js camel-tools' `simple_word_tokenize`, from tables this module computes from the
very objects Python uses (the normalization's lookup table and regexes, camel-tools' symbol
set and regexes, Python's own whitespace and categories), never from the browser's Unicode
data, which is of another version. Unicode normalization is the one thing JavaScript does
itself (`String.prototype.normalize`); the characters Python's Unicode database does not
know yet are left as they are, around which Python's normalization cannot change anything
either (see normalize.js).

What the page reads from its folder:

    model.onnx / model.int8.onnx   one step of the model (arlm/export.py)
    vocab.json, normalize.json     the vocabulary; `normalize_spec` of its NormalizeConfig
    arlm-rules.js                  written by `build_web`: the tokenizer's tables and which model to load
    arlm-embed.js                  written by `build_web`: the json files, the model and onnxruntime's
                                   WebAssembly, gzipped and base64'd in one script, for file://, where
                                   a page may not fetch() its own folder
    ort.wasm.min.js, ort-wasm-simd-threaded.{mjs,wasm}   onnxruntime-web, copied from node_modules

From http(s) the page fetches the model and the json files and onnxruntime's files beside
it; from file:// it loads arlm-embed.js with a <script> tag instead. Nothing comes from the
network either way.
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
import os
import shutil
import sys
import unicodedata
from importlib import resources
from pathlib import Path

import regex

from arlm.normalize import (
    _EMOJI,
    _INVISIBLE,
    _LATIN,
    _LIGATURES,
    _PUNCT,
    DEFAULT,
    NormalizeConfig,
    _DELETE,
    _lookup_table,
)

# The page's own files (shipped with this package), copied as they are.
PAGE_FILES = ("index.html", "style.css", "normalize.js", "tokenize.js", "complete.js", "app.js")
# The gate view, shared with the HTML report: arlm.report's files, copied beside the page's.
SHARED_FILES = ("gateview.js", "gateview.css")
# onnxruntime-web: the UMD build (a classic script, so it runs from file://), its
# Emscripten glue (imported as a module) and the plain SIMD WebAssembly.
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
ORT_ENV = "ARLM_ORT_WEB"
RULES_FILE = "arlm-rules.js"
EMBED_FILE = "arlm-embed.js"
MODEL_FILES = ("model.onnx", "model.int8.onnx")
JSON_FILES = ("vocab.json", "normalize.json")
SPEC_FORMAT = "arlm-normalize"
RULES_FORMAT = "arlm-text-rules"


# --- character tables ------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _all_chars() -> str:
    """Every code point once, surrogates included (Python strings may hold them)."""
    return "".join(map(chr, range(sys.maxunicode + 1)))


def _ranges(codepoints) -> list[list[int]]:
    """Sorted code points → [[first, last], ...] runs (what the JavaScript bisects)."""
    out: list[list[int]] = []
    for c in sorted(set(codepoints)):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


@functools.lru_cache(maxsize=None)
def _matched(pattern: str) -> tuple:
    """The ranges of code points a one-character regex (or a `class+` run) matches, by
    the `regex` module itself: the very pattern Python applies."""
    return tuple(map(tuple, _ranges(ord(ch) for m in regex.finditer(pattern, _all_chars()) for ch in m.group(0))))


def _table(pattern) -> list[list[int]]:
    return [list(r) for r in _matched(pattern.pattern if hasattr(pattern, "pattern") else pattern)]


@functools.lru_cache(maxsize=1)
def _python_tables() -> dict:
    """Tables of Python's own Unicode database (unicodedata, str methods)."""
    space, assigned, nd, ps = [], [], [], []
    for c in range(sys.maxunicode + 1):
        ch = chr(c)
        cat = unicodedata.category(ch)
        if ch.isspace():
            space.append(c)
        if cat not in ("Cn", "Cs"):  # lone surrogates: nothing to normalize either
            assigned.append(c)
        if cat == "Nd":
            nd.append(c)
        if cat[0] in "PS":
            ps.append(c)
    return {"space": _ranges(space), "assigned": _ranges(assigned), "nd": _ranges(nd), "ps": _ranges(ps)}


@functools.lru_cache(maxsize=1)
def _lower_table() -> dict[str, str]:
    """str.lower of every Latin character it changes (the `latin="lower"` step)."""
    out = {}
    for lo, hi in _matched(_LATIN.pattern):
        for c in range(lo, hi + 1):
            if chr(c).lower() != chr(c):
                out[str(c)] = chr(c).lower()
    return out


def normalize_spec(cfg: NormalizeConfig | None = None) -> dict:
    """Everything normalize.js needs to compute `arlm.normalize.normalize(text, cfg)`
    exactly: the config, the per-character map (code point → code point, or -1 to delete,
    from the same lookup table Python uses), the two ligatures expanded before NFKC, and
    the character sets of the other steps (ranges of code points, computed from Python's
    own regexes and whitespace), plus the code points Python's Unicode database knows
    (`assigned`: the Unicode normalization leaves the others alone, as Python does).
    Plain JSON (what arlm/export.py writes as normalize.json)."""
    cfg = cfg or DEFAULT
    lut = _lookup_table(cfg)
    changed = [[int(c), -1 if int(lut[c]) == _DELETE else int(lut[c])] for c in range(len(lut)) if int(lut[c]) != c]
    tables = _python_tables()
    return {
        "format": SPEC_FORMAT, "version": 1,
        "config": cfg.to_dict(),
        "unicode_version": unicodedata.unidata_version,
        "map": changed,
        "ligatures": [list(kv) for kv in sorted(_LIGATURES.items())],
        "invisible": _table(_INVISIBLE),
        "latin": _table(_LATIN),
        "lower": _lower_table(),
        "emoji": _table(_EMOJI),
        "punctuation": _table(_PUNCT),
        "space": tables["space"],
        "assigned": tables["assigned"],
    }


@functools.lru_cache(maxsize=1)
def _rules_cached() -> str:
    from camel_tools.tokenizers.word import _DIGITS_RE, _SYMBOLS_ALL

    from arlm.tokenizer import split_characters

    tables = _python_tables()
    rules = {
        "format": RULES_FORMAT, "version": 1,
        "unicode_version": unicodedata.unidata_version,
        # camel-tools' simple_word_tokenize: whitespace split, then at each position its
        # symbol regex (the classes below, by the regex module) and, with split_digits, \d+
        "space": tables["space"],
        "ri": _table(r"\p{RI}"), "emoji": _table(r"\p{Emoji}"), "emod": _table(r"\p{EMod}"),
        "symbol_class": _table(r"[\p{S}\p{P}]"),
        "digit": _table(_DIGITS_RE.pattern.replace("+", "")),
        # what a match must be to split off: one of camel-tools' symbols (a set of strings)
        "symbols": _ranges(ord(s) for s in _SYMBOLS_ALL if len(s) == 1),
        "symbol_strings": sorted(s for s in _SYMBOLS_ALL if len(s) > 1),
        # arlm/complete.py: where the word being typed begins, and which tokens are words
        "split_chars": _ranges(map(ord, split_characters(split_digits=False))),
        "nd": tables["nd"],
        "ps": tables["ps"],
    }
    return json.dumps(rules, ensure_ascii=True, separators=(",", ":"))


def text_rules() -> dict:
    """The tokenizer's and the completion's tables (the same for every model): see
    tokenize.js and complete.js. Plain JSON."""
    return json.loads(_rules_cached())


# --- building the folder ------------------------------------------------------------------


def ort_web_dir() -> Path:
    """onnxruntime-web's dist/ folder: $ARLM_ORT_WEB when set, else node_modules/onnxruntime-web/dist
    of this checkout (`bash scripts/setup.sh --dev`, or `npm install` at the repository root)."""
    env = os.environ.get(ORT_ENV)
    candidates = [Path(env)] if env else [Path(__file__).resolve().parents[2] / "node_modules" / "onnxruntime-web" / "dist",
                                          Path.cwd() / "node_modules" / "onnxruntime-web" / "dist"]
    for d in candidates:
        if all((d / name).is_file() for name in ORT_FILES):
            return d
    where = f"${ORT_ENV}={env}" if env else "node_modules/onnxruntime-web/dist"
    raise ValueError(f"onnxruntime-web not found ({where} lacks {', '.join(ORT_FILES)}): run `bash scripts/setup.sh --dev` "
                     f"or `npm install onnxruntime-web` at the repository root, or set {ORT_ENV} to its dist folder")


def _script_json(data) -> str:
    """JSON safe inside a script file that is also safe to inline: no '<', '>', '&' or
    U+2028/U+2029 (all written as \\u escapes, read back unchanged)."""
    s = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _packed(data: bytes) -> str:
    return base64.b64encode(gzip.compress(data, compresslevel=6, mtime=0)).decode("ascii")


@functools.lru_cache(maxsize=4)
def _packed_file(path: Path, size: int, mtime_ns: int) -> str:
    """onnxruntime's WebAssembly packed once per process (it is the same file every time)."""
    return _packed(path.read_bytes())


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_web(out_dir: str | os.PathLike, quantized: bool = True) -> None:
    """Put the page into `out_dir`, beside the exported model: index.html, its scripts and
    style, onnxruntime-web's files, arlm-rules.js (the text tables and which model to load:
    model.int8.onnx when `quantized` and it is there, else model.onnx) and arlm-embed.js
    (the model, the json files and the WebAssembly in one script, for file://).

    Call it after the model, vocab.json and normalize.json are written: arlm-embed.js
    holds copies of them. Raises ValueError when onnxruntime-web is not installed, or when
    vocab.json is a sentencepiece model's (the page tokenizes words only)."""
    out = Path(out_dir)
    vocab = out / "vocab.json"
    if vocab.is_file():
        kind = json.loads(vocab.read_text(encoding="utf-8")).get("kind", "word")
        if kind != "word":
            raise ValueError(f"the web page completes words of a word model; this model's tokenizer is {kind} "
                             f"(export it with --format onnx instead)")
    ort = ort_web_dir()
    out.mkdir(parents=True, exist_ok=True)
    package = resources.files("arlm.webpage")
    for name in PAGE_FILES:
        _write(out / name, package.joinpath(name).read_text(encoding="utf-8"))
    for name in SHARED_FILES:
        _write(out / name, resources.files("arlm.report").joinpath(name).read_text(encoding="utf-8"))
    for name in ORT_FILES:
        shutil.copyfile(ort / name, out / name)
    model = next((m for m in (("model.int8.onnx", "model.onnx") if quantized else ("model.onnx",)) if (out / m).is_file()),
                 "model.onnx")
    from arlm.gates import EXPLAIN, GATES, LABELS, MEANINGS, SIGMOID_GATES

    build = {"model": model, "gates": {"names": list(GATES), "labels": LABELS, "meanings": MEANINGS,
                                       "explain": EXPLAIN, "sigmoid": list(SIGMOID_GATES)}}
    _write(out / RULES_FILE, "// arlm: the tokenizer's tables and the model to load (arlm.webpage.build_web)\n"
                             "window.ARLM_BUILD = " + _script_json(build) + ";\n"
                             "window.ARLM_RULES = " + _rules_cached() + ";\n")
    embed = {"files": {}, "packed": {}}
    for name in JSON_FILES:
        if (out / name).is_file():
            embed["files"][name] = json.loads((out / name).read_text(encoding="utf-8"))
    if (out / model).is_file():
        embed["packed"][model] = _packed((out / model).read_bytes())
    wasm = (ort / "ort-wasm-simd-threaded.wasm").resolve()
    embed["packed"]["ort-wasm-simd-threaded.wasm"] = _packed_file(wasm, wasm.stat().st_size, wasm.stat().st_mtime_ns)
    embed["ort_glue"] = (ort / "ort-wasm-simd-threaded.mjs").read_text(encoding="utf-8")
    _write(out / EMBED_FILE, "// arlm: everything the page would fetch, for file:// (arlm.webpage.build_web)\n"
                             "window.ARLM_EMBED = " + _script_json(embed) + ";\n")


__all__ = ["build_web", "normalize_spec", "text_rules", "ort_web_dir"]
