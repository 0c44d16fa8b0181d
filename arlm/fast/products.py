"""A layer's weight in the forms the time loops read, and the small product they repeat.

Every path multiplies by the same fused weight W (4H, H + I) of a cell (the four gates
stacked f, i, c̃, o; columns [h_{t-1}, x_t]): W_x, its x columns, once per window for all
steps; W_h, its h columns, once per step. `LayerWeights` holds them; in training it is
made per call from views of the parameters, in the inference engine once, with
contiguous copies and the packed products kept.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _onednn_works() -> bool:
    """Whether this torch build has oneDNN's pre-packed matmul (x86/ARM CPU builds do)."""
    try:
        W, x = torch.randn(8, 4), torch.randn(2, 4)
        packed = torch.ops.mkldnn._reorder_linear_weight(W, 2)
        return torch.allclose(torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), x @ W.t(), atol=1e-5)
    except Exception:
        return False


ONEDNN = torch.backends.mkldnn.is_available() and _onednn_works()


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
