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

import ctypes

import torch
from torch import Tensor

from arlm.fast import build

ROWS = 4  # the C product multiplies up to this many input rows in one pass over the weight


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


class _CLinear(ctypes.Structure):
    """lstm_step.c's arlm_linear: one weight as the C loops read it."""
    _fields_ = [("w", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                ("n", ctypes.c_int64), ("k", ctypes.c_int64), ("ld", ctypes.c_int64), ("transposed", ctypes.c_int64)]


class _CDecoder(ctypes.Structure):
    """lstm_step.c's arlm_decoder: a whole model's weights for one decoding step."""
    _fields_ = [("layers", ctypes.c_int64), ("hidden", ctypes.c_int64), ("emb", ctypes.c_int64),
                ("embedding", ctypes.c_void_p), ("cells", ctypes.POINTER(_CLinear)),
                ("projection", ctypes.POINTER(_CLinear)), ("head", ctypes.POINTER(_CLinear)),
                ("shortlist", ctypes.c_int64), ("clusters", ctypes.c_int64), ("cutoffs", ctypes.POINTER(ctypes.c_int64)),
                ("down", ctypes.POINTER(_CLinear)), ("up", ctypes.POINTER(_CLinear)), ("eos", ctypes.c_int64)]


def _linear(low: LowPrecision, bias: Tensor | None) -> _CLinear:
    N, K = low.shape
    return _CLinear(low.data.data_ptr(), None if low.scale is None else low.scale.data_ptr(),
                    None if bias is None else bias.data_ptr(), N, K, K, int(low.transposed))


class Decoder:
    """One decoding step of a whole model in one C call (lstm_step.c, arlm_decode_*): the
    embedding lookup, every layer's step, the projection and the log-softmax over the whole
    vocabulary (adaptive or not), from the inference engine's own copies of the weights.

    For a step of a few sequences, where the per-call cost of torch (and of Python between
    the C calls) was a third of the step. `cells`: each layer's LowPrecision copy of its fused
    W (4H, H + I) and its bias; `head`: the output layer, or the adaptive softmax's head with
    `tails` (down, up) and `cutoffs` [shortlist, ..., vocabulary]; eos: the id that restarts
    a sequence's state (None: never). Holds references to every tensor it points at."""

    def __init__(self, embedding: Tensor, cells: list[tuple[LowPrecision, Tensor]],
                 projection: tuple[LowPrecision, Tensor | None] | None, head: tuple[LowPrecision, Tensor | None],
                 tails: list[tuple[LowPrecision, LowPrecision]], cutoffs: list[int], eos: int | None):
        dtypes = {low.dtype for low, _ in cells} | {head[0].dtype}
        if len(dtypes) != 1 or not all(t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu"
                                       for t in [embedding] + [b for _, b in cells]):
            raise ValueError("a Decoder reads one weight type, and float32 contiguous CPU embeddings and biases")
        self.dtype = dtypes.pop()
        self.kernel = build.load()
        self.vocab_size, self.layers, self.hidden = embedding.shape[0], len(cells), cells[0][0].shape[0] // 4
        c_cells = (_CLinear * len(cells))(*[_linear(low, b) for low, b in cells])
        c_projection = None if projection is None else ctypes.pointer(_linear(*projection))
        c_head = ctypes.pointer(_linear(*head))
        n = max(len(tails), 1)
        c_down = (_CLinear * n)(*[_linear(d, None) for d, _ in tails])
        c_up = (_CLinear * n)(*[_linear(u, None) for _, u in tails])
        c_cutoffs = (ctypes.c_int64 * len(cutoffs))(*cutoffs)
        shortlist = cutoffs[0] if tails else head[0].shape[0]
        self.model = _CDecoder(len(cells), self.hidden, embedding.shape[1], embedding.data_ptr(), c_cells,
                               c_projection, c_head, shortlist, len(tails), c_cutoffs, c_down, c_up,
                               -1 if eos is None else eos)
        # Everything the structure points at lives as long as this Decoder.
        self._refs = (embedding, cells, projection, head, tails, c_cells, c_projection, c_head, c_down, c_up, c_cutoffs)

    def step(self, ids: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """ids (B,) → log-probabilities of the next token (B, V) and the new state (h, c), each
        (layers, B, H), from the state h0, c0."""
        ids = ids.to(torch.int64).contiguous()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise IndexError(f"token ids must be in [0, {self.vocab_size}), got {ids.tolist()}")
        h0, c0 = h0.contiguous(), c0.contiguous()
        h, c = torch.empty_like(h0), torch.empty_like(c0)
        out = h0.new_empty(ids.shape[0], self.vocab_size)
        self.kernel.decode(self.dtype, self.model, ids, h0, c0, h, c, out)
        return out, (h, c)
