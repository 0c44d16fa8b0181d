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
definition. `LSTMCell.sequence` runs the same equations over a whole window fast:

* the four named weights are stacked into one matrix (a view of the same parameters,
  in the order f, i, c̃, o), split into the part that multiplies h and the part that
  multiplies x;
* the x part does not depend on the recurrence, so it is one big matrix product for
  all time steps before the loop; inside the loop there is one product with h per step;
* the backward pass is written by hand (`_Sequence.backward`): the recurrence runs
  backwards once, and the weight gradients are again one big product over all steps,
  instead of autograd's many small ones;
* what is left of a step after its matrix product, σ/tanh, c and h (and their
  derivatives going back), is one C loop on CPU float32 (arlm/lstm_step.c, built on
  first use by arlm/kernel.py) instead of a dozen torch calls; elsewhere, or without a
  C compiler, the same lines as torch operations below;
* for training-sized windows (H a whole number of vectors, T·B >= 32) the time loop
  itself is in C too, the per-step product with h included: each thread owns a slice
  of the hidden units and computes their gates and step, then waits once per step.

Tests check that `sequence` equals step-by-step `forward`, that its gradients equal
autograd's (and `torch.nn.LSTM`'s), and `gradcheck` in float64.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arlm import kernel


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


class LSTMCell(nn.Module):
    """One LSTM layer: four gates, each with its own weight over [h_{t-1}, x_t] and bias."""

    # The weights read when running without gradients on a CPU: "float32", or a "float16"
    # or "int8" copy that a token reads faster (kernel.LowPrecision). Training is float32.
    inference_weights: str = "float32"
    # Keep derived copies of the weights (stacked, packed, low-precision) between calls
    # without gradients; remade when a parameter's version changes. Off while training:
    # fused optimizers update parameters in place without bumping their versions.
    cache_weights: bool = False

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

    def __getstate__(self) -> dict:  # copies and pickles leave the derived weights behind
        return {k: v for k, v in self.__dict__.items() if k != "_fused_cache"}

    # --- the same equations over a window, fast --------------------------------------

    def _keeps_copies(self, weight_drop: float) -> bool:
        """Whether this call may reuse derived copies of the weights: cache on, no gradients,
        and no DropConnect drawing a fresh weight."""
        return not torch.is_grad_enabled() and self.cache_weights and not (weight_drop > 0 and self.training)

    def fused(self, weight_drop: float = 0.0) -> tuple[Tensor, Tensor]:
        """The four gates stacked in the order f, i, c̃, o: W (4H, H + I) and b (4H).
        The columns keep the [h_{t-1}, x_t] order of the named weights; gradients flow
        back to them. `weight_drop` applies DropConnect to the h columns (AWD-LSTM).

        With `cache_weights` set (arlm.load sets it) and no gradients, the stacked copy is kept
        and reused until a weight changes, so reading one token at a time does not copy the
        weights each time."""
        inference = self._keeps_copies(weight_drop)
        if inference:
            key = tuple((p.data_ptr(), p._version) for p in (self.W_f, self.W_i, self.W_c, self.W_o,
                                                             self.b_f, self.b_i, self.b_c, self.b_o))
            cached = getattr(self, "_fused_cache", None)
            if cached is not None and cached[0] == key:
                return cached[1], cached[2]
        W = torch.cat([self.W_f, self.W_i, self.W_c, self.W_o], dim=0)
        b = torch.cat([self.b_f, self.b_i, self.b_c, self.b_o])
        if weight_drop > 0 and self.training:
            H = self.hidden_size
            W = torch.cat([F.dropout(W[:, :H], weight_drop), W[:, H:]], dim=1)
        elif inference:
            self._fused_cache = (key, W, b)  # replaced whole: safe to read from several threads
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
        W, b = self.fused(weight_drop)
        h0, c0 = state
        # With cached weights W is the kept stacked weight, and what the loop builds from it
        # (a contiguous, oneDNN-packed or low-precision copy) can be kept on it too.
        reuse = self._keeps_copies(weight_drop)
        low = self.inference_weights if reuse and self.inference_weights != "float32" else None
        hs, h, c, gates, cs = _Sequence.apply(x, h0, c0, W, b, keep, reuse, low)
        H = self.hidden_size
        trace = Trace(gates[..., :H], gates[..., H : 2 * H], gates[..., 2 * H : 3 * H], gates[..., 3 * H :], cs, hs.detach())
        return hs, (h, c), trace


def _onednn_works() -> bool:
    """Whether this torch build has oneDNN's pre-packed matmul (x86/ARM CPU builds do)."""
    try:
        W, x = torch.randn(8, 4), torch.randn(2, 4)
        packed = torch.ops.mkldnn._reorder_linear_weight(W, 2)
        return torch.allclose(torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), x @ W.t(), atol=1e-5)
    except Exception:
        return False


_ONEDNN = torch.backends.mkldnn.is_available() and _onednn_works()


def _whole_window(lib, T: int, B: int, H: int) -> bool:
    """Whether a window runs as one C call: hidden units in whole vectors, and enough rows
    (T·B) that repacking the weight for the call is small beside the products."""
    return H % lib.lanes == 0 and T * B >= 32 and os.environ.get("ARLM_WINDOW", "1") != "0"


def _kernel_for(x: Tensor):
    """The compiled element-wise step (arlm/kernel.py) when it applies: CPU float32."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    return kernel.load()


class _Times:
    """y = x @ M^T (+ add), for the many small products of one weight inside a time loop.

    The same product whatever the path. On a CPU with oneDNN, M is packed once into the
    blocked layout its matmul kernels read, which makes the batch-sized per-step products
    1.3-2x faster than re-reading a plain matrix each step (this is how torch.nn.LSTM's
    CPU kernel gets its speed, too). Elsewhere (CUDA, float64, short windows) it is
    torch.addmm / torch.mm."""

    def __init__(self, M: Tensor, batch: int, steps: int, cache_on: Tensor | None = None):
        # `cache_on`: a fused weight reused across calls (inference) keeps what is built
        # here, per batch size, so reading a prompt or one token pays no copy or packing.
        store = getattr(cache_on, "_arlm_times", None) if cache_on is not None else None
        pack = _ONEDNN and M.device.type == "cpu" and M.dtype == torch.float32 and steps >= 4
        key = (batch, pack)
        if store is not None and key in store:
            self.M, self.packed = store[key]
            return
        self.M = M.contiguous()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.M, batch) if pack else None
        if cache_on is not None:
            if store is None:
                store = cache_on._arlm_times = {}
            store[key] = (self.M, self.packed)

    def __call__(self, x: Tensor, add: Tensor | None = None) -> Tensor:
        if self.packed is not None:
            if add is None:
                return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
            return torch.ops.mkldnn._linear_pointwise.binary(x, add, self.packed, None, "add")
        return x @ self.M.t() if add is None else torch.addmm(add, x, self.M.t())


class _Sequence(torch.autograd.Function):
    """Forward and backward of the LSTM equations over a window, by hand."""

    @staticmethod
    # The recurrence stays float32 under autocast (and the C paths read float32 buffers).
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, h0, c0, W, b, keep=None, reuse=False, low=None):
        T, B, I = x.shape
        H = h0.shape[1]
        # The C paths read and write float32 buffers: every input must be float32.
        lib = _kernel_for(x) if all(t.dtype == torch.float32 for t in (h0, c0, W, b)) else None
        low = low if low and reuse and lib is not None and kernel.supports(low) else None
        window = lib is not None and low is None and _whole_window(lib, T, B, H)  # backward takes the same path
        W_h, W_x = W[:, :H], W[:, H:]  # what multiplies h_{t-1}, what multiplies x_t
        # The input half of every gate for all steps at once, gx (T, B, 4H), and the
        # product with h_{t-1} that the loop does each step.
        if low is not None:  # inference from a float16/int8 copy of W, kept on the cached W
            Wq = W.__dict__.setdefault("_arlm_low", {})
            if low not in Wq:
                Wq[low] = kernel.LowPrecision(W, low, transposable=False)
            Wq = Wq[low]
            gx = Wq.matmul(x.reshape(T * B, I), H, I).view(T, B, 4 * H)
        else:
            if reuse:  # a contiguous copy kept on the cached W: products read it faster
                W_x = getattr(W, "_arlm_W_x", None)
                if W_x is None:
                    W_x = W._arlm_W_x = W[:, H:].contiguous()
            if lib is not None:  # the C step adds b itself, which saves writing it T times here
                gx = torch.mm(x.reshape(T * B, I), W_x.t()).view(T, B, 4 * H)
            else:
                gx = torch.addmm(b, x.reshape(T * B, I), W_x.t()).view(T, B, 4 * H)
        gates = torch.empty_like(gx)                         # f, i, c̃, o after σ / tanh
        cs = x.new_empty(T, B, H)
        hs = x.new_empty(T, B, H)
        tanh_cs = x.new_empty(T, B, H)
        if low is not None:  # the whole window in C: each step's product and element-wise half
            h0, c0 = h0.contiguous(), c0.contiguous()
            keep = keep.to(torch.float32).expand(T, B, 1).contiguous() if keep is not None else None
            Wq.lstm_sequence(gx, b.contiguous(), h0, c0, keep, gates, cs, tanh_cs, hs)
            h, c = hs[T - 1], cs[T - 1]
        elif window:
            # The whole window in one C call: per step, each thread's columns of W_h·h_{t-1}
            # and their gate math (arlm_lstm_window_forward).
            h0, c0, W, b = h0.contiguous(), c0.contiguous(), W.contiguous(), b.contiguous()
            keep = keep.to(torch.float32).expand(T, B, 1).contiguous() if keep is not None else None
            # scratch, held here while C writes it: the packed weight, h_{t-1} twice, W_h·h
            packed, h_in, zh = x.new_empty(4 * H * H), x.new_empty(2 * B * H), x.new_empty(B * 4 * H)
            lib.arlm_lstm_window_forward(
                torch.get_num_threads(), T, B, H, W.data_ptr(), W.shape[1], gx.data_ptr(), b.data_ptr(),
                h0.data_ptr(), c0.data_ptr(), keep.data_ptr() if keep is not None else None, gates.data_ptr(),
                cs.data_ptr(), tanh_cs.data_ptr(), hs.data_ptr(), packed.data_ptr(), h_in.data_ptr(), zh.data_ptr())
            h, c = hs[T - 1], cs[T - 1]
        elif lib is not None:  # the same step, its element-wise half in one C loop (arlm/lstm_step.c)
            times_W_h = _Times(W_h, B, T, cache_on=W if reuse else None)
            h0, c0 = h0.contiguous(), c0.contiguous()
            if keep is not None:
                keep = keep.to(torch.float32).expand(T, B, 1).contiguous()
            h_in = h0 * keep[0] if keep is not None else h0
            h_next = x.new_empty(B, H)  # h_t ⊙ keep_{t+1}: what the next product reads
            n, n4 = B * H * 4, B * 4 * H * 4  # bytes of one step's state / gates
            g_p, c_p, t_p, h_p, gx_p = gates.data_ptr(), cs.data_ptr(), tanh_cs.data_ptr(), hs.data_ptr(), gx.data_ptr()
            k_p = keep.data_ptr() if keep is not None else None
            b = b.contiguous()
            b_p, threads = b.data_ptr(), torch.get_num_threads()
            for t in range(T):
                zh = times_W_h(h_in).contiguous()             # W_h · h_{t-1}; the C step adds W_x · x_t + b
                c_prev = c0.data_ptr() if t == 0 else c_p + (t - 1) * n
                k_next = k_p + (t + 1) * B * 4 if k_p is not None and t + 1 < T else None
                lib.arlm_lstm_forward(threads, B, H, zh.data_ptr(), gx_p + t * n4, b_p, c_prev, k_p + t * B * 4 if k_p is not None else None,
                                      g_p + t * n4, c_p + t * n, t_p + t * n, h_p + t * n,
                                      k_next, h_next.data_ptr() if k_next is not None else None)
                h_in = h_next if k_next is not None else hs[t]
            h, c = hs[T - 1], cs[T - 1]
        else:
            times_W_h = _Times(W_h, B, T, cache_on=W if reuse else None)
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
        ctx.lib, ctx.window = lib, window
        ctx.save_for_backward(x, h0, c0, W, gates, cs, tanh_cs, hs, keep)
        ctx.mark_non_differentiable(gates, cs)
        ctx.set_materialize_grads(False)  # unused outputs (gates, cs) get None, not zeros
        return hs, h.clone(), c.clone(), gates, cs

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, d_hs, d_hT, d_cT, _d_gates, _d_cs):
        x, h0, c0, W, gates, cs, tanh_cs, hs, keep = ctx.saved_tensors
        T, B, H = hs.shape
        W_h, W_x = W[:, :H], W[:, H:]
        h_prev = torch.cat([h0.unsqueeze(0), hs[:-1]])  # the h_{t-1} each step read
        if keep is not None:
            h_prev = h_prev * keep
        dG = torch.empty_like(gates)
        lib = ctx.lib
        if ctx.window:  # the recurrence in one C call
            dh = d_hT.clone(memory_format=torch.contiguous_format) if d_hT is not None else hs.new_zeros(B, H)
            dc = d_cT.clone(memory_format=torch.contiguous_format) if d_cT is not None else hs.new_zeros(B, H)
            d_hs = d_hs.contiguous() if d_hs is not None else None
            W, c0 = W.contiguous(), c0.contiguous()
            packed, dh_rec = hs.new_empty(4 * H * H), hs.new_empty(B * H)  # scratch, held during the call
            lib.arlm_lstm_window_backward(
                torch.get_num_threads(), T, B, H, W.data_ptr(), W.shape[1], gates.data_ptr(), c0.data_ptr(),
                cs.data_ptr(), tanh_cs.data_ptr(), keep.data_ptr() if keep is not None else None,
                d_hs.data_ptr() if d_hs is not None else None, dh.data_ptr(), dc.data_ptr(), dG.data_ptr(),
                packed.data_ptr(), dh_rec.data_ptr())
        elif lib is not None:  # the element-wise half of each step in one C loop (arlm/lstm_step.c)
            times_W_h_t = _Times(W_h.t(), B, T)                         # dh_{t-1} = dG_t W_h
            dh = d_hT.contiguous() if d_hT is not None else hs.new_zeros(B, H)
            dc = d_cT.clone(memory_format=torch.contiguous_format) if d_cT is not None else hs.new_zeros(B, H)
            d_hs = d_hs.contiguous() if d_hs is not None else None
            n, n4 = B * H * 4, B * 4 * H * 4
            g_p, c_p, t_p, dG_p = gates.data_ptr(), cs.data_ptr(), tanh_cs.data_ptr(), dG.data_ptr()
            k_p = keep.data_ptr() if keep is not None else None
            threads = torch.get_num_threads()
            for t in range(T - 1, -1, -1):
                lib.arlm_lstm_backward(threads, B, H, g_p + t * n4, c0.data_ptr() if t == 0 else c_p + (t - 1) * n,
                                       k_p + t * B * 4 if k_p is not None else None, t_p + t * n, dh.data_ptr(),
                                       k_p + (t + 1) * B * 4 if k_p is not None and t + 1 < T else None,
                                       d_hs[t].data_ptr() if d_hs is not None else None, dc.data_ptr(), dG_p + t * n4)
                dh = times_W_h_t(dG[t]).contiguous()
            if keep is not None:  # no gradient flows into the previous document
                dh, dc = dh * keep[0], dc * keep[0]
        else:
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
            times_W_h_t = _Times(W_h.t(), B, T)                         # dh_{t-1} = dG_t W_h
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
        dG2 = dG.view(T * B, 4 * H)
        d_x = (dG2 @ W_x).view_as(x) if ctx.needs_input_grad[0] else None
        d_W = d_b = None
        if ctx.needs_input_grad[3]:
            # One product for the whole weight: dW = Σ_t dG_t^T [h_{t-1}, x_t].
            hx = x.new_empty(T, B, W.shape[1])
            hx[:, :, :H] = h_prev
            hx[:, :, H:] = x
            d_W = dG2.t() @ hx.view(T * B, -1)
        if ctx.needs_input_grad[4]:
            d_b = dG2.sum(0)
        return d_x, dh, dc, d_W, d_b, None, None, None
