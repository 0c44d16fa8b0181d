"""Tests for arlm/webpage: the page's JavaScript prepares text exactly as arlm's Python does
(normalization, camel-tools' word tokenizer, the completion rules), run with node on the
default corpus's test split, on edge cases and on random text; and the page itself, in a
real headless Chromium from file:// with no network, suggests what `Predictor.complete`
suggests and shows the gates `arlm.gates.record` records, for a tiny trained model
exported to ONNX."""

import json
import random
import shutil
import subprocess
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arlm import webpage
from arlm.complete import Completer
from arlm.normalize import NormalizeConfig, normalize
from arlm.tokenizer import TokenizerConfig, WordTokenizer, count_words, word_tokenize
from test_normalize import CONFIGS, arabic_soup

CHROMIUM = "/usr/bin/chromium"
DRIVER = Path(__file__).with_name("webpage_driver.js")

# Each a known way for two implementations to differ.
EDGE = [
    "", " ", "\n\t ", "\x00", "a", "ا",
    # bidi controls and the other invisible marks (removed), and ALM U+061C (kept: not in the list)
    "\u200f\u200eقال\u202b رسول\u202c \u2066الله\u2069 \u202e\u2067", "\u061cقال\u061c", "\ufeffبسم\u2060",
    # ZWNJ / ZWJ inside words and emoji sequences
    "مي\u200cخواهم", "\u200dعلي\u200d", "👨\u200d👩\u200d👧\u200d👦 🏳️\u200d🌈 \u200d\u200d",
    # harakat, dagger alef, hamza marks, and deletions that expose a new composition (ا + ـ + ٓ)
    "مُحَمَّدٌ ٱلْحَمْدُ لِلَّهِ رَبِّ ٱلْعَٰلَمِينَ", "ا\u0640\u0653 و\u0654 ي\u0654 ا\u0655", "\u0651\u064e", "ٰ ٓ",
    # tatweel
    "جمــــيل ـــ ـ", "الله\u0640\u0651",
    # presentation forms and ligatures (NFKC), and the two camel-tools expands itself
    "ﻻ ﻷ ﻹ ﻵ ﷲ ﷺ ﷽ ﷼ ﺍﻟﺴﻼﻡ ﻋﻠﻴﻜﻢ", "﴾ﷺ﴿ ﷻ", "ﷺ،", "ＡＢＣ１２３ ﬁ ㎏ ½ ⑴",
    # Eastern-Arabic and Persian digits, separators
    "٢٠١٥م ۱۳۹۴ هـ ٣٫١٤ ١٬٠٠٠ 2015م ٤٥٪", "۰۱۲۳۴۵۶۷۸۹ ٠١٢٣٤٥٦٧٨٩ ᠑𝟙",
    # Latin, with case corner cases
    "Hello World ÀÉÎ İstanbul ß ǅ ẞ Ωmega ﬀ", "ABCxyz-Ünïcödé",
    # emoji: skin tones, flags, keycaps, tag sequences, variation selectors
    "😀👍🏽🇸🇦#️⃣1️⃣*️⃣🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f ❤️ ☺ ©️ 🇸 1\u20e3",
    "كلمة😀كلمة 👍🏽👍🏽 🇸🇦🇸",
    # punctuation runs, mixed scripts and digits glued to words
    "!!!؟؟..،،؛«»—… (قال):\"نعم\" ...---... a.b,c ؟!؟", "عنه، وقال: «نعم»؛ 12,5 3.14 ١٢ab٣",
    # Python's whitespace, which is not JavaScript's \s
    "\u00a0\u2003\u3000\n\t\x1c\x1d\x1e\x1f\x85 قال  \u2028 \u2029 \u180e \u200b",
    # code points Python 3.11's Unicode database does not know, but newer JavaScript does
    # (U+0897 is a combining mark there, U+1CCD6 has an NFKC decomposition, U+1FAE8 an emoji)
    "ب\u0897\u0651\u064e ب\u0651\u0897 \U0001ccd6\U0001ccd7 \U0001fae8 \u08c9",
]


@pytest.fixture(scope="module")
def js():
    """One node process running tests/webpage_driver.js, asked with JSON lines."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: apt-get install -y nodejs (the page's JavaScript is tested against Python with node)")
    proc = subprocess.Popen([node, str(DRIVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8")

    def ask(op: str, **request):
        proc.stdin.write(json.dumps({"op": op, **request}) + "\n")  # ASCII: lone surrogates travel escaped
        proc.stdin.flush()
        reply = json.loads(proc.stdout.readline())
        if "error" in reply:
            raise AssertionError("JavaScript: " + reply["error"])
        return reply.get("out")

    for n, cfg in enumerate(CONFIGS):
        ask("normalizer", name=str(n), spec=webpage.normalize_spec(cfg))
    ask("rules", rules=webpage.text_rules())
    yield ask
    proc.stdin.close()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def test_split():
    from arlm.corpus import documents, resolve

    return documents(resolve("hadith"))["test"][:300]


def _same(js_out, py_out, texts):
    bad = [(t, p, j) for t, p, j in zip(texts, py_out, js_out) if p != j]
    assert not bad, f"{len(bad)} of {len(texts)} differ; first: text={bad[0][0]!r} python={bad[0][1]!r} js={bad[0][2]!r}"


# --- normalization ------------------------------------------------------------------------


def test_spec_is_plain_json_with_the_config():
    cfg = NormalizeConfig(latin="lower", teh_marbuta=False)
    spec = webpage.normalize_spec(cfg)
    assert json.loads(json.dumps(spec)) == spec
    assert spec["config"] == cfg.to_dict() and spec["format"] == "arlm-normalize"
    assert [0x0629, 0x0647] not in spec["map"] and [0x0649, 0x064A] in spec["map"]  # teh marbuta kept, maksura folded
    assert [0x064E, -1] in spec["map"]                                                 # a haraka deleted


@pytest.mark.parametrize("n", range(len(CONFIGS)))
def test_normalize_js_equals_python_on_the_test_split_and_edge_cases(js, test_split, n):
    texts = test_split + EDGE
    _same(js("normalize", name=str(n), texts=texts), [normalize(t, CONFIGS[n]) for t in texts], texts)


@settings(max_examples=120, deadline=None)
@given(st.lists(st.one_of(st.text(), arabic_soup), min_size=1, max_size=12), st.integers(0, len(CONFIGS) - 1))
def test_normalize_js_equals_python_on_any_text(js, texts, n):
    _same(js("normalize", name=str(n), texts=texts), [normalize(t, CONFIGS[n]) for t in texts], texts)


def test_normalize_js_keeps_lone_surrogates_like_python(js):
    texts = ["\udc80\udcff ‏‎\u202e\u200d\u200c ́x ٌ", "قال\ud800", "\udfff\u0651"]
    _same(js("normalize", name="0", texts=texts), [normalize(t) for t in texts], texts)


# --- word tokenization --------------------------------------------------------------------

tokenizer_text = st.text(alphabet=st.sampled_from(list("ابت ثج،.؛؟!:\"'()[]«»-_/0123456789٣a#*😀👍🏽\u200d\u20e3\ufe0f🇸🇦 \n"))
                         | st.characters())


@pytest.mark.parametrize("split_digits", [True, False])
def test_tokenize_js_equals_python_on_the_test_split_and_edge_cases(js, test_split, split_digits):
    texts = [normalize(t) for t in test_split] + EDGE + [normalize(t) for t in EDGE]
    _same(js("tokenize", texts=texts, split_digits=split_digits), [word_tokenize(t, split_digits) for t in texts], texts)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(tokenizer_text, st.text()), min_size=1, max_size=12), st.booleans())
def test_tokenize_js_equals_python_on_any_text(js, texts, split_digits):
    _same(js("tokenize", texts=texts, split_digits=split_digits), [word_tokenize(t, split_digits) for t in texts], texts)


# --- the completion rules -----------------------------------------------------------------


def _vocab_json(tok) -> dict:
    """What the page reads from vocab.json (arlm/export.py writes more)."""
    return {"kind": "word", "split_digits": tok.config.split_digits, "tokens": list(tok.itos),
            "special": {"pad": tok.pad_id, "unk": tok.unk_id, "bos": tok.bos_id, "eos": tok.eos_id}}


@pytest.fixture(scope="module", params=[True, False], ids=["split-digits", "keep-digits"])
def completion(request, js, test_split):
    """A word vocabulary from the test split (punctuation and numbers in it), Python's
    Completer for it, and the page's completer loaded with the same vocabulary."""
    config = TokenizerConfig(min_freq=1, split_digits=request.param)
    tok, _ = WordTokenizer.from_counts(count_words(test_split + EDGE, config), config)
    js("completer", vocab=_vocab_json(tok), spec=webpage.normalize_spec(tok.config.normalize))
    return tok, Completer(types.SimpleNamespace(tokenizer=tok))


def _typed(texts, rng: random.Random, cuts: int = 3) -> list[str]:
    """Texts cut where a person might be typing: mid-word, after a space, after punctuation."""
    out = []
    for t in texts:
        out += [t[: rng.randint(0, len(t))] for _ in range(cuts)]
    return out


def test_split_and_encode_js_equal_python(js, completion, test_split):
    tok, completer = completion
    rng = random.Random(0)
    texts = _typed(test_split[:150] + EDGE, rng) + EDGE + ["قال رسول ال", "قال رسول ", "أَحْمَ", "عنه،", "سنة 20", "ﷺ", "ﷺقال"]
    py = [[s.context, s.prefix] for s in map(completer.split, texts)]
    _same(js("split", texts=texts), py, texts)
    _same(js("encode", texts=test_split[:100] + EDGE), [tok.encode(t) for t in test_split[:100] + EDGE], test_split[:100] + EDGE)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(arabic_soup, tokenizer_text), min_size=1, max_size=8))
def test_split_js_equals_python_on_any_text(js, completion, texts):
    _, completer = completion
    _same(js("split", texts=texts), [[s.context, s.prefix] for s in map(completer.split, texts)], texts)


def test_suggestions_js_equal_python_for_any_distribution(js, completion):
    tok, completer = completion
    torch.manual_seed(0)
    words = [w for w in tok.itos[4:] if len(w) > 1]
    prefixes = ["", "ا", "ال", "و", "ق", "zz", "1", "،"] + [w[: len(w) // 2 + 1] for w in words[::97]]
    for trial in range(3):
        log_probs = torch.log_softmax(torch.randn(tok.vocab_size) * 4, 0)
        if trial == 2:
            log_probs[10:20] = log_probs[10]   # ties: the earlier word first, in both
        js("probs", probs=log_probs.exp().tolist())
        for prefix in prefixes:
            for punctuation, numbers in ((False, False), (True, False), (False, True), (True, True)):
                py = completer.from_distribution(log_probs, prefix, 5, punctuation, numbers)
                got = js("suggest", prefix=prefix, k=5, punctuation=punctuation, numbers=numbers)
                assert [g["word"] for g in got] == [s.word for s in py], (prefix, punctuation, numbers)
                for g, s in zip(got, py):
                    assert g["probability"] == pytest.approx(s.probability, rel=1e-6, abs=1e-12)
                    assert g["share"] == pytest.approx(s.share, rel=1e-5, abs=1e-9)


# --- the page -----------------------------------------------------------------------------


def test_build_web_says_how_to_install_onnxruntime_web(tmp_path, monkeypatch):
    monkeypatch.setenv(webpage.ORT_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"onnxruntime-web not found.*setup.sh --dev.*npm install onnxruntime-web"):
        webpage.build_web(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_build_web_refuses_a_subword_model(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"kind": "sentencepiece", "tokens": []}), encoding="utf-8")
    with pytest.raises(ValueError, match="word model; this model's tokenizer is sentencepiece"):
        webpage.build_web(tmp_path)


def test_the_page_files_ship_with_the_package():
    from importlib import resources

    names = {p.name for p in resources.files("arlm.webpage").iterdir()}
    assert set(webpage.PAGE_FILES) <= names
    html = resources.files("arlm.webpage").joinpath("index.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html  # every script is a local file
    for name in ("app.js", "complete.js", "normalize.js", "tokenize.js"):
        code = resources.files("arlm.webpage").joinpath(name).read_text(encoding="utf-8")
        assert "innerHTML" not in code and "insertAdjacentHTML" not in code and "document.write" not in code


def _export(checkpoint_dir: Path, out: Path) -> Path:
    """arlm-export --format web with the float32 step (so the page's numbers are Python's):
    model.onnx, vocab.json, normalize.json (normalize_spec), then build_web."""
    from arlm import export

    assert export.main(["--checkpoint", str(checkpoint_dir), "--out", str(out), "--format", "web",
                        "--quantize", "none"]) == 0
    assert json.loads((out / "normalize.json").read_text(encoding="utf-8")) == webpage.normalize_spec(NormalizeConfig())
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import arlm
    from test_generate import train_and_save

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("webpage")
        checkpoint_dir = train_and_save(root / "model", "full")
        out = _export(checkpoint_dir, root / "web")
    finally:
        torch.set_num_threads(before)
    return arlm.load(checkpoint_dir), out


def _browser(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])


def _watch(page, allowed=("file:", "blob:", "data:")):
    """Every request outside `allowed` is blocked and counted; errors are collected."""
    problems, outside = [], []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("dialog", lambda d: (problems.append("dialog " + d.message), d.dismiss()))
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(allowed) else None)

    def route(r):
        if r.request.url.startswith(allowed):
            r.continue_()
        else:
            r.abort()
    page.route("**/*", route)
    return problems, outside


def _suggestions(page) -> list[dict]:
    page.evaluate("window.arlm.idle()")
    return page.evaluate("window.arlm.suggestions")


def _check(got: list[dict], want) -> None:
    assert [g["word"] for g in got] == [s.word for s in want]
    for g, s in zip(got, want):
        assert g["probability"] == pytest.approx(s.probability, abs=1e-4)
        assert g["share"] == pytest.approx(s.share, abs=1e-4)


def _type(page, text: str) -> None:
    page.fill("#text", "")
    page.focus("#text")
    page.keyboard.type(text)


PREFIXES = ["", "ذهب الولد إلى ال", "قرأت البنت كتابا ", "يشرب الجد الشّ", "تطير العصافير فوق الأ"]
SENTENCE = "قرأت البنت كتابا جميلا في المكتبة"


def test_page_in_headless_chromium_from_file(exported, tmp_path):
    """From file://, with every other request blocked: the suggestions for five typed texts
    are Predictor.complete's, a letter inside a word costs no model step, clicking a
    suggestion replaces the word being typed (with the cursor at the end, and inside an
    earlier word), the gates shown are arlm.gates.record's, and
    typed markup stays text."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install playwright (its browser download is not needed)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium (the page is tested in a real browser)")
    from arlm import gates

    lm, folder = exported
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            problems, outside = _watch(page)
            page.goto((folder / "index.html").as_uri())
            page.wait_for_function("window.arlm && (window.arlm.ready || window.arlm.error)", timeout=20_000)
            assert page.evaluate("window.arlm.error") is None
            assert page.eval_on_selector("#text", "e => getComputedStyle(e).direction") == "rtl"

            for text in PREFIXES:
                _type(page, text)
                got = _suggestions(page)
                _check(got, lm.complete(text, k=5))
                assert page.eval_on_selector_all(".sug", "els => els.map(e => e.dataset.word)") == [g["word"] for g in got]

            # one more letter inside the word: a filter of the kept distribution, no model step
            _type(page, "ذهب الولد إلى ال")
            _suggestions(page)
            steps = page.evaluate("window.arlm.steps")
            page.keyboard.type("م")
            _check(_suggestions(page), lm.complete("ذهب الولد إلى الم", k=5))
            assert page.evaluate("window.arlm.steps") == steps
            page.click(".sug >> nth=0")
            typed = page.input_value("#text")
            assert typed == "ذهب الولد إلى " + lm.complete("ذهب الولد إلى الم", k=1)[0].word + " "
            _check(_suggestions(page), lm.complete(typed, k=5))

            # the cursor moved back into a word: the text before it is completed, and a chosen
            # word replaces the whole word, the text after it kept
            _type(page, "ذهب الولد إلى المكتبة الكبيرة")
            _suggestions(page)
            at = len("ذهب الولد إلى الم")
            page.evaluate(f"document.getElementById('text').setSelectionRange({at}, {at})")
            page.keyboard.press("Shift")  # a key that types nothing: only the cursor moved
            _check(_suggestions(page), lm.complete("ذهب الولد إلى الم", k=5))
            page.click(".sug >> nth=0")
            word = lm.complete("ذهب الولد إلى الم", k=1)[0].word
            assert page.input_value("#text") == "ذهب الولد إلى " + word + " الكبيرة"
            caret = page.eval_on_selector("#text", "e => [e.selectionStart, e.selectionEnd]")
            assert caret == [len("ذهب الولد إلى " + word + " ")] * 2
            _check(_suggestions(page), lm.complete("ذهب الولد إلى " + word + " ", k=5))

            # the gates of a typed sentence, as arlm.gates.record records them
            _type(page, SENTENCE + " ")
            _suggestions(page)
            shown = page.evaluate("window.arlm.record()")
            want = gates.record(lm, lm.tokenizer, SENTENCE, top_k=5).sentences[0]
            assert shown["tokens"] == want.tokens and shown["ids"] == want.ids
            assert shown["token_probs"] == pytest.approx(want.token_probs, abs=1e-4)
            for layer_shown, layer_want in zip(shown["layers"], want.layers, strict=True):
                for g in gates.GATES:
                    assert torch.tensor(layer_shown[g]).sub(torch.from_numpy(layer_want[g])).abs().max() < 1e-4, g
            for top_shown, top_want in zip(shown["top"], want.top, strict=True):
                assert [w for w, _ in top_shown] == [w for w, _ in top_want]
                assert [q for _, q in top_shown] == pytest.approx([q for _, q in top_want], abs=1e-4)
            assert page.eval_on_selector_all(".tok", "els => els.map(e => e.textContent)") == want.tokens
            colours = lambda: page.eval_on_selector_all(".tok", "els => els.map(e => getComputedStyle(e).backgroundColor)")  # noqa: E731
            before = colours()
            page.select_option("#gate", "f")
            page.select_option("#unit", "3")
            assert colours() != before and len(set(colours())) > 1
            page.hover(".tok >> nth=2")
            tip = page.inner_text("#tip")
            assert "keep" in tip and "expose" in tip and "position 3 of" in tip and want.top[2][0][0] in tip
            assert f"{float(want.layers[0]['f'][2, 3]):.3f}".lstrip("-") in tip
            page.mouse.move(5, 5)
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

            # typed markup is text: nothing runs, no element appears
            _type(page, "<img src=x onerror=\"window.__pwned=1\"> <script>window.__pwned=1</script> ")
            _suggestions(page)
            assert "<img" in "".join(page.eval_on_selector_all(".tok", "els => els.map(e => e.textContent)"))
            assert page.evaluate("typeof window.__pwned") == "undefined" and page.locator("img").count() == 0
            assert not problems and not outside, (problems, outside)
        finally:
            browser.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_page_over_http_fetches_only_its_own_folder(exported):
    """Served by a static host (a local http.server on the loopback address), the page
    fetches its model, json and onnxruntime's files from its own folder, nothing else."""
    import functools
    import http.server
    import threading

    from playwright.sync_api import sync_playwright

    lm, folder = exported
    served = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # quiet; remember what was asked for instead
            served.append(self.path.lstrip("/"))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with sync_playwright() as p:
            browser = _browser(p)
            try:
                page = browser.new_page()
                problems, outside = _watch(page, allowed=(host, "blob:", "data:"))
                page.goto(host + "index.html")
                page.wait_for_function("window.arlm && (window.arlm.ready || window.arlm.error)", timeout=20_000)
                assert page.evaluate("window.arlm.error") is None
                _type(page, "كتب المعلم الد")
                _check(_suggestions(page), lm.complete("كتب المعلم الد", k=5))
                assert not problems and not outside, (problems, outside)
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
    names = {path.split("?")[0] for path in served}
    assert {"model.onnx", "vocab.json", "normalize.json", "ort-wasm-simd-threaded.wasm"} <= names
    assert webpage.EMBED_FILE not in names
