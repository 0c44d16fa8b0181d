"""The whole-window C path: the time loop itself in C, the per-step product with h_{t-1}
included. Each thread owns a slice of the hidden units and computes their gates and step,
then waits once per step (lstm_step.c, arlm_lstm_window_*). Used on CPU float32 for
training-sized windows: H a whole number of vectors and enough rows (T·B) that repacking
the weight for the call is small beside the products."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from arlm.fast.build import Kernel
from arlm.fast.products import LayerWeights, mm


def applies(kernel: Kernel, T: int, B: int, H: int) -> bool:
    """Whether a window runs as one C call (ARLM_WINDOW=0 turns it off, for comparisons)."""
    return H % kernel.lanes == 0 and T * B >= 32 and os.environ.get("ARLM_WINDOW", "1") != "0"


def forward(kernel: Kernel, w: LayerWeights, x: Tensor, h0: Tensor, c0: Tensor, keep: Tensor | None):
    """gates (T, B, 4H), cs, tanh_cs, hs (T, B, H). keep: (T, B, 1) float32 contiguous, or None."""
    T, B, I = x.shape
    H = w.H
    gx = mm(x.reshape(T * B, I), w.W_x.t()).view(T, B, 4 * H)  # W_x·x_t; C adds b itself
    cs, tanh_cs, hs = x.new_empty(T, B, H), x.new_empty(T, B, H), x.new_empty(T, B, H)
    # The gates overwrite gx in place: each is read once, just before its gate is written
    # where it stood, so the step writes to lines it has just read rather than to a fresh
    # buffer as large (no second stream to memory, no new pages to fault in).
    gates = gx
    kernel.window_forward(w.W, gx, w.b, h0, c0, keep, gates, cs, tanh_cs, hs, w.h_mask)
    return gates, cs, tanh_cs, hs


def backward(kernel: Kernel, w: LayerWeights, h0: Tensor, c0: Tensor, gates: Tensor, cs: Tensor, tanh_cs: Tensor,
             hs: Tensor, keep: Tensor | None, d_hs: Tensor | None, d_hT: Tensor | None, d_cT: Tensor | None):
    """dG (T, B, 4H), ∂L/∂h0, ∂L/∂c0."""
    T, B, H = hs.shape
    dG = torch.empty_like(gates)
    dh = d_hT.clone(memory_format=torch.contiguous_format) if d_hT is not None else hs.new_zeros(B, H)
    dc = d_cT.clone(memory_format=torch.contiguous_format) if d_cT is not None else hs.new_zeros(B, H)
    d_hs = d_hs.contiguous() if d_hs is not None else None
    kernel.window_backward(w.W, gates, c0, cs, tanh_cs, keep, d_hs, dh, dc, dG, w.h_mask)
    return dG, dh, dc
