"""Gates as one interactive HTML page: the sentence right to left, each token coloured by
the chosen gate, unit and layer; hover or click a token for its values and the model's
next-word guesses.

The page is real files shipped with this package: page.html (the markup, with
{{title}}, {{subtitle}}, {{css}}, {{js}} and {{data}} slots), page.css and page.js, and the
gate view they share with the browser page (arlm/webpage, whose build_web copies them):
gateview.css and gateview.js, inlined before page.css and page.js. Writing a report fills
the slots in one pass, so the result is a single self-contained file (inline CSS and JS,
the data as one JSON element) that works from file:// with no network.
"""

from __future__ import annotations

import html
import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from arlm.gates import EXPLAIN, GATES, LABELS, MEANINGS, SIGMOID_GATES, GateRecord
from arlm.report.files import output_path

TITLE = "arlm: watching the gates"
# What fills the {{css}} and {{js}} slots, in this order: the shared gate view, then the report's own.
CSS_FILES = ("gateview.css", "page.css")
JS_FILES = ("gateview.js", "page.js")
_SLOT = re.compile(r"\{\{(\w+)\}\}")


def _script_json(data) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' can end the element or open a comment
    (all three are written as \\u escapes, which JSON.parse reads back unchanged), and no
    U+2028/U+2029, which older JavaScript parsers take for line breaks."""
    s = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
             .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


@lru_cache(maxsize=None)
def _asset(name: str) -> str:
    """page.html or one of CSS_FILES / JS_FILES, read from the installed package."""
    return resources.files("arlm.report").joinpath(name).read_text(encoding="utf-8").rstrip("\n")


def _inline(text: str, element: str) -> str:
    """A CSS or JS file, checked to be safe to paste between <element> and </element>:
    our own files, but an edit that wrote '</script' in a comment would end the element early."""
    if re.search(rf"</{element}|<!--|<script", text, re.IGNORECASE):
        raise ValueError(f"the page's {element} contains '</{element}', '<!--' or '<script'; it cannot be inlined")
    return text


def fill(template: str, slots: dict[str, str]) -> str:
    """Every {{name}} in `template` replaced by slots[name], in one pass: text put into one
    slot is never searched for another (a title '{{data}}' stays a title)."""
    missing = sorted(set(_SLOT.findall(template)) - set(slots))
    if missing:
        raise KeyError(f"the page has slot(s) with no value: {', '.join(missing)}")
    return _SLOT.sub(lambda m: slots[m.group(1)], template)


def page_data(rec: GateRecord) -> dict:
    """What page.js reads: the gate names and explanations, and per sentence its tokens,
    guesses and every layer's gate values (rounded to 4 places: the page is smaller and
    nothing shown needs more)."""
    return {
        "gates": list(GATES), "labels": LABELS, "meanings": MEANINGS, "explain": EXPLAIN,
        "sigmoid": list(SIGMOID_GATES), "num_layers": rec.num_layers, "hidden_size": rec.hidden_size,
        "sentences": [
            {"text": s.text, "tokens": s.tokens, "token_probs": [round(p, 4) for p in s.token_probs],
             "top": [[[w, round(p, 4)] for w, p in guesses] for guesses in s.top],
             "layers": [{g: np.round(layer[g].astype(np.float64), 4).tolist() for g in GATES} for layer in s.layers]}
            for s in rec.sentences
        ],
    }


def html_report(rec: GateRecord, title: str = TITLE, subtitle: str = "") -> str:
    """One self-contained page (inline CSS and JS, data embedded, no network). All input
    text is escaped: the title and subtitle as HTML, the record as script-safe JSON."""
    return fill(_asset("page.html"), {
        "title": html.escape(title), "subtitle": html.escape(subtitle),
        "css": "\n".join(_inline(_asset(name), "style") for name in CSS_FILES),
        "js": "\n".join(_inline(_asset(name), "script") for name in JS_FILES),
        "data": _script_json(page_data(rec)),
    })


def write_html(rec: GateRecord, path: str | Path, title: str = TITLE, subtitle: str = "") -> Path:
    """`html_report` written to `path` (its directory created)."""
    path = output_path(path)
    path.write_text(html_report(rec, title, subtitle), encoding="utf-8")
    return path
