"""
Interpolated modified Kneser-Ney n-gram language model (Chen & Goodman, 1998).

This is the count-based baseline the LSTM models are compared against: same
token ids, same end-of-document convention, same perplexity definition.

The model, for an order-n model and a context h of n-1 ids:

    P_k(w | h) = (c_k(hw) - D_k(c_k(hw)))^+ / c_k(h)  +  gamma_k(h) * P_{k-1}(w | h')
    gamma_k(h) = (D_k1 N1(h.) + D_k2 N2(h.) + D_k3+ N3+(h.)) / c_k(h)
    P_0(w)     = 1 / V                     (uniform: every id gets some mass)

where h' drops the oldest id of h, c_k(h) = sum_w c_k(hw), and N_i(h.) counts
the words that follow h exactly i times (3+: at least 3 times). When h was never
seen as a context, P_k(w | h) = P_{k-1}(w | h'). The counts c_k are:
  - order n: raw counts;
  - lower orders: continuation counts N1+(.hw), the number of distinct ids seen
    to the left of hw, because a lower order is only consulted to spread the
    mass that the higher order gave up, and there "how many contexts does hw
    complete" predicts better than "how often does hw occur";
  - except n-grams that start with the end-of-document id used as a start
    marker: nothing can stand to their left, so they keep their raw counts
    (as <s> n-grams do in SRILM/KenLM).
Each order has its own three discounts, from the count-of-counts n1..n4 of the
counts used at that order:
    Y = n1 / (n1 + 2 n2), D1 = 1 - 2Y n2/n1, D2 = 2 - 3Y n3/n2, D3+ = 3 - 4Y n4/n3.

Document boundaries: the corpus is one flat stream where every document is
followed by `eos`. A context never reaches back past an `eos`: after an `eos`
the context restarts as [eos], i.e. eos doubles as the start marker of the
next document, and the first token of a stream has context [eos]. Internally
we just prepend one `eos` to every stream.

Implementation: n-grams are never stored as tuples. An n-gram is identified by
its rank in a sorted array of integer keys, key = id(prefix (n-1)-gram) * V + w,
with the empty prefix having id 0. Counting is then np.unique over one int64
array per order, and lookups are np.searchsorted, so fitting 7M tokens at
order 5 and scoring 1M tokens are a handful of vectorized numpy passes.

Command line (baseline perplexities for a corpus):
    python -m arlm.ngram --corpus hadith --order 3 5 --json runs/ngram.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from arlm import cli

# Discounts used for an order whose count-of-counts cannot support the formula
# (some n_i is zero, or a discount comes out <= 0); KenLM uses the same values.
# Typical for unigram continuation counts on tiny vocabularies, never for real corpora.
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)

FILE_FORMAT = "arlm-kneser-ney-1"


@dataclass
class Level:
    """Everything order k needs to score a word after a (k-1)-id context."""
    keys: np.ndarray         # (M,) int64, sorted: id of the (k-1)-gram prefix * V + last id
    counts: np.ndarray       # (M,) int64, raw or continuation count of each k-gram (see module doc)
    discounts: np.ndarray    # (4,) float64: [0, D1, D2, D3+], indexed by min(count, 3)
    ctx_total: np.ndarray    # (number of (k-1)-grams,) float64: c_k(h) = sum_w counts of hw
    ctx_backoff: np.ndarray  # (number of (k-1)-grams,) float64: D1 N1(h.) + D2 N2(h.) + D3+ N3+(h.)


def modified_kn_discounts(counts: np.ndarray) -> np.ndarray:
    """[0, D1, D2, D3+] from the count-of-counts of `counts` (Chen & Goodman's estimate)."""
    n1, n2, n3, n4 = (int(np.count_nonzero(counts == i)) for i in (1, 2, 3, 4))
    if min(n1, n2, n3, n4) > 0:
        y = n1 / (n1 + 2 * n2)
        d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
        if min(d) > 0:
            return np.array((0.0, *d))
    return np.array((0.0, *FALLBACK_DISCOUNTS))


class KneserNey:
    """Interpolated modified Kneser-Ney model over integer token ids 0..V-1."""

    def __init__(self, order: int, vocab_size: int, eos_id: int = 3):
        if order < 2:
            raise ValueError(f"order must be >= 2, got {order}")
        if not 0 <= eos_id < vocab_size:
            raise ValueError(f"eos_id {eos_id} outside the vocabulary of size {vocab_size}")
        self.order = order
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        self.levels: list[Level] = []  # levels[k-1] holds order k, k = 1..order

    # ------------------------------------------------------------------ fitting

    def fit(self, ids: np.ndarray) -> "KneserNey":
        """Count every order on the id stream `ids` and precompute the interpolation weights."""
        s = self._stream(ids)
        if len(s) < 2:
            raise ValueError("cannot fit on an empty stream")
        V, n, L = self.vocab_size, self.order, len(s)
        is_eos = s == self.eos_id
        keys_, raws, cont, starts_eos = [], [], [], []
        valid = np.ones(L, dtype=bool)  # valid[i]: the k-id window ending at position i respects boundaries
        window = None                   # window[i]: rank of the k-id window ending at i among the k-grams, or -1
        for k in range(1, n + 1):
            if k == 1:
                # every position, including the prepended eos, so that [eos] has a rank to extend
                pos, keys = np.arange(L), s
            else:
                # the k-window ending at i is the (k-1)-window ending at i-1 plus s[i]; only its
                # first id may be eos (eos is where a context starts, never something it crosses)
                inner_ok = np.ones(L - 1, dtype=bool) if k == 2 else ~is_eos[:-1]
                valid = np.concatenate(([False], valid[:-1] & inner_ok))
                pos = np.flatnonzero(valid)
                keys = window[pos - 1] * V + s[pos]
            uniq, first, inverse, raw = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
            if k > 1:
                # continuation count of a (k-1)-gram = number of distinct k-grams it ends
                suffix = window[pos[first]]
                cont.append(np.bincount(suffix, minlength=len(keys_[-1])))
                starts_eos.append(is_eos[pos[first] - k + 1])
            window = np.full(L, -1, dtype=np.int64)
            window[pos] = inverse
            keys_.append(uniq)
            raws.append(raw)
        if len(keys_[-1]) * V >= 2**63:
            raise OverflowError("too many n-grams for int64 keys")

        self.levels = []
        for k in range(1, n + 1):
            keys, raw = keys_[k - 1], raws[k - 1]
            if k == n:
                counts = raw
            elif k == 1:
                counts = cont[0]
            else:
                counts = np.where(starts_eos[k - 2], raw, cont[k - 1])
            discounts = modified_kn_discounts(counts)
            parent = keys // V  # rank of the (k-1)-gram context; 0 = the empty context for k == 1
            num_parents = 1 if k == 1 else len(keys_[k - 2])
            self.levels.append(Level(
                keys=keys,
                counts=counts.astype(np.int64),
                discounts=discounts,
                ctx_total=np.bincount(parent, weights=counts, minlength=num_parents),
                ctx_backoff=np.bincount(parent, weights=discounts[np.minimum(counts, 3)], minlength=num_parents),
            ))
        return self

    # ------------------------------------------------------------------ scoring

    def logprob(self, context: Sequence[int], token: int) -> float:
        """Natural log P(token | context); `context` is the history since the start of the stream."""
        self._check_ids(np.asarray([token]))
        p = self._prob(self._context_ranks(context), np.array([token], dtype=np.int64))
        return math.log(p[0])

    def distribution(self, context: Sequence[int]) -> np.ndarray:
        """P(. | context) over the whole vocabulary: (V,) float64 summing to 1, all entries > 0.

        The same numbers as scoring every id through `_prob`, bit for bit, but each order
        touches only the words seen after its context (one contiguous run of sorted keys,
        found by two bisections) plus one O(V) scaling: cheap enough to run once per word
        typed (BENCHMARKS §4b measures it)."""
        ranks = self._context_ranks(context)
        V = self.vocab_size
        p = np.full(V, 1.0 / V)
        for level, ctx in zip(self.levels, ranks):
            c = int(ctx[0])
            if len(level.keys) == 0:
                break
            if c < 0 or level.ctx_total[c] <= 0:
                continue  # unseen context: keep the lower order
            lo, hi = np.searchsorted(level.keys, [c * V, (c + 1) * V])
            counts = level.counts[lo:hi]
            p *= level.ctx_backoff[c]  # in place: the same operations as _prob, no new arrays
            p[level.keys[lo:hi] - c * V] += counts - level.discounts[np.minimum(counts, 3)]
            p /= max(level.ctx_total[c], 1.0)
        return p

    def evaluate(self, ids: np.ndarray) -> dict:
        """Score every id of the stream (eos included): {"tokens", "nll" (mean, nats), "perplexity"}."""
        nll = -np.log(self.token_probs(ids))
        mean = float(nll.mean())
        return {"tokens": int(len(nll)), "nll": mean, "perplexity": math.exp(mean)}

    def token_probs(self, ids: np.ndarray) -> np.ndarray:
        """P(ids[j] | the ids before it) for every position of the stream: (len(ids),) float64
        (the first id's context is [eos], as everywhere)."""
        if not self.levels:
            raise RuntimeError("call fit() first")
        e = self._stream(ids)
        if len(e) < 2:
            raise ValueError("cannot evaluate an empty stream")
        V, L = self.vocab_size, len(e)
        is_eos = e == self.eos_id
        # contexts[k-1][j]: rank of the (k-1)-id context of target e[j+1] among the (k-1)-grams,
        # or -1 when order k cannot be used (the context crosses eos, or was never seen)
        contexts = [np.zeros(L - 1, dtype=np.int64)]
        window = self._lookup(self.levels[0], e)
        valid = np.ones(L, dtype=bool)
        for k in range(2, self.order + 1):
            inner_ok = np.ones(L - 1, dtype=bool) if k == 2 else ~is_eos[:-1]
            valid = np.concatenate(([False], valid[:-1] & inner_ok))
            ctx = np.where(valid[1:], window[:-1], -1)
            contexts.append(ctx)
            if k < self.order:
                ranks = np.where(ctx >= 0, self._lookup(self.levels[k - 1], ctx * V + e[1:]), -1)
                window = np.concatenate(([-1], ranks))
        return self._prob(contexts, e[1:])

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike, **meta) -> None:
        """Write the fitted model (and `meta`, JSON-able extras) to one .npz file, atomically:
        written beside `path` and renamed over it, so a crash leaves the old file or the new."""
        if not self.levels:
            raise RuntimeError("call fit() first")
        path = Path(path)
        arrays = {"meta": np.array(json.dumps({"format": FILE_FORMAT, "order": self.order, "vocab_size": self.vocab_size,
                                               "eos_id": self.eos_id, **meta}))}
        for k, level in enumerate(self.levels, 1):
            for field in Level.__dataclass_fields__:
                arrays[f"{k}.{field}"] = getattr(level, field)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple["KneserNey", dict]:
        """(model, meta) from a file `save` wrote; a damaged or foreign file is a ValueError."""
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                if meta.get("format") != FILE_FORMAT:
                    raise ValueError(f"format {meta.get('format')!r}, expected {FILE_FORMAT!r}")
                model = cls(meta["order"], meta["vocab_size"], meta["eos_id"])
                model.levels = [Level(**{field: f[f"{k}.{field}"] for field in Level.__dataclass_fields__})
                                for k in range(1, model.order + 1)]
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: not a readable arlm n-gram file ({str(e).splitlines()[0][:120]})") from None
        return model, meta

    def num_ngrams(self) -> list[int]:
        """Number of distinct k-grams for k = 1..order."""
        return [len(level.keys) for level in self.levels]

    # ------------------------------------------------------------------ internals

    def _stream(self, ids: np.ndarray) -> np.ndarray:
        """int64 copy of `ids` with one eos prepended, so the first token has context [eos]."""
        ids = np.asarray(ids).astype(np.int64).ravel()
        self._check_ids(ids)
        return np.concatenate(([self.eos_id], ids))

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got [{ids.min()}, {ids.max()}]")

    @staticmethod
    def _lookup(level: Level, keys: np.ndarray) -> np.ndarray:
        """Rank of each key in level.keys, -1 where absent."""
        if len(level.keys) == 0:
            return np.full(np.shape(keys), -1, dtype=np.int64)
        idx = np.minimum(np.searchsorted(level.keys, keys), len(level.keys) - 1)
        return np.where(level.keys[idx] == keys, idx, -1)

    def _context_ranks(self, context: Sequence[int]) -> list[np.ndarray]:
        """Per order k, the rank of the last k-1 ids of the context among the (k-1)-grams (or -1)."""
        if not self.levels:
            raise RuntimeError("call fit() first")
        history = [self.eos_id] + [int(t) for t in context]
        self._check_ids(np.asarray(history))
        last_eos = len(history) - 1 - history[::-1].index(self.eos_id)
        history = history[last_eos:][-(self.order - 1):]  # never look back past an eos
        ranks = [np.zeros(1, dtype=np.int64)]
        for k in range(2, self.order + 1):
            rank = -1
            if len(history) >= k - 1:
                rank = 0
                for level, t in zip(self.levels, history[len(history) - (k - 1):]):
                    rank = int(self._lookup(level, np.array([rank * self.vocab_size + t]))[0])
                    if rank < 0:
                        break
            ranks.append(np.array([rank], dtype=np.int64))
        return ranks

    def _prob(self, contexts: list[np.ndarray], words: np.ndarray) -> np.ndarray:
        """P(words | contexts), interpolating from the uniform distribution up to the highest order."""
        p = np.full(words.shape, 1.0 / self.vocab_size)
        for level, ctx in zip(self.levels, contexts):
            if len(level.keys) == 0:
                break  # no n-gram of this order (hence of any higher order) in the training stream
            safe = np.maximum(ctx, 0)
            total = np.where(ctx >= 0, level.ctx_total[safe], 0.0)
            idx = self._lookup(level, safe * self.vocab_size + words)
            count = np.where(idx >= 0, level.counts[idx], 0)
            discounted = count - level.discounts[np.minimum(count, 3)]
            interpolated = (discounted + level.ctx_backoff[safe] * p) / np.maximum(total, 1.0)
            p = np.where(total > 0, interpolated, p)  # unseen context: keep the lower order
        return p


# ---------------------------------------------------------------------- mixing into a model

MIX_FILE = "ngram.npz"  # beside a model's weights: the n-gram a Predictor mixes in


@dataclass
class Mixture:
    """An n-gram mixed into a neural model's next-token distribution,
    P(w | h) = (1 - weight) * P_model(w | h) + weight * P_ngram(w | h),
    with `weight` fitted on the validation split (`mixture_weight`). Mixing a neural model
    with Kneser-Ney this way is the classic recipe (Mikolov et al. 2011; Jozefowicz et al.
    2016): the n-gram remembers exact phrases the network has not yet learned."""
    ngram: KneserNey
    weight: float
    meta: dict

    def distributions(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """(len(histories), V) float64: P_ngram(. | each history); only the last order-1 ids
        of each history (since its last eos) matter."""
        keep = self.ngram.order - 1
        return np.stack([self.ngram.distribution(list(h[-keep:]) if keep else []) for h in histories])

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Mixture":
        ngram, meta = KneserNey.load(path)
        weight = meta.get("weight")
        if not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
            raise ValueError(f"{path}: no mixing weight in [0, 1] (got {weight!r}); refit with python -m arlm.ngram --mix")
        return cls(ngram, float(weight), meta)


def mixture_weight(p_model: np.ndarray, p_ngram: np.ndarray, tol: float = 1e-7, max_iter: int = 500) -> float:
    """The weight w in [0, 1] that maximizes sum log((1 - w) p_model + w p_ngram) over
    scored tokens (each array: the probability each model gave the true token). EM: the
    new weight is the mean posterior share of the n-gram; the objective is concave in w,
    so this climbs to its maximum from any start inside (0, 1)."""
    p_model, p_ngram = np.asarray(p_model, np.float64), np.asarray(p_ngram, np.float64)
    if p_model.shape != p_ngram.shape or p_model.size == 0:
        raise ValueError("need the same, non-zero number of probabilities from both models")
    w = 0.5
    for _ in range(max_iter):
        share = w * p_ngram / ((1 - w) * p_model + w * p_ngram)
        new = float(share.mean())
        if abs(new - w) < tol:
            w = new
            break
        w = new
    # the maximum may sit on an end (one model useless), which EM only approaches
    return max((w, 0.0, 1.0), key=lambda v: float(np.log((1 - v) * p_model + v * p_ngram).sum()))


def fit_mixture(checkpoint: str | os.PathLike, order: int = 5, max_tokens: int = 200_000,
                progress=print) -> dict:
    """Fit an order-`order` Kneser-Ney model on the train split of the corpus a checkpoint
    was trained on, with the checkpoint's own tokenizer (so the ids are the model's), fit
    the mixing weight on the first `max_tokens` tokens of valid, measure valid and test
    perplexity of the model, the n-gram and the mixture, and save the n-gram with its
    weight as ngram.npz beside the model's weights (arlm.load then mixes it in)."""
    from arlm.checkpoint import model_dir
    from arlm.corpus import documents, resolve
    from arlm.generate import load
    from arlm.tokenizer import fingerprint
    from tqdm import tqdm

    lm = load(checkpoint, ngram=False)
    corpus = lm.config.get("run", {}).get("corpus")
    if not corpus:
        raise ValueError(f"{checkpoint}: the checkpoint does not say which corpus it was trained on; "
                         "only checkpoints saved by python -m arlm.train can be mixed")
    splits = documents(resolve(corpus))
    tok, eos = lm.tokenizer, lm.tokenizer.eos_id

    def stream(docs, limit=None):
        out, n = [], 0
        for d in docs:
            ids = tok.encode(d) + [eos]
            out.append(ids)
            n += len(ids)
            if limit is not None and n >= limit:
                break
        return out

    t0 = time.perf_counter()
    progress(f"fitting a Kneser-Ney {order}-gram on the train split of {corpus} with the model's tokenizer ...")
    train = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in stream(splits["train"])])
    ngram = KneserNey(order, lm.vocab_size, eos).fit(train)
    fit_seconds = time.perf_counter() - t0
    progress(f"  {len(train):,} tokens, {sum(ngram.num_ngrams()):,} n-grams, {fit_seconds:.1f} s")
    result: dict = {"order": order, "train_tokens": int(len(train)), "fit_seconds": fit_seconds}
    for split in ("valid", "test"):
        docs = stream(splits[split], max_tokens)
        # the model's log-probabilities of each document's tokens and closing eos, from its start
        bar = tqdm(docs, desc=f"scoring {split}", unit=" docs", leave=False, disable=None)
        lp_model = np.array([lp for ids in bar for lp in lm.score_ids(ids)])
        p_model = np.exp(lp_model)
        p_ngram = ngram.token_probs(np.concatenate([np.asarray(ids, dtype=np.int64) for ids in docs]))
        if split == "valid":
            weight = mixture_weight(p_model, p_ngram)
        mixed = (1 - weight) * p_model + weight * p_ngram
        result[split] = {"tokens": int(len(p_model)), "model": math.exp(-lp_model.mean()),
                         "ngram": math.exp(-np.log(p_ngram).mean()), "mixture": math.exp(-np.log(mixed).mean())}
    result["weight"] = weight
    path = model_dir(checkpoint) / MIX_FILE
    ngram.save(path, weight=weight, tokenizer_fingerprint=fingerprint(tok), corpus=corpus,
               train_tokens=result["train_tokens"], valid=result["valid"], test=result["test"])
    result["path"] = str(path)
    return result


# ---------------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m arlm.ngram",
        description="Fit modified Kneser-Ney n-gram baselines on a corpus's train split and "
                    "report valid/test perplexity (every token, eos included).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--corpus", default="hadith", metavar="NAME|PATH",
                        help="corpus name or path, as accepted by arlm.corpus.prepare")
    parser.add_argument("--order", type=int, nargs="+", default=[3, 5], choices=range(2, 6), metavar="N",
                        help="one or more n-gram orders to fit, each in 2..5")
    parser.add_argument("--vocab-size", type=int, default=50000, help="tokenizer vocabulary size")
    parser.add_argument("--min-freq", type=int, default=2,
                        help="word tokenizer: minimum training frequency for a word to get its own id")
    parser.add_argument("--tokenizer", choices=["word", "sentencepiece"], default="word",
                        help="tokenizer kind (must match the LSTM run being compared against)")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the results to this JSON file")
    parser.add_argument("--mix", metavar="DIR", default=None,
                        help="instead: fit the largest --order on the train split a checkpoint (model or run "
                             "directory) was trained on, with its tokenizer; fit the weight that mixes it into the "
                             "model's predictions on valid; report valid/test perplexity of the model, the n-gram "
                             "and the mixture; save ngram.npz beside the weights, which arlm.load and "
                             "arlm-generate then mix in (--corpus, --vocab-size, --min-freq, --tokenizer: the "
                             "checkpoint's own)")
    parser.add_argument("--mix-tokens", type=int, default=200_000, metavar="N",
                        help="--mix: valid (and test) tokens scored to fit the weight and report perplexity")
    return parser


def _run_mix(args: argparse.Namespace) -> int:
    if args.mix_tokens < 1:
        raise ValueError(f"--mix-tokens must be >= 1, got {args.mix_tokens}")
    result = fit_mixture(args.mix, max(args.order), args.mix_tokens)
    print(f"mixing weight of the {result['order']}-gram: {result['weight']:.4f} (fitted on valid)")
    print(f"{'perplexity':>10} {'tokens':>9} {'model':>9} {'n-gram':>9} {'mixture':>9}")
    for split in ("valid", "test"):
        r = result[split]
        print(f"{split:>10} {r['tokens']:>9,} {r['model']:>9.2f} {r['ngram']:>9.2f} {r['mixture']:>9.2f}")
    print(f"saved {result['path']}: arlm.load and arlm-generate mix it in (ngram=False / --ngram off: the model alone)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.mix is not None:
        return _run_mix(args)
    # imported here: the model above needs neither, and the tests swap in fakes for both
    from arlm.corpus import prepare
    from arlm.tokenizer import TokenizerConfig

    data = prepare(args.corpus, tokenizer=TokenizerConfig(
        kind=args.tokenizer, vocab_size=args.vocab_size, min_freq=args.min_freq))
    V, eos = data.tokenizer.vocab_size, data.tokenizer.eos_id
    print(f"corpus {args.corpus}: vocab {V}, tokens train {len(data.train)} "
          f"valid {len(data.valid)} test {len(data.test)}")
    print(f"{'order':>5} {'valid ppl':>10} {'test ppl':>10} {'fit s':>8}")
    results = []
    for order in args.order:
        t0 = time.perf_counter()
        model = KneserNey(order, V, eos_id=eos).fit(data.train)
        fit_seconds = time.perf_counter() - t0
        valid, test = model.evaluate(data.valid), model.evaluate(data.test)
        print(f"{order:>5} {valid['perplexity']:>10.2f} {test['perplexity']:>10.2f} {fit_seconds:>8.1f}")
        results.append({"order": order, "valid": valid, "test": test, "fit_seconds": fit_seconds,
                        "ngrams": model.num_ngrams(),
                        "discounts": [level.discounts[1:].tolist() for level in model.levels]})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"corpus": args.corpus, "tokenizer": args.tokenizer, "vocab_size": V,
                       "min_freq": args.min_freq, "results": results}, f, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`arlm-ngram`: 0 on success; a bad corpus or option is one `error: ...` line and exit
    status 2 (usage errors and --help are argparse's own); see arlm.cli for the others."""
    args = _parser().parse_args(argv)
    return cli.run(_run, args)


if __name__ == "__main__":
    raise SystemExit(main())
