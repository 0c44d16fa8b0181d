"""Tests for arlm/report/tables.py: the terminal views read like the seed's walk-through,
the summary shows means, saturation and guesses, invisible marks are spelled out, and the
unit-search table counts tokens by the tokenizer's special ids, never a literal."""

import numpy as np

from arlm import gates, report
from arlm.gates import CorpusStats, UnitScore
from report_helpers import rec, trained  # noqa: F401  (fixtures)


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


def test_search_table_counts_the_words_the_search_scored(trained):
    # a tokenizer whose specials are not 0..3: <eos> is 7, and 3 is a word
    n = 6
    stats = CorpusStats(np.array([7, 3, 4, 7, 5, 0]), ["<eos>", "قال", "رسول", "<eos>", "الله", "<pad>"],
                        np.arange(n), np.zeros((1, 3, 2)), np.zeros((1, 3, 2)), special_ids=(0, 1, 2, 7))
    score = UnitScore("punctuation", 1, "h", 0, 0.5, 0.75, 0.1, -0.1, 2)
    table = report.format_search({"punctuation": [score], "digits": []}, stats)
    assert "unit search over 3 tokens" in table
    assert "(skipped" in table and "+0.500" in table and "0.750" in table
    # corpus_stats records the tokenizer's own special ids: only <eos> steps are left out here
    _, model, tok = trained
    ids = np.array([tok.eos_id] + tok.encode("قال رسول الله") + [tok.eos_id] + tok.encode("قال"))
    real = gates.corpus_stats(model, tok, ids)
    assert f"unit search over {len(ids) - 2} tokens" in report.format_search({}, real)
