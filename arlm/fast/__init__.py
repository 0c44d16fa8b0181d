"""The fast backend: the LSTM equations over a whole window, proven equal to the readable
step (arlm/cell.py, `LSTMCell.forward`) by tests, and much faster.

    lstm_window(x, h0, c0, W, b, keep, h_mask)   one layer over a window, with a hand-written backward

picks one path per window and hands the work to its module:

    torch_loop.py   torch operations (the reference: any device, any dtype, no compiler)
    c_step.py       a Python time loop, each step's element-wise half in C (lstm_step.c)
    c_window.py     the whole window in one C call, each step's product included
    lowp.py         inference from float16/int8 weight copies (and float32 decoding steps), in C

and, for the output layer,

    adaptive_nll(asm, x, targets)          the adaptive softmax's loss, its tail clusters in C (adaptive.py)

and for the large products, torch's BLAS or oneDNN, whichever is the fast one on this CPU
(products.py; ARLM_MATMUL=blas|onednn forces one):

    mm(a, b)  ==  a @ b        linear(x, W, b)  ==  F.linear(x, W, b)        Linear  ==  nn.Linear
    adopt_linears(module)      a module's own nn.Linear layers made Linear, in place

and for dropout, torch's own random masks drawn in C (masks.py):

    dropout(x, p)  ==  F.dropout(x, p)      bernoulli_(mask, p)  ==  mask.bernoulli_(p)
    dropout_mask(shape, p, like)            F.dropout's scaled mask itself (DropConnect's h_mask)

The tricks every path shares: the four named weights are read as one stacked matrix W
(4H, H + I), in the order f, i, c̃, o; the x half of every gate is one big product for all
steps before the loop (it does not depend on the recurrence); the backward pass runs the
recurrence backwards once and forms the weight gradient as one product over all steps,
instead of autograd's many small ones. build.py compiles lstm_step.c on first use.
"""

from __future__ import annotations

import torch
from torch import Tensor

from arlm.fast import build, c_step, c_window, torch_loop
from arlm.fast.adaptive import adaptive_nll
from arlm.fast.masks import bernoulli_, dropout, dropout_mask
from arlm.fast.products import LayerWeights, Linear, adopt_linears, linear, mm

__all__ = ["LayerWeights", "Linear", "adaptive_nll", "adopt_linears", "bernoulli_", "dropout", "dropout_mask", "linear", "lstm_window", "mm",
           "prepare_keep", "run_forward", "Window"]


def _kernel_for(*tensors: Tensor) -> build.Kernel | None:
    """The compiled step when it applies: every tensor float32 on the CPU."""
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return None
    return build.load()


def prepare_keep(keep: Tensor | None, x: Tensor) -> Tensor | None:
    """keep (T, B, 1) in x's dtype, one value per row in memory (the C paths read it as (T, B))."""
    if keep is None:
        return None
    T, B, _ = x.shape
    return keep.to(x.dtype).expand(T, B, 1).contiguous()


def run_forward(w: LayerWeights, x: Tensor, h0: Tensor, c0: Tensor, keep: Tensor | None, low=None):
    """One layer's forward over a window, by whichever path applies: (path, kernel, gates,
    cs, tanh_cs, hs, h0, c0). `low`: a lowp.LowPrecision copy of W (inference only).
    keep must come from prepare_keep."""
    T, B, _ = x.shape
    kernel = _kernel_for(x, h0, c0, w.W, w.b)
    if kernel is None:
        return (torch_loop, None, *torch_loop.forward(w, x, h0, c0, keep), h0, c0)
    h0, c0 = h0.contiguous(), c0.contiguous()  # the C paths read plain rows
    if low is not None:
        return (None, kernel, *low.lstm_window(x, w.b.contiguous(), h0, c0, keep), h0, c0)
    path = c_window if c_window.applies(kernel, T, B, w.H) else c_step
    return (path, kernel, *path.forward(kernel, w, x, h0, c0, keep), h0, c0)


class Window(torch.autograd.Function):
    """Forward and backward of one layer over a window, by hand. Inputs x (T, B, I), h0 and
    c0 (B, H), the fused W (4H, H + I) and b (4H), keep (T, B, 1) or None, and h_mask (4H, H)
    or None: DropConnect's scaled mask, the recurrence multiplying by W_h ⊙ h_mask (the
    gradient to W's h columns is then the masked weight's times h_mask, as autograd would give
    through `W_h * h_mask`). Outputs hs (T, B, H), the final h and c, and (not
    differentiable) the gates (T, B, 4H) and cs."""

    @staticmethod
    # The recurrence stays float32 under autocast (and the C paths read float32 buffers).
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, h0, c0, W, b, keep=None, h_mask=None):
        H = h0.shape[1]
        keep = prepare_keep(keep, x)
        w = LayerWeights(W, b, H, h_mask=h_mask)
        path, kernel, gates, cs, tanh_cs, hs, h0, c0 = run_forward(w, x, h0, c0, keep)
        ctx.path, ctx.kernel = path, kernel  # the backward takes the forward's path
        ctx.save_for_backward(x, h0, c0, w.W, w.h_mask, gates, cs, tanh_cs, hs, keep)
        ctx.mark_non_differentiable(gates, cs)
        ctx.set_materialize_grads(False)  # unused outputs (gates, cs) get None, not zeros
        return hs, hs[-1].clone(), cs[-1].clone(), gates, cs

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, d_hs, d_hT, d_cT, _d_gates, _d_cs):
        x, h0, c0, W, h_mask, gates, cs, tanh_cs, hs, keep = ctx.saved_tensors
        T, B, H = hs.shape
        args = (LayerWeights(W, None, H, h_mask=h_mask), h0, c0, gates, cs, tanh_cs, hs, keep, d_hs, d_hT, d_cT)
        if ctx.path is torch_loop:
            dG, dh, dc = torch_loop.backward(*args)
        else:
            dG, dh, dc = ctx.path.backward(ctx.kernel, *args)
        dG2 = dG.view(T * B, 4 * H)
        d_x = mm(dG2, W[:, H:]).view_as(x) if ctx.needs_input_grad[0] else None
        d_W = d_b = None
        if ctx.needs_input_grad[3]:
            # One product for the whole weight: dW = Σ_t dG_t^T [h_{t-1}, x_t].
            # [h_{t-1}, x_t] for every step, each half written once straight into place (no
            # concatenated or masked temporaries: at training sizes each is a fresh buffer of
            # megabytes, pages the kernel must fault in and zero).
            hx = x.new_empty(T, B, W.shape[1])
            h_prev = hx[:, :, :H]  # the h_{t-1} each step read
            if keep is None:
                h_prev[0] = h0
                h_prev[1:] = hs[:-1]
            else:
                torch.mul(h0, keep[0], out=h_prev[0])
                torch.mul(hs[:-1], keep[1:], out=h_prev[1:])
            hx[:, :, H:] = x
            d_W = mm(dG2.t(), hx.view(T * B, -1))
            if h_mask is not None:  # through W_h ⊙ h_mask
                d_W[:, :H].mul_(h_mask)
        if ctx.needs_input_grad[4]:
            d_b = dG2.sum(0)
        return d_x, dh, dc, d_W, d_b, None, None


def lstm_window(x: Tensor, h0: Tensor, c0: Tensor, W: Tensor, b: Tensor, keep: Tensor | None = None,
                h_mask: Tensor | None = None):
    """One layer over a window: (hs, h_T, c_T, gates, cs). See `Window`."""
    return Window.apply(x, h0, c0, W, b, keep, h_mask)
