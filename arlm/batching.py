"""From one long stream of token ids to truncated-BPTT windows.

Training lays the stream out as `n_streams` contiguous rows (stream b continues where
stream b-1 stops), and walks them left to right in windows of `bptt` steps, so the
hidden state at the end of one window is the right starting state for the next.
Training works on memory-mapped arrays: only the current window is copied into memory.
(Evaluation builds its input/target rows for the whole valid or test split: 16 bytes a token.)
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE = -100  # target id for padding: not scored


def streams(ids: np.ndarray, n_streams: int) -> np.ndarray:
    """(n_streams, L) view of `ids`, dropping the last len(ids) % n_streams tokens."""
    length = len(ids) // n_streams
    if length < 2:
        raise ValueError(f"{len(ids)} tokens cannot fill {n_streams} streams")
    return ids[: n_streams * length].reshape(n_streams, length)


def shard(rows: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The rows (streams) a distributed rank trains on: a disjoint, contiguous share."""
    per = rows.shape[0] // world_size
    return rows[rank * per : (rank + 1) * per]


def window(rows: np.ndarray, start: int, seq_len: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, each (seq_len', n_streams), from position `start`."""
    seq_len = min(seq_len, rows.shape[1] - 1 - start)
    chunk = np.ascontiguousarray(rows[:, start : start + seq_len + 1].T).astype(np.int64)
    chunk = torch.from_numpy(chunk).to(device)
    return chunk[:-1], chunk[1:]


def variable_length(bptt: int, rng: np.random.Generator) -> int:
    """AWD-LSTM's randomized window: bptt (p=0.95) or bptt/2, then N(that, 5), at least 5,
    so every token in turn gets to be early and late in a window across epochs."""
    base = bptt if rng.random() < 0.95 else bptt / 2
    return int(max(5, min(bptt + 20, round(rng.normal(base, 5)))))


def eval_streams(ids: np.ndarray, n_streams: int, start_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Every token of `ids` as a target, with the stream read from a start-of-document
    token: inputs [start, ids[:-1]], targets ids, cut into n_streams rows; the last row
    is padded with IGNORE targets. Returns (inputs, targets), each (n_streams, L)."""
    n = len(ids)
    inputs = np.empty(n, dtype=np.int64)
    inputs[0] = start_id
    inputs[1:] = ids[:-1]
    targets = np.asarray(ids, dtype=np.int64)
    n_streams = max(1, min(n_streams, n))
    length = -(-n // n_streams)
    pad = n_streams * length - n
    inputs = np.concatenate([inputs, np.zeros(pad, np.int64)]).reshape(n_streams, length)
    targets = np.concatenate([targets, np.full(pad, IGNORE, np.int64)]).reshape(n_streams, length)
    return inputs, targets
