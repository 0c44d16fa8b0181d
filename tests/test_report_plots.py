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


def _system_fonts_are(monkeypatch, folder, cache_dir):
    """matplotlib's view of the system: the fonts in `folder` only (as if it were the
    system's font folder), and its font-list cache in `cache_dir`."""
    import matplotlib
    from matplotlib import font_manager

    real = font_manager.findSystemFonts
    monkeypatch.setattr(font_manager, "findSystemFonts",
                        lambda fontpaths=None, fontext="ttf": real([str(folder)] if fontpaths is None else fontpaths, fontext))
    monkeypatch.setattr(matplotlib, "get_cachedir", lambda: str(cache_dir))


def test_missing_arabic_font_warns(monkeypatch, tmp_path):
    from matplotlib import font_manager

    monkeypatch.setattr(font_manager.fontManager, "ttflist",
                        [f for f in font_manager.fontManager.ttflist if "arabic" not in f.name.lower()])
    _system_fonts_are(monkeypatch, tmp_path, tmp_path)  # and none on the system either: the rescan finds nothing
    with pytest.warns(UserWarning, match="no font with Arabic glyphs"):
        assert report.arabic_font.__wrapped__() is None


def test_an_arabic_font_installed_after_the_font_cache_was_built_is_found(monkeypatch, tmp_path):
    import shutil
    import warnings
    from pathlib import Path

    from matplotlib import font_manager
    from matplotlib.font_manager import FontProperties

    installed = {f.name: f.fname for f in font_manager.fontManager.ttflist if "arabic" in f.name.lower()}
    assert installed, "no Arabic font on this machine to install (apt-get install -y fonts-noto-core)"
    name = "Noto Sans Arabic" if "Noto Sans Arabic" in installed else sorted(installed)[0]
    fonts, cache = tmp_path / "fonts", tmp_path / "cache"
    fonts.mkdir()
    cache.mkdir()
    _system_fonts_are(monkeypatch, fonts, cache)
    stale = font_manager.FontManager()  # the font list as built before the Arabic font was installed
    assert not any("arabic" in f.name.lower() for f in stale.ttflist)
    monkeypatch.setattr(font_manager, "fontManager", stale)
    copy = fonts / Path(installed[name]).name
    shutil.copy(installed[name], copy)  # now it is installed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no font with Arabic glyphs" warning
        assert plots.arabic_font.__wrapped__() == name
    assert stale.findfont(FontProperties(family=name), fallback_to_default=False) == str(copy)
    # ... and saved in matplotlib's cache, so the next process finds it without a rescan
    saved = font_manager.json_load(cache / f"fontlist-v{font_manager.FontManager.__version__}.json")
    assert name in {f.name for f in saved.ttflist}
