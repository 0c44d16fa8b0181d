"""Gates as data files for your own analysis: a record as JSON (and back), long-format CSV,
padded NumPy arrays (NPZ), and the corpus statistics as JSON.

Every writer creates the file's parent directories and returns the path it wrote."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from arlm.gates import GATES, HIGH, LOW, SIGMOID_GATES, CorpusStats, GateRecord, UnitScore

CSV_COLUMNS = ("sentence", "position", "token", "layer", "gate", "unit", "value")


def output_path(path: str | Path) -> Path:
    """`path` as a Path, its directory created: `--json runs/new/g.json` just works."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_json(rec: GateRecord, path: str | Path) -> Path:
    """Everything in the record; `read_json` loads it back."""
    path = output_path(path)
    path.write_text(json.dumps(rec.to_dict(), ensure_ascii=False), encoding="utf-8")
    return path


def read_json(path: str | Path) -> GateRecord:
    """A record written by `write_json` (or `arlm-inspect --json`)."""
    return GateRecord.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def write_csv(rec: GateRecord, path: str | Path) -> Path:
    """Long format, one value a row: sentence, position, token, layer, gate, unit, value
    (sentences, positions and layers from 1; units from 0)."""
    path = output_path(path)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for n, s in enumerate(rec.sentences, 1):
            for t, token in enumerate(s.tokens):
                for l, layer in enumerate(s.layers, 1):
                    for g in GATES:
                        w.writerows((n, t + 1, token, l, g, u, f"{x:.6g}") for u, x in enumerate(layer[g][t].tolist()))
    return path


def write_npz(rec: GateRecord, path: str | Path) -> Path:
    """Padded arrays, loadable with np.load(path) (no pickle):
    f, i, c_tilde, o, c, h: (sentences, layers, max_tokens, units), NaN after each sentence;
    lengths (sentences,); tokens (sentences, max_tokens) strings, '' padded; ids, -1 padded;
    top_words / top_probs (sentences, max_tokens, k); token_probs; sentences (the texts)."""
    S, L, H, k = len(rec.sentences), rec.num_layers, rec.hidden_size, rec.top_k
    T = max(len(s) for s in rec.sentences)
    arrays = {g: np.full((S, L, T, H), np.nan, dtype=np.float32) for g in GATES}
    tokens = np.full((S, T), "", dtype=object)
    ids = np.full((S, T), -1, dtype=np.int64)
    top_words = np.full((S, T, k), "", dtype=object)
    top_probs = np.full((S, T, k), np.nan, dtype=np.float32)
    token_probs = np.full((S, T), np.nan, dtype=np.float32)
    for n, s in enumerate(rec.sentences):
        m = len(s)
        for l, layer in enumerate(s.layers):
            for g in GATES:
                arrays[g][n, l, :m] = layer[g]
        tokens[n, :m] = s.tokens
        ids[n, :m] = s.ids
        token_probs[n, :m] = s.token_probs
        for t, guesses in enumerate(s.top):
            for j, (w, p) in enumerate(guesses):
                top_words[n, t, j], top_probs[n, t, j] = w, p
    path = output_path(path)
    with open(path, "wb") as f:  # a file object, so numpy does not append ".npz" to the name
        np.savez_compressed(
            f, **arrays, lengths=np.array([len(s) for s in rec.sentences]), tokens=tokens.astype(str),
            ids=ids, top_words=top_words.astype(str), top_probs=top_probs, token_probs=token_probs,
            sentences=np.array([s.text for s in rec.sentences], dtype=str),
        )
    return path


def write_stats_json(stats: CorpusStats, results: dict[str, list[UnitScore]], path: str | Path) -> Path:
    """Saturation (left/right fractions per layer, sigmoid gate and unit) and the unit-search
    ranking per property, as plain JSON."""
    payload = {
        "steps": stats.steps,
        "thresholds": {"left": LOW, "right": HIGH},
        "saturation": {
            f"layer{l + 1}": {g: {"left": stats.left[l, k].tolist(), "right": stats.right[l, k].tolist()}
                              for k, g in enumerate(SIGMOID_GATES)}
            for l in range(stats.left.shape[0])
        },
        "unit_search": {prop: [asdict(u) for u in scores] for prop, scores in results.items()},
    }
    path = output_path(path)
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
    return path
