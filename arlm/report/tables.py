"""Gates as terminal text: the seed's per-step walk-through, a summary table per sentence,
and the corpus statistics (saturation, unit-search ranking) as tables."""

from __future__ import annotations

import unicodedata
import numpy as np

from arlm.gates import EXPLAIN, GATES, HIGH, LABELS, LOW, MEANINGS, SIGMOID_GATES, CorpusStats, SentenceRecord, UnitScore


def visible(text: str) -> str:
    """Invisible format characters (RLM, ZWNJ, …) spelled out as ⟨U+200F⟩: two vocabulary
    entries that differ only by one would otherwise look identical."""
    return "".join(f"⟨U+{ord(ch):04X}⟩" if unicodedata.category(ch) == "Cf" else ch for ch in text)


def _pad(text: str, width: int) -> str:
    """Left-align by what a terminal shows: combining marks (the tilde of c̃) take no column."""
    shown = sum(not unicodedata.combining(ch) for ch in text)
    return text + " " * max(0, width - shown)


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
    """Per layer and sigmoid gate: how often units are saturated shut or open (Karpathy et al.)."""
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
    """The unit-search ranking as a table. Special tokens such as <eos> are not scored, so
    not counted either: `stats.is_word` marks the steps search_units scored (by the
    tokenizer's special ids that corpus_stats recorded, never a literal id)."""
    tokens = int(stats.is_word.sum())
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
