"""Tests for arlm/report/page.py and its page.html / page.css / page.js: the page is one
self-contained file that escapes its input, its slots are filled in one pass, and it works
in a real headless Chromium from file:// with no network."""

import json
from pathlib import Path

import pytest

from arlm import gates, report
from arlm.report import page as page_module
from report_helpers import EVIL, SENTENCE, trained  # noqa: F401  (fixtures)

CHROMIUM = "/usr/bin/chromium"


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


def test_script_json_cannot_end_its_element():
    text = "</script><!-- & \u2028 \u2029 >"
    s = page_module._script_json({"t": text})
    assert not any(c in s for c in "<>&\u2028\u2029")
    assert json.loads(s) == {"t": text}


def test_slots_are_filled_in_one_pass_and_all_of_them(trained):
    assert page_module.fill("{{a}}-{{b}}", {"a": "{{b}}", "b": "x"}) == "{{b}}-x"  # a value is never re-read
    with pytest.raises(KeyError, match="no value: b"):
        page_module.fill("{{a}}{{b}}", {"a": ""})
    _, model, tok = trained
    page = report.html_report(gates.record(model, tok, SENTENCE), title="{{data}} {{js}}")
    assert "<title>{{data}} {{js}}</title>" in page and "{{" not in page.replace("{{data}} {{js}}", "")


def test_the_page_files_ship_with_the_package_and_inline_safely():
    from importlib import resources

    names = {p.name for p in resources.files("arlm.report").iterdir()}
    assert {"page.html", "page.css", "page.js"} <= names
    assert set(page_module._SLOT.findall(page_module._asset("page.html"))) == {"title", "subtitle", "css", "js", "data"}
    for name, element in (("page.css", "style"), ("page.js", "script")):
        assert page_module._inline(page_module._asset(name), element)
    with pytest.raises(ValueError, match="cannot be inlined"):
        page_module._inline("const a = '</SCRIPT>';", "script")


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
