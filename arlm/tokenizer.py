"""Tokenizers: text → ids → text, behind one small interface.

Both tokenizers normalize first (with the `NormalizeConfig` they were built with and
save), so a loaded model always sees text prepared exactly as in training.

* `WordTokenizer`: camel-tools' `simple_word_tokenize` on normalized text; a vocabulary
  from train counts (`min_freq`, `max_size`), ordered by count then string.
* `SentencePieceTokenizer`: a unigram or BPE sentencepiece model trained on the train split.

Special ids are the same for both: pad 0, unk 1, bos 2, eos 3. A corpus stream is the
documents' ids, each followed by eos; the model reads eos as "a document starts here".
This module knows nothing about torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Protocol

import sys
import unicodedata

from camel_tools.tokenizers.word import _SYMBOLS_ALL, _SYMBOLS_RE, simple_word_tokenize

from arlm.config import POSITIVE, check, option
from arlm.normalize import NormalizeConfig, normalize

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
TOKENIZER_FILE = "tokenizer.json"
SPM_FILE = "spm.model"


@dataclass
class TokenizerConfig:
    """How text becomes ids.

    kind:        "word" (default) or "sentencepiece".
    vocab_size:  word: the most frequent words kept (plus 4 specials); sentencepiece:
                 the size of the subword vocabulary. Default 30000.
    min_freq:    word only: a word seen fewer times in train becomes <unk>. Default 2.
    split_digits: split digit runs off words ("2015م" → "2015", "م"), as camel-tools can.
    sp_model:    sentencepiece model type, "unigram" (default) or "bpe".
    normalize:   the normalization applied before tokenizing.
    """

    kind: str = option("word", "word-level (camel-tools) or sentencepiece subwords",
                       choices=("word", "sentencepiece"), name="tokenizer")
    vocab_size: int = option(30000, "words kept (word) or subword vocabulary size (sentencepiece)", **POSITIVE)
    min_freq: int = option(2, "word tokenizer: words seen fewer times in train become <unk>", low=1)
    split_digits: bool = option(True, "split digit runs off words (2015م: 2015, م), as camel-tools can")
    sp_model: str = option("unigram", "sentencepiece model type", choices=("unigram", "bpe"))
    normalize: NormalizeConfig = option(factory=NormalizeConfig, table=True,
                                        help="normalization options that differ from the defaults, e.g. "
                                             "teh_marbuta=false,latin=lower (see arlm/normalize.py; a [normalize] "
                                             "table in --config works too)")

    def __post_init__(self) -> None:
        if isinstance(self.normalize, dict):
            self.normalize = NormalizeConfig.from_dict(self.normalize)
        check(self)

    def to_dict(self) -> dict:
        return asdict(self)


class Tokenizer(Protocol):
    """What every tokenizer offers."""

    config: TokenizerConfig
    pad_id: int
    unk_id: int
    bos_id: int
    eos_id: int

    @property
    def vocab_size(self) -> int: ...
    def tokenize(self, text: str) -> list[str]: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def id_to_token(self, i: int) -> str: ...
    def save(self, directory: str | os.PathLike) -> None: ...


# --- word tokenization -------------------------------------------------------------

# Characters that can start a split in camel-tools' tokenizer: every character of its
# punctuation/symbol/emoji sets, and digits. A word with none of them is one token, so
# only the few words that contain one go through camel-tools itself: same output, ~5× faster.
# (A set test, not a regex: a character class of ~8,600 symbols is slow to match.)
_SYMBOL_CHARS = frozenset(ch for item in _SYMBOLS_ALL for ch in item)
_DIGIT_CHARS = frozenset(chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Nd")
_SPLIT_CHARS = _SYMBOL_CHARS | _DIGIT_CHARS


def split_characters(split_digits: bool = True) -> frozenset[str]:
    """The characters the word tokenizer splits off wherever they stand (punctuation and
    symbols, and digits with split_digits): where a word being typed can begin."""
    return _SPLIT_CHARS if split_digits else _SYMBOL_CHARS
# Single characters camel-tools splits off wherever they stand ("عنه،" → "عنه", "،").
_SPLITS_OFF = frozenset(c for c in _SYMBOLS_ALL if len(c) == 1 and _SYMBOLS_RE.fullmatch(c))


def word_tokenize(normalized: str, split_digits: bool = True) -> list[str]:
    """camel-tools' `simple_word_tokenize`, skipping it for words it would not split."""
    split_chars = _SPLIT_CHARS if split_digits else _SYMBOL_CHARS
    words = normalized.split()
    if split_chars.isdisjoint(normalized):
        return words
    tokens: list[str] = []
    for w in words:
        if len(w) == 1 or split_chars.isdisjoint(w):
            tokens.append(w)
        elif w[-1] in _SPLITS_OFF and split_chars.isdisjoint(w[:-1]):  # the common "word،"
            tokens += (w[:-1], w[-1])
        else:
            tokens.extend(simple_word_tokenize(w, split_digits=split_digits))
    return tokens


def count_words(texts: Iterable[str], config: TokenizerConfig) -> Counter:
    """Word counts of raw texts after normalization (the input to `WordTokenizer.from_counts`)."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(word_tokenize(normalize(text, config.normalize), config.split_digits))
    return counts


class WordTokenizer:
    """Whole words as tokens; anything outside the vocabulary is <unk>."""

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    frequency_ordered = True  # ids ordered by count: what the adaptive softmax needs

    def __init__(self, vocab: list[str], config: TokenizerConfig, counts: dict[str, int] | None = None):
        if tuple(vocab[:4]) != SPECIALS:
            raise ValueError(f"a word vocabulary must start with {', '.join(SPECIALS)}")
        self.config = config
        self.itos = list(vocab)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("the word vocabulary has duplicate entries")
        self.counts = counts or {}

    @classmethod
    def from_counts(cls, counts: Counter, config: TokenizerConfig) -> tuple["WordTokenizer", dict]:
        """Keep words seen at least `min_freq` times, at most `vocab_size`, most frequent
        first and ties broken by the string, so the vocabulary is the same on every run."""
        ranked = sorted(
            ((w, c) for w, c in counts.items() if c >= config.min_freq and w not in SPECIALS),
            key=lambda wc: (-wc[1], wc[0]),
        )[: config.vocab_size]
        tok = cls(list(SPECIALS) + [w for w, _ in ranked], config, dict(ranked))
        total = sum(counts.values())
        covered = sum(c for _, c in ranked)
        stats = {
            "types": len(counts),
            "vocab_size": tok.vocab_size,
            "train_tokens": total,
            "coverage": covered / total if total else 0.0,
            "oov_rate": 1 - covered / total if total else 0.0,
        }
        return tok, stats

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def tokenize(self, text: str) -> list[str]:
        return word_tokenize(normalize(text, self.config.normalize), self.config.split_digits)

    def encode(self, text: str) -> list[int]:
        get, unk = self.stoi.get, self.unk_id
        return [get(w, unk) for w in self.tokenize(text)]

    def decode(self, ids: Iterable[int]) -> str:
        skip = (self.pad_id, self.bos_id, self.eos_id)
        return " ".join(self.itos[i] for i in ids if i not in skip)

    def id_to_token(self, i: int) -> str:
        return self.itos[i]

    def token_to_id(self, token: str) -> int:
        return self.stoi.get(token, self.unk_id)

    def oov_rate(self, texts: Iterable[str]) -> float:
        """Fraction of word tokens in `texts` that map to <unk>."""
        n = unk = 0
        for text in texts:
            ids = self.encode(text)
            n += len(ids)
            unk += ids.count(self.unk_id)
        return unk / n if n else 0.0

    def save(self, directory: str | os.PathLike) -> None:
        payload = {"kind": "word", "config": self.config.to_dict(), "vocab": self.itos,
                   "counts": [self.counts.get(w, 0) for w in self.itos]}
        _atomic_write(Path(directory) / TOKENIZER_FILE, json.dumps(payload, ensure_ascii=False).encode())


# --- sentencepiece -----------------------------------------------------------------


class SentencePieceTokenizer:
    """Subwords from a sentencepiece model trained on the normalized train split.

    arlm's ids are sentencepiece's renumbered by frequency in the train split (`order[id]`
    is the sentencepiece id of arlm id `id`; the specials keep 0-3), as the word
    vocabulary is, so the adaptive softmax's frequent head works for subwords too. The token
    cache sets the order after counting (`with_frequency_order`); a tokenizer saved without
    one (older runs) keeps sentencepiece's own ids."""

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, model_proto: bytes, config: TokenizerConfig, order: list[int] | None = None):
        import sentencepiece as spm

        self.config = config
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        n = self.sp.get_piece_size()
        if order is not None and (sorted(order) != list(range(n)) or list(order[: len(SPECIALS)]) != list(range(len(SPECIALS)))):
            raise ValueError(f"the id order must be a permutation of 0..{n - 1} keeping the special ids 0-3")
        self.order = list(order) if order is not None else None
        if self.order is not None:
            self._to_sp = self.order                        # arlm id → sentencepiece id
            self._from_sp = [0] * n                         # sentencepiece id → arlm id
            for new, old in enumerate(self.order):
                self._from_sp[old] = new

    @property
    def frequency_ordered(self) -> bool:
        """Whether ids are ordered by frequency (what the adaptive softmax needs)."""
        return self.order is not None

    def with_frequency_order(self, counts) -> "SentencePieceTokenizer":
        """The same tokenizer with ids renumbered by `counts` (per sentencepiece id, from the
        train split): specials first, then the most frequent piece, ties by sentencepiece id."""
        n = self.vocab_size
        rest = sorted(range(len(SPECIALS), n), key=lambda i: (-int(counts[i]) if i < len(counts) else 0, i))
        return SentencePieceTokenizer(self.model_proto, self.config, list(range(len(SPECIALS))) + rest)

    def __getstate__(self) -> dict:  # for worker processes: the model travels as bytes
        return {"model_proto": self.model_proto, "config": self.config, "order": self.order}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_proto"], state["config"], state.get("order"))

    @classmethod
    def train(cls, texts: Iterable[str], config: TokenizerConfig) -> tuple["SentencePieceTokenizer", dict]:
        def sentences():
            for text in texts:
                norm = normalize(text, config.normalize)
                if norm:
                    yield norm

        buf = io.BytesIO()
        try:
            cls._train(sentences(), buf, config)
        except RuntimeError as e:  # sentencepiece reports problems as INTERNAL errors
            detail = str(e).split("] ")[-1].strip()
            raise ValueError(f"sentencepiece training failed: {detail} (byte fallback adds 256 pieces; raise --vocab-size)") from None
        tok = cls(buf.getvalue(), config)
        return tok, {"vocab_size": tok.vocab_size}

    @staticmethod
    def _train(sentences, buf, config: TokenizerConfig) -> None:
        import sentencepiece as spm

        # Identity normalization and byte fallback: arlm has already normalized the text,
        # and any character sentencepiece has not seen round-trips as bytes, never as ⁇.
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences, model_writer=buf, vocab_size=config.vocab_size,
            model_type=config.sp_model, character_coverage=0.9999, byte_fallback=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            input_sentence_size=2_000_000, shuffle_input_sentence=True, max_sentence_length=1 << 16,
            hard_vocab_limit=False, num_threads=os.cpu_count() or 1, minloglevel=2,
        )

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def tokenize(self, text: str) -> list[str]:
        return self.sp.encode(normalize(text, self.config.normalize), out_type=str)

    def encode_sp(self, text: str) -> list[int]:
        """Sentencepiece's own ids (the token cache counts these before the order exists)."""
        return self.sp.encode(normalize(text, self.config.normalize))

    def encode(self, text: str) -> list[int]:
        ids = self.encode_sp(text)
        return ids if self.order is None else [self._from_sp[i] for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        return self.sp.decode(ids if self.order is None else [self._to_sp[i] for i in ids])

    def id_to_token(self, i: int) -> str:
        # the same names for the specials as the word tokenizer (sentencepiece says <s>, </s>)
        if 0 <= i < len(SPECIALS):
            return SPECIALS[i]
        return self.sp.id_to_piece(int(i) if self.order is None else self._to_sp[int(i)])

    def token_to_id(self, token: str) -> int:
        if token in SPECIALS:
            return SPECIALS.index(token)
        i = self.sp.piece_to_id(token)
        return i if self.order is None else self._from_sp[i]

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        _atomic_write(directory / SPM_FILE, self.model_proto)
        payload = {"kind": "sentencepiece", "config": self.config.to_dict(), "model_file": SPM_FILE}
        if self.order is not None:
            payload["order"] = self.order
        _atomic_write(directory / TOKENIZER_FILE, json.dumps(payload, ensure_ascii=False).encode())


# --- save / load -------------------------------------------------------------------


def fingerprint(tokenizer) -> str:
    """`sha256:<hex>` of what decides which ids a text gets: the kind, the vocabulary (the
    word list in id order, or the sentencepiece model's bytes and arlm's order of its
    pieces), split_digits and the normalization. Options that only shaped how the vocabulary was built (vocab_size,
    min_freq, sp_model) and the word counts are left out. Normalization options at their
    defaults are left out too, so a normalization option added later, whose default keeps
    the old behaviour, leaves old fingerprints unchanged. Two tokenizers with the same
    fingerprint encode every text alike."""
    config = tokenizer.config
    default = NormalizeConfig()
    normalize_diff = {k: v for k, v in config.normalize.to_dict().items() if getattr(default, k) != v}
    head = {"kind": config.kind, "split_digits": config.split_digits, "normalize": normalize_diff}
    h = hashlib.sha256(json.dumps(head, sort_keys=True, ensure_ascii=False).encode())
    if isinstance(tokenizer, SentencePieceTokenizer):
        h.update(b"\0spm\0")
        h.update(tokenizer.model_proto)
        order = getattr(tokenizer, "order", None)  # arlm's renumbering of the pieces, when it has one
        if order is not None:
            h.update(b"\0order\0" + json.dumps(list(order)).encode())
    else:
        h.update(b"\0words\0")
        h.update(json.dumps(list(tokenizer.itos), ensure_ascii=False).encode())
    return "sha256:" + h.hexdigest()



def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_tokenizer(directory: str | os.PathLike) -> WordTokenizer | SentencePieceTokenizer:
    """Load the tokenizer saved in `directory` (a checkpoint or a token cache)."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer file; expected one written by arlm (tokenizer.json)")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        config = TokenizerConfig(**payload["config"])
        kind = payload["kind"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a valid arlm tokenizer file ({e})") from None
    if kind == "word":
        return WordTokenizer(payload["vocab"], config, dict(zip(payload["vocab"], payload.get("counts", []))))
    if kind == "sentencepiece":
        model = Path(directory) / payload.get("model_file", SPM_FILE)
        if not model.is_file():
            raise FileNotFoundError(f"{model}: the sentencepiece model named by {path} is missing")
        try:
            return SentencePieceTokenizer(model.read_bytes(), config, payload.get("order"))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    raise ValueError(f"{path}: unknown tokenizer kind {kind!r}")
