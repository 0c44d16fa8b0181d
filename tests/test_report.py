"""Tests for arlm.report and the scripts: exports load back with the right shapes and token
order, pictures are drawn (Arabic shaped), the HTML page escapes its input and works in a
real headless Chromium, `arlm-inspect` runs end to end on a checkpoint trained here, bad
input is one `error:` line and exit 2, and the seed's "hello" walk-through still learns."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from arlm import checkpoint, gates, report
from arlm.gates import GATES
from arlm.model import LanguageModel, ModelConfig
from arlm.tokenizer import TokenizerConfig, WordTokenizer, count_words
from conftest import GATE_TEXTS as TEXTS

SENTENCE = "قال رسول الله صلى الله عليه وسلم"
EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> قال'
CHROMIUM = "/usr/bin/chromium"
H, L = 8, 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny word model trained for a few steps and saved like a real run."""
    cfg = TokenizerConfig(min_freq=1)
    tok = WordTokenizer.from_counts(count_words(TEXTS, cfg), cfg)[0]
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=tok.vocab_size, emb_size=12, hidden_size=H, num_layers=L,
                                      softmax="full", tie_weights=False))
    stream = torch.tensor(sum(([tok.eos_id] + tok.encode(t) for t in TEXTS * 2), []))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(25):
        loss = model(stream[:-1].view(-1, 1), targets=stream[1:].view(-1, 1)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    directory = checkpoint.save(tmp_path_factory.mktemp("ckpt") / "model", model, tok, {"corpus": "tiny"})
    model.eval()
    return directory, model, tok


@pytest.fixture(scope="module")
def rec(trained):
    _, model, tok = trained
    return gates.record(model, tok, [TEXTS[0], SENTENCE, TEXTS[2]], top_k=3)


def run_cli(*args):
    """main() in-process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = report.main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


# --- terminal ----------------------------------------------------------------------------------


def test_step_view_reads_like_the_seed(rec):
    s = rec.sentences[1]
    text = report.format_steps(s, units=3)
    for meaning in ("keep", "write", "propose", "expose", "memory", "output", "next word"):
        assert meaning in text
    where = [text.index(f"position {t + 1}: reading '{tok}'") for t, tok in enumerate(s.tokens)]
    assert where == sorted(where)  # reading order
    line = next(l for l in text.splitlines() if l.strip().startswith("forget f"))
    assert line.count(".") == 3 and "units 0–2 of 8" in text
    assert f"{s.layers[0]['f'][0, 0]:5.2f}" in line
    assert "all 8 units" in report.format_steps(s, units=0)


def test_summary_table_has_means_saturation_and_guesses(rec):
    s = rec.sentences[1]
    text = report.format_summary(s)
    assert "f keep" in text and "h output" in text and text.count("next:") == len(s)
    o = s.layers[1]["o"][2]
    assert f"{o.mean():.2f} {np.mean((o < 0.1) | (o > 0.9)):4.0%}" in text
    assert s.top[2][0][0] in text.splitlines()[3 + 3 * 2 + 2]  # the third token's guesses line


def test_invisible_marks_are_spelled_out(rec):
    s = rec.sentences[1]
    twin = gates.SentenceRecord(s.text, s.tokens, s.ids, s.layers, [[("الله\u200f", 0.5)]] * len(s), s.token_probs)
    assert "الله⟨U+200F⟩ 0.50" in report.format_summary(twin) and "⟨U+200F⟩" in report.format_steps(twin)
    assert report.visible("قال") == "قال"


# --- data files ------------------------------------------------------------------------------


def test_json_round_trip(rec, tmp_path):
    back = report.read_json(report.write_json(rec, tmp_path / "g.json"))
    assert (back.num_layers, back.hidden_size, back.top_k) == (L, H, 3)
    for a, b in zip(rec.sentences, back.sentences):
        assert a.tokens == b.tokens and a.ids == b.ids and a.text == b.text
        assert [w for w, _ in a.top[1]] == [w for w, _ in b.top[1]]
        for la, lb in zip(a.layers, b.layers):
            for g in GATES:
                assert lb[g].shape == (len(a), H)
                np.testing.assert_allclose(la[g], lb[g], atol=1e-6)
    raw = json.loads((tmp_path / "g.json").read_text(encoding="utf-8"))
    assert raw["sentences"][1]["tokens"][0] == "قال"  # stored as text, not \u escapes
    with pytest.raises(ValueError, match="arlm-gates"):
        gates.GateRecord.from_dict({"format": "other"})


def test_csv_is_long_format_in_reading_order(rec, tmp_path):
    with open(report.write_csv(rec, tmp_path / "g.csv"), encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == report.CSV_COLUMNS
    assert len(rows) == sum(len(s) for s in rec.sentences) * L * len(GATES) * H
    s = rec.sentences[1]
    mine = [r for r in rows if r["sentence"] == "2"]
    tokens = [r["token"] for r in mine if r["layer"] == "1" and r["gate"] == "f" and r["unit"] == "0"]
    assert tokens == s.tokens
    cell = next(r for r in mine if (r["position"], r["layer"], r["gate"], r["unit"]) == ("3", "2", "c_tilde", "5"))
    assert cell["token"] == s.tokens[2]
    assert float(cell["value"]) == pytest.approx(s.layers[1]["c_tilde"][2, 5], abs=1e-5)


def test_npz_shapes_padding_and_order(rec, tmp_path):
    path = report.write_npz(rec, tmp_path / "g.data")  # any name: numpy must not add .npz
    assert path.name == "g.data"
    with np.load(path, allow_pickle=False) as z:
        T = max(len(s) for s in rec.sentences)
        assert z["lengths"].tolist() == [len(s) for s in rec.sentences]
        for g in GATES:
            assert z[g].shape == (3, L, T, H)
        s, n = rec.sentences[1], len(rec.sentences[1])
        assert z["tokens"][1, :n].tolist() == s.tokens and set(z["tokens"][1, n:]) == {""}
        np.testing.assert_array_equal(z["h"][1, 1, :n], s.layers[1]["h"])
        assert np.isnan(z["h"][1, :, n:]).all() and (z["ids"][1, n:] == -1).all()
        assert z["top_words"].shape == (3, T, 3) and z["top_words"][1, 0, 0] == s.top[0][0][0]
        np.testing.assert_allclose(z["token_probs"][1, :n], s.token_probs, rtol=1e-6)
        assert z["sentences"].tolist() == [x.text for x in rec.sentences]


# --- pictures --------------------------------------------------------------------------------


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
    monkeypatch.setattr(report, "_matplotlib_shapes_text", lambda: True)  # matplotlib with libraqm (3.11)
    assert report.display_text(word) == word
    monkeypatch.setattr(report, "_matplotlib_shapes_text", lambda: False)  # older: joined and reordered here
    shaped = report.display_text(word)
    assert shaped == get_display(arabic_reshaper.reshape(word)) and shaped != word
    assert shaped[-1] == "\ufed7"  # qaf in its initial (joined) form, drawn last: right to left


def test_missing_arabic_font_warns(monkeypatch):
    from matplotlib import font_manager

    monkeypatch.setattr(font_manager.fontManager, "ttflist",
                        [f for f in font_manager.fontManager.ttflist if "arabic" not in f.name.lower()])
    with pytest.warns(UserWarning, match="no font with Arabic glyphs"):
        assert report.arabic_font.__wrapped__() is None


# --- HTML ------------------------------------------------------------------------------------


def test_html_is_self_contained_and_escapes_input(trained):
    _, model, tok = trained
    page = report.html_report(gates.record(model, tok, [SENTENCE, EVIL]), title="<b>t</b> & co", subtitle="<i>s</i>")
    assert page.count("<script") == 2 and page.count("</script>") == 2  # only the page's own
    assert "<img" not in page and "onerror=\"window" not in page
    assert "&lt;b&gt;t&lt;/b&gt; &amp; co" in page and "&lt;i&gt;s&lt;/i&gt;" in page
    assert "http://" not in page and "https://" not in page and "src=" not in page.replace('src=x', '')
    assert 'dir="rtl"' in page
    data = page.split('id="gate-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(data)["sentences"][1]["text"] == EVIL


def test_html_in_headless_chromium(trained, tmp_path):
    """The page loads with no errors, controls recolour the tokens, hovering shows the values
    and guesses, and a sentence with <script> shows as text without running."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install playwright (its browser download is not needed)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium (the HTML report is tested in a real browser)")
    _, model, tok = trained
    path = report.write_html(gates.record(model, tok, [SENTENCE, EVIL]), tmp_path / "gates.html")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            problems, requests = [], []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("dialog", lambda d: (problems.append("dialog " + d.message), d.dismiss()))
            page.on("request", lambda r: requests.append(r.url) if not r.url.startswith("file:") else None)
            page.goto(path.as_uri())

            colours = lambda: page.eval_on_selector_all(".tok", "els => els.map(e => getComputedStyle(e).backgroundColor)")
            tokens = page.eval_on_selector_all(".tok", "els => els.map(e => e.textContent)")
            assert tokens == tok.tokenize(SENTENCE)
            assert page.eval_on_selector("#tokens", "e => getComputedStyle(e).direction") == "rtl"
            # right to left: the first word is drawn right of the second
            boxes = [page.locator(".tok").nth(k).bounding_box() for k in (0, 1)]
            assert boxes[0]["x"] > boxes[1]["x"]
            before = colours()
            page.select_option("#gate", "f")
            after_gate = colours()
            page.select_option("#unit", "3")
            after_unit = colours()
            page.select_option("#layer", "0")
            after_layer = colours()
            assert before != after_gate != after_unit != after_layer
            assert len(set(after_unit)) > 1  # the tokens differ, not one flat colour

            page.hover(".tok >> nth=2")
            tip = page.locator("#tip")
            assert tip.is_visible()
            text = tip.inner_text()
            assert "keep" in text and "expose" in text and "position 3 of" in text
            assert gates.record(model, tok, SENTENCE).sentences[0].top[2][0][0] in text
            page.screenshot(path=str(tmp_path / "gates.png"), full_page=True)

            page.select_option("#sentence", "1")
            assert page.inner_text("#source") == EVIL  # shown as text
            assert "<script>" in "".join(page.eval_on_selector_all(".tok", "els => els.map(e => e.textContent)"))
            assert page.evaluate("typeof window.__pwned") == "undefined"
            assert page.locator("img").count() == 0
            page.screenshot(path=str(tmp_path / "evil.png"))
            assert not problems and not requests
        finally:
            browser.close()
    assert (tmp_path / "gates.png").stat().st_size > 10_000


# --- the command line --------------------------------------------------------------------------


def test_cli_end_to_end(trained, tmp_path):
    directory, _, _ = trained
    status, out, err = run_cli("--checkpoint", directory, SENTENCE, "--units", 4, "--top-k", 2,
                               "--json", tmp_path / "g.json", "--csv", tmp_path / "g.csv", "--npz", tmp_path / "g.npz",
                               "--html", tmp_path / "new" / "g.html", "--plot", tmp_path / "plots", "--units-plot", "0,7")
    assert status == 0, err
    assert "reading 'قال'" in out and "expose" in out and "next:" in out
    for name in ("g.json", "g.csv", "g.npz", "new/g.html"):
        assert (tmp_path / name).stat().st_size > 0 and f"wrote {tmp_path / name}" in err
    assert len(list((tmp_path / "plots").glob("*.png"))) == L * len(GATES) + L
    assert report.read_json(tmp_path / "g.json").sentences[0].tokens == trained[2].tokenize(SENTENCE)


def test_cli_file_summary_and_stats(trained, tmp_path):
    directory, _, _ = trained
    (tmp_path / "in.txt").write_text(f"{TEXTS[0]}\n\n{TEXTS[3]}\n", encoding="utf-8")
    (tmp_path / "corpus.txt").write_text("\n".join(TEXTS * 4), encoding="utf-8")
    status, out, err = run_cli("--checkpoint", directory, "--file", tmp_path / "in.txt", "--summary", "--stats",
                               "--corpus", tmp_path / "corpus.txt", "--max-tokens", 120, "--regex", "^قال$",
                               "--search-gates", "c,h,o", "--plot", tmp_path / "plots", "--stats-json", tmp_path / "s.json")
    assert status == 0, err
    saved = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert saved["steps"] == 120 and set(saved["saturation"]) == {"layer1", "layer2"}
    left = saved["saturation"]["layer1"]["f"]["left"]
    assert len(left) == len(saved["saturation"]["layer1"]["f"]["right"]) == H
    assert all(0 <= v <= 1 for v in left)
    assert saved["unit_search"]["punctuation"][0]["layer"] in (1, 2)
    assert "sentence 2: ذهب" in out and "reading" not in out  # summary only
    assert "saturation over 120 steps" in out and "unit search over" in out
    for name in ("article ال", "punctuation", "digits", "position", "regex ^قال$"):
        assert name in out
    assert (tmp_path / "plots" / "saturation.png").is_file()


def test_cli_quiet_prints_nothing(trained, tmp_path):
    status, out, err = run_cli("--checkpoint", trained[0], SENTENCE, "--quiet", "--json", tmp_path / "q.json")
    assert status == 0 and out == "" and "wrote" in err


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{tmp}/nowhere", SENTENCE], "no such checkpoint"),
    (["--checkpoint", "{ckpt}", ""], "empty"),
    (["--checkpoint", "{ckpt}", "ً"], "no tokens"),
    (["--checkpoint", "{ckpt}"], "nothing to inspect"),
    (["--checkpoint", "{ckpt}", "--file", "{tmp}/missing.txt"], "missing.txt"),
    (["--checkpoint", "{ckpt}", "--file", "{tmp}/blank.txt"], "no sentences"),
    (["--checkpoint", "{ckpt}", SENTENCE, "--file", "{tmp}/blank.txt"], "not both"),
    (["--checkpoint", "{ckpt}", SENTENCE, "--plot", "{tmp}/p", "--units-plot", "a,b"], "comma-separated"),
    (["--checkpoint", "{ckpt}", SENTENCE, "--plot", "{tmp}/p", "--units-plot", "99"], "units are 0..7"),
    (["--checkpoint", "{ckpt}", SENTENCE, "--units-plot", "1"], "needs --plot"),
    (["--checkpoint", "{ckpt}", "--stats", "--corpus", "{tmp}/no-such-corpus"], "no-such-corpus"),
    (["--checkpoint", "{ckpt}", "--stats", "--corpus", "{tmp}/blank.txt", "--search-gates", "q"], "unknown gate"),
    (["--checkpoint", "{ckpt}", "--stats", "--corpus", "{tmp}/blank.txt"], "no text"),
    (["--checkpoint", "{ckpt}", "--stats", "--corpus", "{tmp}/blank.txt", "--max-tokens", "0"], "must be positive"),
    (["--checkpoint", "{bad}", SENTENCE], "damaged or not an arlm config"),
    (["--checkpoint", "{tmp}/nowhere", "--stats", "--regex", "("], "regular expression"),
    (["--checkpoint", "{ckpt}", SENTENCE, "--corpus", "hadith"], "are for --stats"),
])
def test_cli_bad_input_is_one_error_line_and_exit_2(trained, tmp_path, args, message):
    (tmp_path / "blank.txt").write_text("\n  \n")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{ not json")
    args = [a.format(tmp=tmp_path, ckpt=trained[0], bad=tmp_path / "bad") for a in args]
    status, out, err = run_cli(*args)
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_script_wrapper_runs_as_a_program(trained):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, str(ROOT / "scripts" / "inspect_gates.py"), "--checkpoint", str(trained[0]),
                         SENTENCE, "--summary"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "h output" in ok.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "inspect_gates.py"), "--checkpoint", str(trained[0]), " "],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")


# --- the seed's walk-through ---------------------------------------------------------------------


def load_hello():
    spec = importlib.util.spec_from_file_location("hello_lstm", ROOT / "scripts" / "hello_lstm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hello_lstm_learns_hello_and_prints_the_gates(capsys):
    hello = load_hello()
    logged = []
    model, losses = hello.train(log=logged.append)
    assert len(losses) == 200 and losses[-1] < 0.01
    assert logged[0].startswith("epoch   0 loss") and len(logged) == 10
    inputs, targets = hello.data()
    assert inputs.shape == (4, 1, 4) and targets.tolist() == [0, 2, 2, 3]
    with torch.no_grad():
        logits, trace = model(inputs)
    assert "".join(hello.CHARS[int(k)] for k in logits[:, 0].argmax(-1)) == "ello"
    assert trace.f.shape == (4, 1, 8)
    hello.step_by_hand()
    hello.show(model)
    out = capsys.readouterr().out
    assert "forget gate f : tensor([[" in out
    assert "timestep 3: reading 'l' → predicts 'o'" in out
    for meaning in ("KEEP", "WRITE", "proposed", "EXPOSE", "long-term memory", "predicted from"):
        assert meaning in out
