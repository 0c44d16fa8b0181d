"""The language model: embedding → stacked hand-written LSTM → output layer.

    ids (T, B) ─ embedding ─ dropout ─▶ LSTM layer 1 ─ dropout ─▶ … ─▶ LSTM layer L
        ─ dropout ─ (projection H→E when tied and H ≠ E) ─▶ softmax over the vocabulary

The model holds the parameters and the forward pass, and nothing else: no caches, no
low-precision copies, nothing about files or Arabic. One forward path serves training,
evaluation and gate recording (`record=True` returns every layer's f, i, c̃, o, c and h);
`ModelConfig` is everything needed to rebuild it. Prediction, generation and export read
a `FrozenModel` (arlm/inference.py), built once from these weights.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arlm import fast
from arlm.cell import LSTMCell, Trace
from arlm.config import ModelConfig

State = tuple[Tensor, Tensor]  # (h, c), each (num_layers, batch, hidden)


# --- the stack ---------------------------------------------------------------------


class StackedLSTM(nn.Module):
    """`num_layers` hand-written LSTM cells, each reading the one below.

    Input (seq_len, batch, input_size); state (h, c) each (num_layers, batch, hidden),
    as in `torch.nn.LSTM`. `dropout` is locked (variational) dropout between layers:
    one mask per forward call (a BPTT window), the same at every time step (Gal & Ghahramani 2016), which
    regularizes a recurrent net without drowning the signal in per-step noise.
    `weight_drop` is DropConnect on the hidden-to-hidden weights (Merity et al. 2018).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, weight_drop: float = 0.0):
        super().__init__()
        if num_layers < 1 or hidden_size < 1 or input_size < 1:
            raise ValueError("StackedLSTM needs positive sizes and at least one layer")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout, self.weight_drop = dropout, weight_drop
        self.cells = nn.ModuleList(
            LSTMCell(input_size if k == 0 else hidden_size, hidden_size) for k in range(num_layers)
        )

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        z = torch.zeros(self.num_layers, batch_size, self.hidden_size, device=device, dtype=dtype)
        return z, z.clone()

    def forward(self, x: Tensor, state: State | None = None, record: bool = False, keep: Tensor | None = None
                ) -> tuple[Tensor, State, list[Trace] | None]:
        """`keep` (seq_len, batch, 1): 0 where the state is reset before a step (a new document)."""
        if state is None:
            state = self.init_state(x.shape[1], x.device, x.dtype)
        h0, c0 = state
        hs, cs, traces = [], [], []
        for k, cell in enumerate(self.cells):
            if k > 0:
                x = locked_dropout(x, self.dropout, self.training)
            x, (h, c), trace = cell.sequence(x, (h0[k], c0[k]), self.weight_drop, keep)
            hs.append(h)
            cs.append(c)
            traces.append(trace)
        return x, (torch.stack(hs), torch.stack(cs)), (traces if record else None)

    # --- interop with torch.nn.LSTM (gate order i, f, g, o; biases split ih/hh) ------

    @classmethod
    def from_torch(cls, lstm: nn.LSTM) -> "StackedLSTM":
        if lstm.bidirectional or lstm.proj_size or lstm.batch_first:
            raise ValueError("only unidirectional, sequence-first nn.LSTM without projections converts")
        stack = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.dropout)
        H = lstm.hidden_size
        with torch.no_grad():
            for k, cell in enumerate(stack.cells):
                w_ih, w_hh = getattr(lstm, f"weight_ih_l{k}"), getattr(lstm, f"weight_hh_l{k}")
                b = (getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")) if lstm.bias else torch.zeros(4 * H)
                for gate, j in (("i", 0), ("f", 1), ("c", 2), ("o", 3)):
                    rows = slice(j * H, (j + 1) * H)
                    getattr(cell, f"W_{gate}").copy_(torch.cat([w_hh[rows], w_ih[rows]], dim=1))
                    getattr(cell, f"b_{gate}").copy_(b[rows])
        return stack

    def to_torch(self) -> nn.LSTM:
        lstm = nn.LSTM(self.input_size, self.hidden_size, self.num_layers, dropout=self.dropout)
        H = self.hidden_size
        with torch.no_grad():
            for k, cell in enumerate(self.cells):
                for gate, j in (("i", 0), ("f", 1), ("c", 2), ("o", 3)):
                    rows = slice(j * H, (j + 1) * H)
                    W = getattr(cell, f"W_{gate}")
                    getattr(lstm, f"weight_hh_l{k}")[rows] = W[:, :H]
                    getattr(lstm, f"weight_ih_l{k}")[rows] = W[:, H:]
                    getattr(lstm, f"bias_ih_l{k}")[rows] = getattr(cell, f"b_{gate}")
                    getattr(lstm, f"bias_hh_l{k}")[rows] = 0.0
        return lstm


def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout with one mask per sequence, shared across time steps. x: (T, B, F)."""
    if not training or p == 0:
        return x
    mask = fast.bernoulli_(x.new_empty(1, x.shape[1], x.shape[2]), 1 - p) / (1 - p)
    return x * mask


def embedding_dropout(weight: Tensor, ids: Tensor, p: float, training: bool, sparse: bool = False) -> Tensor:
    """Look up ids, dropping whole words (every occurrence of a word at once): one mask
    row per vocabulary word, applied to the rows looked up rather than to the whole
    matrix, which at a 50k vocabulary would cost more than the lookup itself.
    `sparse`: the weight's gradient as a sparse tensor of the rows looked up."""
    x = F.embedding(ids, weight, sparse=sparse)
    if not training or p == 0:
        return x
    mask = fast.bernoulli_(weight.new_empty(weight.shape[0], 1), 1 - p) / (1 - p)
    return x * F.embedding(ids, mask)


# --- the language model ------------------------------------------------------------


class TiedHead(nn.Module):
    """The adaptive softmax head with its shortlist rows tied to the embeddings.

    The head scores the `shortlist` most frequent words plus one entry per tail cluster;
    the word rows are the embedding rows of those words, the cluster rows are free. When
    the embedding gives sparse gradients (`nn.Embedding.sparse`, set for row-wise
    updates: arlm/optim.py), the shortlist is read as a lookup of its rows, so that its
    gradient is sparse too instead of a dense matrix with all other rows zero."""

    def __init__(self, embedding: nn.Embedding, shortlist: int, n_clusters: int):
        super().__init__()
        self.embedding, self.shortlist = embedding, shortlist
        self.cluster_weight = nn.Parameter(torch.empty(n_clusters, embedding.embedding_dim).uniform_(-0.1, 0.1))

    def weight(self) -> Tensor:
        """The head's rows: the shortlist's embeddings, then one row per cluster."""
        weight = self.embedding.weight
        if self.embedding.sparse:
            rows = F.embedding(torch.arange(self.shortlist, device=weight.device), weight, sparse=True)
        else:
            rows = weight[: self.shortlist]
        return torch.cat([rows, self.cluster_weight])

    def forward(self, x: Tensor) -> Tensor:
        return fast.linear(x, self.weight())


class Output(NamedTuple):
    features: Tensor              # (T, B, E): what the softmax reads
    state: State                  # final (h, c) of every layer
    loss: Tensor | None           # mean negative log-likelihood per target token
    traces: list[Trace] | None    # every layer's gates and states, when record=True


class LanguageModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.emb_size)
        self.lstm = StackedLSTM(cfg.emb_size, cfg.hidden_size, cfg.num_layers, cfg.dropout_hidden, cfg.weight_drop)
        out_size = cfg.emb_size if cfg.tie_weights else cfg.hidden_size
        self.projection = fast.Linear(cfg.hidden_size, out_size) if out_size != cfg.hidden_size else None
        if cfg.uses_adaptive:
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(out_size, cfg.vocab_size, cfg.effective_cutoffs, cfg.adaptive_div)
            self.decoder = None
            if cfg.tie_weights:
                self.adaptive.head = TiedHead(self.embedding, cfg.effective_cutoffs[0], len(cfg.effective_cutoffs))
            fast.adopt_linears(self.adaptive)  # torch's module builds its own nn.Linear layers
        else:
            self.adaptive = None
            self.decoder = fast.Linear(out_size, cfg.vocab_size)
            if cfg.tie_weights:
                self.decoder.weight = self.embedding.weight
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)

    # --- the forward pass ------------------------------------------------------------

    def forward(self, ids: Tensor, state: State | None = None, targets: Tensor | None = None,
                record: bool = False, last_only: bool = False) -> Output:
        """ids (T, B) → features; with `targets` (T, B) also the mean NLL. `last_only`: the
        features of the last step only, (1, B, E) (reading a prompt needs no more)."""
        cfg = self.config
        x = embedding_dropout(self.embedding.weight, ids, cfg.dropout_embedding, self.training, self.embedding.sparse)
        x = locked_dropout(x, cfg.dropout_input, self.training)
        keep = (ids != cfg.eos_id).unsqueeze(-1).to(x.dtype) if cfg.reset_at_eos else None
        y, state, traces = self.lstm(x, state, record, keep)
        y = locked_dropout(y, cfg.dropout, self.training)
        if last_only:
            y = y[-1:]
        if self.projection is not None:
            y = self.projection(y)
        loss = self.nll(y.reshape(-1, y.shape[-1]), targets.reshape(-1)).mean() if targets is not None else None
        return Output(y, state, loss, traces)

    def nll(self, features: Tensor, targets: Tensor) -> Tensor:
        """Per-token negative log-likelihood, features (N, E), targets (N,). The adaptive
        softmax's is `-self.adaptive(features, targets).output`, computed by the fast backend
        (equal to it; a tail cluster's log-softmax without its full logit matrix)."""
        if self.adaptive is not None:
            return fast.adaptive_nll(self.adaptive, features, targets)
        return F.cross_entropy(self.decoder(features), targets, reduction="none")

    def log_probs(self, features: Tensor) -> Tensor:
        """Log-probabilities over the whole vocabulary, features (..., E) → (..., V)."""
        shape = features.shape[:-1]
        flat = features.reshape(-1, features.shape[-1])
        if self.adaptive is not None:
            out = self.adaptive.log_prob(flat)
        else:
            out = F.log_softmax(self.decoder(flat), -1)
        return out.view(*shape, -1)

    def init_state(self, batch_size: int, device=None) -> State:
        return self.lstm.init_state(batch_size, device or self.embedding.weight.device, self.embedding.weight.dtype)

    @torch.no_grad()
    def step(self, token_ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Read one token per sequence (B,) and return log-probabilities of the next (B, V):
        O(1) per token, the state carries everything read so far."""
        out = self.forward(token_ids.view(1, -1), state)
        return self.log_probs(out.features[0]), out.state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def load_vectors(path: str, words: list[str], emb_size: int, normalize_word=None) -> tuple[Tensor, float]:
    """Embeddings from a word2vec/fastText text file (.vec) for a vocabulary.

    Returns (matrix (len(words), emb_size), coverage): rows of words found in the file are
    set, the rest are small random values. `normalize_word` maps file words the way the
    tokenizer maps text, so "أحمد" in the file matches "احمد" in the vocabulary."""
    index = {w: k for k, w in enumerate(words)}
    matrix = torch.empty(len(words), emb_size).uniform_(-0.1, 0.1)
    found = set()
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline().split()
        if len(first) != 2 or not all(t.isdigit() for t in first):  # no "count dim" header
            f.seek(0)
        for n, line in enumerate(f, 1):
            parts = line.rstrip().split(" ")
            if len(parts) < 2:
                continue
            word = normalize_word(parts[0]) if normalize_word else parts[0]
            k = index.get(word)
            if k is None or k in found:
                continue
            if len(parts) - 1 != emb_size:
                raise ValueError(f"{path}: vectors have {len(parts) - 1} dimensions but emb_size is {emb_size}; "
                                 f"set --emb-size {len(parts) - 1}")
            matrix[k] = torch.tensor([float(v) for v in parts[1:]])
            found.add(k)
    return matrix, len(found) / max(1, len(words))
