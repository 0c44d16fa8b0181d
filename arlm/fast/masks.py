"""Dropout masks: torch's own random draws, made faster on the CPU.

    bernoulli_(mask, p)     ==  mask.bernoulli_(p)        (the same numbers, the same generator state after)
    dropout(x, p)           ==  torch.nn.functional.dropout(x, p)
    dropout_mask(shape, p)  ==  the scaled mask F.dropout multiplies by (DropConnect's, arlm/cell.py)

torch fills a CPU `bernoulli_` one element at a time (two Mersenne Twister outputs and a
compare, ~10 ns each), which with DropConnect on a 2048 × 512 W_h was ~10 ms of every
training step. lstm_step.c (`arlm_bernoulli`) runs the same generator from the same state
over the same elements in vectorized loops: the masks, and so a seeded run's whole
trajectory, are bit for bit torch's.

The generator's state goes to C and back through `Generator.get_state`/`set_state`, whose
layout (a seed, the position, the 624 words) is torch's, not a public contract: the first call
checks it against torch's own draws on a private generator, and if anything differs (another
torch, another generator), every call is torch's `bernoulli_`, as it is off the CPU, for
non-float32 masks and without a C compiler.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from arlm.fast import build

_STATE_BYTES = 5056  # torch's CPU generator state: seed, left, seeded, next, 624 words, normal caches
_checked: bool | None = None  # None: not checked yet; then whether the C draws equal torch's


def _threshold(p: float) -> int:
    """u < p ⟺ v < ceil(p · 2^53) for u = v / 2^53 (p · 2^53 is exact in a double)."""
    return math.ceil(float(p) * 2.0**53)


def _draw(kernel: build.Kernel, mask: Tensor, p: float, generator: torch.Generator) -> None:
    state = generator.get_state()
    kernel.bernoulli(state, _threshold(p), mask)
    generator.set_state(state)


def _layout_ok(kernel: build.Kernel) -> bool:
    """Whether the C draws equal torch's here: a few sizes across refills of the state, on a
    private generator (the default one is not touched)."""
    ours, theirs = torch.Generator().manual_seed(20240531), torch.Generator().manual_seed(20240531)
    if ours.get_state().numel() != _STATE_BYTES:
        return False
    try:
        for n, p in ((1, 0.5), (623, 0.9), (1250, 0.1), (7, 1.0), (5, 0.0)):
            a, b = torch.empty(n), torch.empty(n)
            _draw(kernel, a, p, ours)
            b.bernoulli_(p, generator=theirs)
            if not torch.equal(a, b):
                return False
        return torch.equal(ours.get_state(), theirs.get_state()) and torch.equal(
            torch.rand(3, generator=ours), torch.rand(3, generator=theirs))
    except RuntimeError:  # set_state refused the blob
        return False


def _kernel() -> build.Kernel | None:
    global _checked
    kernel = build.load()
    if kernel is None:
        return None
    if _checked is None:
        _checked = _layout_ok(kernel)
    return kernel if _checked else None


def bernoulli_(mask: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """mask.bernoulli_(p): each element 1 with probability p, else 0, in place; the same
    numbers and the same generator state afterwards as torch's own."""
    kernel = _kernel() if mask.device.type == "cpu" and mask.dtype == torch.float32 and mask.is_contiguous() else None
    if kernel is None or not 0.0 <= p <= 1.0:
        return mask.bernoulli_(p, generator=generator)
    _draw(kernel, mask, p, generator if generator is not None else torch.default_generator)
    return mask


def dropout_mask(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """The scaled mask F.dropout multiplies a contiguous `shape` tensor like `like` by: each
    element 0 with probability p, else 1 / (1 − p) (the same draws and numbers), 0 < p ≤ 1."""
    noise = like.new_empty(shape)
    if p == 1:  # F.dropout multiplies by zero
        return noise.zero_()
    bernoulli_(noise, 1 - p)
    return noise.div_(1 - p)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """F.dropout(x, p, training): zero each element with probability p and scale the rest
    by 1 / (1 − p), drawn and computed as torch does (noise, then noise / (1 − p), then x · noise)."""
    if not training or p == 0 or x.numel() == 0:
        return x
    if p == 1 or not torch.empty_like(x).is_contiguous():  # x's own layout, which torch's noise takes
        return F.dropout(x, p, training)
    return x * dropout_mask(tuple(x.shape), p, x)
