"""The adaptive softmax's per-token loss with each tail cluster's log-softmax in one C pass.

    adaptive_nll(asm, x, targets)  ==  -asm(x, targets).output

for a `torch.nn.AdaptiveLogSoftmaxWithLoss` `asm` (Grave et al. 2017): the same head, the
same clusters, the same parameters and gradients (tests check both to 1e-5 against torch's
module), computed differently where torch is slow. A tail cluster scores its tokens' words
through a narrow projection (d = E / 4 for the first cluster, E / 16 for the second), so its
products are cheap; what costs is everything torch builds around them: for the ~15% of a
window's tokens that land in a 40,000-word cluster it writes the full n × V logits, their
log-softmax, a zero matrix for the gather's gradient and the softmax's gradient, four arrays
of ~27 MB each, every step, bound by memory and by fresh pages. `ClusterLogProb` needs only
each token's target logit and log-sum-exp: lstm_step.c (arlm_cluster_*) runs over the words
in L1-sized blocks with the logits kept in registers, and the backward recomputes them.

The head (the shortlist plus one row per cluster) and the clusters' projections are dense,
well-shaped products, done by products.linear (torch's BLAS or oneDNN). Off CPU float32,
under autocast, without a compiler or with ARLM_CLUSTERS=0, it is torch's module; a cluster
whose width is not whole vectors of the build is torch's log-softmax and gather.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from arlm.fast import build
from arlm.fast.products import linear


class ClusterLogProb(torch.autograd.Function):
    """out[t] = log_softmax(P · Wcᵀ)[t, y[t]]: P (n, d) the cluster's projected inputs, Wc (V, d)
    its word weights, y (n,) targets relative to the cluster's first word."""

    @staticmethod
    def forward(ctx, P: Tensor, Wc: Tensor, y: Tensor, kernel: build.Kernel) -> Tensor:
        P, Wc, y = P.contiguous(), Wc.contiguous(), y.to(torch.int64).contiguous()
        out, lse = P.new_empty(P.shape[0]), P.new_empty(P.shape[0])
        kernel.cluster_forward(P, Wc, y, out, lse)
        ctx.kernel = kernel
        ctx.save_for_backward(P, Wc, y, lse)
        return out

    @staticmethod
    @once_differentiable  # the backward is C, not torch operations: no gradient of a gradient
    def backward(ctx, g: Tensor):
        P, Wc, y, lse = ctx.saved_tensors
        dP, dWc = torch.empty_like(P), torch.empty_like(Wc)
        ctx.kernel.cluster_backward(P, Wc, y, lse, g.contiguous(), dP, dWc)
        return dP, dWc, None, None


def _kernel(x: Tensor, asm: nn.AdaptiveLogSoftmaxWithLoss) -> build.Kernel | None:
    """The compiled kernel where the C clusters apply: CPU float32 everywhere, no autocast
    (ARLM_CLUSTERS=0 turns them off, for comparisons)."""
    if os.environ.get("ARLM_CLUSTERS", "1") == "0":
        return None
    tensors = [x, *asm.parameters()]
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors) or x.dim() != 2:
        return None
    return None if torch.is_autocast_enabled("cpu") else build.load()


def adaptive_nll(asm: nn.AdaptiveLogSoftmaxWithLoss, x: Tensor, targets: Tensor) -> Tensor:
    """Per-token negative log-likelihood (N,) of targets (N,) given features x (N, in_features):
    torch's AdaptiveLogSoftmaxWithLoss.forward, step for step, with the tail clusters' log-softmax
    and gather done by ClusterLogProb (where the cluster's width is whole vectors of the build)."""
    kernel = _kernel(x, asm)
    if kernel is None:
        return -asm(x, targets).output
    if x.shape[0] != targets.shape[0]:
        raise RuntimeError("Input and target should have the same size in the batch dimension.")
    output = x.new_zeros(targets.shape[0])
    gather = targets.new_empty(targets.shape[0])  # the head entry each token reads
    bounds = [0, *asm.cutoffs]
    used = 0
    for i in range(len(bounds) - 1):
        low, high = bounds[i], bounds[i + 1]
        in_range = (targets >= low) & (targets < high)
        rows = in_range.nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        if i == 0:  # shortlist words: scored by the head alone
            gather.index_copy_(0, rows, targets[in_range])
        else:       # cluster i: the head's entry for the cluster, plus the word within it
            projection, words = asm.tail[i - 1]
            P, y = linear(x.index_select(0, rows), projection.weight, projection.bias), targets[in_range] - low
            if P.shape[1] % kernel.lanes == 0:
                local = ClusterLogProb.apply(P, words.weight, y, kernel)
            else:
                local = F.log_softmax(words(P), dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
            gather.index_fill_(0, rows, asm.shortlist_size + i - 1)
            output.index_copy_(0, rows, local)
        used += rows.numel()
    if used != targets.shape[0]:
        raise RuntimeError(f"Target values should be in [0, {asm.n_classes - 1}], but values in range "
                           f"[{targets.min().item()}, {targets.max().item()}] were found. ")
    head = asm.head
    logits = linear(x, head.weight, head.bias) if isinstance(head, nn.Linear) else head(x)  # TiedHead: linear too
    head_logprob = F.log_softmax(logits, dim=1)
    output += head_logprob.gather(1, gather.unsqueeze(1)).squeeze(1)
    return -output
