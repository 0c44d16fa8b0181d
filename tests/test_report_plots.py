"""Tests for arlm/report/plots.py: the pictures are drawn (not blank), Arabic is shaped by
whoever does not (matplotlib with libraqm, or us), and a missing Arabic font warns."""

import numpy as np
import pytest

from arlm import gates, report
from arlm.gates import GATES
from arlm.report import plots
from conftest import GATE_TEXTS as TEXTS
from report_helpers import H, SENTENCE, trained  # noqa: F401  (fixtures)


def test_an_arabic_font_is_installed():
    assert report.arabic_font() is not None, "no Arabic font for the plots: apt-get install -y fonts-noto-core"


def test_heatmaps_and_unit_plots_are_drawn(trained, tmp_path):
    import matplotlib.image

    _, model, tok = trained
    one = gates.record(model, tok, SENTENCE)
    paths = report.plot_heatmaps(one, tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"sentence1_layer{l}_{g}.png" for l in (1, 2) for g in GATES)
    paths += report.plot_units(one, [1, 5], tmp_path)
    for p in paths:
        img = matplotlib.image.imread(p)
        assert p.stat().st_size > 10_000 and img.shape[0] > 200 and img.shape[1] > 300
        assert img[..., :3].std() > 0.05  # not blank
    with pytest.raises(ValueError, match="out of range"):
        report.plot_units(one, [H], tmp_path)


def test_saturation_scatter_is_drawn(trained, tmp_path):
    _, model, tok = trained
    ids = np.array(sum(([tok.eos_id] + tok.encode(t) for t in TEXTS), []))
    path = report.plot_saturation(gates.corpus_stats(model, tok, ids), tmp_path / "sat" / "saturation.png")
    assert path.stat().st_size > 10_000


def test_arabic_is_shaped_by_whoever_does_not(monkeypatch):
    import arabic_reshaper
    from bidi.algorithm import get_display

    word = "قال رسول"
    monkeypatch.setattr(plots, "_matplotlib_shapes_text", lambda: True)  # matplotlib with libraqm (3.11)
    assert report.display_text(word) == word
    monkeypatch.setattr(plots, "_matplotlib_shapes_text", lambda: False)  # older: joined and reordered here
    shaped = report.display_text(word)
    assert shaped == get_display(arabic_reshaper.reshape(word)) and shaped != word
    assert shaped[-1] == "\ufed7"  # qaf in its initial (joined) form, drawn last: right to left


def test_missing_arabic_font_warns(monkeypatch):
    from matplotlib import font_manager

    monkeypatch.setattr(font_manager.fontManager, "ttflist",
                        [f for f in font_manager.fontManager.ttflist if "arabic" not in f.name.lower()])
    with pytest.warns(UserWarning, match="no font with Arabic glyphs"):
        assert report.arabic_font.__wrapped__() is None
