"""The per-step C path: a Python time loop, the product with h_{t-1} by torch (oneDNN),
the element-wise rest of each step (σ, tanh, c, h and their derivatives) in one C loop
(lstm_step.c) instead of a dozen torch calls. Used on CPU float32 when the whole-window
call does not apply (H not a whole number of vectors, or a small window).

A forward pass over at most lowp.ROWS sequences (a prompt, a typing session's context, a
short window in eval) runs its time loop in C too: each step's product is then one pass
over W_h for a few rows, which lstm_step.c's sequence loop makes without going back to
Python and torch each step (arlm_lstm_sequence, the inference engine's loop, reading W's
h columns in place)."""

from __future__ import annotations

import torch
from torch import Tensor

from arlm.fast.build import Kernel
from arlm.fast.lowp import ROWS
from arlm.fast.products import LayerWeights, Times, mm


def forward(kernel: Kernel, w: LayerWeights, x: Tensor, h0: Tensor, c0: Tensor, keep: Tensor | None):
    """gates (T, B, 4H), cs, tanh_cs, hs (T, B, H). keep: (T, B, 1) float32 contiguous, or None."""
    T, B, I = x.shape
    H = w.H
    gx = mm(x.reshape(T * B, I), w.W_x.t()).view(T, B, 4 * H)  # W_x·x_t; the C step adds b itself
    gates = torch.empty_like(gx)
    cs, tanh_cs, hs = x.new_empty(T, B, H), x.new_empty(T, B, H), x.new_empty(T, B, H)
    if B <= ROWS:  # every step in one C call; it reads the first H columns of the weight it is given
        W_h = w.W if w.h_mask is None else w.W_h
        kernel.low_window("float32", W_h, None, gx, w.b, h0, c0, keep, gates, cs, tanh_cs, hs)
        return gates, cs, tanh_cs, hs
    times_W_h = w.times_W_h(B, T)
    h_in = h0 * keep[0] if keep is not None else h0
    h_next = x.new_empty(B, H)  # h_t ⊙ keep_{t+1}: what the next product reads
    for t in range(T):
        zh = times_W_h(h_in).contiguous()                 # W_h · h_{t-1}
        k_next = keep[t + 1] if keep is not None and t + 1 < T else None
        kernel.step_forward(zh, gx[t], w.b, c0 if t == 0 else cs[t - 1], keep[t] if keep is not None else None,
                            gates[t], cs[t], tanh_cs[t], hs[t], k_next, h_next)
        h_in = h_next if k_next is not None else hs[t]
    return gates, cs, tanh_cs, hs


def backward(kernel: Kernel, w: LayerWeights, h0: Tensor, c0: Tensor, gates: Tensor, cs: Tensor, tanh_cs: Tensor,
             hs: Tensor, keep: Tensor | None, d_hs: Tensor | None, d_hT: Tensor | None, d_cT: Tensor | None):
    """dG (T, B, 4H), ∂L/∂h0, ∂L/∂c0."""
    T, B, H = hs.shape
    dG = torch.empty_like(gates)
    times_W_h_t = Times(w.W_h.t(), B, Times.packs(w.W, T))  # dh_{t-1} = dG_t W_h
    dh = d_hT.contiguous() if d_hT is not None else hs.new_zeros(B, H)
    dc = d_cT.clone(memory_format=torch.contiguous_format) if d_cT is not None else hs.new_zeros(B, H)
    d_hs = d_hs.contiguous() if d_hs is not None else None
    for t in range(T - 1, -1, -1):
        kernel.step_backward(gates[t], c0 if t == 0 else cs[t - 1], keep[t] if keep is not None else None,
                             tanh_cs[t], dh, keep[t + 1] if keep is not None and t + 1 < T else None,
                             d_hs[t] if d_hs is not None else None, dc, dG[t])
        dh = times_W_h_t(dG[t]).contiguous()
    if keep is not None:  # no gradient flows into the previous document
        dh, dc = dh * keep[0], dc * keep[0]
    return dG, dh, dc
