"""Gates as pictures (matplotlib PNGs): per-gate heatmaps, line plots of chosen units, and
the saturation scatter, with Arabic drawn joined and right to left.

Arabic needs two things matplotlib does not do by itself everywhere: a font with Arabic
glyphs (`arabic_font`), and, in a matplotlib without libraqm, the letters joined and the
words reordered before drawing (`display_text`)."""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from arlm.gates import GATES, HIGH, LABELS, LOW, MEANINGS, SIGMOID_GATES, CorpusStats, GateRecord
from arlm.report.tables import visible


@lru_cache(maxsize=None)
def arabic_font() -> str | None:
    """The family name of an installed font with Arabic glyphs, or None (with a warning).

    matplotlib lists the fonts once and caches the list on disk, so a font installed after
    that list was made is not in it. When the list has no Arabic font, the system's fonts
    are looked at again once (`_rescan_fonts`) before giving up."""
    name = _pick_arabic(_font_names())
    if name is None and _rescan_fonts():
        name = _pick_arabic(_font_names())
    if name is None:
        warnings.warn("no font with Arabic glyphs found; Arabic labels will show as boxes "
                      "(install one, e.g. apt-get install fonts-noto-core)", stacklevel=2)
    return name


def _font_names() -> set[str]:
    from matplotlib import font_manager

    return {f.name for f in font_manager.fontManager.ttflist}


def _pick_arabic(names: set[str]) -> str | None:
    arabic = sorted(n for n in names if "arabic" in n.lower())
    for preferred in ("Noto Sans Arabic", "Noto Naskh Arabic", "Noto Kufi Arabic"):
        if preferred in arabic:
            return preferred
    return arabic[0] if arabic else None


def _rescan_fonts() -> bool:
    """Add to matplotlib's font list the system fonts it does not have (those installed
    since its cache was built), and save the list to its cache so later processes see them
    too. Whether any font was added."""
    import matplotlib
    from matplotlib import font_manager

    manager = font_manager.fontManager
    fontconfig = getattr(font_manager, "_get_fontconfig_fonts", None)  # fc-list's answer, cached per process
    if hasattr(fontconfig, "cache_clear"):
        fontconfig.cache_clear()
    known = {f.fname for f in manager.ttflist}
    added = 0
    for path in font_manager.findSystemFonts():
        if path not in known:
            try:
                manager.addfont(path)  # clears matplotlib's lookup cache too
                added += 1
            except Exception:  # a broken font file: matplotlib's own scan skips those too
                continue
    if added:
        try:
            cache = Path(matplotlib.get_cachedir(), f"fontlist-v{font_manager.FontManager.__version__}.json")
            font_manager.json_dump(manager, cache)
        except Exception:  # an unwritable cache: this process has the fonts all the same
            pass
    return bool(added)


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
