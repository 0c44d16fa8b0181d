"""AdamW that updates only the embedding rows a window reads, and clipping that knows it.

At a 50k vocabulary the embedding is most of the model (50,000 × 256 = 12.8 M of the §5
model's 15.7 M parameters), yet a window of 35 × 32 tokens reads at most 1,120 of its rows
plus the adaptive softmax's shortlist. A dense gradient makes every step pay for all
50,000 rows several times over: zero-filling the gradient, adding the two tied uses into
it, its norm for clipping, and AdamW's read-modify-write of weights and both moments.

`nn.Embedding(sparse=True)` gives the same gradient as a sparse tensor (the rows read, each
with its rows of the dense gradient; every other row is exactly zero). `RowAdamW` is
`torch.optim.AdamW` for every dense parameter and, for a parameter with a sparse gradient,
the same AdamW update applied to the rows the gradient names only — *lazy* AdamW, as
TensorFlow's LazyAdam and `torch.optim.SparseAdam` do it, with AdamW's decoupled weight
decay on those rows. A row that is not read keeps its weights and both moments; dense AdamW
would still move it a little (by the momentum it carries, and the weight decay). That is
the one difference, and it vanishes when every row is read: then the result is dense
AdamW's (tested). Why lazy rather than exact: an exact catch-up of a skipped row has no
closed form (ε inside the square root's denominator, a rate that changes every step). What
is skipped is the echo of an old gradient: per step, lazy updates learn rare words a little
more slowly early on; per minute they win, because each step is cheaper (BENCHMARKS §8).

The state has AdamW's own layout (`step`, `exp_avg`, `exp_avg_sq` per parameter), so a
checkpoint saved by dense AdamW resumes under `RowAdamW` and back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


class RowAdamW(torch.optim.AdamW):
    """AdamW; parameters whose gradient is sparse get a lazy row-wise update (see above)."""

    def __init__(self, params, **kwargs):
        if kwargs.get("amsgrad") or kwargs.get("maximize"):
            raise ValueError("RowAdamW supports neither amsgrad nor maximize")
        super().__init__(params, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("RowAdamW.step takes no closure")
        rows = [(p, group) for group in self.param_groups for p in group["params"]
                if p.grad is not None and p.grad.is_sparse]
        grads = [p.grad for p, _ in rows]
        for p, _ in rows:  # hidden from the dense step, which skips parameters without a gradient
            p.grad = None
        try:
            super().step()
        finally:
            for (p, _), g in zip(rows, grads):
                p.grad = g
        for p, group in rows:
            self._row_step(p, p.grad.coalesce(), group)

    def _row_step(self, p: Tensor, grad: Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        t = state["step"].item()
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        r, g = grad.indices()[0], grad.values()
        w, m, v = p[r], state["exp_avg"][r], state["exp_avg_sq"][r]
        # AdamW on these rows, term for term:
        #   w ← w(1 − lr·λ);  m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²
        #   w ← w − lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + ε)
        w.mul_(1 - lr * wd)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / math.sqrt(1 - beta2 ** t)).add_(eps)
        w.addcdiv_(m, denom, value=-lr / (1 - beta1 ** t))
        p.index_copy_(0, r, w)
        state["exp_avg"].index_copy_(0, r, m)
        state["exp_avg_sq"].index_copy_(0, r, v)


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """`torch.nn.utils.clip_grad_norm_` for dense and sparse gradients alike: the global norm
    of all gradients (a sparse one coalesced first, so a row read twice counts once, summed),
    every gradient scaled by max_norm / norm when the norm is larger. Returns the norm."""
    params = [p for p in params if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)  # all dense: torch's own, bit for bit
    grads = []
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            grads.append(p.grad.values())  # a view: scaling it scales the gradient
        else:
            grads.append(p.grad)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)  # torch's own rule, ε included
    for g in grads:
        g.mul_(scale)
    return norm
