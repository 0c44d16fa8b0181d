"""Showing the gates: terminal views, data files, pictures, an HTML page, and `arlm-inspect`.

    GateRecord (arlm.gates.record) ──▶ terminal: the seed's per-step printout + a summary table
                                   ──▶ JSON / CSV (long) / NPZ      for your own analysis
                                   ──▶ PNG heatmaps and unit plots  (Arabic shaped, right to left)
                                   ──▶ one self-contained HTML page (no network)
    CorpusStats (arlm.gates.corpus_stats) ──▶ saturation table + scatter, unit-search ranking

    arlm-inspect --checkpoint runs/hadith "قال رسول الله صلى الله عليه وسلم"
    arlm-inspect --checkpoint runs/hadith --file sentences.txt --html gates.html --plot plots/
    arlm-inspect --checkpoint runs/hadith --stats --corpus hadith --max-tokens 20000

Everything here only reads a record; nothing here runs the model except `main`.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import sys
import unicodedata
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from arlm.gates import (
    EXPLAIN,
    GATES,
    HIGH,
    LABELS,
    LOW,
    MEANINGS,
    SIGMOID_GATES,
    CorpusStats,
    GateRecord,
    SentenceRecord,
    UnitScore,
)

SIGNED = ("c_tilde", "c", "h")  # gates that take negative values


# --- terminal ---------------------------------------------------------------------------


def visible(text: str) -> str:
    """Invisible format characters (RLM, ZWNJ, …) spelled out as ⟨U+200F⟩: two vocabulary
    entries that differ only by one would otherwise look identical."""
    return "".join(f"⟨U+{ord(ch):04X}⟩" if unicodedata.category(ch) == "Cf" else ch for ch in text)


def _vector(v: np.ndarray) -> str:
    return "[" + " ".join(f"{x:5.2f}" for x in v) + "]"


def _guesses(guesses: list[tuple[str, float]]) -> str:
    return " · ".join(f"{visible(w)} {p:.2f}" for w, p in guesses)


def format_steps(s: SentenceRecord, units: int = 8, number: int = 1) -> str:
    """The seed's walk-through for one sentence: every token in reading order, every
    layer's gate vectors (the first `units` units; 0 for all) with what each one does."""
    H = s.layers[0]["f"].shape[1]
    n = H if units <= 0 else min(units, H)
    shown = f"all {H} units" if n == H else f"units 0–{n - 1} of {H}"
    lines = [f"sentence {number}: {s.text.strip()}  ({len(s)} tokens, {len(s.layers)} layer(s), {shown})"]
    for t, token in enumerate(s.tokens):
        lines.append(f"\n──── position {t + 1}: reading '{visible(token)}' (p = {s.token_probs[t]:.3f}) ────")
        for l, layer in enumerate(s.layers):
            if len(s.layers) > 1:
                lines.append(f" layer {l + 1}")
            for g in GATES:
                lines.append(f"  {_pad(LABELS[g], 9)}: {_vector(layer[g][t, :n])}  {MEANINGS[g]}: {EXPLAIN[g]}")
        lines.append(f"  next word : {_guesses(s.top[t])}")
    return "\n".join(lines)


def _pad(text: str, width: int) -> str:
    """Left-align by what a terminal shows: combining marks (the tilde of c̃) take no column."""
    shown = sum(not unicodedata.combining(ch) for ch in text)
    return text + " " * max(0, width - shown)


def format_summary(s: SentenceRecord, number: int = 1) -> str:
    """A compact table: per token and layer, the mean of each gate over its units and, for
    the sigmoid gates, the share of units saturated (< 0.1 or > 0.9); then the guesses."""
    W = 12
    head = "".join(_pad(f"{'c̃' if g == 'c_tilde' else g} {MEANINGS[g]}", W) for g in GATES)
    lines = [f"sentence {number}: {s.text.strip()}",
             "  per layer, the mean over units; for f, i, o also the share of units saturated (< 0.1 or > 0.9)",
             f"  {'pos':>3} {'token':<14} {'p(token)':>8} │ layer  {head.rstrip()}"]
    for t, token in enumerate(s.tokens):
        for l, layer in enumerate(s.layers):
            cells = ""
            for g in GATES:
                v = layer[g][t]
                sat = f" {np.mean((v < LOW) | (v > HIGH)):4.0%}" if g in SIGMOID_GATES else ""
                cells += _pad(f"{v.mean():.2f}{sat}" if g in SIGMOID_GATES else f"{v.mean():+.2f}", W)
            left = f"  {t + 1:>3} {_pad(visible(token), 14)} {s.token_probs[t]:>8.3f}" if l == 0 else " " * 29
            lines.append(f"{left} │ {l + 1:>5}  {cells.rstrip()}")
        lines.append(f"{'':<29} │ next: {_guesses(s.top[t])}")
    return "\n".join(lines)


def format_saturation(stats: CorpusStats) -> str:
    L, _, H = stats.left.shape
    lines = [f"saturation over {stats.steps:,} steps (share of steps a gate is < {LOW} or > {HIGH}; Karpathy et al. 2015)",
             f"  {'layer':>5}  {'gate':<9} {'mean left':>9} {'mean right':>10}  {'mostly shut':>11}  {'mostly open':>11}  {'rarely saturated':>16}"]
    for l in range(L):
        for j, g in enumerate(SIGMOID_GATES):
            left, right = stats.left[l, j], stats.right[l, j]
            lines.append(f"  {l + 1:>5}  {LABELS[g]:<9} {left.mean():>9.3f} {right.mean():>10.3f}  "
                         f"{f'{int((left > 0.5).sum())}/{H}':>11}  {f'{int((right > 0.5).sum())}/{H}':>11}  "
                         f"{f'{int((left + right < 0.1).sum())}/{H}':>16}")
    lines.append("  mostly shut/open: the unit is saturated on more than half the steps; rarely: on under a tenth")
    return "\n".join(lines)


def format_search(results: dict[str, list[UnitScore]], stats: CorpusStats) -> str:
    """The unit-search ranking as a table (special tokens such as <eos> are not scored)."""
    tokens = int((stats.ids > 3).sum())
    lines = [f"unit search over {tokens:,} tokens: the units whose value best separates each property",
             "  score r: rank correlation with the property (2·AUC − 1 for yes/no properties, Spearman ρ for position);"
             " ranked by |r|",
             f"  {'property':<22} {'tokens':>7}  {'layer':>5} {'gate':<8} {'unit':>5}  {'r':>6}  {'AUC':>6}  {'mean yes':>8}  {'mean no':>8}"]
    for name, scores in results.items():
        if not scores:
            lines.append(f"  {name:<22} {'':>7}  (skipped: no token here has it, or every token does)")
        for s in scores:
            auc = f"{s.auc:6.3f}" if s.auc is not None else f"{'':>6}"
            yes = f"{s.mean_yes:+8.3f}" if s.mean_yes is not None else f"{'':>8}"
            no = f"{s.mean_no:+8.3f}" if s.mean_no is not None else f"{'':>8}"
            lines.append(f"  {name:<22} {s.count:>7,}  {s.layer:>5} {s.gate:<8} {s.unit:>5}  {s.r:+6.3f}  {auc}  {yes}  {no}")
    return "\n".join(lines)


# --- data files -------------------------------------------------------------------------


def _output(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_json(rec: GateRecord, path: str | Path) -> Path:
    """Everything in the record; `read_json` loads it back."""
    path = _output(path)
    path.write_text(json.dumps(rec.to_dict(), ensure_ascii=False), encoding="utf-8")
    return path


def read_json(path: str | Path) -> GateRecord:
    return GateRecord.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


CSV_COLUMNS = ("sentence", "position", "token", "layer", "gate", "unit", "value")


def write_csv(rec: GateRecord, path: str | Path) -> Path:
    """Long format, one value a row: sentence, position, token, layer, gate, unit, value
    (sentences, positions and layers from 1; units from 0)."""
    path = _output(path)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for n, s in enumerate(rec.sentences, 1):
            for t, token in enumerate(s.tokens):
                for l, layer in enumerate(s.layers, 1):
                    for g in GATES:
                        w.writerows((n, t + 1, token, l, g, u, f"{x:.6g}") for u, x in enumerate(layer[g][t].tolist()))
    return path


def write_npz(rec: GateRecord, path: str | Path) -> Path:
    """Padded arrays, loadable with np.load(path) (no pickle):
    f, i, c_tilde, o, c, h: (sentences, layers, max_tokens, units), NaN after each sentence;
    lengths (sentences,); tokens (sentences, max_tokens) strings, '' padded; ids, -1 padded;
    top_words / top_probs (sentences, max_tokens, k); token_probs; sentences (the texts)."""
    S, L, H, k = len(rec.sentences), rec.num_layers, rec.hidden_size, rec.top_k
    T = max(len(s) for s in rec.sentences)
    arrays = {g: np.full((S, L, T, H), np.nan, dtype=np.float32) for g in GATES}
    tokens = np.full((S, T), "", dtype=object)
    ids = np.full((S, T), -1, dtype=np.int64)
    top_words = np.full((S, T, k), "", dtype=object)
    top_probs = np.full((S, T, k), np.nan, dtype=np.float32)
    token_probs = np.full((S, T), np.nan, dtype=np.float32)
    for n, s in enumerate(rec.sentences):
        m = len(s)
        for l, layer in enumerate(s.layers):
            for g in GATES:
                arrays[g][n, l, :m] = layer[g]
        tokens[n, :m] = s.tokens
        ids[n, :m] = s.ids
        token_probs[n, :m] = s.token_probs
        for t, guesses in enumerate(s.top):
            for j, (w, p) in enumerate(guesses):
                top_words[n, t, j], top_probs[n, t, j] = w, p
    path = _output(path)
    with open(path, "wb") as f:  # a file object, so numpy does not append ".npz" to the name
        np.savez_compressed(
            f, **arrays, lengths=np.array([len(s) for s in rec.sentences]), tokens=tokens.astype(str),
            ids=ids, top_words=top_words.astype(str), top_probs=top_probs, token_probs=token_probs,
            sentences=np.array([s.text for s in rec.sentences], dtype=str),
        )
    return path


# --- pictures ---------------------------------------------------------------------------


@lru_cache(maxsize=None)
def arabic_font() -> str | None:
    """The family name of an installed font with Arabic glyphs, or None (with a warning)."""
    from matplotlib import font_manager

    names = sorted({f.name for f in font_manager.fontManager.ttflist if "arabic" in f.name.lower()})
    for preferred in ("Noto Sans Arabic", "Noto Naskh Arabic", "Noto Kufi Arabic"):
        if preferred in names:
            return preferred
    if names:
        return names[0]
    warnings.warn("no font with Arabic glyphs found; Arabic labels will show as boxes "
                  "(install one, e.g. apt-get install fonts-noto-core)", stacklevel=2)
    return None


@lru_cache(maxsize=None)
def _matplotlib_shapes_text() -> bool:
    # A matplotlib that lays text out with libraqm (3.11 does) joins Arabic letters and
    # orders right-to-left runs itself; reshaping and reordering again would scramble words.
    import matplotlib.ft2font

    return hasattr(matplotlib.ft2font, "__libraqm_version__")


def display_text(text: str) -> str:
    """Text as matplotlib must be given it to draw Arabic joined and right to left."""
    if _matplotlib_shapes_text():
        return text
    import arabic_reshaper
    from bidi.algorithm import get_display

    return get_display(arabic_reshaper.reshape(text))


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo"):
        matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _rc() -> dict:
    font = arabic_font()
    # Arabic first, then DejaVu Sans for Latin letters, digits and symbols like c̃.
    return {"font.family": [font, "DejaVu Sans"] if font else ["DejaVu Sans"], "axes.unicode_minus": False}


def _scale(g: str, values: np.ndarray) -> tuple[str, float, float]:
    if g in SIGMOID_GATES:
        return "viridis", 0.0, 1.0
    if g == "c":  # unbounded: symmetric around 0 so white means "nothing stored"
        m = float(np.abs(values).max()) or 1.0
        return "RdBu_r", -m, m
    return "RdBu_r", -1.0, 1.0


def _token_axis(ax, tokens: list[str]) -> None:
    """Tokens along x, first token on the right (data must already be reversed)."""
    T = len(tokens)
    ax.set_xticks(range(T))
    ax.set_xticklabels([display_text(visible(t)) for t in reversed(tokens)], rotation=0 if T <= 10 else 60,
                       ha="center" if T <= 10 else "right", fontsize=11)


def plot_heatmaps(rec: GateRecord, directory: str | Path, gates: tuple[str, ...] = GATES) -> list[Path]:
    """One PNG per sentence, layer and gate: units (rows) × tokens (columns, read right to
    left like the sentence). Files: sentence{n}_layer{l}_{gate}.png."""
    plt = _pyplot()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    with plt.rc_context(_rc()):
        for n, s in enumerate(rec.sentences, 1):
            T = len(s)
            for l, layer in enumerate(s.layers, 1):
                for g in gates:
                    values = layer[g]                                   # (T, H)
                    H = values.shape[1]
                    cmap, lo, hi = _scale(g, values)
                    fig, ax = plt.subplots(figsize=(min(30.0, 2.5 + 0.7 * T), min(12.0, 2.2 + 0.16 * H)))
                    im = ax.imshow(values.T[:, ::-1], aspect="auto", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
                    _token_axis(ax, s.tokens)
                    ax.set_ylabel("unit")
                    ax.yaxis.get_major_locator().set_params(integer=True)
                    ax.set_title(f"{LABELS[g]} ({MEANINGS[g]}) · layer {l} · sentence {n}\n"
                                 + display_text(_clip(s.text)), fontsize=11)
                    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
                    fig.tight_layout()
                    path = directory / f"sentence{n}_layer{l}_{g}.png"
                    fig.savefig(path, dpi=100)
                    plt.close(fig)
                    written.append(path)
    return written


def plot_units(rec: GateRecord, units: list[int], directory: str | Path) -> list[Path]:
    """Line plots of chosen units across each sentence (first token on the right): one
    PNG per sentence and layer, one panel per gate. Files: sentence{n}_layer{l}_units.png."""
    bad = [u for u in units if not 0 <= u < rec.hidden_size]
    if bad:
        raise ValueError(f"unit(s) {', '.join(map(str, bad))} out of range; units are 0..{rec.hidden_size - 1}")
    plt = _pyplot()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    with plt.rc_context(_rc()):
        for n, s in enumerate(rec.sentences, 1):
            T = len(s)
            x = np.arange(T)[::-1]  # token t drawn at T-1-t: reading right to left
            for l, layer in enumerate(s.layers, 1):
                fig, axes = plt.subplots(len(GATES), 1, sharex=True, figsize=(min(30.0, 3 + 0.7 * T), 2 * len(GATES)))
                for ax, g in zip(axes, GATES):
                    for u in units:
                        ax.plot(x, layer[g][:, u], marker="o", label=f"unit {u}")
                    ax.set_ylim(*((-0.05, 1.05) if g in SIGMOID_GATES else (None, None)))
                    ax.axhline(0, color="#999", lw=0.5)
                    ax.set_ylabel(f"{LABELS[g]}\n{MEANINGS[g]}")
                    ax.grid(alpha=0.3)
                axes[0].legend(loc="best", fontsize=8, ncol=min(len(units), 4))
                axes[0].set_title(f"units {', '.join(map(str, units))} · layer {l} · sentence {n}\n"
                                  + display_text(_clip(s.text)), fontsize=11)
                _token_axis(axes[-1], s.tokens)
                fig.tight_layout()
                path = directory / f"sentence{n}_layer{l}_units.png"
                fig.savefig(path, dpi=100)
                plt.close(fig)
                written.append(path)
    return written


def plot_saturation(stats: CorpusStats, path: str | Path) -> Path:
    """Karpathy et al.'s scatter: one point per unit, right- vs left-saturated fraction,
    a panel per sigmoid gate, a colour per layer."""
    plt = _pyplot()
    L = stats.left.shape[0]
    with plt.rc_context(_rc()):
        fig, axes = plt.subplots(1, len(SIGMOID_GATES), figsize=(4.2 * len(SIGMOID_GATES), 4.4), sharey=True)
        for j, (ax, g) in enumerate(zip(axes, SIGMOID_GATES)):
            ax.plot([0, 1], [1, 0], color="#bbb", lw=0.8, ls="--")  # left + right = 1: always saturated
            for l in range(L):
                ax.scatter(stats.left[l, j], stats.right[l, j], s=10, alpha=0.6, label=f"layer {l + 1}")
            ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel=f"fraction left-saturated (< {LOW})",
                   title=f"{LABELS[g]} ({MEANINGS[g]})")
            ax.set_aspect("equal")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(f"fraction right-saturated (> {HIGH})")
        axes[-1].legend(loc="upper right", fontsize=8)
        fig.suptitle(f"gate saturation over {stats.steps:,} steps, one point per unit")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
    return path


def _clip(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


# --- HTML -------------------------------------------------------------------------------


def _script_json(data) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' can end the element or open a comment."""
    s = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
             .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def html_report(rec: GateRecord, title: str = "arlm: watching the gates", subtitle: str = "") -> str:
    """One self-contained page (inline CSS and JS, data embedded, no network): the sentence
    right to left, each token coloured by the chosen gate / unit / layer; hover or click a
    token for its values and the model's next-word guesses. All input text is escaped."""
    data = {
        "gates": list(GATES), "labels": LABELS, "meanings": MEANINGS, "explain": EXPLAIN,
        "sigmoid": list(SIGMOID_GATES), "num_layers": rec.num_layers, "hidden_size": rec.hidden_size,
        "sentences": [
            {"text": s.text, "tokens": s.tokens, "token_probs": [round(p, 4) for p in s.token_probs],
             "top": [[[w, round(p, 4)] for w, p in guesses] for guesses in s.top],
             "layers": [{g: np.round(layer[g].astype(np.float64), 4).tolist() for g in GATES} for layer in s.layers]}
            for s in rec.sentences
        ],
    }
    return (_HTML.replace("__TITLE__", html.escape(title))
                 .replace("__SUBTITLE__", html.escape(subtitle))
                 .replace("__DATA__", _script_json(data)))


def write_html(rec: GateRecord, path: str | Path, title: str = "arlm: watching the gates", subtitle: str = "") -> Path:
    path = _output(path)
    path.write_text(html_report(rec, title, subtitle), encoding="utf-8")
    return path


_HTML = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  body { font-family: system-ui, "DejaVu Sans", sans-serif; margin: 1.5rem auto; max-width: 70rem; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.3rem; margin-bottom: .2rem; }
  .sub { color: #666; margin-top: 0; }
  .controls { display: flex; flex-wrap: wrap; gap: .4rem 1.2rem; margin: 1rem 0; }
  .controls select { font-size: 1rem; }
  .arabic { font-family: "Noto Naskh Arabic", "Noto Sans Arabic", "Amiri", "Scheherazade New", "Arial", serif; }
  .source { color: #555; font-size: 1.1rem; }
  #tokens { font-size: 2rem; line-height: 2.6; margin: .5rem 0 1rem; }
  .tok { padding: .08em .3em; margin: 0 .08em; border-radius: .3em; cursor: pointer; border: 1px solid #ccc; }
  .tok.active { outline: 3px solid #f39c12; }
  .legend { display: flex; align-items: center; gap: .5rem; font-size: .9rem; color: #444; }
  .legend .bar { width: 14rem; height: .8rem; border: 1px solid #aaa; }
  #tip { position: fixed; display: none; background: #fff; border: 1px solid #999; border-radius: .3rem;
         box-shadow: 0 2px 8px rgba(0,0,0,.2); padding: .5rem .7rem; font-size: .85rem; pointer-events: none; z-index: 10; max-width: 24rem; }
  table.vals { border-collapse: collapse; margin: .3rem 0; }
  table.vals td, table.vals th { padding: .1rem .5rem; text-align: left; font-variant-numeric: tabular-nums; }
  table.vals tr.sel { background: #fdebd0; }
  .guesses { margin: .3rem 0 0; padding-inline-start: 1.2rem; }
  #detail { border-top: 1px solid #ddd; padding-top: .5rem; min-height: 8rem; }
  #units-wrap { margin-top: 1rem; }
  #units { border: 1px solid #ccc; cursor: crosshair; image-rendering: pixelated; max-width: 100%; }
  .note { color: #777; font-size: .85rem; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<p class="sub">__SUBTITLE__</p>
<div class="controls">
  <label>sentence <select id="sentence"></select></label>
  <label>layer <select id="layer"></select></label>
  <label>gate <select id="gate"></select></label>
  <label>unit <select id="unit"></select></label>
</div>
<p class="source arabic" dir="rtl" lang="ar" id="source"></p>
<div id="tokens" class="arabic" dir="rtl" lang="ar"></div>
<div class="legend"><span id="legend-lo"></span><span class="bar" id="legend-bar"></span><span id="legend-hi"></span><span id="legend-label"></span></div>
<div id="detail"><p class="note">Hover over or click a word to see every gate for it and the model's next-word guesses.</p></div>
<div id="units-wrap">
  <div class="note">All units of this gate and layer: one row per token (reading order, top to bottom), one column per unit. Click a cell to pick that unit.</div>
  <canvas id="units"></canvas>
</div>
<div id="tip" role="tooltip"></div>
<script type="application/json" id="gate-data">__DATA__</script>
<script>
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
</script>
</body>
</html>
"""


# --- the command line -------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="arlm-inspect",
        description="Watch an arlm model's LSTM gates: what every unit keeps, writes, proposes and exposes "
                    "at every word, and statistics over a corpus.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  arlm-inspect --checkpoint runs/hadith \"قال رسول الله صلى الله عليه وسلم\"\n"
               "  arlm-inspect --checkpoint runs/hadith --file sentences.txt --summary --html gates.html\n"
               "  arlm-inspect --checkpoint runs/hadith \"...\" --plot plots/ --units-plot 3,17\n"
               "  arlm-inspect --checkpoint runs/hadith --stats --corpus hadith --max-tokens 20000 --plot plots/\n"
               "layers and positions count from 1, units from 0.")
    p.add_argument("sentence", nargs="?", help="the sentence to read (or use --file)")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a model directory or a training run directory")
    p.add_argument("--file", metavar="FILE", help="read one sentence per line (blank lines skipped)")
    p.add_argument("--units", type=int, default=8, metavar="N", help="units shown per gate in the step view (0: all; default 8)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="next-word guesses kept per position (default 5)")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--summary", action="store_true", help="print only the compact summary table")
    view.add_argument("--quiet", action="store_true", help="no step view or summary (files written and --stats still print)")
    p.add_argument("--json", metavar="FILE", help="write everything recorded as JSON")
    p.add_argument("--stats-json", metavar="FILE",
                   help="with --stats: write the saturation fractions (per layer, gate and unit) and the unit "
                        "search ranking as JSON")
    p.add_argument("--csv", metavar="FILE", help="write long-format CSV: sentence, position, token, layer, gate, unit, value")
    p.add_argument("--npz", metavar="FILE", help="write padded NumPy arrays (sentences, layers, tokens, units)")
    p.add_argument("--plot", metavar="DIR", help="write PNG heatmaps (and the saturation scatter with --stats)")
    p.add_argument("--units-plot", metavar="U,V,...", help="with --plot: line plots of these units across each sentence")
    p.add_argument("--html", metavar="FILE", help="write one self-contained interactive HTML page")
    p.add_argument("--stats", action="store_true", help="saturation and unit search over a corpus")
    p.add_argument("--corpus", metavar="NAME|FILE",
                   help="for --stats: a corpus card (its valid split) or a text file, one sentence per line "
                        "(default: the corpus the checkpoint was trained on)")
    p.add_argument("--max-tokens", type=int, default=20_000, metavar="N", help="for --stats: tokens read (default 20000)")
    p.add_argument("--regex", metavar="PATTERN", help="for --stats: also search for units that mark tokens matching PATTERN")
    p.add_argument("--search-gates", default="c,h", metavar="G,...",
                   help=f"for --stats: gates searched for property units (from {','.join(GATES)}; default c,h)")
    p.add_argument("--top", type=int, default=5, metavar="N", help="for --stats: units listed per property (default 5)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return p


def _sentences(args) -> list[str]:
    if args.sentence is not None and args.file:
        raise ValueError("give a sentence or --file, not both")
    if args.file:
        lines = [line.strip() for line in Path(args.file).read_text(encoding="utf-8").splitlines()]
        sentences = [line for line in lines if line]
        if not sentences:
            raise ValueError(f"{args.file}: no sentences (the file is empty or blank)")
        return sentences
    if args.sentence is not None:
        if not args.sentence.strip():
            raise ValueError("the sentence is empty; give some Arabic text to read")
        return [args.sentence]
    return []


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what} takes comma-separated unit numbers like 3,17, got {text!r}") from None
    if not values:
        raise ValueError(f"{what} needs at least one unit number")
    return values


def _run(args) -> int:
    from arlm import checkpoint, gates

    # Everything that can be checked without the model is checked before loading it.
    sentences = _sentences(args)
    if not sentences and not args.stats:
        raise ValueError("nothing to inspect: give a sentence, --file FILE, or --stats")
    if (args.corpus or args.regex) and not args.stats:
        raise ValueError("--corpus and --regex are for --stats")
    if args.units_plot and not args.plot:
        raise ValueError("--units-plot needs --plot DIR to write the pictures to")
    units_plot = _int_list(args.units_plot, "--units-plot") if args.units_plot else []
    if args.top_k < 1 or args.top < 1:
        raise ValueError("--top-k and --top must be at least 1")
    search_gates = tuple(g.strip() for g in args.search_gates.split(",") if g.strip())
    bad = [g for g in search_gates if g not in GATES]
    if bad or not search_gates:
        raise ValueError(f"--search-gates: unknown gate(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(GATES)}")
    if args.regex:
        gates.token_properties([], [], args.regex)  # a bad pattern fails here, not after the corpus run

    def wrote(path) -> None:
        print(f"wrote {path}", file=sys.stderr)

    model, tokenizer, config = checkpoint.load(args.checkpoint, args.device)
    H = model.config.hidden_size
    if any(not 0 <= u < H for u in units_plot):
        raise ValueError(f"--units-plot {args.units_plot}: this model's units are 0..{H - 1}")
    subtitle = f"{Path(args.checkpoint)} · {model.config.num_layers} layer(s) × {model.config.hidden_size} units"

    if sentences:
        rec = gates.record(model, tokenizer, sentences, top_k=args.top_k)
        if not args.quiet:
            for n, s in enumerate(rec.sentences, 1):
                if not args.summary:
                    print(format_steps(s, args.units, n))
                    print()
                print(format_summary(s, n))
                print()
        for flag, writer in ((args.json, write_json), (args.csv, write_csv), (args.npz, write_npz)):
            if flag:
                wrote(writer(rec, flag))
        if args.html:
            wrote(write_html(rec, args.html, subtitle=subtitle))
        if args.plot:
            paths = plot_heatmaps(rec, args.plot) + (plot_units(rec, units_plot, args.plot) if units_plot else [])
            print(f"wrote {len(paths)} PNG files to {args.plot}", file=sys.stderr)

    if args.stats:
        corpus = args.corpus or (config.get("run") or {}).get("corpus")
        if not isinstance(corpus, str) or not corpus:
            raise ValueError("--stats needs --corpus NAME|FILE (this checkpoint does not name its training corpus)")
        ids = gates.corpus_ids(corpus, tokenizer, args.max_tokens)
        stats = gates.corpus_stats(model, tokenizer, ids, search_gates)
        results = gates.search_units(stats, args.regex, args.top)
        print(format_saturation(stats))
        print()
        print(format_search(results, stats))
        if args.plot:
            wrote(plot_saturation(stats, Path(args.plot) / "saturation.png"))
        if args.stats_json:
            wrote(write_stats_json(stats, results, args.stats_json))
    return 0


def write_stats_json(stats: CorpusStats, results: dict[str, list[UnitScore]], path: str | Path) -> Path:
    """Saturation (left/right fractions per layer, sigmoid gate and unit) and the unit-search
    ranking per property, as plain JSON."""
    from dataclasses import asdict

    payload = {
        "steps": stats.steps,
        "thresholds": {"left": LOW, "right": HIGH},
        "saturation": {
            f"layer{l + 1}": {g: {"left": stats.left[l, k].tolist(), "right": stats.right[l, k].tolist()}
                              for k, g in enumerate(SIGMOID_GATES)}
            for l in range(stats.left.shape[0])
        },
        "unit_search": {prop: [asdict(u) for u in scores] for prop, scores in results.items()},
    }
    path = Path(path)
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """`arlm-inspect`: 0 on success; bad input is one `error: ...` line and exit status 2."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, OSError) as e:  # CheckpointError and CorpusError are ValueErrors
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
