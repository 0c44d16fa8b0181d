"""Checkpoint directories: written atomically, loaded safely.

A model directory holds everything inference needs and nothing that can run code:

    config.json        ModelConfig (+ the training run's config, for the record)
    tokenizer.json     the tokenizer and its normalization (+ spm.model for subwords)
    model.safetensors  the weights
    trainer.pt         optimizer/scheduler/RNG/position, to resume (loaded weights_only)

A training run's output directory has `latest/` and `best/` (best on valid). A new
version of a directory is written beside the old one (`NAME.tmp-PID`, one per process) and
swapped in by renames, so a crash or a full disk mid-save leaves the previous checkpoint
whole. config.json records `tokenizer_fingerprint` (arlm.tokenizer.fingerprint: a sha256
of the vocabulary and the normalization), so a tokenizer.json from another run, even one
with as many tokens, is refused on load (a checkpoint saved before it loads as before). A run
directory is held by one training process at a time (`RunLock`, an flock on `.lock`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import weakref
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as _load_weights
from safetensors.torch import save_model as _save_weights

from arlm.model import LanguageModel, ModelConfig
from arlm.ngram import MIX_FILE
from arlm.tokenizer import TOKENIZER_FILE, fingerprint, load_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINER_FILE = "trainer.pt"
LOCK_FILE = ".lock"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but someone else's
        return True
    return True


def _remove_stale_temporaries(final: Path) -> None:
    """The `NAME.tmp-PID` folders that processes which are gone left beside `final`
    (killed mid-save); a live process's is its own business."""
    pattern = re.compile(re.escape(final.name) + r"\.tmp-(\d+)")
    for sibling in final.parent.iterdir():
        m = pattern.fullmatch(sibling.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            shutil.rmtree(sibling, ignore_errors=True)


def save(directory: str | os.PathLike, model: LanguageModel, tokenizer, run_config: dict | None = None,
         trainer_state: dict | None = None, extra: dict | None = None) -> Path:
    """Write a complete model directory atomically (old version intact until the swap).
    The temporary folder is this process's own (`NAME.tmp-PID`), so two processes saving
    beside each other never write into one folder."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    old = final.with_name(final.name + ".old")
    _remove_stale_temporaries(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    config = {"format": FORMAT_VERSION, "model": model.config.to_dict(), "run": run_config or {}, **(extra or {}),
              "tokenizer_fingerprint": fingerprint(tokenizer)}
    try:
        tmp.mkdir()
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
        tokenizer.save(tmp)
        _save_weights(model, str(tmp / WEIGHTS_FILE))
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_FILE)
        _carry_over(final, tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
    except OSError as e:  # a full disk, a quota, a read-only folder: the previous version is untouched
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(_write_problem(final, e, model, trainer_state is not None)) from None
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)
    return final


# Files another command added to a model directory that a new save keeps: the n-gram mixed
# into the model (`python -m arlm.ngram --mix`) took minutes to fit on the same train split and
# tokenizer, so a resumed run carries it over rather than dropping it; only its mixing weight
# was fitted to the earlier weights (the trainer says so once).
CARRIED_FILES = (MIX_FILE,)


def _carry_over(final: Path, tmp: Path) -> None:
    for name in CARRIED_FILES:
        if (final / name).is_file() and not (tmp / name).exists():
            try:  # a hard link: no second copy of the bytes, and the old folder is deleted anyway
                os.link(final / name, tmp / name)
            except OSError:
                shutil.copy2(final / name, tmp / name)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a failed run, not bad input); the message is one
    line naming the path and, for a full disk, the space needed and free."""


def _write_problem(final: Path, e: OSError, model: LanguageModel, with_trainer: bool) -> str:
    why = (os.strerror(e.errno) if e.errno else str(e) or type(e).__name__).lower()
    # weights, plus AdamW's two moments and the RNG/position in trainer.pt
    need = model.num_parameters() * 4 * (3 if with_trainer else 1)
    try:
        free = f", {shutil.disk_usage(final.parent).free / 2**20:,.0f} MB free"
    except OSError:
        free = ""
    previous = "the previous checkpoint is whole" if final.exists() else "nothing was saved"
    return (f"cannot write the checkpoint {final} ({why}; about {need / 2**20:,.0f} MB needed{free}); "
            f"{previous}: free space (or choose another --out) and resume")


class RunInUse(CheckpointError):
    """The run directory is held by another training process."""


class RunLock:
    """One training process per run directory: an exclusive `flock` on DIR/.lock, held
    for the life of the run, with the holder's PID written in the file for the message
    a second run gets. The system releases an flock when its process ends, however it
    ends (kill -9 included), so a crash never leaves a stale lock; the file itself stays.
    A forked child (the corpus workers) closes its copy of the descriptor at once: an
    flock lives while any copy is open, and a worker outliving a killed run must not keep
    the directory locked under a dead PID."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise RunInUse(f"{self.path.parent}: in use by another training run (PID {pid or 'unknown'}); "
                           f"wait for it to finish, or choose another directory") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        _held.add(self)
        return self

    def release(self) -> None:
        _held.discard(self)
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # interpreter shutdown: the system releases the lock anyway
            pass

    @staticmethod
    def _drop_in_child() -> None:
        for lock in list(_held):
            if lock._fd is not None:
                try:
                    os.close(lock._fd)
                except OSError:
                    pass
                lock._fd = None
        _held.clear()

    @staticmethod
    def holder(directory: str | os.PathLike) -> int | str | None:
        """The PID of the process training in `directory` now, or None when none is."""
        try:
            fd = os.open(Path(directory) / LOCK_FILE, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or "unknown"
        finally:
            os.close(fd)
        return None


_held: "weakref.WeakSet[RunLock]" = weakref.WeakSet()  # the locks this process holds
os.register_at_fork(after_in_child=RunLock._drop_in_child)


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _whole(directory: Path) -> Path | None:
    """`directory` if it holds a saved checkpoint, else the `.old` copy that a crash between
    the two renames of `save` leaves in its place, else None. The one place that knows
    the recovery rule."""
    for candidate in (directory, directory.with_name(directory.name + ".old")):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    return None


def resumable(run_dir: str | os.PathLike) -> Path:
    """The checkpoint a run continues from: its latest/ (or what a crash mid-save left of it)."""
    run_dir = as_path(run_dir)
    found = _whole(run_dir / "latest")
    if found is None:
        if not run_dir.exists():
            raise CheckpointError(f"{run_dir}: no such checkpoint directory")
        if (run_dir / LOCK_FILE).exists() or any(run_dir.glob("latest.tmp*")):  # a training run was started here
            holder = RunLock.holder(run_dir)
            if holder is not None:
                raise CheckpointError(f"{run_dir}: being trained by another process (PID {holder}), which has not "
                                      f"saved a checkpoint yet; wait for it, or choose another directory")
            again = " with --overwrite true" if (run_dir / "best" / CONFIG_FILE).is_file() else ""
            raise CheckpointError(f"{run_dir}: the run has no checkpoint yet (it stopped before its first "
                                  f"latest/ was saved); start it again without --resume{again}")
        raise CheckpointError(f"{run_dir}: no latest/{CONFIG_FILE} here; is this an arlm run directory?")
    return found


def as_path(path) -> Path:
    """`path` as a Path, or a one-line error saying what a checkpoint path must be."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"expected a checkpoint path (a str or os.PathLike naming a model or run directory), "
                        f"got {type(path).__name__}")
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip():
        raise CheckpointError("the checkpoint path is empty; name a model or run directory")
    return Path(text)


def model_dir(path: str | os.PathLike) -> Path:
    """The model directory inside a run directory: the path itself, else best/, else latest/
    (or a `.old` copy left by a crash mid-swap)."""
    path = as_path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    for candidate in (path / "best", path / "latest"):  # a whole one first, then a recovered one
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    for candidate in (path / "best", path / "latest"):
        if (found := _whole(candidate)) is not None:
            return found
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    raise CheckpointError(f"{path}: no {CONFIG_FILE} here or in best/ or latest/; is this an arlm checkpoint?")


def read_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        ModelConfig(**config["model"])
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: damaged or not an arlm config ({e})") from None
    return config


def device_problem(device: torch.device) -> str | None:
    """Why `device` cannot be used on this machine, or None when it can."""
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is available"
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return "no MPS device (Apple GPU) is available"
    return None


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB"


def memory_shortfall(n_bytes: int) -> int | None:
    """This machine's memory when `n_bytes` cannot fit in it, else None."""
    ram = physical_memory()
    return ram if ram is not None and n_bytes > ram else None


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[LanguageModel, Any, dict]:
    """(model in eval mode, tokenizer, config dict) from a model or run directory."""
    directory = model_dir(path)
    device = torch.device(device)
    if (problem := device_problem(device)) is not None:
        raise CheckpointError(f"device {device} requested but {problem}; use cpu")
    config = read_config(directory)
    model_config = ModelConfig(**config["model"])
    n = model_config.parameter_count()
    if (ram := memory_shortfall(4 * n)) is not None:
        raise CheckpointError(
            f"{directory / CONFIG_FILE}: describes a model of {n:,} parameters ({gib(4 * n)} as float32), more than "
            f"this machine's {gib(ram)} of memory; the file is damaged, or the model needs a bigger machine")
    model = LanguageModel(model_config)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    try:
        missing, unexpected = _load_weights(model, str(weights), strict=False, device=str(device))
    except (SafetensorError, RuntimeError, OSError) as e:
        raise CheckpointError(f"{weights}: truncated, damaged or not matching {CONFIG_FILE} ({str(e).splitlines()[0][:160]})") from None
    if missing or unexpected:
        raise CheckpointError(f"{weights}: does not match {CONFIG_FILE} (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    try:
        tokenizer = load_tokenizer(directory)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{directory / TOKENIZER_FILE}: {e}") from None
    if tokenizer.vocab_size != model.config.vocab_size:
        raise CheckpointError(
            f"{directory / TOKENIZER_FILE}: vocabulary of {tokenizer.vocab_size} tokens does not match the weights "
            f"({model.config.vocab_size}); the tokenizer belongs to another model"
        )
    recorded = config.get("tokenizer_fingerprint")
    if recorded is not None and recorded != (actual := fingerprint(tokenizer)):  # None: saved before fingerprints
        raise CheckpointError(
            f"{directory / TOKENIZER_FILE} does not match {directory / CONFIG_FILE}: its vocabulary or normalization "
            f"differs from the one the model was trained with (fingerprint {actual[:19]}…, recorded "
            f"{str(recorded)[:19]}…); the tokenizer belongs to another run")
    model.to(device).eval()
    return model, tokenizer, config


def load_trainer_state(directory: str | os.PathLike) -> dict:
    """The resumable state, loaded with weights_only=True: tensors and plain data only."""
    path = Path(directory) / TRAINER_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; this checkpoint cannot resume training")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle payloads, truncation: never executed, always named
        raise CheckpointError(f"{path}: refused or damaged ({str(e).splitlines()[0][:160]})") from None
