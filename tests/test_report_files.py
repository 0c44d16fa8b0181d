"""Tests for arlm/report/files.py: the JSON, CSV and NPZ exports load back with the right
shapes and token order, and the corpus statistics are written as plain JSON."""

import csv
import json

import numpy as np
import pytest

from arlm import gates, report
from arlm.gates import GATES, SIGMOID_GATES
from conftest import GATE_TEXTS as TEXTS
from report_helpers import H, L, rec, trained  # noqa: F401  (fixtures)


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


def test_stats_json_has_saturation_and_ranking(trained, tmp_path):
    _, model, tok = trained
    ids = np.array(sum(([tok.eos_id] + tok.encode(t) for t in TEXTS), []))
    stats = gates.corpus_stats(model, tok, ids)
    results = gates.search_units(stats, top=2)
    saved = json.loads(report.write_stats_json(stats, results, tmp_path / "new" / "s.json").read_text(encoding="utf-8"))
    assert saved["steps"] == len(ids) and saved["thresholds"] == {"left": gates.LOW, "right": gates.HIGH}
    assert set(saved["saturation"]) == {f"layer{l + 1}" for l in range(L)}
    assert set(saved["saturation"]["layer2"]) == set(SIGMOID_GATES)
    np.testing.assert_allclose(saved["saturation"]["layer2"]["o"]["right"], stats.right[1, 2])
    assert saved["unit_search"].keys() == results.keys()
    assert all(len(v) <= 2 for v in saved["unit_search"].values())
