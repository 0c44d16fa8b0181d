"""Inference from float16 or int8 copies of the weights, multiplied in float32 by C; and
from the float32 weights themselves through the same C loops.

Decoding one token reads every weight once and does little with each, so its speed is
the speed of reading memory: float16 halves the bytes and int8 (one scale per row)
quarters them, which keeps the default model in the CPU's cache. float32 reads all the
bytes, but for a decoding step the C loops still beat torch's calls (their dispatch and
matrix-vector kernels). Only the inference engine (arlm/inference.py) makes these;
training always reads its parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor

from arlm.fast import build


class LowPrecision:
    """A float32 weight (N, K) kept as float16, or as int8 with one float32 scale per row
    (w ≈ scale[n] · q[n, k]), or as itself ("float32"), multiplied in float32 by lstm_step.c.

    Few-column matrices (K < 128: the adaptive softmax's tail) are stored transposed, so
    the product runs along their thousands of rows, unless not `transposable` (a weight
    whose column ranges are multiplied separately, like a cell's fused W)."""

    def __init__(self, weight: Tensor, dtype: str, transposable: bool = True):
        if dtype not in build.SUFFIX or not build.supports(dtype) or build.load() is None:
            raise ValueError(f"{dtype} inference weights need the C step (a C compiler); use float32")
        W = weight.detach().float()
        self.dtype = dtype
        self.shape, self.transposed = tuple(W.shape), transposable and W.shape[1] < 128
        if dtype == "float32":  # the weight itself (the inference engine's own frozen copy)
            data, self.scale = W, None
        elif dtype == "float16":
            data, self.scale = W.to(torch.float16), None
        else:  # symmetric, per row: the largest |w| of a row maps to 127
            scale = W.abs().amax(1).clamp_min(1e-30) / 127
            data, self.scale = torch.round(W / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale.contiguous()
        self.data = (data.t() if self.transposed else data).contiguous()
        self.kernel = build.load()

    def matmul(self, x: Tensor, start: int = 0, width: int | None = None) -> Tensor:
        """x (M, width) @ W[:, start:start + width]^T as float32 (M, N)."""
        N, K = self.shape
        width = K - start if width is None else width
        x = x.contiguous()
        if x.shape[1] != width:
            raise ValueError(f"x has {x.shape[1]} columns, the weight's range {width}")
        y = x.new_empty(x.shape[0], N)
        if self.transposed:
            if start != 0 or width != K:
                raise ValueError("a transposed weight is multiplied whole")
            self.kernel.low_matmul_t(self.dtype, self.data, self.scale, x, y)
        else:
            self.kernel.low_matmul(self.dtype, self.data, self.scale, x, y, ld=K, column=start)
        return y

    def lstm_window(self, x: Tensor, b: Tensor, h0: Tensor, c0: Tensor, keep: Tensor | None):
        """One layer's window from this weight (a cell's fused W (4H, H + I), not transposed):
        gates (T, B, 4H), cs, tanh_cs, hs (T, B, H). keep (T, B, 1) float32 or None."""
        T, B, I = x.shape
        H = h0.shape[1]
        gx = self.matmul(x.reshape(T * B, I), H, I).view(T, B, 4 * H)  # W_x·x_t for every step
        gates = torch.empty_like(gx)
        cs, tanh_cs, hs = x.new_empty(T, B, H), x.new_empty(T, B, H), x.new_empty(T, B, H)
        self.kernel.low_window(self.dtype, self.data, self.scale, gx, b, h0, c0, keep, gates, cs, tanh_cs, hs)
        return gates, cs, tanh_cs, hs
