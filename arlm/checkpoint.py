"""Checkpoint directories: written atomically, loaded safely.

A model directory holds everything inference needs and nothing that can run code:

    config.json        ModelConfig (+ the training run's config, for the record)
    tokenizer.json     the tokenizer and its normalization (+ spm.model for subwords)
    model.safetensors  the weights
    trainer.pt         optimizer/scheduler/RNG/position, to resume (loaded weights_only)

A training run's output directory has `latest/` and `best/` (best on valid). A new
version of a directory is written beside the old one and swapped in by renames, so a
crash or a full disk mid-save leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as _load_weights
from safetensors.torch import save_model as _save_weights

from arlm.model import LanguageModel, ModelConfig
from arlm.tokenizer import TOKENIZER_FILE, load_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINER_FILE = "trainer.pt"
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


def save(directory: str | os.PathLike, model: LanguageModel, tokenizer, run_config: dict | None = None,
         trainer_state: dict | None = None, extra: dict | None = None) -> Path:
    """Write a complete model directory atomically (old version intact until the swap)."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    old = final.with_name(final.name + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    config = {"format": FORMAT_VERSION, "model": model.config.to_dict(), "run": run_config or {}, **(extra or {})}
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    tokenizer.save(tmp)
    _save_weights(model, str(tmp / WEIGHTS_FILE))
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER_FILE)
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)
    return final


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
    run_dir = Path(run_dir)
    found = _whole(run_dir / "latest")
    if found is None:
        if not run_dir.exists():
            raise CheckpointError(f"{run_dir}: no such checkpoint directory")
        raise CheckpointError(f"{run_dir}: no latest/{CONFIG_FILE} here; is this an arlm run directory?")
    return found


def model_dir(path: str | os.PathLike) -> Path:
    """The model directory inside a run directory: the path itself, else best/, else latest/
    (or a `.old` copy left by a crash mid-swap)."""
    path = Path(path)
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


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[LanguageModel, Any, dict]:
    """(model in eval mode, tokenizer, config dict) from a model or run directory."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {device} requested but CUDA is not available; use cpu")
    directory = model_dir(path)
    config = read_config(directory)
    model = LanguageModel(ModelConfig(**config["model"]))
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
