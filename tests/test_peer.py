"""The quality benchmark's transformer peer (scripts/peer.py): causal, every test token
scored exactly once with the context the scoring promises, and it learns."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("peer", ROOT / "scripts" / "peer.py")
peer = sys.modules["peer"] = importlib.util.module_from_spec(spec)  # registered: its dataclass looks itself up
spec.loader.exec_module(peer)


def tiny(context=16) -> "peer.Peer":
    torch.manual_seed(0)
    return peer.Peer(peer.PeerConfig(vocab_size=50, layers=2, width=32, heads=2, context=context, cutoffs=(10, 30)))


def test_spec_parses_to_layers_width_heads_and_rate():
    cfg, lr = peer.PeerConfig.parse("6x384:6e-4", 50000)
    assert (cfg.layers, cfg.width, cfg.heads, cfg.vocab_size, lr, cfg.dropout) == (6, 384, 6, 50000, 6e-4, 0.0)
    cfg, lr = peer.PeerConfig.parse("2x256:1e-3:0.2", 50000)
    assert (cfg.layers, cfg.width, cfg.heads, lr, cfg.dropout) == (2, 256, 4, 1e-3, 0.2)


def test_a_position_sees_only_the_tokens_before_it():
    model = tiny().eval()
    x = torch.randint(0, 50, (3, 16))
    y = x.clone()
    y[:, 9:] = torch.randint(0, 50, (3, 7))
    with torch.no_grad():
        a, b = model.features(x), model.features(y)
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


@pytest.mark.parametrize("n", [5, 16, 40, 57])
def test_every_token_is_scored_once_with_at_least_half_a_context(n):
    model = tiny(context=16)
    ids = np.random.default_rng(n).integers(0, 50, n)
    total, counted = peer.score(model, ids, start_id=3, batch=2)
    assert counted == n
    # the same sum, window by window by hand: tokens [0, 16) from the first window, then 8 new per window
    inputs = np.concatenate([[3], ids[:-1]])
    with torch.no_grad():
        if n <= 16:
            want = model.nll(torch.tensor(inputs)[None], torch.tensor(ids)[None]).sum().item()
        else:
            want, done = 0.0, 0
            starts = list(range(0, n - 16 + 1, 8))
            if starts[-1] + 16 < n:
                starts.append(n - 16)
            for s in starts:
                nll = model.nll(torch.tensor(inputs[s:s + 16])[None], torch.tensor(ids[s:s + 16])[None])[0]
                assert done - s >= 8 or s == 0  # a token scored here has ≥ 8 tokens before it in the window
                want += nll[done - s:].sum().item()
                done = s + 16
    assert total == pytest.approx(want, rel=1e-5)


def test_it_learns_a_repeating_text_under_arlms_schedule():
    rng = np.random.default_rng(0)
    phrase = rng.integers(0, 50, 12)
    ids = np.tile(phrase, 200)
    cfg = peer.PeerConfig(vocab_size=50, layers=2, width=32, heads=2, context=16, cutoffs=(20,))
    model, info = peer.train(cfg, 3e-3, ids, minutes=0, batch=4, warmup=10, max_steps=400, log=lambda *_: None)
    assert info["steps"] == 400 and info["tokens"] == 400 * 4 * 16
    assert peer.perplexity(model, ids[:300], start_id=0) < 1.5  # from ~50 (uniform) to near certainty
    assert math.isfinite(info["train_seconds"])
