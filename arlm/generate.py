"""Next-word prediction, generation, beam search and scoring with a trained model.

    import arlm
    lm = arlm.load("runs/hadith")                      # a Predictor
    lm.predict_next("قال رسول", k=5)                   # [("الله", 0.97), ...]
    lm.generate("قال رسول الله", temperature=0.8, top_p=0.9, seed=0)
    lm.beam_search("قال رسول الله", beam_size=5)       # [(text, score), ...]
    lm.score("قال رسول الله صلى الله عليه وسلم")       # log-probs and perplexity

Conventions, the same as in training:

* Text goes through the checkpoint's own tokenizer, which normalizes it first; a word
  outside the vocabulary becomes <unk>.
* When `python -m arlm.ngram --mix` saved an n-gram beside the weights (ngram.npz), every
  prediction is the mixture (1 - w) P_lstm + w P_ngram (`load(..., ngram=False)`: the LSTM alone).
* The model reads <eos> as "a document starts here", so a prompt is read as
  [eos] + encode(prompt) from the zero state, and an empty prompt is just [eos].
* The prompt is read once (in chunks of READ_CHUNK tokens, so a 10,000-word prompt is
  only a longer walk); after that each new token is fed alone and the LSTM state
  carries everything read so far: O(1) work per generated token.

A Predictor never changes after it is built: every call keeps its state in local
variables and runs under torch.inference_mode(), so one Predictor can serve several
threads at once. Randomness comes from a local torch.Generator per prompt, never from
the global RNG.

Command line: `arlm-generate --help` (also `python -m arlm.generate`, scripts/generate.py).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from arlm import checkpoint, cli
from arlm.complete import Completer, Suggestion, TypingSession, check_k
from arlm.inference import WEIGHTS, FrozenModel
from arlm.model import LanguageModel, State
from arlm.ngram import MIX_FILE, Mixture
from arlm.tokenizer import BOS, EOS, PAD, UNK, fingerprint

# Tokens read per forward pass. The LSTM walks token by token either way; the chunks only
# bound the memory a very long prompt or text needs (gates, and V logits per scored token).
READ_CHUNK = 1024


# --- sampling filters: pure functions on (..., V) logits ----------------------------


def filter_top_k(logits: Tensor, k: int | None) -> Tensor:
    """Keep the k highest logits (ties with the k-th are kept too); the rest become -inf."""
    if k is None or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, -math.inf)


def filter_top_p(logits: Tensor, p: float | None) -> Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of most likely tokens
    whose probability mass reaches p; the rest become -inf. The most likely token is always
    kept, so the result can always be sampled from."""
    if p is None or p >= 1.0:
        return logits
    probs = logits.softmax(-1)
    sorted_probs, order = probs.sort(-1, descending=True)
    # A token is needed while the mass of the tokens above it has not yet reached p.
    mass_above = sorted_probs.cumsum(-1) - sorted_probs
    drop_sorted = mass_above >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


# --- argument checks: one line each, saying what is valid ---------------------------


def check_sampling(max_new_tokens: int = 0, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> None:
    """Raise ValueError unless the generation settings are usable."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def check_beam(beam_size: int, max_new_tokens: int, length_penalty: float, n_best: int | None) -> None:
    """Raise ValueError unless the beam search settings are usable."""
    if not isinstance(beam_size, int) or isinstance(beam_size, bool) or beam_size < 1:
        raise ValueError(f"beam_size must be an integer >= 1, got {beam_size!r}")
    check_sampling(max_new_tokens)
    if not (isinstance(length_penalty, (int, float)) and math.isfinite(length_penalty) and length_penalty >= 0):
        raise ValueError(f"length_penalty must be a finite number >= 0, got {length_penalty!r}")
    if n_best is not None and (not isinstance(n_best, int) or not 1 <= n_best <= beam_size):
        raise ValueError(f"n_best must be an integer in 1..beam_size ({beam_size}) or None, got {n_best!r}")


def check_device(device: str | torch.device) -> torch.device:
    """The device, or a ValueError that says why it cannot be used here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not valid ({e}); use e.g. cpu, cuda or cuda:1") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use --device cpu")
    return dev


def _check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt must be a string, got {type(prompt).__name__}")
    return prompt


# --- the predictor ------------------------------------------------------------------


class Predictor:
    """A trained model and its tokenizer, ready to predict, generate, search and score.

    Build it with `load(path)` (or `arlm.load(path)`). Attributes: `model` (the readable
    LanguageModel, in eval mode), `engine` (the FrozenModel every call reads: the model's
    weights prepared once, in `weights` precision), `tokenizer`, `config` (the checkpoint's
    config dict), `device`, `ngram` (the n-gram mixed into every prediction, an
    arlm.ngram.Mixture, or None: see `load`). Changing `model`'s weights afterwards does not change the
    answers: build a new Predictor for new weights.
    """

    def __init__(self, model: LanguageModel, tokenizer, config: dict | None = None, weights: str = "float32",
                 ngram: Mixture | None = None):
        if tokenizer.vocab_size != model.config.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model {model.config.vocab_size}")
        if ngram is not None and ngram.ngram.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"the n-gram has {ngram.ngram.vocab_size} tokens but the model {tokenizer.vocab_size}")
        self.ngram = ngram
        self.model = model.eval()
        self.engine = FrozenModel(model, weights)
        self.tokenizer = tokenizer
        self.config = config or {}
        self.device = self.engine.device
        # Ids never proposed: <pad> and <bos> never occur in a training stream, and <unk>
        # is not a word (only when asked). Built once here and only ever read afterwards.
        never = torch.zeros(tokenizer.vocab_size, dtype=torch.bool, device=self.device)
        never[[tokenizer.pad_id, tokenizer.bos_id]] = True
        with_unk = never.clone()
        with_unk[tokenizer.unk_id] = True
        # As ids: index_fill over a handful of ids is a fraction of masked_fill's pass over a
        # V-long mask, which was a tenth of a generated token's time.
        self._banned_with_unk, self._banned_without_unk = with_unk.nonzero().squeeze(1), never.nonzero().squeeze(1)
        # Special tokens are shown by arlm's names whatever the tokenizer calls them
        # (sentencepiece says </s> for <eos>).
        self._special_names = {tokenizer.pad_id: PAD, tokenizer.unk_id: UNK, tokenizer.bos_id: BOS,
                               tokenizer.eos_id: EOS}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def __repr__(self) -> str:
        c = self.model.config
        return (f"Predictor(vocab={c.vocab_size}, layers={c.num_layers}, hidden={c.hidden_size}, "
                f"softmax={'adaptive' if c.uses_adaptive else 'full'}, weights={self.engine.weights}, "
                + (f"ngram={self.ngram.ngram.order}-gram at {self.ngram.weight:.3f}, " if self.ngram else "")
                + f"device={self.device})")

    # --- reading text ------------------------------------------------------------------

    def _banned(self, allow_unk: bool) -> Tensor:
        """The ids never proposed (a 1-d tensor of ids)."""
        return self._banned_without_unk if allow_unk else self._banned_with_unk

    def _ids(self, prompt: str) -> list[int]:
        """[eos] + the prompt's ids: the model reads eos as the start of a document."""
        return [self.tokenizer.eos_id] + self.tokenizer.encode(_check_prompt(prompt))

    def _walk(self, ids: list[int], last_only: bool = False) -> Iterator[tuple[Tensor, State]]:
        """Read ids from the zero state, READ_CHUNK at a time; yield (features (n, E), state)
        (with last_only, n = 1: only each chunk's last step is projected)."""
        state = None
        for start in range(0, len(ids), READ_CHUNK):
            x = torch.tensor(ids[start:start + READ_CHUNK], dtype=torch.long, device=self.device).view(-1, 1)
            out = self.engine(x, state, last_only=last_only)
            state = out.state
            yield out.features[:, 0], state

    def _read(self, prompt: str) -> tuple[Tensor, State]:
        """(log-probabilities of the next token (V,), state (L, 1, H)) after reading the prompt."""
        return self._read_ids(self._ids(prompt))

    def _read_ids(self, ids: list[int]) -> tuple[Tensor, State]:
        for features, state in self._walk(ids, last_only=True):
            pass
        return self._mix(self.engine.log_probs(features[-1]), [ids]), state

    def _mix(self, log_probs: Tensor, histories: Sequence[Sequence[int]]) -> Tensor:
        """The next-token log-probabilities (B, V) or (V,) after each history (the ids read,
        [eos] first), with the n-gram mixed in when the Predictor has one:
        log((1 - w) P_model + w P_ngram). Without one, log_probs itself."""
        if self.ngram is None:
            return log_probs
        w = self.ngram.weight
        # float32 like the model's own log-probabilities (the n-gram's smallest are ~1e-9)
        p = torch.from_numpy(self.ngram.distributions(histories)).to(log_probs.device, log_probs.dtype)
        mixed = torch.logaddexp(log_probs.view(len(histories), -1) + _log(1 - w), p.log_() + _log(w))
        return mixed.view(log_probs.shape)

    def _token(self, i: int) -> str:
        return self._special_names.get(i) or self.tokenizer.id_to_token(i)

    def _decode(self, ids: list[int]) -> str:
        """Text of generated ids; an <eos> inside them (stop_at_eos=False) starts a new line."""
        docs, current = [], []
        for i in ids:
            if i == self.tokenizer.eos_id:
                docs.append(current)
                current = []
            else:
                current.append(i)
        docs.append(current)
        return "\n".join(self.tokenizer.decode(d) for d in docs)

    # --- the next token ----------------------------------------------------------------

    def next_distribution(self, prefix: str = "") -> Tensor:
        """P(next token | prefix) over the whole vocabulary: a (V,) float tensor on the CPU
        summing to 1, indexed by token id (special tokens included, as the model gives them)."""
        with torch.inference_mode():
            log_probs, _ = self._read(prefix)
            probs = log_probs.exp().cpu()
        return probs.clone()  # cloned outside inference mode: an ordinary tensor for the caller

    def predict_next(self, prefix: str = "", k: int = 10, allow_unk: bool = False) -> list[tuple[str, float]]:
        """The k most likely next tokens after `prefix`, most likely first, as (token, probability).

        <pad> and <bos> are never listed, nor <unk> unless allow_unk; "<eos>" means the text
        ends here. Probabilities are the model's own, not renormalized over the list."""
        check_k(k)
        banned = self._banned(allow_unk)
        with torch.inference_mode():
            log_probs, _ = self._read(prefix)
            allowed = self.vocab_size - banned.numel()
            top = log_probs.index_fill(-1, banned, -math.inf).topk(min(k, allowed))
            pairs = zip(top.indices.tolist(), top.values.tolist())
        return [(self._token(i), math.exp(v)) for i, v in pairs]

    # --- completing the word being typed (arlm/complete.py) ---------------------------

    @property
    def completer(self) -> Completer:
        """The prefix index (word models) or piece tables (subword models), built on first use."""
        completer = self.__dict__.get("_completer")
        if completer is None:  # two threads may both build it: the same thing, either wins
            completer = self.__dict__["_completer"] = Completer(self)
        return completer

    def complete(self, text: str = "", k: int = 5, punctuation: bool = False, numbers: bool = False
                 ) -> list[Suggestion]:
        """The k most likely whole words for the word being typed at the end of `text`.

        Mid-word, the typed part is a prefix, matched after the model's normalization (أ and
        إ match ا, harakat and tatweel are ignored, as its NormalizeConfig says): the result
        is the words that begin with it, ranked by P(word | the text before it). At a word
        boundary (a space, punctuation, empty text) it is next-word prediction. Each
        `Suggestion(word, probability, share)`: the model's probability, and its share of the
        probability of all words that match. Punctuation and numbers only when asked;
        special tokens never. A prefix no word has gives []. Subword models assemble words
        from pieces (see arlm/complete.py)."""
        check_k(k)
        split = self.completer.split(text)
        ids = self._ids(split.context)
        with torch.inference_mode():
            log_probs, state = self._read_ids(ids)
            return self._suggest(log_probs, state, split.prefix, k, punctuation, numbers, ids)

    def _suggest(self, log_probs: Tensor, state: State, prefix: str, k: int, punctuation: bool,
                 numbers: bool, history: list[int]) -> list[Suggestion]:
        with torch.inference_mode():
            if self.completer.subword:
                return self.completer.from_pieces(log_probs, state, prefix, k, punctuation, numbers, history)
            return self.completer.from_distribution(log_probs, prefix, k, punctuation, numbers)

    def session(self, k: int = 5, punctuation: bool = False, numbers: bool = False) -> TypingSession:
        """A typing session: `session.update(text)` gives `complete(text)`'s suggestions,
        reading only what changed since the last update (see arlm/complete.py)."""
        return TypingSession(self, k, punctuation, numbers)

    # --- sampling and greedy generation ------------------------------------------------

    def generate(self, prompt: str | Sequence[str], max_new_tokens: int = 50, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop_at_eos: bool = True, allow_unk: bool = False) -> str | list[str]:
        """Continue the prompt: returns the new text only (not the prompt).

        temperature 0 is greedy (always the most likely token); otherwise tokens are sampled
        from the distribution sharpened (< 1) or flattened (> 1) by the temperature, then cut
        to the top_k tokens and/or the top_p nucleus. <pad>, <bos> and <unk> are never
        produced unless allow_unk. With stop_at_eos the text ends where the model ends the
        document; without it an <eos> starts a new line and generation goes on.

        A list of prompts gives a list of texts. Each prompt is read on its own (no padding)
        and then all continue side by side. With a seed, prompt i samples from its own
        generator seeded `seed + i`: the same seed gives the same texts, and a prompt's
        text does not depend on the other prompts in the list."""
        single = isinstance(prompt, str)
        if not single and not isinstance(prompt, (list, tuple)):
            raise ValueError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        prompts = [prompt] if single else list(prompt)
        texts = [self._decode(ids) for ids in self._generate_ids(
            prompts, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos, allow_unk)]
        return texts[0] if single else texts

    def _generate_ids(self, prompts: list[str], max_new_tokens: int = 50, temperature: float = 1.0,
                      top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                      stop_at_eos: bool = True, allow_unk: bool = False) -> list[list[int]]:
        """The generated ids of each prompt (what `generate` decodes)."""
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ValueError(f"seed must be an integer >= 0 or None, got {seed!r}")
        for p in prompts:
            _check_prompt(p)
        if not prompts:
            return []
        generators = None
        if temperature > 0:
            base = seed if seed is not None else int.from_bytes(os.urandom(6), "little")
            generators = [torch.Generator().manual_seed(base + i) for i in range(len(prompts))]
        eos = self.tokenizer.eos_id
        banned = self._banned(allow_unk)
        out: list[list[int]] = [[] for _ in prompts]
        with torch.inference_mode():
            histories = [self._ids(p) for p in prompts]
            reads = [self._read_ids(h) for h in histories]
            log_probs = torch.stack([lp for lp, _ in reads])                         # (B, V)
            state = tuple(torch.cat([s[j] for _, s in reads], dim=1) for j in (0, 1))  # (L, B, H)
            done = [False] * len(prompts)
            for t in range(max_new_tokens):
                next_ids = self._choose(log_probs, banned, temperature, top_k, top_p, generators)
                for b, token in enumerate(next_ids.tolist()):
                    if done[b]:
                        continue  # finished rows still ride along; their tokens are dropped
                    if stop_at_eos and token == eos:
                        done[b] = True
                    else:
                        out[b].append(token)
                if all(done) or t + 1 == max_new_tokens:
                    break
                log_probs, state = self.engine.step(next_ids, state)
                if self.ngram is not None:  # out[b] ends with the token just read (a finished row's no longer matters)
                    log_probs = self._mix(log_probs, [h + o for h, o in zip(histories, out)])
        return out

    def _choose(self, log_probs: Tensor, banned: Tensor, temperature: float, top_k: int | None,
                top_p: float | None, generators: list[torch.Generator] | None) -> Tensor:
        """One next token per row of log_probs (B, V)."""
        logits = log_probs.index_fill(-1, banned, -math.inf)
        if temperature == 0:
            return logits.argmax(-1)
        # Shifted so the best logit is 0 before dividing: a tiny temperature then gives 0 and
        # -inf (as good as greedy) rather than all -inf, which could not be sampled from.
        # (Dividing by 1 is exact, so it is skipped.)
        logits = logits - logits.amax(-1, keepdim=True)
        if temperature != 1.0:
            logits = logits / temperature
        logits = filter_top_p(filter_top_k(logits, top_k), top_p)
        # Sampled on the CPU, row by row with each prompt's own generator, so a seed gives
        # the same text whatever the device and whatever else is in the batch.
        probs = logits.softmax(-1).float().cpu()
        # Inverse-CDF sampling: one uniform number per row from the prompt's own generator
        # (multinomial draws V exponentials per sample: ~0.5 ms at a 25k vocabulary).
        cdf = probs.cumsum(-1)
        picks = [torch.searchsorted(row, torch.rand(1, generator=g) * row[-1]).clamp_(max=row.numel() - 1)
                 for row, g in zip(cdf, generators)]
        return torch.cat(picks).to(self.device)

    # --- beam search -------------------------------------------------------------------

    def beam_search(self, prompt: str, beam_size: int = 5, max_new_tokens: int = 20, length_penalty: float = 1.0,
                    n_best: int | None = None, allow_unk: bool = False, stop_at_eos: bool = True
                    ) -> list[tuple[str, float]]:
        """The n_best (default beam_size) most likely continuations, best first, as (text, score).

        Each beam carries its own LSTM state. At every step all extensions of the live
        beams are ranked by total log-probability and the best ones are kept, one per
        beam still open; an extension that ends with <eos> is finished and closes its beam
        (with stop_at_eos=False <eos> is an ordinary token). The search ends when every
        beam has finished or after max_new_tokens, so beam_size 1 is exactly greedy
        generation and beam_size hypotheses come back (fewer only for a tiny vocabulary).

        score = (sum of the new tokens' log-probabilities) / length ** length_penalty,
        where length counts the new tokens including the closing <eos>: length_penalty 0
        ranks by total log-probability (which favours short texts), 1 by the mean."""
        check_beam(beam_size, max_new_tokens, length_penalty, n_best)
        n_best = beam_size if n_best is None else n_best
        eos, V = self.tokenizer.eos_id, self.vocab_size
        banned = self._banned(allow_unk)
        finished: list[tuple[list[int], float]] = []  # (ids, total log-prob)
        with torch.inference_mode():
            history = self._ids(prompt)
            log_probs, state = self._read_ids(history)
            log_probs = log_probs.unsqueeze(0)           # (live beams, V)
            beams: list[list[int]] = [[]]                 # the live beams' new ids
            totals = torch.zeros(1, device=self.device)  # their total log-probabilities
            for t in range(max_new_tokens):
                candidates = (totals[:, None] + log_probs.index_fill(-1, banned, -math.inf)).view(-1)
                top = candidates.topk(min(beam_size - len(finished), candidates.numel()))
                new_beams, new_totals, origins = [], [], []
                for total, index in zip(top.values.tolist(), top.indices.tolist()):
                    if total == -math.inf:
                        break
                    origin, token = divmod(index, V)
                    if stop_at_eos and token == eos:
                        finished.append((beams[origin] + [token], total))
                    else:
                        new_beams.append(beams[origin] + [token])
                        new_totals.append(total)
                        origins.append(origin)
                beams, totals = new_beams, torch.tensor(new_totals, device=self.device)
                if not beams or t + 1 == max_new_tokens:
                    break
                pick = torch.tensor(origins, device=self.device)
                state = (state[0].index_select(1, pick), state[1].index_select(1, pick))
                last = torch.tensor([ids[-1] for ids in beams], device=self.device)
                log_probs, state = self.engine.step(last, state)
                log_probs = self._mix(log_probs, [history + ids for ids in beams])
            finished += zip(beams, totals.tolist())  # still open after max_new_tokens: as they are

        def score(total: float, length: int) -> float:
            return total / length ** length_penalty if length else 0.0

        ranked = sorted(((score(total, len(ids)), ids) for ids, total in finished), key=lambda s: -s[0])
        return [(self._decode(ids[:-1] if stop_at_eos and ids and ids[-1] == eos else ids), s)
                for s, ids in ranked[:n_best]]

    # --- scoring -----------------------------------------------------------------------

    def score_ids(self, ids: Sequence[int]) -> list[float]:
        """log P(ids[j] | [eos] + ids[:j]) for every j: the model reads a document from its
        start, as in training (ids are usually a document's and its closing eos). With an
        n-gram mixed in, the mixture's log-probabilities."""
        targets = [int(t) for t in ids]
        if not targets:
            return []
        read = [self.tokenizer.eos_id] + targets[:-1]
        with torch.inference_mode():
            chunks = []
            for start, (features, _) in zip(range(0, len(read), READ_CHUNK), self._walk(read)):
                y = torch.tensor(targets[start:start + READ_CHUNK], dtype=torch.long, device=self.device)
                chunks.append(-self.engine.nll(features, y))
            log_probs = torch.cat(chunks).double()
        if self.ngram is not None:
            w = self.ngram.weight
            p = torch.from_numpy(self.ngram.ngram.token_probs(np.asarray(targets, dtype=np.int64)))
            log_probs = torch.logaddexp(log_probs.cpu() + _log(1 - w), p.log() + _log(w))
        return log_probs.tolist()

    def score(self, text: str) -> dict:
        """How likely the model finds `text` as a whole document, measured as training does:
        from the start-of-document state, every token and the closing <eos> is predicted.

        Returns {"tokens": [(token, log_prob), ...] (the <eos> last), "total_logprob": float,
        "num_tokens": int (tokens + 1 for <eos>), "perplexity": exp(-total / num_tokens)}.
        Natural logarithms; words outside the vocabulary are scored as <unk>."""
        ids = self._ids(text)
        targets = ids[1:] + [self.tokenizer.eos_id]
        log_probs = self.score_ids(targets)
        total = math.fsum(log_probs)
        mean_nll = -total / len(targets)
        return {
            "tokens": [(self._token(t), lp) for t, lp in zip(targets, log_probs)],
            "total_logprob": total,
            "num_tokens": len(targets),
            "perplexity": math.exp(mean_nll) if mean_nll < 700 else math.inf,
        }


def load(path: str | os.PathLike, device: str | torch.device = "cpu", weights: str = "float32",
         ngram: bool | None = None) -> Predictor:
    """A Predictor from a model directory, or a run directory (its best/, else latest/).

    `weights`: "float32" (default, exactly the trained numbers), or "float16" / "int8"
    copies for faster CPU inference (log-probabilities within ~1e-3 / ~1e-1 of float32;
    perplexity changes by <0.05%, see BENCHMARKS.md).

    `ngram`: whether to mix in the Kneser-Ney n-gram that `python -m arlm.ngram --mix DIR`
    saved beside the weights (ngram.npz, with its weight fitted on valid). None (default):
    when the file is there; True: it must be; False: never (the LSTM alone)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if ngram not in (None, True, False):
        raise ValueError(f"ngram must be None, True or False, got {ngram!r}")
    model, tokenizer, config = checkpoint.load(path, check_device(device))
    mixture = None
    mix_file = checkpoint.model_dir(path) / MIX_FILE
    if ngram is True and not mix_file.is_file():
        raise checkpoint.CheckpointError(f"{mix_file}: missing; make it with python -m arlm.ngram --mix {path}")
    if ngram is not False and mix_file.is_file():
        try:
            mixture = Mixture.load(mix_file)
        except ValueError as e:
            raise checkpoint.CheckpointError(str(e)) from None
        recorded = mixture.meta.get("tokenizer_fingerprint")
        if recorded != fingerprint(tokenizer):
            raise checkpoint.CheckpointError(
                f"{mix_file}: fitted with another tokenizer than this model's; refit it with "
                f"python -m arlm.ngram --mix {path}, or load with ngram=False (--ngram off)")
    return Predictor(model, tokenizer, config, weights, mixture)


def _log(x: float) -> float:
    """log x, with log 0 = -inf (a mixing weight of 0 or 1)."""
    return math.log(x) if x > 0 else -math.inf


# --- command line -------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as a ValueError, so main() prints it as
    one `error: ...` line like every other bad input."""

    def error(self, message: str):
        raise ValueError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="arlm-generate",
        description="Predict the next word, generate text, or beam-search continuations with a trained\n"
                    "arlm checkpoint. Prompts are normalized and tokenized exactly as in training; an\n"
                    "empty prompt starts a new document. Arabic is printed as plain UTF-8 in logical\n"
                    "order (no reshaping), so terminals and files show it right to left.",
        epilog="examples:\n"
               "  arlm-generate --checkpoint runs/hadith --prompt 'قال رسول' --next-word 5\n"
               "  arlm-generate --checkpoint runs/hadith --prompt 'قال رسول الله' --temperature 0.8 "
               "--top-p 0.9 --num-samples 3 --seed 0\n"
               "  arlm-generate --checkpoint runs/hadith --prompt-file prompts.txt --beam-size 5\n"
               "  arlm-generate --checkpoint runs/hadith --interactive --next-word 10\n"
               "  arlm-generate --checkpoint runs/hadith --complete 'قال رسول ال'\n"
               "  arlm-generate --checkpoint runs/hadith --interactive --complete",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="model directory, or a training run directory (its best/, else latest/, "
                             "is used); required")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", default="", metavar="TEXT",
                        help="the prompt (default: empty, i.e. the start of a new document)")
    source.add_argument("--prompt-file", metavar="FILE",
                        help="UTF-8 file with one prompt per line; blank lines are skipped (default: none)")
    source.add_argument("--interactive", action="store_true",
                        help="read one prompt per line from stdin until EOF and answer each; an empty line "
                             "asks from the start of a document (default: off)")
    parser.add_argument("--complete", nargs="?", const="", default=None, metavar="TEXT",
                        help="suggest the word being typed at the end of TEXT (of each line with --interactive "
                             "or --prompt-file): words beginning with the typed letters, or the next word after a "
                             "space; --next-word K sets how many (default: 5). With --interactive on a terminal "
                             "the suggestions follow every keystroke (default: off)")
    parser.add_argument("--punctuation", action="store_true",
                        help="--complete: suggest punctuation and numbers too (default: words only)")
    parser.add_argument("--next-word", type=int, metavar="K",
                        help="instead of generating, print a ranked table of the K most likely next words "
                             "with their probabilities (default: off)")
    parser.add_argument("--num-samples", type=int, default=1, metavar="N",
                        help="samples to draw per prompt; in beam mode, how many of the best beams to print "
                             "(at most --beam-size) (default: 1)")
    parser.add_argument("--max-new-tokens", type=int, metavar="N",
                        help="most tokens to generate (default: 50 when sampling, 20 in beam mode)")
    parser.add_argument("--temperature", type=float, default=1.0, metavar="T",
                        help=">= 0; 0 is greedy, below 1 sharper, above 1 more random (default: 1.0)")
    parser.add_argument("--top-k", type=int, metavar="K",
                        help="sample only among the K most likely tokens (default: no limit)")
    parser.add_argument("--top-p", type=float, metavar="P",
                        help="in (0, 1]: sample only from the smallest set of tokens whose probability "
                             "reaches P (default: no limit)")
    parser.add_argument("--seed", type=int, metavar="N",
                        help="seed for reproducible samples; sample i of a prompt uses seed + i "
                             "(default: a fresh random seed each run)")
    parser.add_argument("--beam-size", type=int, metavar="N",
                        help="beam search with N beams instead of sampling (default: off, i.e. sampling)")
    parser.add_argument("--length-penalty", type=float, default=1.0, metavar="A",
                        help="beam mode: score = sum of log-probs / length ** A; 0 favours short "
                             "continuations, 1 ranks by the mean (default: 1.0)")
    parser.add_argument("--allow-unk", action="store_true",
                        help="let <unk> be generated and listed (default: never)")
    parser.add_argument("--no-stop-at-eos", action="store_true",
                        help="keep generating past the end of a document; each new document starts a "
                             "new line (default: stop at the end of the document)")
    parser.add_argument("--device", default="cpu",
                        help="device to run on, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--weights", default="float32", choices=WEIGHTS,
                        help="precision of the weights read on a CPU: float32 (exact), float16 or int8 "
                             "(2-3x faster decoding, perplexity within 0.05%%; default: float32)")
    parser.add_argument("--ngram", default="auto", choices=["auto", "on", "off"],
                        help="mix in the Kneser-Ney n-gram saved beside the weights by python -m arlm.ngram --mix "
                             "(ngram.npz): auto uses it when it is there, on requires it, off reads the LSTM alone "
                             "(default: auto)")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    """Every bad setting is reported before the model is loaded."""
    if args.next_word is not None and args.next_word < 1:
        raise ValueError(f"--next-word must be >= 1, got {args.next_word}")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    check_sampling(50 if args.max_new_tokens is None else args.max_new_tokens,
                   args.temperature, args.top_k, args.top_p)
    if args.beam_size is not None:
        check_beam(args.beam_size, 20 if args.max_new_tokens is None else args.max_new_tokens,
                   args.length_penalty, None)
        if args.num_samples > args.beam_size:
            raise ValueError(f"--num-samples must be at most --beam-size ({args.beam_size}) in beam mode, "
                             f"got {args.num_samples}")
    check_device(args.device)


def _print_suggestions(suggestions: list[Suggestion], out) -> None:
    print(f"{'rank':>4}  {'probability':>11}  {'share':>6}  word", file=out)
    for rank, s in enumerate(suggestions, 1):
        print(f"{rank:>4}  {s.probability:>11.6f}  {s.share:>6.1%}  {s.word}", file=out)
    if not suggestions:
        print("   (no word begins with these letters)", file=out)


def _answer(lm: Predictor, prompt: str, args: argparse.Namespace, out, session=None) -> None:
    """Print the answer to one prompt in the mode the arguments ask for."""
    if args.complete is not None:
        print(f"text: {prompt}" if prompt.strip() else "text: (empty: the start of a document)", file=out)
        k, extra = args.next_word or 5, args.punctuation
        suggestions = session.update(prompt) if session else lm.complete(prompt, k, extra, extra)
        _print_suggestions(suggestions, out)
        print(file=out)
        out.flush()
        return
    print(f"prompt: {prompt}" if prompt.strip() else "prompt: (empty: the start of a document)", file=out)
    if args.next_word is not None:
        print(f"{'rank':>4}  {'probability':>11}  token", file=out)
        for rank, (token, p) in enumerate(lm.predict_next(prompt, args.next_word, args.allow_unk), 1):
            print(f"{rank:>4}  {p:>11.6f}  {token}", file=out)
    elif args.beam_size is not None:
        kwargs = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
        beams = lm.beam_search(prompt, args.beam_size, length_penalty=args.length_penalty, n_best=args.num_samples,
                               allow_unk=args.allow_unk, stop_at_eos=not args.no_stop_at_eos, **kwargs)
        for rank, (text, score) in enumerate(beams, 1):
            print(f"beam {rank} (score {score:.4f}): {text}", file=out)
    else:
        texts = lm.generate([prompt] * args.num_samples, 50 if args.max_new_tokens is None else args.max_new_tokens,
                            args.temperature, args.top_k, args.top_p, args.seed,
                            stop_at_eos=not args.no_stop_at_eos, allow_unk=args.allow_unk)
        for i, text in enumerate(texts, 1):
            print(f"sample {i}: {text}", file=out)
    print(file=out)
    out.flush()


def _utf8(stream) -> None:
    """Make a standard stream UTF-8 where it is not already (e.g. a Windows console, LANG=C)."""
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    if encoding != "utf8" and hasattr(stream, "reconfigure"):
        try:
            stream.reconfigure(encoding="utf-8")
        except (ValueError, OSError):
            pass


def _type_live(lm: Predictor, args: argparse.Namespace) -> None:
    """--interactive --complete on a terminal: suggestions under the line at every keystroke
    (a typing session: a letter costs no LSTM step). Enter starts a new text, Ctrl-D ends."""
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    extra = args.punctuation
    session, text = lm.session(args.next_word or 5, extra, extra), ""
    out = sys.stdout
    print("type; suggestions follow each keystroke. Tab takes the first, Enter a new line, Ctrl-D ends.", file=out)
    try:
        tty.setcbreak(fd)
        while True:
            suggestions = session.update(text)
            shown = "  ".join(f"{s.word} ({s.share:.0%})" for s in suggestions) or "(no word begins with these letters)"
            out.write(f"\r\033[J> {text}\n  {shown}\033[A\r\033[{len(text) + 2}C")
            out.flush()
            ch = sys.stdin.read(1)
            if ch in ("", "\x04"):
                break
            if ch in ("\x7f", "\b"):
                text = text[:-1]
            elif ch == "\t" and suggestions:  # accept: replace the word being typed
                cut = len(text)
                while cut > 0 and not text[cut - 1].isspace() and text[cut - 1] not in lm.completer.splitters:
                    cut -= 1
                text = text[:cut] + suggestions[0].word + " "
            elif ch in ("\n", "\r"):
                out.write(f"\r\033[J> {text}\n")
                text = ""
            elif ch.isprintable():
                text += ch
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        out.write("\r\033[J\n")


def _run(args: argparse.Namespace) -> int:
    _check_args(args)
    prompts = None
    if args.prompt_file is not None:
        with open(args.prompt_file, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
    elif not args.interactive:
        prompts = [args.complete if args.complete else args.prompt]
    lm = load(args.checkpoint, args.device, args.weights, {"auto": None, "on": True, "off": False}[args.ngram])
    if args.interactive:
        if args.complete is not None and sys.stdin.isatty() and sys.stdout.isatty():
            _type_live(lm, args)
            return 0
        if sys.stdin.isatty():
            print("one prompt per line; Ctrl-D to end", file=sys.stderr)
        # Piped, with --complete: each line is the text as typed so far, read in one session.
        session = lm.session(args.next_word or 5, args.punctuation, args.punctuation) if args.complete is not None else None
        for line in sys.stdin:
            _answer(lm, line.rstrip("\n") if session else line.strip(), args, sys.stdout, session)
    else:
        for prompt in prompts:
            _answer(lm, prompt, args, sys.stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `arlm-generate` command: 0 on success, 2 on a bad input, 1 on a failed run, 130 on
    Ctrl-C, with one `error: ...` line (arlm/cli.py)."""
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        _utf8(stream)
    parser = build_parser()

    def body() -> int:
        return _run(parser.parse_args(argv))  # parse errors are ValueErrors (_Parser); --help a SystemExit

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
