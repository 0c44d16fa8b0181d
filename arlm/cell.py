"""The LSTM cell, written by hand.

Each gate looks at the previous hidden state and the current input, side by side,
[h_{t-1}, x_t], through its own weight matrix and bias:

    f_t  = σ(W_f · [h_{t-1}, x_t] + b_f)        forget gate: how much old memory to keep
    i_t  = σ(W_i · [h_{t-1}, x_t] + b_i)        input gate: how much new content to write
    c̃_t  = tanh(W_c · [h_{t-1}, x_t] + b_c)     candidate: the new content proposed
    o_t  = σ(W_o · [h_{t-1}, x_t] + b_o)        output gate: how much memory to expose
    c_t  = f_t ⊙ c_{t-1} + i_t ⊙ c̃_t            cell state: the long-term memory
    h_t  = o_t ⊙ tanh(c_t)                      hidden state: what the next layer sees

`LSTMCell.forward` is exactly these six lines, one time step at a time: it is the
definition. `LSTMCell.sequence` runs the same equations over a whole window by handing the
four weights, stacked into one matrix, to the fast backend (arlm/fast/), which is tested
equal to `forward` step by step, in its gradients (and to `torch.nn.LSTM`'s), and by
`gradcheck` in float64. Nothing about speed lives here.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from arlm import fast


class Gates(NamedTuple):
    f: Tensor        # forget gate, in (0, 1)
    i: Tensor        # input gate, in (0, 1)
    c_tilde: Tensor  # candidate, in (-1, 1)
    o: Tensor        # output gate, in (0, 1)


class Step(NamedTuple):
    h: Tensor
    c: Tensor
    gates: Gates


class Trace(NamedTuple):
    """Everything one layer computed over a window, each (seq_len, batch, hidden)."""

    f: Tensor
    i: Tensor
    c_tilde: Tensor
    o: Tensor
    c: Tensor
    h: Tensor


def trace_of(gates: Tensor, cs: Tensor, hs: Tensor) -> Trace:
    """A Trace from the stacked gates (T, B, 4H) in the order f, i, c̃, o and the states."""
    H = cs.shape[-1]
    return Trace(gates[..., :H], gates[..., H : 2 * H], gates[..., 2 * H : 3 * H], gates[..., 3 * H :], cs, hs.detach())


class LSTMCell(nn.Module):
    """One LSTM layer: four gates, each with its own weight over [h_{t-1}, x_t] and bias."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        H, I = hidden_size, input_size
        self.W_f = nn.Parameter(torch.empty(H, H + I))
        self.W_i = nn.Parameter(torch.empty(H, H + I))
        self.W_c = nn.Parameter(torch.empty(H, H + I))
        self.W_o = nn.Parameter(torch.empty(H, H + I))
        self.b_f = nn.Parameter(torch.empty(H))
        self.b_i = nn.Parameter(torch.empty(H))
        self.b_c = nn.Parameter(torch.empty(H))
        self.b_o = nn.Parameter(torch.empty(H))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        # A forget bias of 1 starts every unit remembering, so gradients flow through
        # c from the first step (Gers et al. 2000; Jozefowicz et al. 2015).
        nn.init.ones_(self.b_f)

    # --- the definition: one step, the equations as written ---------------------------

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> Step:
        """One time step. x: (batch, input_size); state: (h, c), each (batch, hidden)."""
        h_prev, c_prev = state
        hx = torch.cat([h_prev, x], dim=1)                   # [h_{t-1}, x_t]
        f = torch.sigmoid(hx @ self.W_f.T + self.b_f)        # keep
        i = torch.sigmoid(hx @ self.W_i.T + self.b_i)        # write
        c_tilde = torch.tanh(hx @ self.W_c.T + self.b_c)     # propose
        o = torch.sigmoid(hx @ self.W_o.T + self.b_o)        # expose
        c = f * c_prev + i * c_tilde                         # memory
        h = o * torch.tanh(c)                                # output
        return Step(h, c, Gates(f, i, c_tilde, o))

    # --- the same equations over a window ----------------------------------------------

    def fused(self) -> tuple[Tensor, Tensor]:
        """The four gates stacked in the order f, i, c̃, o: W (4H, H + I) and b (4H).
        The columns keep the [h_{t-1}, x_t] order of the named weights; gradients flow
        back to them."""
        W = torch.cat([self.W_f, self.W_i, self.W_c, self.W_o], dim=0)
        b = torch.cat([self.b_f, self.b_i, self.b_c, self.b_o])
        return W, b

    def sequence(
        self, x: Tensor, state: tuple[Tensor, Tensor], weight_drop: float = 0.0, keep: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Trace]:
        """Run over x (seq_len, batch, input_size) from state (h0, c0).

        `keep` (seq_len, batch, 1), optional: 0 where a new document starts, so the state
        is zeroed before that step (h_{t-1}, c_{t-1} ← 0), 1 elsewhere.

        Returns the hidden states (seq_len, batch, hidden), the final (h, c), and the
        `Trace` of every gate and state at every step (computed anyway for the backward
        pass, so recording gates costs nothing extra)."""
        W, b = self.fused()
        # DropConnect (AWD-LSTM): for this window the recurrence reads W_h ⊙ m / (1 − p) with
        # m ~ Bernoulli(1 − p) per weight, F.dropout(W_h, p) exactly; the backend applies the
        # mask as it reads W_h, so the dropped copy of the weight is never made.
        H = self.hidden_size
        h_mask = fast.dropout_mask((4 * H, H), weight_drop, W) if weight_drop > 0 and self.training else None
        hs, h, c, gates, cs = fast.lstm_window(x, state[0], state[1], W, b, keep, h_mask)
        return hs, (h, c), trace_of(gates, cs, hs)
