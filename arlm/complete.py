"""Autocomplete: the word being typed, typing sessions, words never seen whole.

    lm = arlm.load("runs/hadith")
    lm.complete("قال رسول ال")            # [Suggestion("الله", 0.93, 0.99), ...]
    session = lm.session()
    session.update("قال رسول ال")         # the same suggestions, the state kept
    session.update("قال رسول الل")        # one more letter: no LSTM step, a filter

How a text is read. Its end is either a word boundary (a space, punctuation) or the middle
of a word. In the middle, the trailing letters are a *prefix*: the suggestions are the
whole words that begin with it, ranked by P(word | the text before the prefix). The
prefix is matched after the model's own normalization, so typing أ or إ matches words
normalized to ا and harakat or tatweel in the prefix are ignored (as the model's
NormalizeConfig says; a model trained with `alef=false` keeps them apart). At a boundary it
is plain next-word prediction. Each suggestion has the model's probability and its share of
the probability of every word that matches (which sums to 1 over the matching words).

Word models look the prefix up in an index built once per model: the normalized
vocabulary sorted, so the words with a prefix are one contiguous range found by bisection
(O(log V) per keystroke, never a scan). Subword (sentencepiece) models assemble whole words
from pieces by a small beam search that stops at the next word boundary, the typed prefix
constraining the pieces (it may end inside one); such a model can suggest a word it never
saw whole. A word's probability is the product of its pieces' and of the boundary after it.

Punctuation, numbers and special tokens are suggested only when asked (`punctuation=True`,
`numbers=True`). Every input has a defined answer and none raises: an empty text, only
spaces or punctuation give next-word predictions; a prefix no word has gives [].
"""

from __future__ import annotations

import bisect
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor

from arlm.normalize import normalize
from arlm.tokenizer import split_characters

if TYPE_CHECKING:  # pragma: no cover
    from arlm.generate import Predictor

# Beam search over subword pieces: hypotheses kept per step, and pieces per word at most.
BEAM = 8
MAX_PIECES = 8
WORD_START = "\u2581"  # ▁, sentencepiece's mark of a piece that starts a word
BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


class Suggestion(NamedTuple):
    word: str           # the whole word, as the model spells it (normalized)
    probability: float  # P(word | the text before it)
    share: float        # probability / the probability of every word that matches the prefix


def _kind(token: str) -> str:
    """'word', 'punctuation' or 'number' (what a completion offers by default: words)."""
    if BYTE_PIECE.fullmatch(token):
        return "byte"  # sentencepiece's byte fallback: no text of its own
    if any(unicodedata.category(ch) == "Nd" for ch in token):
        return "number"
    if token and all(unicodedata.category(ch)[0] in "PS" for ch in token):
        return "punctuation"
    return "word"


@dataclass
class Split:
    """A text cut where the word being typed begins."""

    context: str  # the text before the word being typed (ends at a word boundary)
    prefix: str   # the typed part of the word, normalized ("" at a boundary)


class Completer:
    """What one model needs to complete words, built once (`Predictor.completer`)."""

    def __init__(self, predictor: "Predictor"):
        tok = predictor.tokenizer
        self.predictor = predictor
        self.normalize_config = tok.config.normalize
        self.subword = not hasattr(tok, "itos")
        specials = {tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id}
        V = tok.vocab_size
        self.kinds = np.array(["special" if i in specials else _kind(self._surface(i)) for i in range(V)])
        if self.subword:
            # every piece's text without ▁, and whether it starts a word
            self.pieces = [tok.id_to_token(i) for i in range(V)]
            self.starts_word = torch.tensor([p.startswith(WORD_START) for p in self.pieces])
            self.boundary = self.starts_word.clone()
            self.boundary[tok.eos_id] = True  # the text may end after the word
            self.texts = [p.replace(WORD_START, "") for p in self.pieces]
            self.splitters = frozenset()
        else:
            order = sorted((w, i) for i, w in enumerate(tok.itos) if i not in specials)
            self.sorted_words = [w for w, _ in order]
            self.sorted_ids = torch.tensor([i for _, i in order], dtype=torch.long)
            self.splitters = split_characters(tok.config.split_digits)
        self.masks = {  # which ids may be suggested, by what is asked for
            (p, n): torch.from_numpy((self.kinds == "word") | (p & (self.kinds == "punctuation"))
                                     | (n & (self.kinds == "number")))
            for p in (False, True) for n in (False, True)}

    def _surface(self, i: int) -> str:
        return self.predictor.tokenizer.id_to_token(i).replace(WORD_START, "")

    # --- cutting the text -----------------------------------------------------------

    def split(self, text: str) -> Split:
        """Where the word being typed starts: the trailing characters that are neither space
        nor split off by the tokenizer (punctuation, and digits where the tokenizer splits
        them), normalized. A prefix that normalizes to nothing (only harakat, a bidi
        mark) is no prefix."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a string, got {type(text).__name__}")
        end = len(text)
        start = end
        while start > 0 and not text[start - 1].isspace() and text[start - 1] not in self.splitters:
            start -= 1
        raw = text[start:end]
        prefix = normalize(raw, self.normalize_config) if raw else ""
        if self.subword:
            prefix = prefix.replace(" ", "")
        else:
            words = self.predictor.tokenizer.tokenize(raw) if prefix else []
            if len(words) > 1:  # normalization made several tokens (ﷺ, a ligature): all but the last are read
                return Split(text[:start] + " " + " ".join(words[:-1]) + " ", words[-1])
            prefix = words[0] if words else ""
        return Split(text[:start], prefix)

    # --- suggestions from the next-token distribution --------------------------------

    def from_distribution(self, log_probs: Tensor, prefix: str, k: int, punctuation: bool = False,
                          numbers: bool = False, probs: Tensor | None = None) -> list[Suggestion]:
        """The k most likely whole words beginning with `prefix` (word models). `probs`:
        log_probs.exp() on the CPU, when the caller keeps it (a session, per state)."""
        probs = log_probs.exp().cpu() if probs is None else probs
        allowed = self.masks[(punctuation, numbers)]
        if prefix:
            lo = bisect.bisect_left(self.sorted_words, prefix)
            hi = bisect.bisect_left(self.sorted_words, prefix + "\U0010ffff", lo)
            ids = self.sorted_ids[lo:hi]
            ids = ids[allowed[ids]]
        else:
            ids = allowed.nonzero().squeeze(1)
        if ids.numel() == 0:
            return []
        p = probs[ids]
        total = float(p.sum())
        top = p.topk(min(k, ids.numel()))
        return [Suggestion(self.predictor.tokenizer.id_to_token(int(ids[j])), float(q), float(q) / total if total > 0 else 0.0)
                for q, j in zip(top.values.tolist(), top.indices.tolist())]

    def from_pieces(self, log_probs: Tensor, state, prefix: str, k: int, punctuation: bool = False,
                    numbers: bool = False, history: list[int] | None = None) -> list[Suggestion]:
        """Whole words assembled from subword pieces by beam search (subword models).

        A hypothesis is a run of pieces, the first starting a word; it is extended while its
        text is compatible with the prefix (one is a prefix of the other) and ends when the
        next piece would start a new word (or the text ends): its probability is then the
        product over its pieces and that boundary. `history`: the ids read before
        (for a mixed-in n-gram, which needs the pieces before each hypothesis)."""
        engine = self.predictor.engine
        history = history or []
        allowed = self.masks[(punctuation, numbers)]
        lp = log_probs.unsqueeze(0).cpu()                # (beams, V)
        beams: list[tuple[list[int], str]] = [([], "")]
        totals = torch.zeros(1)
        finished: dict[str, float] = {}

        def end_words() -> None:
            """Close every beam whose text is a whole word matching the prefix: the next
            piece starts a new word, or the text ends (segmentations of one word add up)."""
            end = torch.logsumexp(lp.masked_fill(~self.boundary, -math.inf), -1)
            for b, (_, text) in enumerate(beams):
                if text and text.startswith(prefix):
                    finished[text] = float(np.logaddexp(finished.get(text, -math.inf), float(totals[b] + end[b])))

        for depth in range(MAX_PIECES):
            cand = totals[:, None] + lp
            if depth == 0:  # a word starts with a ▁ piece
                cand = cand.masked_fill(~(self.starts_word & allowed), -math.inf)
            else:
                end_words()
                cand = cand.masked_fill(self.starts_word | ~allowed, -math.inf)
            flat = cand.view(-1)
            top = flat.topk(min(BEAM * 4, flat.numel()))
            new: list[tuple[list[int], str]] = []
            new_totals, origins = [], []
            V = lp.shape[1]
            for value, index in zip(top.values.tolist(), top.indices.tolist()):
                if value == -math.inf or len(new) == BEAM:
                    break
                origin, piece = divmod(index, V)
                text = beams[origin][1] + self.texts[piece]
                if not (text.startswith(prefix) or prefix.startswith(text)) or not text:
                    continue
                new.append((beams[origin][0] + [piece], text))
                new_totals.append(value)
                origins.append(origin)
            if not new:
                break
            beams, totals = new, torch.tensor(new_totals)
            pick = torch.tensor(origins)
            state = (state[0].index_select(1, pick), state[1].index_select(1, pick))
            lp, state = engine.step(torch.tensor([ids[-1] for ids, _ in beams]), state)
            lp = self.predictor._mix(lp, [history + ids for ids, _ in beams]).cpu()
        else:  # the deepest hypotheses end here
            end_words()
        if not finished:
            return []
        ranked = sorted(finished.items(), key=lambda kv: -kv[1])[:k]
        total = sum(math.exp(v) for v in finished.values())
        return [Suggestion(word, math.exp(v), math.exp(v) / total) for word, v in ranked]


class TypingSession:
    """Suggestions as a text is typed, keeping the LSTM state of every word read.

    `update(text)` returns what `Predictor.complete(text)` would, but reads only what is new:
    a keystroke inside the word being typed costs no LSTM step (a filter of the kept
    next-word distribution), a finished word one step, and an edit anywhere (backspace, a
    paste, the cursor moved into an earlier word) goes back to the last kept state that
    still matches the text and reads on from there. `steps` counts the LSTM steps taken."""

    def __init__(self, predictor: "Predictor", k: int = 5, punctuation: bool = False, numbers: bool = False):
        check_k(k)
        self.predictor, self.k, self.punctuation, self.numbers = predictor, k, punctuation, numbers
        self.completer = predictor.completer
        self.steps = 0
        # ids read so far ([eos] first) and, after each, (log-probs of the next token, state)
        start = predictor.tokenizer.eos_id
        log_probs, state = predictor.engine.step(torch.tensor([start]), None)
        log_probs = predictor._mix(log_probs, [[start]])
        self.steps += 1
        self._ids: list[int] = [start]
        self._after: list[tuple[Tensor, tuple[Tensor, Tensor]]] = [(log_probs[0], state)]
        self._context: tuple[str, list[int]] = ("", [start])  # the last context read, and its ids
        self._probs: tuple[tuple, Tensor] | None = None          # (state entry, exp of its log-probs)

    def update(self, text: str) -> list[Suggestion]:
        """The suggestions for `text`, the whole text as it now stands."""
        split = self.completer.split(text)
        if split.context == self._context[0]:  # typing inside a word: nothing new to read
            ids = self._context[1]
        else:
            ids = [self.predictor.tokenizer.eos_id] + self.predictor.tokenizer.encode(split.context)
            self._context = (split.context, ids)
        same = 0
        while same < min(len(ids), len(self._ids)) and ids[same] == self._ids[same]:
            same += 1
        del self._ids[same:], self._after[same:]  # back to the last state that still matches
        for token in ids[same:]:
            log_probs, state = self.predictor.engine.step(torch.tensor([token]), self._after[-1][1])
            self.steps += 1
            self._ids.append(token)
            log_probs = self.predictor._mix(log_probs, [self._ids])
            self._after.append((log_probs[0], state))
        entry = self._after[-1]
        log_probs, state = entry
        if self.completer.subword:
            return self.predictor._suggest(log_probs, state, split.prefix, self.k, self.punctuation, self.numbers,
                                           self._ids)
        if self._probs is None or self._probs[0] is not entry:  # the state itself, not its position
            self._probs = (entry, log_probs.exp().cpu())
        with torch.inference_mode():
            return self.completer.from_distribution(log_probs, split.prefix, self.k, self.punctuation, self.numbers,
                                                    probs=self._probs[1])


def check_k(k) -> None:
    """Raise ValueError unless k is a usable number of results."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
