"""A layer's weight in the forms the time loops read, and the small product they repeat.

Every path multiplies by the same fused weight W (4H, H + I) of a cell (the four gates
stacked f, i, c̃, o; columns [h_{t-1}, x_t]): W_x, its x columns, once per window for all
steps; W_h, its h columns, once per step. `LayerWeights` holds them; in training it is
made per call from views of the parameters, in the inference engine once, with
contiguous copies and the packed products kept.

The large products of a train step (W_x·x_t for a whole window, dL/dx, dL/dW, and the
output layers' `linear`) go through `mm`: torch's BLAS, or oneDNN where that is the faster
of the two GEMMs torch carries (`onednn_products`).
"""

from __future__ import annotations

import functools
import os
import platform

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _onednn_works() -> bool:
    """Whether this torch build has oneDNN's pre-packed matmul (x86/ARM CPU builds do)."""
    try:
        W, x = torch.randn(8, 4), torch.randn(2, 4)
        packed = torch.ops.mkldnn._reorder_linear_weight(W, 2)
        return torch.allclose(torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), x @ W.t(), atol=1e-5)
    except Exception:
        return False


ONEDNN = torch.backends.mkldnn.is_available() and _onednn_works()


@functools.lru_cache(maxsize=1)
def _cpu_vendor() -> str:
    """The CPU's vendor string (GenuineIntel, AuthenticAMD, ...), or "" where nothing says."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("vendor_id") and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()  # Windows: "AMD64 Family 26 Model 2 Stepping 0, AuthenticAMD"


@functools.lru_cache(maxsize=1)
def _auto_onednn() -> bool:
    """Whether oneDNN should do the window's large products by default: where torch's BLAS is
    MKL and the CPU has AVX-512 but is not Intel's. MKL picks its kernels by vendor, and on
    AMD runs its AVX2 ones, half of the vector width a Zen 5 core multiplies at; oneDNN (in
    the same torch) picks by feature and runs AVX-512 there (BENCHMARKS §14 measures both on
    each CPU: `python scripts/benchmark.py cell`, the two GEMM columns)."""
    from arlm.fast.build import cpu_features  # build imports nothing from here

    blas_is_mkl = "BLAS_INFO=mkl" in torch.__config__.show()
    return ONEDNN and blas_is_mkl and "avx512f" in cpu_features() and "GenuineIntel" not in _cpu_vendor()


def onednn_products() -> bool:
    """Whether `mm` runs on oneDNN in this process: ARLM_MATMUL=onednn|blas forces one
    (for comparisons and tests), otherwise `_auto_onednn` decides."""
    forced = os.environ.get("ARLM_MATMUL", "").strip().lower()
    if forced in ("onednn", "blas"):
        return forced == "onednn" and ONEDNN
    return _auto_onednn()


def _dense(t: Tensor) -> Tensor:
    """t itself where its rows or its columns lie end to end, else a dense copy: oneDNN reads
    a plain or a transposed matrix at full speed, but a column slice such as W[:, H:] (rows
    further apart than they are long) sends it to a reference loop ~1000× slower. The copy
    keeps the slice's own order (a transposed slice becomes a transposed copy): copying
    across the grain instead costs as much as the product at H = 512."""
    if t.is_contiguous() or t.t().is_contiguous():
        return t
    return t.t().contiguous().t() if t.stride(0) == 1 else t.contiguous()


def _onednn_for(*tensors: Tensor) -> bool:
    """Whether mm() and linear() take oneDNN's way here: CPU float32 tensors, oneDNN chosen,
    and nothing that must see plain torch operations (autocast, tracing, ONNX export)."""
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors) or not onednn_products():
        return False
    return not (torch.is_autocast_enabled("cpu") or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def mm(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for 2-D CPU/GPU tensors: torch.mm, or oneDNN's matmul where `onednn_products()`
    (CPU float32 only). The same product either way, rounded differently in the last bits
    (each sums its k terms in its own blocked order), so a seed's training follows one
    trajectory per choice; ARLM_MATMUL=blas gives torch's."""
    if not a.numel() or not b.numel() or not _onednn_for(a, b):
        return torch.mm(a, b)
    # oneDNN's linear computes x · Wᵀ with W (out, in): here x = a, W = bᵀ.
    return torch.ops.mkldnn._linear_pointwise(_dense(a), _dense(b.t()), None, "none", [], "")


class Times:
    """y = x @ M^T (+ add), for the many small products of one weight inside a time loop.

    The same product whatever the path. On a CPU with oneDNN, M is packed once into the
    blocked layout its matmul kernels read, which makes the batch-sized per-step products
    1.3-2x faster than re-reading a plain matrix each step (this is how torch.nn.LSTM's
    CPU kernel gets its speed, too). Elsewhere (CUDA, float64, short windows) it is
    torch.addmm / torch.mm."""

    def __init__(self, M: Tensor, batch: int, pack: bool):
        self.M = M.contiguous()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.M, batch) if pack else None

    @staticmethod
    def packs(M: Tensor, steps: int) -> bool:
        """Packing pays for itself over a few steps, on CPU float32 where oneDNN runs."""
        return ONEDNN and M.device.type == "cpu" and M.dtype == torch.float32 and steps >= 4

    def __call__(self, x: Tensor, add: Tensor | None = None) -> Tensor:
        if self.packed is not None:
            if add is None:
                return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
            return torch.ops.mkldnn._linear_pointwise.binary(x, add, self.packed, None, "add")
        return x @ self.M.t() if add is None else torch.addmm(add, x, self.M.t())


class LayerWeights:
    """One cell's fused W (4H, H + I) and b (4H), and what the loops derive from them.

    `h_mask` (4H, H), training only: DropConnect's scaled mask m / (1 − p); the recurrence
    multiplies by W_h ⊙ h_mask (the C window applies it while packing W_h, the other paths
    read a masked copy), the x product by W_x as it is.

    With `frozen=True` (the inference engine) the derived forms (a contiguous W_x, the packed
    W_h per batch size) are made once and kept: the weights never change under it."""

    def __init__(self, W: Tensor, b: Tensor | None, hidden_size: int, frozen: bool = False,
                 h_mask: Tensor | None = None):
        H = self.H = hidden_size
        self.W = W.contiguous()  # no copy when it already is
        self.b = b.contiguous() if b is not None else None
        W = self.W
        self.W_x = W[:, H:].contiguous() if frozen else W[:, H:]  # a contiguous copy reads faster
        self.h_mask = h_mask.contiguous() if h_mask is not None else None
        self._W_h: Tensor | None = None  # the masked W_h, made on first use (the C window never needs it)
        self._frozen = frozen
        self._times: dict[tuple[int, bool], Times] = {}

    @property
    def W_h(self) -> Tensor:
        """The weight the recurrence multiplies by: W's h columns (⊙ h_mask with DropConnect)."""
        if self.h_mask is None:
            return self.W[:, : self.H]
        if self._W_h is None:
            self._W_h = self.W[:, : self.H] * self.h_mask  # F.dropout's x · noise, the same numbers
        return self._W_h

    def times_W_h(self, batch: int, steps: int) -> Times:
        """The per-step product with h_{t-1}, packed for this batch size where that pays."""
        pack = Times.packs(self.W, steps)
        key = (batch, pack)
        times = self._times.get(key)
        if times is None:
            times = Times(self.W_h, batch, pack)
            if self._frozen:  # replaced whole: safe to read from several threads
                self._times = {**self._times, key: times}
        return times


class _Linear(torch.autograd.Function):
    """y = x Wᵀ + b with its three products (forward, dL/dx = dy W, dL/dW = dyᵀ x) by `mm`."""

    @staticmethod
    def forward(ctx, x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(flat, W)
        ctx.shape, ctx.has_bias = x.shape, b is not None
        y = torch.ops.mkldnn._linear_pointwise(_dense(flat), _dense(W), b, "none", [], "")
        return y.view(*x.shape[:-1], W.shape[0])

    @staticmethod
    def backward(ctx, dy: Tensor):
        flat, W = ctx.saved_tensors
        dy = dy.reshape(flat.shape[0], W.shape[0])
        dx = mm(dy, W).view(ctx.shape) if ctx.needs_input_grad[0] else None
        dW = mm(dy.t(), flat) if ctx.needs_input_grad[1] else None
        db = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dW, db


def linear(x: Tensor, W: Tensor, b: Tensor | None = None) -> Tensor:
    """F.linear(x, W, b), its products by oneDNN where `mm` uses it (the same values to
    float32 rounding, gradients included); elsewhere F.linear itself, bit for bit."""
    if not x.numel() or not W.numel() or not _onednn_for(x, W, *([b] if b is not None else [])):
        return F.linear(x, W, b)
    return _Linear.apply(x, W, b)


class Linear(nn.Linear):
    """nn.Linear (the same parameters, names and initialisation, so checkpoints load either
    way) whose products go through `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


def adopt_linears(module: nn.Module) -> None:
    """Make every plain nn.Linear inside `module` a `Linear`, in place: the same objects and
    parameters (no new initialisation, so no random draw moves), only their products go by
    `linear` — for layers a module builds itself, such as torch's adaptive softmax's."""
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = Linear
