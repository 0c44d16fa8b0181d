"""Bad input from anywhere: the text pipeline never raises, outputs stay stable, limits hold."""

import pytest
from camel_tools.tokenizers.word import simple_word_tokenize
from hypothesis import example, given, settings
from hypothesis import strategies as st

import arlm.corpus as corpus
from arlm.normalize import normalize
from arlm.tokenizer import TokenizerConfig, WordTokenizer, count_words, word_tokenize
from arlm.train import main
from conftest import arabic_documents

# Characters scraped text is full of: bidi controls, zero-width joiners, combining marks on
# non-letters, lone surrogates (what surrogateescape makes of undecodable bytes), emoji.
NASTY = ["\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
         "\u2069", "\u200d", "\u200c", "\u200b", "\ufeff", "\u0301", "\u0651", "\u064b", "\u0653", "\u0654",
         "\udc80", "\udcff", "\ud800", "ـ", "👍🏽", "🇸🇦", "1\u20e3", "\u00a0", "\t", "\n", "\r", " "]
nasty_text = st.lists(st.one_of(st.sampled_from(NASTY), st.sampled_from(list("ابت 5٣.،!aZ")), st.characters()),
                      max_size=60).map("".join)


@settings(max_examples=500, deadline=None)
@given(nasty_text)
@example("ا🏳🏻")
def test_normalize_and_tokenize_never_raise_and_are_idempotent(text):
    once = normalize(text)
    assert normalize(once) == once
    tokens = word_tokenize(once)
    again = word_tokenize(" ".join(tokens))  # tokenizing the tokens changes nothing ...
    if again != tokens:  # ... except where camel-tools' own tokenizer, which arlm matches, is not
        # idempotent either: a letter, a flag and a skin tone ('ا🏳🏻') give ['ا🏳', '🏻'].
        assert tokens == simple_word_tokenize(once, split_digits=True)
        assert again == simple_word_tokenize(" ".join(tokens), split_digits=True)
    assert all(t and not any(c.isspace() for c in t) for t in tokens)


@settings(max_examples=200, deadline=None)
@given(nasty_text)
def test_a_tokenizer_encodes_anything(text):
    tok = _TOK
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.encode(tok.decode(ids).replace("<unk>", "غريب")) == ids or tok.unk_id in ids


_CFG = TokenizerConfig(min_freq=1)
_TOK, _ = WordTokenizer.from_counts(count_words(arabic_documents(50), _CFG), _CFG)


def test_huge_documents_are_cut_at_whitespace_with_the_same_ids(monkeypatch):
    text = " ".join(arabic_documents(400))  # one long line, ~10k words
    whole = _TOK.encode(text)
    monkeypatch.setattr(corpus, "PIECE_CHARS", 997)
    pieces = list(corpus._pieces(text))
    assert len(pieces) > 20 and all(len(p) <= 997 for p in pieces)
    assert [i for p in pieces for i in _TOK.encode(p)] == whole


def test_a_50_mb_line_streams_through_prepare(tmp_path):
    """One 50 MB line with no newline among ordinary documents: cut into pieces, encoded,
    and memory grows by about the line itself, not by gigabytes of token lists."""
    import resource

    chunk = " ".join(arabic_documents(200)) + " "  # ~40 KB of text
    repeats = 50 * 2**20 // len(chunk.encode())
    path = tmp_path / "huge.txt"
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(arabic_documents(60, seed=9)) + "\n")
        for _ in range(repeats):
            f.write(chunk)  # no newline: one 50 MB document
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    p = corpus.prepare(str(path), _CFG, cache_dir=tmp_path / "c", workers=1, verbose=False)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    total = sum(len(a) for a in (p.train, p.valid, p.test))
    assert total > repeats * len(chunk.split())  # every word of the huge line became an id
    assert grown_mb < 800, grown_mb


def test_unwritable_output_is_refused_before_training(text_corpus, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["--corpus", str(text_corpus), "--out", str(blocker / "run"), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: cannot write to --out") and "choose a writable directory" in err


def test_text_with_little_arabic_trains_with_a_warning(tmp_path, capsys):
    english = tmp_path / "en.txt"
    english.write_text("\n".join(f"the quick brown fox number {i} jumps over the lazy dog" for i in range(400)))
    assert main(["--corpus", str(english), "--out", str(tmp_path / "o"), "--min-freq", "1", "--batch-size", "4",
                 "--bptt", "8", "--max-steps", "3", "--emb-size", "8", "--hidden-size", "8", "--time-budget", "0"]) == 0
    assert "warning: only 0% of the letters in this corpus are Arabic" in capsys.readouterr().err


# --- a damaged token cache is detected, set aside and rebuilt ----------------------------

import errno  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402

import numpy as np  # noqa: E402

from arlm.corpus import CacheDamaged, CorpusError  # noqa: E402


def _built(text_corpus):
    """A fresh cache: its folder and (copies of) its arrays; nothing left memory-mapped,
    so the tests can damage the files (truncating a mapped file would be a bus error)."""
    p = corpus.prepare(str(text_corpus), _CFG, workers=1, verbose=False)
    arrays = {s: np.array(getattr(p, s)) for s in corpus.SPLITS}
    return p.cache_dir, arrays


def _truncate_train(d):
    with open(d / "train.bin", "r+b") as f:
        f.truncate(2000)  # a whole number of uint16 ids: 1,000 of them


def _overwrite_middle(d):
    with open(d / "train.bin", "r+b") as f:
        f.seek(200)
        f.write(bytes(8))  # same size, other ids


DAMAGE = {
    "truncated train.bin": (_truncate_train, "train.bin has 2,000 bytes (1,000 ids), meta.json records"),
    "deleted train.bin": (lambda d: os.remove(d / "train.bin"), "train.bin is missing"),
    "emptied valid.bin": (lambda d: open(d / "valid.bin", "wb").close(), "valid.bin has 0 bytes (0 ids)"),
    "overwritten train.bin": (_overwrite_middle, "train.bin does not match its checksum"),
    "deleted meta.json": (lambda d: os.remove(d / "meta.json"), "meta.json is missing"),
    "garbled meta.json": (lambda d: (d / "meta.json").write_text("{\"dtype\": "), "meta.json is unreadable"),
    "deleted tokenizer": (lambda d: os.remove(d / "tokenizer.json"), "tokenizer.json is missing"),
}


def assert_only_the_corpus_line(err: str, cache: os.PathLike) -> None:
    """A cache that loads says what the run trains on, in one line, and nothing else: no
    warning, no rebuild."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("corpus ") and lines[0].endswith(f"; from the cache in {cache}"), err


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cache_is_set_aside_and_rebuilt_with_one_line(text_corpus, capsys, damage):
    d, want = _built(text_corpus)
    harm, reason = DAMAGE[damage]
    harm(d)
    with pytest.raises(CacheDamaged, match=re.escape(reason)) as e:
        corpus.load_cached(d)
    assert "\n" not in str(e.value) and str(d) in str(e.value)
    capsys.readouterr()
    p = corpus.prepare(str(text_corpus), _CFG, workers=1, verbose=True)
    err = capsys.readouterr().err.splitlines()
    warned = [line for line in err if "damaged" in line]
    assert len(warned) == 1 and warned[0].startswith(f"warning: token cache {d} is damaged (") and reason in warned[0]
    assert warned[0].endswith("and rebuilding it")
    assert p.cache_dir == d and all(np.array_equal(getattr(p, s), want[s]) for s in corpus.SPLITS)
    aside = [x.name for x in d.parent.iterdir() if x.name.startswith(f"{d.name}.damaged-")]
    assert len(aside) == 1 and aside[0] in warned[0]
    assert not [x for x in d.parent.iterdir() if ".tmp-" in x.name]
    capsys.readouterr()
    again = corpus.prepare(str(text_corpus), _CFG, workers=1, verbose=True)  # and now it is cached
    assert_only_the_corpus_line(capsys.readouterr().err, d)
    assert np.array_equal(again.train, want["train"])


def test_a_cache_built_before_the_checksums_loads_and_is_checked_by_length(text_corpus, monkeypatch, capsys):
    d, want = _built(text_corpus)
    meta = json.loads((d / "meta.json").read_text())
    del meta["files"]  # what older arlm wrote: no sizes or checksums
    (d / "meta.json").write_text(json.dumps(meta))
    with monkeypatch.context() as m:
        m.setattr(corpus, "_map", lambda *a, **k: pytest.fail("an old, intact cache was rebuilt"))
        p = corpus.prepare(str(text_corpus), _CFG, workers=1, verbose=True)
        assert np.array_equal(p.train, want["train"])
        assert_only_the_corpus_line(capsys.readouterr().err, d)
        del p
    _truncate_train(d)
    with pytest.raises(CacheDamaged, match="train.bin has 2,000 bytes"):
        corpus.load_cached(d)
    p = corpus.prepare(str(text_corpus), _CFG, workers=1, verbose=True)
    assert np.array_equal(p.train, want["train"]) and "is damaged" in capsys.readouterr().err


def test_the_sampled_checksum_reads_the_head_tail_and_spread_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "_HEAD", 64)
    monkeypatch.setattr(corpus, "_TAIL", 64)
    monkeypatch.setattr(corpus, "_BLOCK", 16)
    monkeypatch.setattr(corpus, "_BLOCKS", 4)
    f = tmp_path / "f.bin"
    data = bytearray(os.urandom(10_000))
    f.write_bytes(data)
    base = corpus._sample_digest(f)
    for at, changed in ((0, True), (9_999, True), (64, True), (5_000, False), (10_000 - 64 - 16, True)):
        d = bytearray(data)
        d[at] ^= 1
        f.write_bytes(d)
        assert (corpus._sample_digest(f) != base) == changed, at


def _build_in_child(text_corpus, barrier, queue):
    try:
        barrier.wait(timeout=60)
        p = corpus.prepare(str(text_corpus), _CFG, workers=1, verbose=False)
        queue.put((str(p.cache_dir), np.array(p.train).tolist()))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        queue.put(("error", repr(e)))


def _two_at_once(text_corpus):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(text_corpus, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(r[0] != "error" for r in results), results
    return results


def test_two_processes_build_or_repair_one_cache_at_once(text_corpus):
    first, second = _two_at_once(text_corpus)  # first-time builds, concurrently
    assert first == second
    d = corpus.Path(first[0])
    assert not [x for x in d.parent.iterdir() if ".tmp-" in x.name]
    _truncate_train(d)
    first, second = _two_at_once(text_corpus)  # both find it damaged: one sets it aside, both succeed
    assert first == second and len(first[1]) == len(corpus.load_cached(d).train)
    assert len([x for x in d.parent.iterdir() if x.name.startswith(f"{d.name}.damaged-")]) == 1
    assert not [x for x in d.parent.iterdir() if ".tmp-" in x.name]


# --- a cache folder that cannot be written: one line, nothing left behind ----------------


def _cache_in(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("ARLM_CACHE", str(root))
    return root


def test_a_full_disk_is_one_line_with_the_space_and_leaves_no_temporary_folder(text_corpus, tmp_path, monkeypatch):
    root = _cache_in(tmp_path, monkeypatch)
    writes = []

    def full(f, ids):
        writes.append(ids.size)
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        ids.tofile(f)

    monkeypatch.setattr(corpus, "CHUNK_DOCS", 100)
    monkeypatch.setattr(corpus, "_append_ids", full)
    with pytest.raises(CorpusError) as e:
        corpus.prepare(str(text_corpus), _CFG, workers=1, verbose=False)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"no space left to write the token cache in {root} (about ")
    assert " KB needed, " in message and " free); set ARLM_CACHE to a writable folder with room" in message
    assert [x.name for x in root.iterdir() if not x.name.endswith(".lock")] == []


@pytest.mark.parametrize("where", ["mkdir", "rename", "open"])
def test_a_read_only_cache_folder_is_one_line_and_leaves_no_temporary_folder(text_corpus, tmp_path, monkeypatch, where):
    """Simulated: the tests run as root, where chmod does not stop writes."""
    root = _cache_in(tmp_path, monkeypatch)
    real = {"mkdir": os.mkdir, "rename": os.rename}

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    if where == "open":  # the split files themselves
        builtin_open = open
        monkeypatch.setattr(corpus, "open", lambda path, mode="r", *a, **k: read_only() if ".bin" in str(path)
                            else builtin_open(path, mode, *a, **k), raising=False)
    else:
        monkeypatch.setattr(os, where, read_only)
    with pytest.raises(CorpusError) as e:
        corpus.prepare(str(text_corpus), _CFG, workers=1, verbose=False)
    monkeypatch.setattr(os, "mkdir", real["mkdir"])
    monkeypatch.setattr(os, "rename", real["rename"])
    assert str(e.value) == (f"cannot write the token cache in {root} (read-only file system); "
                            "set ARLM_CACHE to a writable folder with room")
    assert [x.name for x in root.iterdir() if not x.name.endswith(".lock")] == []


def test_an_intact_cache_loads_from_a_read_only_folder(text_corpus, tmp_path, monkeypatch):
    _cache_in(tmp_path, monkeypatch)
    d, want = _built(text_corpus)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    for name in ("mkdir", "rename", "replace", "remove", "rmdir"):
        monkeypatch.setattr(os, name, read_only)
    p = corpus.prepare(str(text_corpus), _CFG, workers=1, verbose=False)
    assert np.array_equal(p.train, want["train"])


def test_a_damaged_cache_in_a_read_only_folder_is_one_line(text_corpus, tmp_path, monkeypatch):
    root = _cache_in(tmp_path, monkeypatch)
    d, want = _built(text_corpus)
    _truncate_train(d)
    (root / f".{d.name}.lock").unlink()  # so the lock, too, would have to be written

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    builtin_open = open
    monkeypatch.setattr(corpus, "open", lambda path, mode="r", *a, **k: read_only() if "r" not in mode
                        else builtin_open(path, mode, *a, **k), raising=False)
    monkeypatch.setattr(os, "rename", read_only)
    with pytest.raises(CorpusError) as e:
        corpus.prepare(str(text_corpus), _CFG, workers=1, verbose=False)
    n = len(want["train"])
    assert str(e.value) == (
        f"token cache {d} is damaged (train.bin has 2,000 bytes (1,000 ids), meta.json records {n:,} ids "
        f"({2 * n:,} bytes)) and cannot be set aside (read-only file system); delete it, or set ARLM_CACHE "
        "to a writable folder with room")


# --- kill -9 at the worst moments: the checkpoint, the log and the lock stay right ---------------

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from arlm import checkpoint  # noqa: E402
from arlm.train import load_config  # noqa: E402

TINY = ["--emb-size", "16", "--hidden-size", "24", "--num-layers", "2", "--batch-size", "4", "--bptt", "10",
        "--vocab-size", "200", "--min-freq", "1", "--cutoffs", "20,60", "--eval-interval", "10", "--log-interval", "5",
        "--time-budget", "0", "--workers", "1", "--threads", "1", "--max-steps", "50"]

# A training process that kills itself (SIGKILL: no handler, no cleanup) at one moment:
#   weights STEP  while writing latest/'s weights at step STEP (the temporary folder half written)
#   rename STEP   between the two renames that swap latest/ in (only latest.old on disk)
#   log STEP      after latest/ is saved at STEP, before its log line is written
#   slow          never; each step takes 20 ms, so that the test can kill it from outside
KILLER = r"""
import os, signal, sys, time, types
from arlm import batching, checkpoint, train
where, at = os.environ["KILL_WHERE"], int(os.environ.get("KILL_AT", "0"))
saving = {}
def die():
    os.kill(os.getpid(), signal.SIGKILL)
real_save = train.Trainer.save
def save(self, which, with_trainer=True):
    saving.update(step=self.step, which=which)
    return real_save(self, which, with_trainer)
train.Trainer.save = save
now = lambda: saving.get("which") == "latest" and saving.get("step") == at
if where == "weights":
    real_weights = checkpoint._save_weights
    def weights(model, filename):
        if now():
            open(filename, "wb").write(b"half")
            die()
        return real_weights(model, filename)
    checkpoint._save_weights = weights
elif where == "rename":
    def replace(src, dst):
        os.replace(src, dst)
        if now() and str(dst).endswith("latest.old"):
            die()
    checkpoint.os = types.SimpleNamespace(**{**vars(os), "replace": replace})
elif where == "log":
    real_log = train.Trainer.log
    def log(self, record):
        if record["step"] == at:
            die()
        return real_log(self, record)
    train.Trainer.log = log
elif where == "slow":
    real_window = batching.window
    def window(*a, **k):
        time.sleep(0.02)
        return real_window(*a, **k)
    batching.window = window
sys.exit(train.main(sys.argv[1:]))
"""


def _train(args, where, at=0):
    env = dict(os.environ, KILL_WHERE=where, KILL_AT=str(at))
    return subprocess.Popen([sys.executable, "-c", KILLER, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _killed(proc) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()] if (out / "log.jsonl").exists() else []


def _consistent(out: Path, reference: list[dict]) -> int:
    """After a kill: the checkpoint a resume would use loads, and log.jsonl has each step
    once, none past that checkpoint, each the uninterrupted run's. Its step."""
    latest = checkpoint.resumable(out)
    checkpoint.load(latest)
    state = checkpoint.load_trainer_state(latest)
    steps = [r["step"] for r in _log(out)]
    assert steps == sorted(set(steps)) and all(s <= state["step"] for s in steps), (steps, state["step"])
    by_step = {r["step"]: r for r in reference}
    assert [r["valid_ppl"] for r in _log(out)] == [by_step[s]["valid_ppl"] for s in steps]
    assert checkpoint.RunLock.holder(out) is None  # the kill took the lock with it
    return state["step"]


def test_kill_9_at_any_moment_then_resume_gives_the_uninterrupted_run(text_corpus, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from arlm.train import main

    reference, out = tmp_path / "reference", tmp_path / "run"
    assert main(["--corpus", str(text_corpus), "--out", str(reference), *TINY]) == 0
    want = _log(reference)
    assert [r["step"] for r in want] == [10, 20, 30, 40, 50]
    start = ["--corpus", str(text_corpus), "--out", str(out), *TINY]

    # 1. Killed while writing its first checkpoint: nothing to resume, and --resume says so.
    _killed(_train(start, "weights", 10))
    assert not (out / "latest").exists() and _log(out) == []
    with pytest.raises(SystemExit):
        load_config(["--resume", str(out)])
    assert (f"--resume: {out}: the run has no checkpoint yet (it stopped before its first latest/ was saved); "
            f"start it again without --resume with --overwrite true") in capsys.readouterr().err  # best/ was saved

    # 2. Started again; killed between the renames of its second checkpoint: the first one,
    #    moved aside to latest.old, is what a resume continues from.
    _killed(_train([*start, "--overwrite", "true"], "rename", 20))
    assert not (out / "latest").exists() and (out / "latest.old").is_dir()
    assert _consistent(out, want) == 10 and [r["step"] for r in _log(out)] == [10]

    # 3. Resumed; killed after saving step 30, before logging it.
    _killed(_train(["--resume", str(out)], "log", 30))
    assert _consistent(out, want) == 30 and [r["step"] for r in _log(out)] == [10, 20]

    # 4. Resumed; killed from outside at some moment after step 40 was logged.
    proc = _train(["--resume", str(out)], "slow")
    deadline = time.time() + 120
    while 40 not in [r["step"] for r in _log(out)]:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.02)
    time.sleep(0.1)
    proc.kill()
    proc.communicate(timeout=60)
    assert _consistent(out, want) >= 40

    # 5. Resumed to the end: each step logged once, the same numbers and weights as never stopping.
    assert main(["--resume", str(out)]) == 0
    got = _log(out)
    assert [r["step"] for r in got] == [10, 20, 30, 40, 50]
    assert [r["valid_ppl"] for r in got] == [r["valid_ppl"] for r in want]
    a, b = load_file(str(reference / "latest" / "model.safetensors")), load_file(str(out / "latest" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("valid_ppl")] == [10, 20, 30, 40, 50]  # TensorBoard agrees too
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]  # the dead processes' temporaries are gone
