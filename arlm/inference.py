"""The inference engine: a trained model's weights, prepared once, never changed.

    engine = FrozenModel(model, weights="int8")      # or "float32" (default), "float16"
    out = engine(ids, state)                         # features, state, traces (record=True)
    log_probs, state = engine.step(next_ids, state)  # one token per sequence

Training works on a `LanguageModel` whose parameters change every step; inference reads
the same weights thousands of times without changing them, and wants them in other forms:
each cell's four gate weights stacked into one matrix and its x columns copied contiguous,
the per-step product packed by oneDNN for the batch size, the tied softmax head's rows
gathered, and, on request, float16 or int8 copies that a CPU reads two to four times
faster (arlm/fast/lowp.py). `FrozenModel` makes all of them once, at construction, from a
snapshot of the weights: nothing is ever invalidated, so the model and the trainer know
nothing about it. A model trained further needs a new FrozenModel.

The numbers are the model's own, tested equal to `LanguageModel` to 1e-5 in float32: a
window of several tokens runs the same backend paths (arlm/fast/) as training's forward
pass in eval mode; a decoding step (`step`: one token for up to four sequences) runs the
whole model, float32 too, in one C call (lowp.Decoder: the embedding, every layer, the
projection and the log-softmax over the vocabulary), where torch's per-call cost would be a
third of a step on a CPU (the state the window path's to the bit, log-probabilities to
float32 rounding). The
adaptive softmax is run here from the prepared products (head, then each cluster), which
is what `torch.nn.AdaptiveLogSoftmaxWithLoss.log_prob` computes, because its modules
cannot multiply from int8 or float16 copies.

A FrozenModel is read-only after construction, so one can serve several threads at once.
`arlm.load` (arlm/generate.py) builds the Predictor around one; gate recording
(arlm/gates.py) and export read it too.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from arlm import fast
from arlm.cell import trace_of
from arlm.config import ModelConfig
from arlm.fast import build
from arlm.fast.lowp import ROWS, Decoder, LowPrecision
from arlm.model import LanguageModel, Output, State, TiedHead

WEIGHTS = ("float32", "float16", "int8")


SMALL_BATCH = ROWS  # float32 products of at most this many rows (tokens) run in lowp's C loops (see _Layer)


def _c_float32(dtype: str, device: torch.device) -> bool:
    """Whether float32 weights also get lowp's C products (for small batches)."""
    return dtype == "float32" and device.type == "cpu" and build.load() is not None


def _c_copy(low: LowPrecision | None, rows: int) -> LowPrecision | None:
    """The C copy to multiply `rows` rows by: a float16/int8 one always, a float32 one for
    decoding-sized products only; None: torch's product (or the training paths)."""
    if low is None or (low.dtype == "float32" and rows > SMALL_BATCH):
        return None
    return low


class _Linear:
    """y = x Wᵀ (+ b) from float32 W, or from its float16/int8 copy; in float32, a few rows
    at a time (decoding) by lowp's C product, more by torch's."""

    def __init__(self, weight: Tensor, bias: Tensor | None, dtype: str, device: torch.device):
        self.weight = weight.detach().clone()
        self.bias = None if bias is None else bias.detach().clone()
        use_c = dtype != "float32" or _c_float32(dtype, device)
        self.low = LowPrecision(self.weight, dtype) if use_c else None

    def __call__(self, x: Tensor) -> Tensor:
        low = _c_copy(self.low, x.numel() // x.shape[-1])
        if low is None:  # as the model's layers compute it (fast.linear), so both give the same bits
            return fast.linear(x, self.weight, self.bias)
        y = low.matmul(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


class _Layer:
    """One cell's stacked weights in every form its window reads.

    `low`: the C inference loop's copy (float16/int8, or float32 on a CPU with the C step).
    In float32 it serves decoding steps only (one token for up to four sequences:
    generation, a typing session's keystrokes), where a step is one pass over W and
    torch's per-call cost is most of it. Longer windows (a prompt, scoring, evaluation)
    run the training forward's own paths, which give the readable model's numbers bit for
    bit and whose blocked products share each weight read among the rows."""

    def __init__(self, cell, dtype: str, device: torch.device):
        W, b = cell.fused()
        self.weights = fast.LayerWeights(W.detach().clone(), b.detach().clone(), cell.hidden_size, frozen=True)
        use_c = dtype != "float32" or _c_float32(dtype, device)
        self.low = LowPrecision(self.weights.W, dtype, transposable=False) if use_c else None

    def low_for(self, rows: int) -> LowPrecision | None:
        """The C copy for a window of `rows` = steps × sequences, if it is the one to use."""
        return _c_copy(self.low, rows)


class FrozenModel:
    """A LanguageModel's weights for inference on one device in one weight type.

    `weights`: "float32" (the default: the model's numbers, to float32 rounding), or "float16" / "int8"
    (CPU only, needs arlm's C step): the LSTM, projection and softmax products read a
    smaller copy of their weights; embeddings, biases and the recurrence stay float32.
    BENCHMARKS.md gives the speed and the (tiny) perplexity change."""

    def __init__(self, model: LanguageModel, weights: str = "float32", device: str | torch.device | None = None):
        if weights not in WEIGHTS:
            raise ValueError(f"inference weights must be float32, float16 or int8, got {weights!r}")
        self.device = torch.device(device) if device is not None else model.embedding.weight.device
        if weights != "float32":
            if self.device.type != "cpu":
                raise ValueError(f"{weights} weights are for CPU inference; use float32 on {self.device}")
            if not build.supports(weights):
                raise ValueError(f"{weights} inference weights need arlm's C step, which could not be built here "
                                 "(is a C compiler installed?); use float32")
        self.config: ModelConfig = model.config
        self.weights = weights
        with torch.no_grad():
            # The caller's model stays where it is: copy it to the engine's device first.
            source = copy.deepcopy(model).to(self.device) if self.device != model.embedding.weight.device else model
            self._build(source, weights)

    def _build(self, model: LanguageModel, dtype: str) -> None:
        self._build_parts(model, dtype)
        self.c_step = self._c_decoder()

    def _build_parts(self, model: LanguageModel, dtype: str) -> None:
        self.embedding = model.embedding.weight.detach().clone()
        self.layers = [_Layer(cell, dtype, self.device) for cell in model.lstm.cells]
        p = model.projection
        self.projection = _Linear(p.weight, p.bias, dtype, self.device) if p is not None else None
        a = model.adaptive
        if a is None:
            self.decoder = _Linear(model.decoder.weight, model.decoder.bias, dtype, self.device)
            self.adaptive = None
            return
        self.decoder = None
        head = a.head
        self.head = (_Linear(head.weight(), None, dtype, self.device) if isinstance(head, TiedHead)
                     else _Linear(head.weight, head.bias, dtype, self.device))
        self.tails = [(_Linear(t[0].weight, None, dtype, self.device), _Linear(t[1].weight, None, dtype, self.device))
                      for t in a.tail]
        self.shortlist, self.cutoffs, self.n_classes = a.shortlist_size, list(a.cutoffs), a.n_classes
        self.adaptive = True

    def _c_decoder(self) -> Decoder | None:
        """The whole decoding step in one C call, where every product has its C copy."""
        linears = [self.head, *[m for pair in getattr(self, "tails", []) for m in pair]] if self.adaptive else [self.decoder]
        if self.projection is not None:
            linears.append(self.projection)
        if any(layer.low is None for layer in self.layers) or any(m.low is None for m in linears):
            return None
        cfg = self.config
        head = self.head if self.adaptive else self.decoder
        return Decoder(self.embedding, [(layer.low, layer.weights.b.contiguous()) for layer in self.layers],
                       None if self.projection is None else (self.projection.low, self.projection.bias),
                       (head.low, head.bias), [(d.low, u.low) for d, u in self.tails] if self.adaptive else [],
                       self.cutoffs if self.adaptive else [], cfg.eos_id if cfg.reset_at_eos else None)

    def __repr__(self) -> str:
        c = self.config
        return (f"FrozenModel(vocab={c.vocab_size}, layers={c.num_layers}, hidden={c.hidden_size}, "
                f"weights={self.weights}, device={self.device})")

    # --- the forward pass, as LanguageModel.forward in eval mode ------------------------

    def init_state(self, batch_size: int) -> State:
        z = torch.zeros(self.config.num_layers, batch_size, self.config.hidden_size, device=self.device)
        return z, z.clone()

    @torch.inference_mode()
    def __call__(self, ids: Tensor, state: State | None = None, record: bool = False, last_only: bool = False) -> Output:
        """ids (T, B) → features (T, B, E) (or (1, B, E) with last_only), the final state
        of every layer, and with `record` every layer's gates and states (`Trace`s)."""
        cfg = self.config
        x = F.embedding(ids, self.embedding)
        keep = (ids != cfg.eos_id).unsqueeze(-1).to(x.dtype) if cfg.reset_at_eos else None
        keep = fast.prepare_keep(keep, x)
        h0, c0 = state if state is not None else self.init_state(ids.shape[1])
        hs_last, cs_last, traces = [], [], []
        for k, layer in enumerate(self.layers):
            _, _, gates, cs, _, hs, _, _ = fast.run_forward(layer.weights, x, h0[k], c0[k], keep, layer.low_for(x.shape[0] * x.shape[1]))
            hs_last.append(hs[-1])
            cs_last.append(cs[-1])
            if record:
                traces.append(trace_of(gates, cs, hs))
            x = hs
        y = x[-1:] if last_only else x
        if self.projection is not None:
            y = self.projection(y)
        return Output(y, (torch.stack(hs_last), torch.stack(cs_last)), None, traces if record else None)

    @torch.inference_mode()
    def log_probs(self, features: Tensor) -> Tensor:
        """Log-probabilities over the whole vocabulary, features (..., E) → (..., V)."""
        shape = features.shape[:-1]
        x = features.reshape(-1, features.shape[-1])
        if self.adaptive is None:
            return F.log_softmax(self.decoder(x), -1).view(*shape, -1)
        head = F.log_softmax(self.head(x), -1)
        out = x.new_empty(x.shape[0], self.n_classes)
        out[:, : self.shortlist] = head[:, : self.shortlist]
        for k, (down, up) in enumerate(self.tails):  # cluster k: P(cluster) · P(word | cluster)
            start, stop = self.cutoffs[k], self.cutoffs[k + 1]
            out[:, start:stop] = F.log_softmax(up(down(x)), -1) + head[:, self.shortlist + k, None]
        return out.view(*shape, -1)

    @torch.inference_mode()
    def nll(self, features: Tensor, targets: Tensor) -> Tensor:
        """Per-token negative log-likelihood, features (N, E), targets (N,): the same numbers
        as log_probs, computing only the clusters the targets fall in."""
        if self.adaptive is None:
            return F.cross_entropy(self.decoder(features), targets, reduction="none")
        head = F.log_softmax(self.head(features), -1)
        in_head = targets < self.shortlist
        out = head.gather(1, torch.where(in_head, targets, 0).unsqueeze(1)).squeeze(1).clone()
        for k, (down, up) in enumerate(self.tails):
            start, stop = self.cutoffs[k], self.cutoffs[k + 1]
            rows = ((targets >= start) & (targets < stop)).nonzero().squeeze(1)
            if rows.numel():
                local = F.log_softmax(up(down(features[rows])), -1)
                out[rows] = local.gather(1, (targets[rows] - start).unsqueeze(1)).squeeze(1) + head[rows, self.shortlist + k]
        return -out

    @torch.inference_mode()
    def step(self, token_ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Read one token per sequence (B,) and return log-probabilities of the next (B, V):
        O(1) per token, the state carries everything read so far."""
        B = token_ids.numel()
        if self.c_step is not None and (self.weights != "float32" or B <= SMALL_BATCH):
            h0, c0 = state if state is not None else self.init_state(B)
            log_probs, state = self.c_step.step(token_ids.view(-1), h0, c0)
            return log_probs, state
        out = self(token_ids.view(1, -1), state)
        return self.log_probs(out.features[0]), out.state


def frozen(model_or_engine, weights: str = "float32") -> FrozenModel:
    """A FrozenModel for whatever is given: a FrozenModel as it is, a Predictor's engine, or
    a new one built from a LanguageModel (e.g. in the middle of training)."""
    if isinstance(model_or_engine, FrozenModel):
        return model_or_engine
    engine = getattr(model_or_engine, "engine", None)
    if isinstance(engine, FrozenModel):
        return engine
    if isinstance(model_or_engine, LanguageModel):
        return FrozenModel(model_or_engine, weights)
    raise TypeError(f"expected a LanguageModel, FrozenModel or Predictor, got {type(model_or_engine).__name__}")


__all__ = ["FrozenModel", "WEIGHTS", "frozen"]
