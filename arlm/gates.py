"""Watching the gates: what every LSTM unit does on real sentences, and over a corpus.

    sentence ──tokenizer──▶ [<eos>] + ids ──model(record=True)──▶ f, i, c̃, o, c, h of every layer
                                                   └──log_probs──▶ the top-k next-word guesses

Recording reads the inference engine (arlm/inference.py, the same backend paths as the
model's own forward pass): `record=True` hands back the `Trace` every layer computes
anyway, so what you see is exactly what training and prediction compute. Pass a trained
`LanguageModel` (a float32 engine is built from it), a `FrozenModel` or a Predictor.
A sentence is read as `[<eos>] + encode(sentence)`, because the model reads <eos> as "a
document starts here"; the <eos> step is run (so the state is right) but not reported.

Over a corpus (Karpathy, Johnson & Fei-Fei 2015, "Visualizing and understanding recurrent
networks"):

* saturation: for each sigmoid gate, layer and unit, the fraction of steps the gate is
  left-saturated (< 0.1, shut) or right-saturated (> 0.9, wide open). A forget unit that is
  right-saturated most of the time is a long-term memory; one that is never saturated
  works as a graded, moment-to-moment mixer.
* unit search: which units separate a property of the token just read (definite article,
  punctuation, digits, a regex, position in the sentence). The score is a rank correlation
  r in [-1, 1] between the unit's value and the property: for yes/no properties the
  rank-biserial correlation r = 2·AUC − 1, for position Spearman's ρ. Ranks, because gates
  (0..1), candidates and h (−1..1) and the unbounded cell state c live on different scales
  and are far from normal; a rank score is unchanged by any monotone rescaling, does not
  care that punctuation is a tenth of the tokens, and reads plainly: AUC 0.9 means a random
  token with the property gets a higher value than a random token without it 90% of the time.

Indices shown to people and written to files: layers and positions count from 1 (position
1 is the sentence's first token), units from 0 (they are array columns).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from arlm.inference import FrozenModel, frozen

GATES = ("f", "i", "c_tilde", "o", "c", "h")          # the order of arlm.cell.Trace
SIGMOID_GATES = ("f", "i", "o")                        # the gates saturation is about
LABELS = {"f": "forget f", "i": "input i", "c_tilde": "cand. c̃", "o": "output o", "c": "cell c", "h": "hidden h"}
MEANINGS = {"f": "keep", "i": "write", "c_tilde": "propose", "o": "expose", "c": "memory", "h": "output"}
EXPLAIN = {
    "f": "how much old memory to KEEP",
    "i": "how much new info to WRITE",
    "c_tilde": "the new content proposed",
    "o": "how much memory to EXPOSE",
    "c": "long-term memory after this step",
    "h": "what gets passed on / predicted from",
}
LOW, HIGH = 0.1, 0.9                                   # Karpathy et al.'s saturation thresholds


# --- recording sentences -------------------------------------------------------------


@dataclass
class SentenceRecord:
    """One sentence as the model read it.

    tokens[t] is the t-th token (position t + 1); layers[l][gate] is a (tokens, units) array;
    top[t] the k most likely next tokens after reading token t, as (token, probability);
    token_probs[t] the probability the model gave token t before reading it."""

    text: str
    tokens: list[str]
    ids: list[int]
    layers: list[dict[str, np.ndarray]]
    top: list[list[tuple[str, float]]]
    token_probs: list[float]

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class GateRecord:
    """What `record` returns: every sentence, and the model's shape."""

    sentences: list[SentenceRecord]
    num_layers: int
    hidden_size: int
    top_k: int

    def to_dict(self) -> dict:
        """Plain lists and numbers, ready for json.dump (values rounded to 6 decimals)."""
        return {
            "format": "arlm-gates", "version": 1,
            "num_layers": self.num_layers, "hidden_size": self.hidden_size, "top_k": self.top_k,
            "gates": list(GATES), "meanings": MEANINGS,
            "sentences": [
                {
                    "text": s.text, "tokens": s.tokens, "ids": s.ids,
                    "token_probs": [round(p, 6) for p in s.token_probs],
                    "top": [[[w, round(p, 6)] for w, p in guesses] for guesses in s.top],
                    "layers": [{g: np.round(layer[g].astype(np.float64), 6).tolist() for g in GATES} for layer in s.layers],
                }
                for s in self.sentences
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "GateRecord":
        if d.get("format") != "arlm-gates":
            raise ValueError("not an arlm gate recording (expected format 'arlm-gates')")
        H = d["hidden_size"]
        sentences = [
            SentenceRecord(
                s["text"], list(s["tokens"]), list(s["ids"]),
                [{g: np.asarray(layer[g], dtype=np.float32).reshape(len(s["tokens"]), H) for g in GATES} for layer in s["layers"]],
                [[(w, float(p)) for w, p in guesses] for guesses in s["top"]],
                [float(p) for p in s["token_probs"]],
            )
            for s in d["sentences"]
        ]
        return cls(sentences, d["num_layers"], H, d["top_k"])


def _prepare(n: int, text: str, tokenizer) -> tuple[str, list[str], list[int]]:
    if not text.strip():
        raise ValueError(f"sentence {n} is empty; give some Arabic text to read")
    ids = list(tokenizer.encode(text))
    if not ids:
        raise ValueError(f"sentence {n} ({text.strip()[:40]!r}) has no tokens left after normalization")
    # The surface tokens, so an <unk> still shows the word the user typed; a tokenizer whose
    # tokens do not line up with its ids falls back to the vocabulary's spelling.
    tokens = tokenizer.tokenize(text) if hasattr(tokenizer, "tokenize") else []
    if len(tokens) != len(ids):
        tokens = [tokenizer.id_to_token(i) for i in ids]
    return text, tokens, ids


@torch.no_grad()
def record(model, tokenizer, sentences: list[str] | str, top_k: int = 5, batch_size: int = 32) -> GateRecord:
    """Read each sentence as [<eos>] + tokens and keep every layer's f, i, c̃, o, c, h at
    every token, plus the model's top-k next-token guesses.

    Sentences are batched right-padded: the model is causal, so the pad steps after a
    sentence cannot change its values, and only each sentence's own steps are read."""
    if isinstance(sentences, str):
        sentences = [sentences]
    if not sentences:
        raise ValueError("no sentences to record")
    prepared = [_prepare(n, s, tokenizer) for n, s in enumerate(sentences, 1)]
    engine = frozen(model)  # no dropout: the gates of the trained weights
    k = max(1, min(top_k, engine.config.vocab_size))
    out: list[SentenceRecord] = []
    for start in range(0, len(prepared), batch_size):
        out += _record_batch(engine, tokenizer, prepared[start : start + batch_size], k)
    return GateRecord(out, engine.config.num_layers, engine.config.hidden_size, k)


def _record_batch(engine: FrozenModel, tokenizer, batch: list[tuple[str, list[str], list[int]]], k: int
                  ) -> list[SentenceRecord]:
    device = engine.device
    lengths = [len(ids) for _, _, ids in batch]
    ids = torch.full((max(lengths) + 1, len(batch)), tokenizer.pad_id, dtype=torch.long)
    for b, (_, _, sentence_ids) in enumerate(batch):
        ids[0, b] = tokenizer.eos_id
        ids[1 : lengths[b] + 1, b] = torch.tensor(sentence_ids)
    out = engine(ids.to(device), record=True)
    records = []
    for b, (text, tokens, sentence_ids) in enumerate(batch):
        n = lengths[b]
        # Steps 1..n are the sentence's tokens (step 0 read <eos>; steps after n are padding).
        layers = [{g: getattr(trace, g)[1 : n + 1, b].float().cpu().numpy().copy() for g in GATES}
                  for trace in out.traces]
        probs = engine.log_probs(out.features[: n + 1, b]).exp().float().cpu()  # (n + 1, V)
        token_probs = probs[torch.arange(n), torch.tensor(sentence_ids)].tolist()
        p, idx = probs[1:].topk(k, dim=-1)
        top = [[(tokenizer.id_to_token(int(i)), float(q)) for q, i in zip(pr, ix)] for pr, ix in zip(p.tolist(), idx.tolist())]
        records.append(SentenceRecord(text, list(tokens), list(sentence_ids), layers, top, token_probs))
    return records


# --- statistics over a corpus ----------------------------------------------------------


def saturation(values: np.ndarray, low: float = LOW, high: float = HIGH) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of steps each unit is left-saturated (< low) and right-saturated (> high).
    values: (steps, ...) → two arrays of shape values.shape[1:]."""
    values = np.asarray(values)
    if len(values) == 0:
        raise ValueError("saturation needs at least one step")
    return (values < low).mean(axis=0), (values > high).mean(axis=0)


@dataclass
class CorpusStats:
    """What `corpus_stats` measured over a token stream.

    left / right: (layers, 3, units) saturated fractions of f, i, o (SIGMOID_GATES order);
    activations[gate]: (steps, layers, units) values of the searched gates, for the unit
    search; positions: each step's position since the last <eos> (0 on the <eos> itself);
    special_ids: the tokenizer's <pad>, <unk>, <bos>, <eos> ids."""

    ids: np.ndarray
    tokens: list[str]
    positions: np.ndarray
    left: np.ndarray
    right: np.ndarray
    activations: dict[str, np.ndarray] = field(default_factory=dict)
    special_ids: tuple[int, ...] = ()

    @property
    def is_word(self) -> np.ndarray:
        """(steps,) True where the token read is a word, not a special token."""
        return ~np.isin(self.ids, self.special_ids)

    @property
    def steps(self) -> int:
        return len(self.ids)


def corpus_ids(corpus: str, tokenizer, max_tokens: int = 20_000) -> np.ndarray:
    """A token stream for statistics, starting with <eos> (a document starts here).

    A plain text file is read one sentence per line, each as [<eos>] + ids. Anything else
    is a corpus card (or card file) and its valid split is used: cached ids from
    `arlm.corpus.prepare` when that corpus builds the checkpoint's own vocabulary,
    otherwise the valid documents re-encoded with the checkpoint's tokenizer (ids from a
    different vocabulary would be meaningless to the model)."""
    if max_tokens < 1:
        raise ValueError(f"--max-tokens must be positive, got {max_tokens}")
    eos = tokenizer.eos_id
    path = Path(corpus).expanduser()
    if path.is_file() and path.suffix != ".toml":
        ids: list[int] = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    ids += [eos] + list(tokenizer.encode(line))
                    if len(ids) >= max_tokens:
                        break
        if not ids:
            raise ValueError(f"{path}: no text; expected one sentence per line")
        return np.asarray(ids[:max_tokens], dtype=np.int64)

    from arlm.corpus import documents, prepare, resolve

    prepared = prepare(corpus, tokenizer.config, verbose=False)
    if _same_vocabulary(prepared.tokenizer, tokenizer):
        stream = np.asarray(prepared.valid[: max_tokens - 1], dtype=np.int64)
    else:
        ids = []
        for text in documents(resolve(corpus))["valid"]:
            ids += list(tokenizer.encode(text)) + [eos]
            if len(ids) >= max_tokens:
                break
        stream = np.asarray(ids[: max_tokens - 1], dtype=np.int64)
    return np.concatenate([[eos], stream]).astype(np.int64)


def _same_vocabulary(a, b) -> bool:
    if a.vocab_size != b.vocab_size:
        return False
    return all(a.id_to_token(i) == b.id_to_token(i) for i in range(a.vocab_size))


@torch.no_grad()
def corpus_stats(model, tokenizer, ids: np.ndarray, search_gates: tuple[str, ...] = ("c", "h"),
                 window: int = 256, low: float = LOW, high: float = HIGH) -> CorpusStats:
    """Run the model over a token stream (one sequence, state carried from window to
    window, exactly like reading a long document) and measure saturation; keep the values
    of `search_gates` for `search_units`."""
    bad = [g for g in search_gates if g not in GATES]
    if bad:
        raise ValueError(f"unknown gate(s) {', '.join(bad)}; choose from {', '.join(GATES)}")
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        raise ValueError("the corpus stream is empty")
    engine = frozen(model)
    L, H = engine.config.num_layers, engine.config.hidden_size
    sat = [GATES.index(g) for g in SIGMOID_GATES]
    left = np.zeros((L, len(sat), H))
    right = np.zeros((L, len(sat), H))
    kept = {g: np.empty((len(ids), L, H), dtype=np.float32) for g in search_gates}
    state = None
    for start in range(0, len(ids), window):
        chunk = torch.from_numpy(ids[start : start + window]).view(-1, 1).to(engine.device)
        out = engine(chunk, state, record=True)
        state = out.state
        for l, trace in enumerate(out.traces):
            for j, g in enumerate(sat):
                v = trace[g][:, 0]
                left[l, j] += (v < low).sum(0).cpu().numpy()
                right[l, j] += (v > high).sum(0).cpu().numpy()
            for g in search_gates:
                kept[g][start : start + len(chunk), l] = getattr(trace, g)[:, 0].float().cpu().numpy()
    eos = np.flatnonzero(ids == tokenizer.eos_id)
    last_eos = np.full(len(ids), -1)
    last_eos[eos] = eos
    positions = np.arange(len(ids)) - np.maximum.accumulate(last_eos)  # steps since the last <eos>
    tokens = [tokenizer.id_to_token(int(i)) for i in ids]
    special = (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id)
    return CorpusStats(ids, tokens, positions, left / len(ids), right / len(ids), kept, special)


# --- token properties and the unit search ----------------------------------------------

# The definite article, with the proclitics that can stand before it: و/ف (and, so),
# ب/ك (with, like), and ل + ال written لل. At least two letters must follow, so the very
# common الا / الي (إلا / إلى after alef normalization) do not count as "the".
ARTICLE = re.compile(r"^(?:[وف]?[بك]?ال|[وف]?لل)\w\w")
ARTICLE_PIECE = re.compile(r"(?:[وف]?[بك]?ال|[وف]?لل)")  # a subword piece that is just the prefix


def _surface(token: str) -> str:
    return token.lstrip("▁")  # sentencepiece marks a word start with ▁


def has_article(token: str) -> bool:
    t = _surface(token)
    return bool(ARTICLE.match(t)) or (token.startswith("▁") and bool(ARTICLE_PIECE.fullmatch(t)))


def is_punctuation(token: str) -> bool:
    t = _surface(token)
    return bool(t) and all(unicodedata.category(ch)[0] in "PS" for ch in t)


def is_digits(token: str) -> bool:
    return any(unicodedata.category(ch) == "Nd" for ch in _surface(token))


def token_properties(tokens: list[str], positions: np.ndarray, pattern: str | None = None) -> dict[str, np.ndarray]:
    """The properties the unit search looks for, one value per token: yes/no arrays, and
    the position in the sentence (a number)."""
    props = {
        "article ال": np.array([has_article(t) for t in tokens]),
        "punctuation": np.array([is_punctuation(t) for t in tokens]),
        "digits": np.array([is_digits(t) for t in tokens]),
        "position": np.asarray(positions, dtype=np.float64),
    }
    if pattern:
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"--regex {pattern!r} is not a valid regular expression ({e})") from None
        props[f"regex {pattern}"] = np.array([bool(rx.search(_surface(t))) for t in tokens])
    return props


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N down each column (axis 0), ties sharing their average rank: saturated
    gates hit exactly 0.0 or 1.0 in float32, so ties are common."""
    x = np.asarray(x)
    squeeze = x.ndim == 1
    x = x.reshape(len(x), -1)
    N = len(x)
    order = np.argsort(x, axis=0, kind="stable")
    s = np.take_along_axis(x, order, axis=0)
    idx = np.arange(N)[:, None]
    starts = np.ones(s.shape, bool)
    starts[1:] = s[1:] != s[:-1]
    ends = np.ones(s.shape, bool)
    ends[:-1] = s[1:] != s[:-1]
    first = np.maximum.accumulate(np.where(starts, idx, 0), axis=0)               # where each tie run starts
    last = np.minimum.accumulate(np.where(ends, idx, N - 1)[::-1], axis=0)[::-1]  # and ends
    ranks = np.empty(s.shape)
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=0)
    return ranks[:, 0] if squeeze else ranks


@dataclass
class UnitScore:
    property: str
    layer: int            # from 1
    gate: str
    unit: int             # from 0
    r: float              # rank correlation with the property, in [-1, 1]
    auc: float | None     # yes/no properties: P(value with the property > value without)
    mean_yes: float | None
    mean_no: float | None
    count: int            # tokens with the property (yes/no) or tokens scored (position)


def rank_correlation(values: np.ndarray, prop: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(r, auc) per column of values (N, U): rank-biserial r = 2·AUC − 1 when prop is
    yes/no (auc returned too), Spearman's ρ when prop is a number (auc None)."""
    ranks = rankdata(values)
    N = len(values)
    if prop.dtype == bool:
        n1 = int(prop.sum())
        n0 = N - n1
        if n1 == 0 or n0 == 0:
            raise ValueError("a yes/no property needs tokens with and without it")
        u = ranks[prop].sum(axis=0) - n1 * (n1 + 1) / 2   # Mann-Whitney U of the "yes" tokens
        auc = u / (n1 * n0)
        return 2 * auc - 1, auc
    pr = rankdata(prop.astype(np.float64))
    a = ranks - ranks.mean(axis=0)
    b = (pr - pr.mean())[:, None]
    denom = np.sqrt((a * a).sum(axis=0) * (b * b).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(denom > 0, (a * b).sum(axis=0) / np.where(denom > 0, denom, 1), 0.0)
    return rho, None


def search_units(stats: CorpusStats, pattern: str | None = None, top: int = 5,
                 properties: dict[str, np.ndarray] | None = None) -> dict[str, list[UnitScore]]:
    """For each token property, the `top` units (over every searched gate and layer)
    whose values best separate it, ranked by |r|. Special tokens (<eos>, <unk>, …) are
    left out: they have no spelling to test. A property no token (or every token) has
    gets an empty list."""
    if properties is None:
        properties = token_properties(stats.tokens, stats.positions, pattern)
    keep = stats.is_word
    results: dict[str, list[UnitScore]] = {}
    for name, prop in properties.items():
        prop = np.asarray(prop)[keep]
        if len(prop) == 0 or (prop.all() or not prop.any() if prop.dtype == bool else np.ptp(prop) == 0):
            results[name] = []  # nothing to separate here
            continue
        scores: list[UnitScore] = []
        for gate, acts in stats.activations.items():
            for l in range(acts.shape[1]):
                values = acts[keep, l].astype(np.float64)
                r, auc = rank_correlation(values, prop)
                for u in np.argsort(-np.abs(r), kind="stable")[:top]:
                    yes = values[prop, u].mean() if prop.dtype == bool else None
                    no = values[~prop, u].mean() if prop.dtype == bool else None
                    scores.append(UnitScore(name, l + 1, gate, int(u), float(r[u]),
                                            None if auc is None else float(auc[u]),
                                            None if yes is None else float(yes), None if no is None else float(no),
                                            int(prop.sum()) if prop.dtype == bool else int(len(prop))))
        scores.sort(key=lambda s: -abs(s.r))
        results[name] = scores[:top]
    return results
