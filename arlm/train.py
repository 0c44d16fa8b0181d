"""`python -m arlm.train`: train a word-level LSTM language model with truncated BPTT.

    corpus ──prepare──▶ token ids ──streams──▶ (bptt, batch) windows ──▶ LanguageModel
      ──▶ loss, clip, step ──▶ every eval_interval: valid perplexity, checkpoint, log

The state carried from window to window is detached, so backpropagation stops at the
window boundary (truncated BPTT) while the forward pass still sees all the history.
Run `python -m arlm.train --help` for every option (they are declared once, in
arlm/config.py). With no options it trains the default model on the embedded hadith
corpus in under 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from arlm import batching, checkpoint, cli, config, optim
from arlm.config import TrainConfig
from arlm.corpus import available_cards, prepare
from arlm.model import LanguageModel, ModelConfig, load_vectors
from arlm.ngram import MIX_FILE
from arlm.normalize import normalize
from arlm.tokenizer import fingerprint

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["TrainConfig", "ModelConfig", "Trainer", "load_config", "lr_at", "schedule_lr", "evaluate", "main"]


# --- configuration -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """--config, then one flag per option of TrainConfig (generated from its fields)."""
    p = argparse.ArgumentParser(
        prog="python -m arlm.train",
        description="Train an Arabic word-level LSTM language model with truncated BPTT. "
                    "Settings come from the defaults below, then --config FILE.toml, then these flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m arlm.train\n  python -m arlm.train --corpus saudinewsnet --out runs/news --time-budget 30\n"
               "  python -m arlm.train --resume runs/hadith --time-budget 30\n"
               "  torchrun --nproc_per_node=2 -m arlm.train --batch-size 64",
    )
    p.add_argument("--config", metavar="FILE", action="append",
                   help="TOML file with any of the settings below (keys as the flags, with _ for -, or in tables "
                        "[data], [tokenizer], [model], [optim]); may be given several times, later files win; "
                        "tokenizers/*.toml are such files")
    config.add_flags(p, TrainConfig(), fill={"cards": ", ".join(sorted(available_cards())) or "none found"})
    return p


def _merge(values: dict, new: dict) -> None:
    """Later settings win, except normalization: they refine the earlier table, not replace it."""
    if "normalize" in new:
        new = {**new, "normalize": {**values.get("normalize", {}), **new["normalize"]}}
    values.update(new)


def load_config(argv: list[str] | None) -> TrainConfig:
    """Defaults, then --resume's saved run, then the TOML files, then the flags; every value
    from any of them checked by the same rule (`config.validate`)."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    config_files = args.pop("config", None) or []
    defaults = TrainConfig()
    values: dict = {}
    if args.get("resume"):
        try:
            run = checkpoint.read_config(checkpoint.resumable(args["resume"]))["run"]
        except checkpoint.CheckpointError as e:
            parser.error(f"--resume: {e}")
        known = {leaf.name for leaf in config.leaves(defaults)}
        values.update({k: v for k, v in run.items() if k in known})  # a setting since removed is dropped
        values.setdefault("embedding_update", "dense")  # a run saved before the option trained dense
        values["out"] = args["resume"]  # continue in place (a moved run writes where it now is)
    for config_file in config_files:
        try:
            data = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            parser.error(f"--config {config_file}: {e}")
        flat, unknown = config.flatten(data, defaults)
        if unknown:
            parser.error(f"--config {config_file}: unknown setting(s) {', '.join(sorted(unknown))}")
        _merge(values, flat)
    _merge(values, args)
    try:
        config.validate(values, defaults)
        return config.from_flat(values)
    except ValueError as e:
        parser.error(str(e))


# --- the learning rate -------------------------------------------------------------


def schedule_lr(step: int, seconds: float, cfg: TrainConfig, total_steps: int, plateau_lr: float) -> float:
    """The schedule's learning rate after `step` steps and `seconds` of training.

    plateau: `plateau_lr`, the rate ReduceLROnPlateau keeps (--lr, cut on stalled valid).
    cosine:  --lr until --decay-start of the run, then a half cosine down to 0 at its end,
             where the end is the first of its step limit and its time budget to come.
             Under a time budget the clock sets the pace, so the steps it takes vary with
             the machine's speed."""
    if cfg.optim.lr_schedule != "cosine":
        return plateau_lr
    progress = step / max(total_steps, 1)
    if cfg.time_budget:
        progress = max(progress, seconds / (cfg.time_budget * 60))
    decay_start = cfg.optim.decay_start
    decayed = max(0.0, min(progress, 1.0) - decay_start) / (1.0 - decay_start)
    return cfg.optim.lr * 0.5 * (1.0 + math.cos(math.pi * decayed))


def lr_at(step: int, seconds: float, cfg: TrainConfig, total_steps: int, plateau_lr: float | None = None) -> float:
    """The learning rate of the optimizer step taken after `step` steps and `seconds` of
    training: the schedule, times a linear warm-up over the first --warmup steps."""
    base = schedule_lr(step, seconds, cfg, total_steps, cfg.optim.lr if plateau_lr is None else plateau_lr)
    warmup = cfg.optim.warmup
    return base * min(1.0, (step + 1) / warmup if warmup else 1.0)


# --- the run -----------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    """--device: auto picks CUDA, then MPS, then CPU; a named device this machine lacks is
    refused in one line (the same check as checkpoint.load's)."""
    if name == "auto":
        for candidate in ("cuda", "mps"):
            if checkpoint.device_problem(torch.device(candidate)) is None:
                return torch.device(candidate)
        return torch.device("cpu")
    device = torch.device(name)
    if (problem := checkpoint.device_problem(device)) is not None:
        raise ValueError(f"--device {name}: {problem}; use --device auto or cpu")
    return device


# Float32 copies of the weights that training holds: the weights and their gradients,
# plus the optimizer's state (AdamW: two moments; NT-ASGD: the running average).
TRAINING_COPIES = {"adamw": 4, "sgd": 2, "ntasgd": 3}


def check_model_fits(model: ModelConfig, optimizer: str, vocab_known: bool = True) -> None:
    """Refuse, before any tensor is made, a model whose training cannot fit in this
    machine's memory, naming the sizes and the number (instead of torch's allocation
    error or a machine swapping to death)."""
    copies = TRAINING_COPIES.get(optimizer, 4)
    n = model.parameter_count()
    if (ram := checkpoint.memory_shortfall(4 * copies * n)) is None:
        return
    vocab = f"a vocabulary of {model.vocab_size:,}" if vocab_known else "even the smallest vocabulary"
    raise ValueError(
        f"--emb-size {model.emb_size}, --hidden-size {model.hidden_size} and --num-layers {model.num_layers} with "
        f"{vocab} make a model of {n:,} parameters, about {checkpoint.gib(4 * copies * n)} to train (weights, "
        f"gradients and optimizer state), more than this machine's {checkpoint.gib(ram)} of memory; choose smaller sizes")


def detach(state):
    """Cut the graph at the window boundary: the values carry on, the gradient path does not."""
    return tuple(s.detach() for s in state)


@torch.no_grad()
def evaluate(model: LanguageModel, ids: np.ndarray, cfg: TrainConfig, device: torch.device, eos_id: int) -> dict:
    """Mean NLL over every token of `ids` (end-of-document tokens included), state carried."""
    was_training = model.training
    model.eval()
    inputs, targets = batching.eval_streams(ids, cfg.eval_batch_size, eos_id)
    state = model.init_state(inputs.shape[0], device)
    total, count = 0.0, 0
    for start in range(0, inputs.shape[1], cfg.bptt):
        x = torch.from_numpy(np.ascontiguousarray(inputs[:, start : start + cfg.bptt].T)).to(device)
        y = torch.from_numpy(np.ascontiguousarray(targets[:, start : start + cfg.bptt].T)).to(device)
        out = model(x, state)
        state = out.state
        keep = y.reshape(-1) != batching.IGNORE
        feats = out.features.reshape(-1, out.features.shape[-1])[keep]
        total += model.nll(feats, y.reshape(-1)[keep]).sum().item()
        count += int(keep.sum())
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50)), "tokens": count}


@contextlib.contextmanager
def averaged_weights(model: LanguageModel, optimizer):
    """NT-ASGD evaluates and saves the running average of the weights, not the last iterate."""
    if not isinstance(optimizer, torch.optim.ASGD):
        yield
        return
    saved = {}
    for p in model.parameters():
        state = optimizer.state.get(p, {})
        if "ax" in state:
            saved[p] = p.detach().clone()
            p.data.copy_(state["ax"])
    try:
        yield
    finally:
        for p, value in saved.items():
            p.data.copy_(value)



class Trainer:
    """Holds the run's mutable state; `run()` is the loop."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.main = self.rank == 0
        self.out = Path(cfg.out)
        self.device = pick_device(cfg.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.stop_reason = ""
        self._signalled = False
        self.lock: checkpoint.RunLock | None = None
        self.writer = None

    def close(self) -> None:
        """Release the run directory (the lock taken in setup); also done when run() ends."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # -- setup --

    def setup(self) -> None:
        cfg = self.cfg
        # The sizes alone, before the corpus is read: with the smallest vocabulary there is,
        # does the model fit at all? (The exact check follows once the tokenizer is known.)
        check_model_fits(cfg.model_config(_SmallestVocabulary()), cfg.optim.optimizer, vocab_known=False)

        def read_corpus():
            return prepare(cfg.data.corpus, cfg.tokenizer, workers=cfg.data.workers or None,
                           encoding_errors=cfg.data.encoding_errors, field_name=cfg.data.text_field, verbose=self.main)

        # Rank 0 takes the directory and builds the token cache first; the others then read it.
        # It tells them how that went, so a refusal (a run in use, bad input) stops every rank
        # with its message instead of leaving them waiting at a barrier.
        if self.main:
            failure = None
            try:
                self.lock = lock_run(self.out)  # before preflight: --overwrite deletes what another run writes
                preflight(self.out, resuming=bool(cfg.resume), overwrite=cfg.overwrite)
                data = read_corpus()
            except Exception as e:
                failure = e
            if self.world > 1:
                _tell_ranks(None if failure is None else str(failure).splitlines()[0] or type(failure).__name__)
            if failure is not None:
                raise failure
        else:
            why = _tell_ranks(None)
            if why is not None:
                raise ValueError(f"rank 0 could not start the run: {why}")
            data = read_corpus()
        self.data, self.tokenizer = data, data.tokenizer
        share = data.stats.get("arabic_share", 1.0)
        if self.main and share < 0.5:
            print(f"warning: only {share:.0%} of the letters in this corpus are Arabic; training anyway", file=sys.stderr)
        if cfg.batch_size % self.world:
            raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the {self.world} processes")
        needed = cfg.batch_size * (cfg.bptt + 1)
        if len(data.train) < needed:
            n = len(data.train)
            hint = (f"--batch-size {n // (cfg.bptt + 1)}" if n >= 2 * (cfg.bptt + 1)
                    else f"--batch-size 1 --bptt {max(1, n // 2 - 1)}" if n >= 4 else "a larger corpus")
            raise ValueError(
                f"the train split has {n:,} tokens, fewer than batch_size × (bptt + 1) = {needed:,}; try {hint}"
            )
        self.rows = batching.shard(batching.streams(data.train, cfg.batch_size), self.rank, self.world)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        model_config = cfg.model_config(self.tokenizer)
        check_model_fits(model_config, cfg.optim.optimizer)
        self.model = LanguageModel(model_config).to(self.device)
        if cfg.model.vectors and not cfg.resume:  # a resumed run has its trained embeddings
            self._load_vectors()
        # Row-wise embedding updates (arlm/optim.py) need a sparse embedding gradient: not with a
        # full softmax tied to the embedding (its gradient is dense anyway), nor under DDP
        # (its buckets all-reduce dense gradients).
        tied_full = self.model.decoder is not None and self.model.decoder.weight is self.model.embedding.weight
        self.row_updates = (cfg.optim.optimizer == "adamw" and cfg.optim.embedding_update == "rows"
                            and self.world == 1 and not tied_full)
        self.model.embedding.sparse = self.row_updates
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, find_unused_parameters=self.model.adaptive is not None)
        self.optimizer = self._optimizer(cfg.optim.optimizer)
        # patience - 1: ReduceLROnPlateau cuts on the (patience + 1)-th bad evaluation, and
        # --lr-patience N means "after N evaluations without improvement", like --early-stop.
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=cfg.optim.lr_factor, patience=max(0, cfg.optim.lr_patience - 1), threshold=0.0)
        self.step = self.epoch = self.pos = 0
        self.state = None
        self.best = self.best_saved = float("inf")  # best valid loss: for the schedule / for best/
        self._mix_noted = False  # an n-gram mixed into best/ said once that its weight is stale
        self.bad_evals = 0
        self.history: list[dict] = []
        self.tokens_seen = 0
        self.train_seconds = 0.0
        if cfg.resume:
            self._resume(Path(cfg.resume))

    def _optimizer(self, kind: str):
        opt, params = self.cfg.optim, list(self.model.parameters())
        # One fused kernel over all parameters instead of a loop of small operations per
        # tensor: AdamW's step at a 50k vocabulary goes from ~60 ms to ~8 ms on 2 cores.
        fused = {"fused": True} if all(p.dtype == torch.float32 for p in params) else {}
        if kind == "adamw":
            adamw = optim.RowAdamW if self.row_updates else torch.optim.AdamW
            return adamw(params, lr=opt.lr, weight_decay=opt.weight_decay, **fused)
        if kind == "asgd":
            return torch.optim.ASGD(params, lr=opt.lr, t0=0, lambd=0.0, weight_decay=opt.weight_decay)
        # sgd; ntasgd starts as SGD and switches to ASGD (kind "asgd") when valid stalls
        return torch.optim.SGD(params, lr=opt.lr, weight_decay=opt.weight_decay, **fused)

    @property
    def averaging(self) -> bool:
        """NT-ASGD has switched to averaged SGD."""
        return isinstance(self.optimizer, torch.optim.ASGD)

    def _load_vectors(self) -> None:
        tok, spec = self.tokenizer, self.cfg.model
        if not hasattr(tok, "itos"):
            raise ValueError("--vectors needs the word tokenizer (pretrained vectors are per word)")
        matrix, coverage = load_vectors(spec.vectors, tok.itos, spec.emb_size, lambda w: normalize(w, tok.config.normalize))
        with torch.no_grad():
            self.model.embedding.weight.copy_(matrix)
        if self.main:
            print(f"embeddings: {coverage:.1%} of the vocabulary found in {spec.vectors}", file=sys.stderr)

    def _resume(self, run_dir: Path) -> None:
        latest = checkpoint.resumable(run_dir)
        model, tokenizer, _ = checkpoint.load(latest, self.device)
        if fingerprint(tokenizer) != fingerprint(self.tokenizer):  # the ids would mean other tokens
            raise checkpoint.CheckpointError(
                f"{latest}: its vocabulary is not the one this corpus and these tokenizer settings give; "
                f"resume with the run's own --corpus and tokenizer settings")
        try:
            self.model.load_state_dict(model.state_dict())
        except RuntimeError:
            raise checkpoint.CheckpointError(
                f"{latest}: the saved model has other sizes than these settings ({model.config.to_dict()}); "
                f"resume without changing model sizes") from None
        st = checkpoint.load_trainer_state(latest)
        if st.get("asgd"):
            self.optimizer = self._optimizer("asgd")
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.step, self.epoch, self.pos = st["step"], st["epoch"], st["pos"]
        # Under DDP only rank 0's streams' state was saved; other ranks restart theirs from
        # zero (with the reset at every document start, that changes only a few tokens).
        if st.get("h") is not None and self.world == 1:
            self.state = (st["h"].to(self.device), st["c"].to(self.device))
        self.best, self.best_saved, self.bad_evals = st["best"], st["best_saved"], st["bad_evals"]
        self.history = json.loads(st["history"])
        if self.main:
            self._rewrite_log()
        self.tokens_seen, self.train_seconds = st["tokens_seen"], st["train_seconds"]
        torch.set_rng_state(st["torch_rng"])
        if st.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["cuda_rng"])
        self.rng.bit_generator.state = json.loads(st["numpy_rng"])
        if self.main:
            print(f"resuming {run_dir} at step {self.step} (epoch {self.epoch + 1})", file=sys.stderr)

    # -- checkpoints and the log --

    def trainer_state(self) -> dict:
        h, c = self.state if self.state is not None else (None, None)
        return {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "step": self.step, "epoch": self.epoch, "pos": self.pos,
            "h": None if h is None else h.cpu(), "c": None if c is None else c.cpu(),
            "best": self.best, "best_saved": self.best_saved, "bad_evals": self.bad_evals, "history": json.dumps(self.history),
            "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds,
            "torch_rng": torch.get_rng_state(), "numpy_rng": json.dumps(self.rng.bit_generator.state),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "asgd": self.averaging,
        }

    def save(self, which: str, with_trainer: bool = True) -> None:
        """`best` holds the weights to use (NT-ASGD: the average); `latest` the raw iterate,
        so that resuming continues exactly."""
        if not self.main:
            return
        averaging = averaged_weights(self.model, self.optimizer) if which == "best" else contextlib.nullcontext()
        with averaging:
            checkpoint.save(self.out / which, self.model, self.tokenizer, config.to_flat(self.cfg),
                            self.trainer_state() if with_trainer else None,
                            {"corpus": {k: self.data.stats.get(k) for k in ("corpus", "tokens", "documents", "unk_rate")},
                             "step": self.step, "best_valid_ppl": math.exp(min(self.best_saved, 50))})
        if which == "best" and not self._mix_noted and (self.out / which / MIX_FILE).is_file():
            self._mix_noted = True
            print(f"note: {self.out / which / MIX_FILE} is kept, but its mixing weight was fitted to earlier weights; "
                  f"refit it with python -m arlm.ngram --mix {self.out}", file=sys.stderr)

    def save_checkpoints(self, new_best: bool) -> None:
        """After an evaluation: best/ when valid improved, latest/ always (to resume from)."""
        if self.main:
            if new_best:
                self.save("best", with_trainer=False)
            self.save("latest")

    # The log never runs ahead of the checkpoint a run resumes from: an evaluation's record
    # joins `history` (saved in latest/'s trainer state), latest/ is saved, and only then is
    # the line appended to log.jsonl and TensorBoard. A resumed run rewrites both from the
    # history it resumed, dropping what a killed run wrote past it and mending a line the
    # kill cut short or never wrote.

    def _rewrite_log(self) -> None:
        """log.jsonl as the resumed checkpoint's history says, swapped in atomically."""
        path = self.out / "log.jsonl"
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(record) + "\n" for record in self.history)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _open_writer(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # TensorBoard not installed: log.jsonl only
            return
        directory = self.out / "tensorboard"
        # Resumed: the history goes into a new event file, then the old files go (a kill in
        # between leaves both, and the next resume mends that too). TensorBoard's own
        # purge_step cannot do it: it orders event files by name, and two files written in
        # one second are in the order of their PIDs, not of their runs.
        stale = sorted(directory.glob("events.out.tfevents.*")) if self.cfg.resume else []
        self.writer = SummaryWriter(str(directory))
        if self.cfg.resume:
            for record in self.history:
                self._write_scalars(record, flush=False)
            self.writer.flush()
            for f in stale:
                f.unlink(missing_ok=True)

    def _write_scalars(self, record: dict, flush: bool = True) -> None:
        if self.writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.writer.add_scalar(k, v, record["step"])
            if flush:
                self.writer.flush()

    def log(self, record: dict) -> None:
        """After latest/ holds `record` in its history: one line in log.jsonl, and TensorBoard."""
        if not self.main:
            return
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self._write_scalars(record)

    # -- evaluation, and what follows from it --

    def validate(self) -> dict:
        """Valid loss and perplexity (NT-ASGD: of the averaged weights), on the first
        --eval-tokens of valid."""
        cfg = self.cfg
        ids = self.data.valid[: cfg.eval_tokens] if cfg.eval_tokens else self.data.valid
        with averaged_weights(self.model, self.optimizer):
            return evaluate(self.model, ids, cfg, self.device, self.tokenizer.eos_id)

    def react(self, valid_loss: float) -> None:
        """The schedule's answer to an interval evaluation: count the evaluations without
        improvement; NT-ASGD starts averaging after --nonmono of them, the plateau schedule
        cuts the rate after --lr-patience."""
        opt = self.cfg.optim
        if valid_loss < self.best:
            self.best, self.bad_evals = valid_loss, 0
        elif not self.holding():
            self.bad_evals += 1
        if opt.optimizer == "ntasgd" and not self.averaging and self.bad_evals >= opt.nonmono:
            self.optimizer = self._optimizer("asgd")  # NT-ASGD: start averaging from here
            self.bad_evals = 0
            tqdm.write(f"step {self.step}: valid stalled for {opt.nonmono} evaluations, switching to averaged SGD")
        elif opt.optimizer != "ntasgd" and opt.lr_schedule == "plateau":
            self.scheduler.step(valid_loss)

    def already_done(self) -> str:
        """Why a (resumed) run must train nothing at all, or "": every limit that stops a
        run, checked before the first step as the loop checks it after each, so a run that
        has already stopped says so instead of training one more step or interval."""
        cfg = self.cfg
        if self.epoch >= cfg.epochs:
            return f"the run has already trained its --epochs {cfg.epochs}; resume with a larger --epochs to train on"
        if cfg.max_steps and self.step >= cfg.max_steps:
            return (f"the run has already reached --max-steps {cfg.max_steps} (step {self.step}); "
                    f"resume with a larger one to train on")
        if cfg.time_budget and self.train_seconds >= cfg.time_budget * 60:
            return (f"the run has already trained its --time-budget {cfg.time_budget:g} min; "
                    f"resume with a larger one to train on")
        if self.stalled():
            return (f"the run has already stopped early (valid did not improve for {self.bad_evals} evaluations, "
                    f"--early-stop {cfg.early_stop}); resume with a larger --early-stop, or 0, to train on")
        return ""

    def holding(self) -> bool:
        """Whether a warmup-stable-decay schedule (cosine with --decay-start) still holds its
        constant --lr. Valid stalls there are expected, and can rise as the model overfits:
        the decay is where such a run gains most (BENCHMARKS §5, §12), so evaluations before
        it do not count towards --early-stop."""
        opt = self.cfg.optim
        return opt.lr_schedule == "cosine" and opt.decay_start > 0 and self.optimizer.param_groups[0]["lr"] >= opt.lr

    def stalled(self) -> bool:
        """Early stopping: --early-stop evaluations without improvement (never while NT-ASGD averages)."""
        early_stop = self.cfg.early_stop
        return bool(early_stop and self.bad_evals >= early_stop and not self.averaging)

    def report(self, valid: dict, new_best: bool) -> dict:
        """One record in the history (written to the log after the checkpoint) and one
        printed line per evaluation."""
        lr = self.optimizer.param_groups[0]["lr"]
        record = {"step": self.step, "epoch": self.epoch + 1, "tokens": self.tokens_seen, "seconds": round(self.train_seconds, 1),
                  "train_loss": self._recent_loss, "valid_loss": valid["loss"], "valid_ppl": valid["ppl"], "lr": lr}
        if self.main:
            self.history.append(record)
            tqdm.write(f"step {self.step:6d} | epoch {self.epoch + 1} | train loss {self._recent_loss:.3f} | "
                       f"valid ppl {valid['ppl']:8.2f}{' *' if new_best else ''} | lr {lr:.2e}")
        return record

    def evaluation(self, final: bool = False) -> None:
        """Validate, let the schedule react, log, checkpoint.

        The `final` evaluation of a run that stopped between intervals only logs and keeps
        the best model: it leaves the schedule alone, so a stopped-and-resumed run makes the
        same decisions as one that never stopped."""
        valid = self.validate()
        new_best = valid["loss"] < self.best_saved
        if new_best:
            self.best_saved = valid["loss"]
        if not final:
            self.react(valid["loss"])
        record = self.report(valid, new_best)
        self.save_checkpoints(new_best)
        self.log(record)

    # -- the loop --

    def _flag_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (one rank's NaN must stop them all)."""
        ok = torch.isfinite(loss.detach()).to(torch.int32).reshape(1).to(self._flag_device())
        if self.world > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item())

    def _handle_signal(self, signum, frame) -> None:
        if self._signalled:  # a second Ctrl-C: the user really wants out
            raise KeyboardInterrupt
        self._signalled = True
        self.stop_reason = f"interrupted ({signal.Signals(signum).name})"
        if self.main:
            tqdm.write("stopping: finishing this step and saving a resumable checkpoint (Ctrl-C again to abort)")

    def run(self) -> dict:
        self.writer = None
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._open_writer()
        old_int = signal.signal(signal.SIGINT, self._handle_signal)
        old_term = signal.signal(signal.SIGTERM, self._handle_signal)
        try:
            return self._run()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
            if self.writer is not None:
                self.writer.close()
            self.close()

    def _run(self) -> dict:
        cfg = self.cfg
        model = self.model
        model.train()
        steps_per_epoch = max(1, -(-(self.rows.shape[1] - 1) // cfg.bptt))
        total = steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            total = min(total, cfg.max_steps)
        eval_every = cfg.eval_interval or steps_per_epoch
        bar = tqdm(total=total, initial=min(self.step, total), unit="step", dynamic_ncols=True,
                   disable=not self.main or None, desc="training")
        self._recent_loss = float("nan")
        loss_sum, loss_n = 0.0, 0
        start = (self.tokens_seen, self.step, self.train_seconds)  # for the speed shown
        self.stop_reason = self.stop_reason or self.already_done()
        while not self.stop_reason:
            if self.pos >= self.rows.shape[1] - 1:  # no target left: epoch done, reset position and state
                self.epoch, self.pos, self.state = self.epoch + 1, 0, None
                if self.epoch >= cfg.epochs:
                    self.stop_reason = f"finished {cfg.epochs} epochs"
                    break
            t_step = time.time()
            seq_len = batching.variable_length(cfg.bptt, self.rng) if cfg.variable_bptt else cfg.bptt
            x, y = batching.window(self.rows, self.pos, seq_len, self.device)
            # This step's rate: the schedule with warm-up, and AWD-LSTM's scaling by window
            # length (longer windows carry more tokens). The plateau schedule's rate lives
            # in the optimizer (ReduceLROnPlateau cuts it there), so it is read from it.
            plateau_lr = self.optimizer.param_groups[0]["lr"]
            lr = lr_at(self.step, self.train_seconds, cfg, total, plateau_lr)
            if cfg.variable_bptt:
                lr *= x.shape[0] / cfg.bptt
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                out = self.net(x, self.state, y)
            loss = out.loss
            if not self._all_finite(loss):
                last = self.out / "latest"
                raise FloatingPointError(
                    f"loss became {loss.item()} at step {self.step + 1}; stopped without saving it. Last good checkpoint: "
                    f"{last if (last / 'config.json').exists() else 'none yet'} — try a lower --lr or --clip")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.clip:
                optim.clip_grad_norm(model.parameters(), cfg.optim.clip)
            self.optimizer.step()
            self.state = detach(out.state)
            self.pos += x.shape[0]
            self.step += 1
            self.tokens_seen += x.numel() * self.world
            self.train_seconds += time.time() - t_step  # evaluations and checkpoints not counted
            # Between steps the optimizer holds the schedule's own rate, without this step's
            # warm-up and scaling: it is what the log shows, what the plateau scheduler cuts,
            # and what a checkpoint saves.
            for g in self.optimizer.param_groups:
                g["lr"] = schedule_lr(self.step, self.train_seconds, cfg, total, plateau_lr)
            loss_sum += loss.item()
            loss_n += 1
            bar.update()
            if self.step % cfg.log_interval == 0 or loss_n == 1:
                self._recent_loss = loss_sum / loss_n
                self._show_progress(bar, lr, total, start)
                if self.step % cfg.log_interval == 0:
                    loss_sum, loss_n = 0.0, 0
            if self.step % eval_every == 0:
                self.evaluation()
                if self.stalled():
                    self.stop_reason = f"early stop: valid did not improve for {cfg.early_stop} evaluations"
            if cfg.max_steps and self.step >= cfg.max_steps:
                self.stop_reason = self.stop_reason or f"reached --max-steps {cfg.max_steps}"
            if cfg.time_budget and self.train_seconds >= cfg.time_budget * 60:
                self.stop_reason = self.stop_reason or f"reached --time-budget {cfg.time_budget:g} min"
            if self.world > 1:
                # Any rank's clock or signal stops every rank at the same step, and all ranks
                # share the slowest clock, so a clock-paced schedule gives them the same rate.
                flag = torch.tensor([1.0 if self.stop_reason else 0.0, self.train_seconds], dtype=torch.float64,
                                    device=self._flag_device())
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                self.train_seconds = flag[1].item()
                if flag[0].item() and not self.stop_reason:
                    self.stop_reason = "stopped by another rank"
        bar.close()
        return self.finish()

    def _show_progress(self, bar, lr: float, total: int, start: tuple[int, int, float]) -> None:
        """The running loss, speed and rate on the progress bar (or, with no terminal, in a
        plain line every 10 updates)."""
        cfg, (tokens_start, step_start, seconds_before) = self.cfg, start
        rate = (self.tokens_seen - tokens_start) / max(self.train_seconds - seconds_before, 1e-9)
        ppl = math.exp(min(self._recent_loss, 50))
        bar.set_postfix(loss=f"{self._recent_loss:.3f}", ppl=f"{ppl:.1f}", tok_s=f"{rate:,.0f}", lr=f"{lr:.1e}",
                        refresh=False)
        if bar.disable and self.main and self.step % (cfg.log_interval * 10) == 0:
            # No terminal (a log file, nohup, CI): tqdm stays quiet, so say it in plain lines.
            left = (total - self.step) * (self.train_seconds - seconds_before) / max(self.step - step_start, 1)
            if cfg.time_budget:
                left = min(left, cfg.time_budget * 60 - self.train_seconds)
            print(f"step {self.step}/{total} | loss {self._recent_loss:.3f} | ppl {ppl:.1f} | {rate:,.0f} tokens/s | "
                  f"lr {lr:.1e} | ~{left / 60:.1f} min left", flush=True)

    def finish(self) -> dict:
        """Evaluate the steps since the last evaluation, then final valid/test scores with
        the best weights, summary, curves."""
        cfg = self.cfg
        last_eval = self.history[-1]["step"] if self.history else 0
        if self.step > last_eval and not self.stop_reason.startswith("interrupted"):
            self.evaluation(final=True)
        elif self.main:
            self.save("latest")
        if self.main and not (self.out / "best" / "config.json").exists():
            self.save("best", with_trainer=False)
        summary = {"stop_reason": self.stop_reason, "steps": self.step, "tokens_seen": self.tokens_seen,
                   "train_seconds": round(self.train_seconds, 1), "out": str(self.out)}
        if not self.main:
            return summary
        best_model, _, _ = checkpoint.load(self.out / "best", self.device)
        eos = self.tokenizer.eos_id
        valid = evaluate(best_model, self.data.valid, cfg, self.device, eos)
        test = evaluate(best_model, self.data.test, cfg, self.device, eos)
        summary.update(valid_ppl=valid["ppl"], test_ppl=test["ppl"], valid_tokens=valid["tokens"], test_tokens=test["tokens"])
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        plot_curves(self.history, self.out / "curves.png")
        print(
            f"\n{self.stop_reason}.\n"
            f"best valid perplexity {valid['ppl']:.2f} | test perplexity {test['ppl']:.2f} "
            f"({test['tokens']:,} test tokens, end-of-document counted)\n"
            f"{self.step:,} steps, {self.tokens_seen:,} tokens in {self.train_seconds / 60:.1f} min "
            f"({self.tokens_seen / max(self.train_seconds, 1e-9):,.0f} tokens/s)\n"
            f"checkpoints: {self.out / 'best'} (best valid), {self.out / 'latest'} (resume with --resume {self.out})\n"
            f"curves: {self.out / 'curves.png'}; log: {self.out / 'log.jsonl'}"
        )
        return summary


class _SmallestVocabulary:
    """Stands in for a tokenizer before the corpus is read: the fewest ids any has."""

    vocab_size, eos_id = 5, 3


def _tell_ranks(failure: str | None) -> str | None:
    """Rank 0's setup outcome (None: it went well), sent to every rank over a CPU (gloo)
    group, which works whatever backend the training itself uses."""
    box = [failure]
    dist.broadcast_object_list(box, src=0, group=dist.new_group(backend="gloo"))
    return box[0]


def lock_run(out: Path) -> checkpoint.RunLock:
    """Hold --out for this process until the run ends: a second run into it, or a
    --resume of it, is refused in one line naming this one's PID."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        return checkpoint.RunLock(out).acquire()
    except OSError as e:
        raise ValueError(f"cannot write to --out {out}: {e.strerror or e}; choose a writable directory") from None


def preflight(out: Path, resuming: bool = False, overwrite: bool = False) -> None:
    """Fail before training, not after an hour of it, when the output cannot be written or
    already holds another run."""
    existing = [out / n for n in ("latest", "best", "log.jsonl", "summary.json", "latest.old")]
    if not resuming and any(p.exists() for p in existing):
        if not overwrite:
            raise ValueError(f"--out {out} already holds a run; continue it with --resume {out}, "
                             f"replace it with --overwrite true, or choose another --out")
        for p in existing + [out / "curves.png", out / "tensorboard"]:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to --out {out}: {e.strerror or e}; choose a writable directory") from None
    free = shutil.disk_usage(out).free
    if free < 50 * 2**20:
        raise ValueError(f"only {free / 2**20:.0f} MB free under {out}; checkpoints need more space")


def plot_curves(history: list[dict], path: Path) -> None:
    """Train and valid perplexity against steps, one PNG."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    train = [math.exp(min(h["train_loss"], 50)) if h["train_loss"] == h["train_loss"] else None for h in history]
    ax.plot(steps, train, marker=".", label="train (running)")
    ax.plot(steps, [h["valid_ppl"] for h in history], marker="o", label="valid")
    ax.set_xlabel("step")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("arlm training curves")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """`python -m arlm.train`: 0 when the run finished, 2 for bad input (argparse's usage
    errors included), 1 for a run that failed (diverged), 130 when interrupted; errors as
    one `error: ...` line (arlm/cli.py)."""
    cfg = load_config(argv)
    return cli.run(_main, cfg)


def _main(cfg: TrainConfig) -> int:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        backend = "nccl" if torch.cuda.is_available() and cfg.device in ("auto", "cuda") else "gloo"
        dist.init_process_group(backend)
    trainer = None
    try:
        trainer = Trainer(cfg)
        trainer.setup()
        summary = trainer.run()
        if trainer.stop_reason.startswith("interrupted"):
            return cli.INTERRUPTED  # a resumable checkpoint was saved; the run is not done
        return cli.OK if summary else cli.FAILED
    finally:
        if trainer is not None:
            trainer.close()
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
