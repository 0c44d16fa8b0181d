"""The transformer peer of the quality benchmark: what a user would train instead of an LSTM.

A small GPT-style decoder (pre-norm blocks of causal self-attention through
`F.scaled_dot_product_attention` and a 4× GELU MLP, learned positions), with arlm's own
output layer — the adaptive softmax over the same cutoffs, its shortlist tied to the
embeddings — trained with AdamW under the same warmup-stable-decay schedule (`arlm.train.lr_at`,
clock-paced) on exactly the token ids arlm trains on, and scored on every test token.

Training reads the train split as `batch` contiguous streams, like arlm, in windows of
`context` tokens (8 × 128 by default: about the tokens of arlm's 32 × 35 step, so both take
about as many optimizer steps per token); a window is one sequence (attention does not reach into the window
before, where the LSTM carries its state on). Scoring walks the test stream in windows of
`context` tokens overlapping by half, each token scored once, with at least half a
context before it (the first window's tokens with what precedes them), the stream read
from an end-of-document token as arlm reads it.

    python scripts/benchmark.py peer --minutes 10 --peer 4x256:1e-3 4x256:2e-3 2x256:2e-3
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arlm import batching
from arlm.config import ModelConfig, OptimConfig, TrainConfig
from arlm.fast import Linear, adaptive_nll
from arlm.model import TiedHead
from arlm.train import lr_at


@dataclass
class PeerConfig:
    vocab_size: int
    layers: int = 4
    width: int = 256
    heads: int = 4
    context: int = 128
    dropout: float = 0.0
    cutoffs: tuple[int, ...] = (2000, 10000)
    adaptive_div: float = 4.0

    @classmethod
    def parse(cls, spec: str, vocab_size: int) -> tuple["PeerConfig", float]:
        """"LxW:lr[:dropout]" (e.g. 4x256:1e-3, 2x256:1e-3:0.2) → the config (heads of 64
        dimensions; dropout on attention and both residual branches, default none) and its
        learning rate."""
        shape, _, rest = spec.partition(":")
        lr, _, dropout = rest.partition(":")
        layers, _, width = shape.partition("x")
        cfg = cls(vocab_size=vocab_size, layers=int(layers), width=int(width), heads=max(1, int(width) // 64),
                  dropout=float(dropout or 0.0))
        return cfg, float(lr or 1e-3)


class Block(nn.Module):
    def __init__(self, cfg: PeerConfig):
        super().__init__()
        self.heads = cfg.heads
        self.ln1, self.ln2 = nn.LayerNorm(cfg.width), nn.LayerNorm(cfg.width)
        # arlm's Linear: nn.Linear with its products by the faster of torch's two GEMMs on this
        # CPU, as arlm's own layers get them (products.mm), so both models multiply alike
        self.qkv = Linear(cfg.width, 3 * cfg.width)
        self.out = Linear(cfg.width, cfg.width)
        self.mlp = nn.Sequential(Linear(cfg.width, 4 * cfg.width), nn.GELU(), Linear(4 * cfg.width, cfg.width))
        self.dropout = cfg.dropout

    def forward(self, x: Tensor) -> Tensor:  # x (B, T, D)
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + F.dropout(self.out(a.transpose(1, 2).reshape(B, T, D)), self.dropout, self.training)
        return x + F.dropout(self.mlp(self.ln2(x)), self.dropout, self.training)


class Peer(nn.Module):
    def __init__(self, cfg: PeerConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position = nn.Embedding(cfg.context, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.width)
        cutoffs = ModelConfig(vocab_size=cfg.vocab_size, emb_size=cfg.width, cutoffs=list(cfg.cutoffs)).effective_cutoffs
        self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(cfg.width, cfg.vocab_size, cutoffs, cfg.adaptive_div)
        self.adaptive.head = TiedHead(self.embedding, cutoffs[0], len(cutoffs))
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def features(self, ids: Tensor) -> Tensor:
        """ids (B, T), T ≤ context → (B, T, width)."""
        x = self.embedding(ids) + self.position.weight[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln(x)

    def nll(self, ids: Tensor, targets: Tensor) -> Tensor:
        """Per-token negative log-likelihood, (B, T): arlm's adaptive-softmax loss (its tail
        clusters in C where they apply), so both models get the same output layer's speed."""
        f = self.features(ids)
        return adaptive_nll(self.adaptive, f.reshape(-1, f.shape[-1]), targets.reshape(-1)).view(targets.shape)


@torch.no_grad()
def score(model: Peer, ids: np.ndarray, start_id: int, batch: int = 16) -> tuple[float, int]:
    """(summed NLL, tokens) over every token of `ids`, in windows of `context` tokens that
    overlap by half; each token scored once, in the window where it has most context."""
    model.eval()
    ctx = model.cfg.context
    stride = ctx // 2
    inputs = np.concatenate([[start_id], ids[:-1]]).astype(np.int64)
    targets = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    starts = list(range(0, max(n - ctx, 0) + 1, stride))
    if starts[-1] + ctx < n:
        starts.append(n - ctx)
    total, counted, scored_to = 0.0, 0, 0
    for b in range(0, len(starts), batch):
        group = starts[b:b + batch]
        length = min(ctx, n)
        x = torch.from_numpy(np.stack([inputs[s:s + length] for s in group]))
        y = torch.from_numpy(np.stack([targets[s:s + length] for s in group]))
        nll = model.nll(x, y)
        for row, s in enumerate(group):
            first = scored_to - s  # tokens before scored_to were scored by an earlier window
            total += nll[row, first:].sum().item()
            counted += length - first
            scored_to = s + length
    model.train()
    return total, counted


def train(cfg: PeerConfig, lr: float, train_ids: np.ndarray, minutes: float, batch: int = 8, warmup: int = 100,
          decay_start: float = 0.85, weight_decay: float = 0.01, clip: float = 0.25, seed: int = 1111,
          max_steps: int = 0, log=print) -> tuple[Peer, dict]:
    """Train under a wall-clock budget (or `max_steps`), the rate from arlm's own schedule."""
    torch.manual_seed(seed)
    model = Peer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    schedule = TrainConfig(optim=OptimConfig(lr=lr, lr_schedule="cosine", decay_start=decay_start, warmup=warmup),
                           time_budget=minutes, max_steps=max_steps)
    rows = batching.streams(np.asarray(train_ids), batch)
    total_steps = max_steps or 10**9
    step, pos, seconds, tokens = 0, 0, 0.0, 0
    while (not minutes or seconds < minutes * 60) and (not max_steps or step < max_steps):
        t = time.time()
        if pos + cfg.context >= rows.shape[1]:
            pos = 0
        x, y = batching.window(rows, pos, cfg.context)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, seconds, schedule, total_steps)
        loss = model.nll(x.T.contiguous(), y.T.contiguous()).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        pos += cfg.context
        step += 1
        tokens += x.numel()
        seconds += time.time() - t
        if step % 500 == 0:
            log(f"  step {step} | loss {loss.item():.3f} | {tokens / seconds:,.0f} tokens/s | {seconds / 60:.1f} min")
    return model, {"steps": step, "tokens": tokens, "train_seconds": seconds,
                   "parameters": sum(p.numel() for p in model.parameters())}


def perplexity(model: Peer, ids: np.ndarray, start_id: int) -> float:
    total, n = score(model, ids, start_id)
    return math.exp(total / n)
