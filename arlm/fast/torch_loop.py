"""The reference path: the LSTM equations over a window as torch operations.

Runs anywhere torch runs (CUDA, float64, no C compiler); the C paths are tested equal to
it and to the readable step. The backward pass is written by hand: the recurrence runs
backwards once, and whatever does not depend on the running gradient is computed for all
steps at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from arlm.fast.products import LayerWeights, Times


def forward(w: LayerWeights, x: Tensor, h0: Tensor, c0: Tensor, keep: Tensor | None):
    """gates (T, B, 4H), cs, tanh_cs, hs (T, B, H) over x (T, B, I) from (h0, c0)."""
    T, B, I = x.shape
    H = w.H
    gx = torch.addmm(w.b, x.reshape(T * B, I), w.W_x.t()).view(T, B, 4 * H)  # W_x·x_t + b, all steps
    gates = torch.empty_like(gx)                           # f, i, c̃, o after σ / tanh
    cs, tanh_cs, hs = x.new_empty(T, B, H), x.new_empty(T, B, H), x.new_empty(T, B, H)
    times_W_h = w.times_W_h(B, T)
    h, c = h0, c0
    for t in range(T):
        if keep is not None:                               # a document starts: forget it all
            h, c = h * keep[t], c * keep[t]
        z = times_W_h(h, add=gx[t])                        # W · [h_{t-1}, x_t] + b
        g = gates[t]
        torch.sigmoid(z[:, : 2 * H], out=g[:, : 2 * H])    # f, i
        torch.tanh(z[:, 2 * H : 3 * H], out=g[:, 2 * H : 3 * H])  # c̃
        torch.sigmoid(z[:, 3 * H :], out=g[:, 3 * H :])    # o
        f, i, c_tilde, o = g[:, :H], g[:, H : 2 * H], g[:, 2 * H : 3 * H], g[:, 3 * H :]
        c = torch.addcmul(f * c, i, c_tilde, out=cs[t])    # c_t = f ⊙ c_{t-1} + i ⊙ c̃_t
        torch.tanh(c, out=tanh_cs[t])
        h = torch.mul(o, tanh_cs[t], out=hs[t])            # h_t = o ⊙ tanh(c_t)
    return gates, cs, tanh_cs, hs


def backward(w: LayerWeights, h0: Tensor, c0: Tensor, gates: Tensor, cs: Tensor, tanh_cs: Tensor, hs: Tensor,
             keep: Tensor | None, d_hs: Tensor | None, d_hT: Tensor | None, d_cT: Tensor | None):
    """dG (T, B, 4H), the gradient on every step's pre-activations, and ∂L/∂h0, ∂L/∂c0."""
    T, B, H = hs.shape
    f, i, c_tilde, o = gates[..., :H], gates[..., H : 2 * H], gates[..., 2 * H : 3 * H], gates[..., 3 * H :]
    c_prev = torch.cat([c0.unsqueeze(0), cs[:-1]])  # the c_{t-1} each step read
    if keep is not None:
        c_prev = c_prev * keep
    # Everything that does not depend on the running gradient, for all steps at once:
    # ∂c_t/∂(pre-activations) of f, i, c̃ and ∂h_t/∂(pre-activation of o).
    P = torch.empty_like(gates)
    torch.mul(c_prev, f * (1 - f), out=P[..., :H])                  # via f
    torch.mul(c_tilde, i * (1 - i), out=P[..., H : 2 * H])          # via i
    torch.mul(i, 1 - c_tilde * c_tilde, out=P[..., 2 * H : 3 * H])  # via c̃
    torch.mul(tanh_cs, o * (1 - o), out=P[..., 3 * H :])            # via o
    dtanh = o * (1 - tanh_cs * tanh_cs)                             # ∂h_t/∂c_t
    D = hs.new_empty(B, 4, H)  # the running gradient each gate acts through: (dc, dc, dc, dh)
    dG = torch.empty_like(gates)
    times_W_h_t = Times(w.W_h.t(), B, Times.packs(w.W, T))        # dh_{t-1} = dG_t W_h
    dh = d_hT if d_hT is not None else hs.new_zeros(B, H)
    dc = d_cT if d_cT is not None else hs.new_zeros(B, H)
    for t in range(T - 1, -1, -1):
        if d_hs is not None:
            dh = dh + d_hs[t]
        dc = torch.addcmul(dc, dh, dtanh[t])
        # f, i and c̃ act through c; o acts through h.
        D[:, :3] = dc.unsqueeze(1)
        D[:, 3] = dh
        torch.mul(P[t].view(B, 4, H), D, out=dG[t].view(B, 4, H))
        dc = dc * f[t]
        dh = times_W_h_t(dG[t])
        if keep is not None:  # no gradient flows into the previous document
            dh, dc = dh * keep[t], dc * keep[t]
    return dG, dh, dc
