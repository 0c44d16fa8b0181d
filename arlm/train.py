"""`python -m arlm.train`: train a word-level LSTM language model with truncated BPTT.

    corpus ──prepare──▶ token ids ──streams──▶ (bptt, batch) windows ──▶ LanguageModel
      ──▶ loss, clip, step ──▶ every eval_interval: valid perplexity, checkpoint, log

The state carried from window to window is detached, so backpropagation stops at the
window boundary (truncated BPTT) while the forward pass still sees all the history.
Run `python -m arlm.train --help` for every option. With no options it trains the
default model on the embedded hadith corpus in under 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from arlm import batching, checkpoint
from arlm.corpus import CorpusError, available_cards, prepare
from arlm.model import LanguageModel, ModelConfig, load_vectors
from arlm.normalize import NormalizeConfig, normalize
from arlm.tokenizer import TokenizerConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class TrainConfig:
    """One training run, start to finish. Filled from these defaults, then a TOML file
    (--config), then command-line flags; saved with every checkpoint."""

    # data
    corpus: str = "hadith"              # corpus card name (corpora/*.toml), card file, or .txt/.jsonl file/folder
    text_field: str = "text"            # JSON field holding the text, for .jsonl paths
    encoding_errors: str = "strict"     # strict: stop at invalid UTF-8; replace: substitute and go on
    tokenizer: str = "word"             # word | sentencepiece
    vocab_size: int = 30000             # max words kept (word) or subword vocabulary size (sentencepiece)
    min_freq: int = 2                   # word tokenizer: rarer words become <unk>
    sp_model: str = "unigram"           # sentencepiece model: unigram | bpe
    normalize: dict = field(default_factory=dict)  # NormalizeConfig options that differ from its defaults
    # model
    emb_size: int = 256
    hidden_size: int = 512
    num_layers: int = 2
    dropout: float = 0.2                # locked dropout on the LSTM output
    dropout_input: float = 0.2          # locked dropout on the embeddings
    dropout_hidden: float = 0.1         # locked dropout between LSTM layers
    dropout_embedding: float = 0.05     # drop whole words from the embedding matrix
    weight_drop: float = 0.1            # DropConnect on hidden-to-hidden weights
    tie_weights: bool = True
    softmax: str = "auto"               # auto (adaptive for words, full for subwords) | full | adaptive
    cutoffs: list[int] = field(default_factory=lambda: [2000, 10000])
    vectors: str = ""                   # pretrained word vectors (.vec text format) to initialize embeddings
    # optimization
    optimizer: str = "adamw"            # adamw | sgd | ntasgd
    lr: float = 3e-3
    lr_schedule: str = "plateau"        # plateau: cut on stalled valid | cosine: decay to 0 over the run's length
    decay_start: float = 0.0            # cosine: fraction of the run before the decay begins (0: decay throughout)
    warmup: int = 0                     # steps of linear warm-up from 0 to --lr
    weight_decay: float = 0.01
    clip: float = 0.25                  # max global gradient norm (0: off)
    batch_size: int = 32                # parallel streams (across all processes)
    bptt: int = 35                      # tokens per truncated-BPTT window
    variable_bptt: bool = False         # AWD-LSTM's randomized window lengths
    epochs: int = 20
    max_steps: int = 0                  # stop after this many optimizer steps (0: no limit)
    time_budget: float = 8.0            # stop after this many minutes of training (0: no limit)
    eval_interval: int = 400            # steps between valid evaluations (0: once per epoch)
    eval_batch_size: int = 10
    eval_tokens: int = 0                # valid tokens scored at each interval evaluation (0: all)
    lr_patience: int = 1                # evaluations without improvement before the LR is cut
    lr_factor: float = 0.5
    early_stop: int = 5                 # evaluations without improvement before stopping (0: never)
    nonmono: int = 3                    # NT-ASGD: evaluations without improvement before averaging starts
    # run
    out: str = "runs/hadith"
    seed: int = 1111
    device: str = "auto"                # auto | cpu | cuda | mps
    threads: int = 0                    # CPU threads for torch (0: all cores)
    workers: int = 0                    # processes for tokenizing a new corpus (0: all cores)
    log_interval: int = 50
    resume: str = ""                    # a run directory to continue from
    overwrite: bool = False             # replace a run already in --out

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size, emb_size=self.emb_size, hidden_size=self.hidden_size,
            num_layers=self.num_layers, dropout=self.dropout, dropout_input=self.dropout_input,
            dropout_hidden=self.dropout_hidden, dropout_embedding=self.dropout_embedding,
            weight_drop=self.weight_drop, tie_weights=self.tie_weights, softmax=self.resolved_softmax,
            cutoffs=list(self.cutoffs),
        )

    @property
    def resolved_softmax(self) -> str:
        # The adaptive softmax needs ids ordered by frequency (the word vocabulary is);
        # sentencepiece ids are not (its 256 byte pieces come first), so subwords get a full one.
        if self.softmax == "auto":
            return "adaptive" if self.tokenizer == "word" else "full"
        return self.softmax

    def tokenizer_config(self) -> TokenizerConfig:
        return TokenizerConfig(kind=self.tokenizer, vocab_size=self.vocab_size, min_freq=self.min_freq,
                               sp_model=self.sp_model, normalize=NormalizeConfig(**self.normalize))


CHOICES = {
    "tokenizer": ("word", "sentencepiece"), "sp_model": ("unigram", "bpe"), "softmax": ("auto", "full", "adaptive"),
    "optimizer": ("adamw", "sgd", "ntasgd"), "lr_schedule": ("plateau", "cosine"), "device": ("auto", "cpu", "cuda", "mps"),
    "encoding_errors": ("strict", "replace"),
}
POSITIVE = ("vocab_size", "min_freq", "emb_size", "hidden_size", "num_layers", "batch_size", "bptt", "epochs",
            "eval_batch_size", "log_interval")
NON_NEGATIVE = ("warmup", "max_steps", "time_budget", "eval_interval", "eval_tokens", "clip", "threads", "workers", "lr_patience",
                "early_stop", "nonmono", "weight_decay")

HELP = {
    "corpus": "corpus card name ({cards}), a card .toml file, or a .txt/.jsonl file or folder",
    "text_field": "JSON field holding the text when --corpus is a .jsonl path",
    "encoding_errors": "on bytes that are not UTF-8: stop with the file and byte offset, or replace them and go on",
    "tokenizer": "word-level (camel-tools) or sentencepiece subwords",
    "vocab_size": "words kept (word) or subword vocabulary size (sentencepiece)",
    "min_freq": "word tokenizer: words seen fewer times in train become <unk>",
    "sp_model": "sentencepiece model type",
    "normalize": "normalization options that differ from the defaults, e.g. teh_marbuta=false,latin=lower "
                 "(see arlm/normalize.py; a [normalize] table in --config works too)",
    "emb_size": "embedding width", "hidden_size": "LSTM units per layer", "num_layers": "stacked LSTM layers",
    "dropout": "locked dropout on the LSTM output", "dropout_input": "locked dropout on the embeddings",
    "dropout_hidden": "locked dropout between LSTM layers",
    "dropout_embedding": "probability of dropping a whole word from the embedding matrix",
    "weight_drop": "DropConnect on the hidden-to-hidden weights",
    "tie_weights": "share the embedding matrix with the output layer",
    "softmax": "full softmax, or adaptive softmax for large vocabularies; auto: adaptive for the word "
               "tokenizer (frequency-ordered ids), full for sentencepiece",
    "cutoffs": "adaptive softmax cluster boundaries in frequency rank, comma-separated",
    "vectors": "initialize embeddings from word vectors in word2vec/fastText text format (.vec)",
    "optimizer": "AdamW, plain SGD, or NT-ASGD (SGD, then weight averaging once valid stops improving)",
    "lr": "learning rate",
    "lr_schedule": "plateau: cut the learning rate by --lr-factor when valid stalls; cosine: decay it from --lr to 0 "
                   "along a half cosine over the run's length (--time-budget, --max-steps or --epochs, whichever "
                   "ends first; with a time budget the clock sets the pace)",
    "decay_start": "cosine: the fraction of the run at the constant --lr before the decay starts, e.g. 0.85 "
                   "decays over the last 15%% only (0: decay from the start)",
    "warmup": "steps over which the learning rate rises linearly from 0 to --lr (0: none)",
    "weight_decay": "decoupled weight decay (AdamW) or L2 (SGD)",
    "clip": "clip the global gradient norm to this (0: no clipping)",
    "batch_size": "parallel token streams per step, across all processes",
    "bptt": "tokens per truncated-BPTT window", "variable_bptt": "randomize window lengths as in AWD-LSTM",
    "epochs": "passes over the training data", "max_steps": "stop after this many steps (0: no limit)",
    "time_budget": "stop after this many minutes of training, evaluations not counted, over the whole run "
                   "(a resumed run finishes the budget; pass a larger one to extend it) (0: no limit)",
    "eval_interval": "steps between validation runs (0: at the end of each epoch)",
    "eval_batch_size": "streams for scoring valid/test",
    "eval_tokens": "score only the first N valid tokens at interval evaluations, for big corpora; "
                   "the final valid and test scores always use every token (0: all)",
    "lr_patience": "evaluations without improvement before the learning rate is cut",
    "lr_factor": "factor the learning rate is multiplied by on a plateau",
    "early_stop": "evaluations without improvement before training stops (0: never)",
    "nonmono": "NT-ASGD: evaluations without improvement before averaging starts",
    "out": "run directory: latest/ and best/ checkpoints, log.jsonl, curves.png",
    "seed": "random seed: the same seed and settings give the same run on CPU",
    "device": "where to train: auto picks CUDA, then MPS, then CPU",
    "threads": "CPU threads for torch (0: all cores)",
    "workers": "processes for tokenizing a new corpus (0: all cores)",
    "log_interval": "steps between progress-bar updates of the loss",
    "resume": "continue the run saved in this directory (its config, weights, optimizer and position)",
    "overwrite": "replace the run already in --out (without it, arlm refuses to mix two runs in one directory)",
}


# --- configuration -----------------------------------------------------------------


def _parse_normalize(text: str) -> dict:
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = item.partition("=")
        if key not in NormalizeConfig.__dataclass_fields__ or not value:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected name=value with a name among {', '.join(NormalizeConfig.__dataclass_fields__)}")
        default = getattr(NormalizeConfig(), key)
        out[key] = _parse_value(key, "bool", value) if isinstance(default, bool) else value
    try:
        NormalizeConfig(**out)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return out


def _parse_value(name: str, kind, text: str):
    if name == "cutoffs":
        return [int(x) for x in text.split(",") if x.strip()]
    if kind is bool or kind == "bool":
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return {"int": int, "float": float, "str": str}.get(kind if isinstance(kind, str) else kind.__name__, str)(text)


def build_parser() -> argparse.ArgumentParser:
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
                   help="TOML file with any of the settings below (keys as in TrainConfig); may be given several "
                        "times, later files win; tokenizers/*.toml are such files")
    defaults = TrainConfig()
    cards = ", ".join(sorted(available_cards())) or "none found"
    for f in dataclasses.fields(TrainConfig):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        text = HELP.get(f.name, "").format(cards=cards)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        kw: dict = {"dest": f.name, "default": argparse.SUPPRESS, "help": f"{text} (default: {shown!r})" if shown != "" else f"{text} (default: none)"}
        if f.name in CHOICES:
            kw["choices"] = CHOICES[f.name]
        if kind == "bool":
            kw["type"] = lambda s, n=f.name: _parse_value(n, "bool", s)
            kw["metavar"] = "{true,false}"
        elif f.name == "normalize":
            kw["type"] = _parse_normalize
            kw["metavar"] = "NAME=VALUE,..."
            kw["help"] = f"{text} (default: none)"
        elif f.name == "cutoffs":
            kw["type"] = lambda s: _parse_value("cutoffs", "list", s)
            kw["metavar"] = "N,N"
        else:
            kw["type"] = {"int": int, "float": float}.get(kind, str)
        p.add_argument(flag, **kw)
    return p


def validate(cfg: TrainConfig) -> None:
    _check_types(cfg)
    problems = []
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            problems.append(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)} (got {getattr(cfg, name)!r})")
    for name in POSITIVE:
        if getattr(cfg, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be a positive integer (got {getattr(cfg, name)})")
    for name in NON_NEGATIVE:
        if getattr(cfg, name) < 0:
            problems.append(f"--{name.replace('_', '-')} must be 0 or more (got {getattr(cfg, name)})")
    for name in ("dropout", "dropout_input", "dropout_hidden", "dropout_embedding", "weight_drop"):
        if not 0 <= getattr(cfg, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be in [0, 1) (got {getattr(cfg, name)})")
    if cfg.lr <= 0:
        problems.append(f"--lr must be positive (got {cfg.lr})")
    if not 0 <= cfg.decay_start < 1:
        problems.append(f"--decay-start must be in [0, 1) (got {cfg.decay_start})")
    if not 0 < cfg.lr_factor < 1:
        problems.append(f"--lr-factor must be in (0, 1) (got {cfg.lr_factor})")
    if problems:
        raise ValueError("; ".join(problems))


def _check_types(cfg: TrainConfig) -> None:
    """A TOML value of the wrong type (bptt = "35") is a one-line error, not a TypeError."""
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        value, default = getattr(cfg, f.name), getattr(defaults, f.name)
        ok = (isinstance(value, bool) if isinstance(default, bool)
              else isinstance(value, (int, float)) and not isinstance(value, bool) if isinstance(default, float)
              else isinstance(value, int) and not isinstance(value, bool) if isinstance(default, int)
              else isinstance(value, type(default)))
        if not ok:
            raise ValueError(f"{f.name} must be {type(default).__name__}, got {value!r}")


def load_config(argv: list[str] | None) -> TrainConfig:
    """Defaults, then the TOML file, then the flags; then --resume's saved run fills the rest."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    values: dict = {}
    config_files = args.pop("config", None) or []
    if args.get("resume"):
        try:
            resume = Path(args["resume"])
            latest = resume / "latest" if (resume / "latest" / "config.json").exists() else resume / "latest.old"
            run = checkpoint.read_config(checkpoint.model_dir(latest))["run"]
        except checkpoint.CheckpointError as e:
            parser.error(f"--resume: {e}")
        values.update({k: v for k, v in run.items() if k in TrainConfig.__dataclass_fields__})
        values["out"] = args["resume"]  # continue in place (a moved run writes where it now is)
    for config_file in config_files:
        try:
            data = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            parser.error(f"--config {config_file}: {e}")
        unknown = set(data) - set(TrainConfig.__dataclass_fields__)
        if unknown:
            parser.error(f"--config {config_file}: unknown setting(s) {', '.join(sorted(unknown))}")
        if "normalize" in data:
            data["normalize"] = {**values.get("normalize", {}), **data["normalize"]}
        values.update(data)
    if "normalize" in args:  # flags refine the normalization from config files, not replace it
        args["normalize"] = {**values.get("normalize", {}), **args["normalize"]}
    values.update(args)
    cfg = TrainConfig(**values)
    try:
        validate(cfg)
        NormalizeConfig.from_dict(cfg.normalize)
    except ValueError as e:
        parser.error(str(e))
    return cfg


# --- the run -----------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device auto or cpu")
    return torch.device(name)


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

    # -- setup --

    def setup(self) -> None:
        cfg = self.cfg
        if self.main:
            preflight(self.out, resuming=bool(cfg.resume), overwrite=cfg.overwrite)
        if self.world > 1 and not self.main:
            dist.barrier()  # rank 0 builds the token cache first; the others then read it
        data = prepare(cfg.corpus, cfg.tokenizer_config(), workers=cfg.workers or None,
                       encoding_errors=cfg.encoding_errors, field_name=cfg.text_field, verbose=self.main)
        if self.world > 1 and self.main:
            dist.barrier()
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
        self.model = LanguageModel(cfg.model_config(self.tokenizer.vocab_size)).to(self.device)
        if cfg.vectors and not cfg.resume:  # a resumed run has its trained embeddings
            self._load_vectors()
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, find_unused_parameters=self.model.adaptive is not None)
        self.optimizer = self._optimizer(cfg.optimizer)
        # patience - 1: ReduceLROnPlateau cuts on the (patience + 1)-th bad evaluation, and
        # --lr-patience N means "after N evaluations without improvement", like --early-stop.
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=cfg.lr_factor, patience=max(0, cfg.lr_patience - 1), threshold=0.0)
        self.step = self.epoch = self.pos = 0
        self.state = None
        self.best = self.best_saved = float("inf")  # best valid loss: for the schedule / for best/
        self.bad_evals = 0
        self.history: list[dict] = []
        self.tokens_seen = 0
        self.train_seconds = 0.0
        if cfg.resume:
            self._resume(Path(cfg.resume))

    def _optimizer(self, kind: str):
        cfg, params = self.cfg, list(self.model.parameters())
        # One fused kernel over all parameters instead of a loop of small operations per
        # tensor: AdamW's step at a 50k vocabulary goes from ~60 ms to ~8 ms on 2 cores.
        fused = {"fused": True} if all(p.dtype == torch.float32 for p in params) else {}
        if kind == "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
        if kind == "asgd":
            return torch.optim.ASGD(params, lr=cfg.lr, t0=0, lambd=0.0, weight_decay=cfg.weight_decay)
        # sgd; ntasgd starts as SGD and switches to ASGD (kind "asgd") when valid stalls
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)

    def _load_vectors(self) -> None:
        tok = self.tokenizer
        if not hasattr(tok, "itos"):
            raise ValueError("--vectors needs the word tokenizer (pretrained vectors are per word)")
        matrix, coverage = load_vectors(self.cfg.vectors, tok.itos, self.cfg.emb_size,
                                        lambda w: normalize(w, tok.config.normalize))
        with torch.no_grad():
            self.model.embedding.weight.copy_(matrix)
        if self.main:
            print(f"embeddings: {coverage:.1%} of the vocabulary found in {self.cfg.vectors}", file=sys.stderr)

    def _resume(self, run_dir: Path) -> None:
        latest = run_dir / "latest"
        if not (latest / "config.json").exists() and (run_dir / "latest.old" / "config.json").exists():
            latest = run_dir / "latest.old"  # a crash between the two renames of a save
        model, tokenizer, _ = checkpoint.load(latest, self.device)
        same_vocab = (getattr(tokenizer, "itos", None) == getattr(self.tokenizer, "itos", None)
                      and getattr(tokenizer, "model_proto", None) == getattr(self.tokenizer, "model_proto", None))
        if not same_vocab:
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
        self.tokens_seen, self.train_seconds = st["tokens_seen"], st["train_seconds"]
        torch.set_rng_state(st["torch_rng"])
        if st.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["cuda_rng"])
        self.rng.bit_generator.state = json.loads(st["numpy_rng"])
        if self.main:
            print(f"resuming {run_dir} at step {self.step} (epoch {self.epoch + 1})", file=sys.stderr)

    # -- checkpoints --

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
            "asgd": isinstance(self.optimizer, torch.optim.ASGD),
        }

    def save(self, which: str, with_trainer: bool = True) -> None:
        """`best` holds the weights to use (NT-ASGD: the average); `latest` the raw iterate,
        so that resuming continues exactly."""
        if not self.main:
            return
        averaging = averaged_weights(self.model, self.optimizer) if which == "best" else contextlib.nullcontext()
        with averaging:
            checkpoint.save(self.out / which, self.model, self.tokenizer, asdict(self.cfg),
                            self.trainer_state() if with_trainer else None,
                            {"corpus": {k: self.data.stats.get(k) for k in ("corpus", "tokens", "documents", "unk_rate")},
                             "step": self.step, "best_valid_ppl": math.exp(min(self.best_saved, 50))})

    def log(self, record: dict) -> None:
        if not self.main:
            return
        self.history.append(record)
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.writer.add_scalar(k, v, record["step"])

    # -- the loop --

    def evaluate_and_checkpoint(self, final: bool = False) -> bool:
        """Valid perplexity, LR schedule, best/latest checkpoints. Returns False to stop early.

        The `final` evaluation of a run that stopped between intervals only logs and keeps
        the best model: it leaves the schedule alone, so a stopped-and-resumed run makes the
        same decisions as one that never stopped."""
        cfg = self.cfg
        ids = self.data.valid[: cfg.eval_tokens] if cfg.eval_tokens else self.data.valid
        with averaged_weights(self.model, self.optimizer):
            valid = evaluate(self.model, ids, cfg, self.device, self.tokenizer.eos_id)
        new_best = valid["loss"] < self.best_saved
        if new_best:
            self.best_saved = valid["loss"]
        if not final:
            if valid["loss"] < self.best:
                self.best, self.bad_evals = valid["loss"], 0
            else:
                self.bad_evals += 1
            if cfg.optimizer == "ntasgd" and not isinstance(self.optimizer, torch.optim.ASGD) and self.bad_evals >= cfg.nonmono:
                self.optimizer = self._optimizer("asgd")  # NT-ASGD: start averaging from here
                self.bad_evals = 0
                tqdm.write(f"step {self.step}: valid stalled for {cfg.nonmono} evaluations, switching to averaged SGD")
            elif cfg.optimizer != "ntasgd" and cfg.lr_schedule == "plateau":
                self.scheduler.step(valid["loss"])
        lr = self.optimizer.param_groups[0]["lr"]
        record = {"step": self.step, "epoch": self.epoch + 1, "tokens": self.tokens_seen, "seconds": round(self.train_seconds, 1),
                  "train_loss": self._recent_loss, "valid_loss": valid["loss"], "valid_ppl": valid["ppl"], "lr": lr}
        self.log(record)
        if self.main:
            tqdm.write(f"step {self.step:6d} | epoch {self.epoch + 1} | train loss {self._recent_loss:.3f} | "
                       f"valid ppl {valid['ppl']:8.2f}{' *' if new_best else ''} | lr {lr:.2e}")
            if new_best:
                self.save("best", with_trainer=False)
            self.save("latest")
        return not (cfg.early_stop and self.bad_evals >= cfg.early_stop and not isinstance(self.optimizer, torch.optim.ASGD))

    def scheduled_lr(self, total_steps: int) -> float:
        """Cosine schedule: --lr until --decay-start of the run, then a half cosine down to
        0 at its end, where the end is the first of its step limit and its time budget to
        come. Under a time budget the clock sets the pace, so the steps it takes vary with
        the machine's speed."""
        cfg = self.cfg
        progress = self.step / max(total_steps, 1)
        if cfg.time_budget:
            progress = max(progress, self.train_seconds / (cfg.time_budget * 60))
        decayed = max(0.0, min(progress, 1.0) - cfg.decay_start) / (1.0 - cfg.decay_start)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * decayed))

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
        cfg = self.cfg
        self.writer = None
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(self.out / "tensorboard"))
            except Exception:
                pass
        old_int = signal.signal(signal.SIGINT, self._handle_signal)
        old_term = signal.signal(signal.SIGTERM, self._handle_signal)
        try:
            return self._run()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
            if self.writer is not None:
                self.writer.close()

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
        tokens_start, step_start, seconds_before = self.tokens_seen, self.step, self.train_seconds
        if cfg.time_budget and self.train_seconds >= cfg.time_budget * 60:
            self.stop_reason = (f"the run has already trained its --time-budget {cfg.time_budget:g} min; "
                                f"resume with a larger one to train on")
        while not self.stop_reason:
            if self.pos >= self.rows.shape[1] - 1:  # no target left: epoch done, reset position and state
                self.epoch, self.pos, self.state = self.epoch + 1, 0, None
                if self.epoch >= cfg.epochs:
                    self.stop_reason = f"finished {cfg.epochs} epochs"
                    break
            t_step = time.time()
            seq_len = batching.variable_length(cfg.bptt, self.rng) if cfg.variable_bptt else cfg.bptt
            x, y = batching.window(self.rows, self.pos, seq_len, self.device)
            base = self.scheduled_lr(total) if cfg.lr_schedule == "cosine" else self.optimizer.param_groups[0]["lr"]
            # Warm-up, and AWD-LSTM's scaling by window length (longer windows carry more
            # tokens), shape this step only; the schedule's own value is put back after it.
            lr = base * min(1.0, (self.step + 1) / cfg.warmup if cfg.warmup else 1.0)
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
            if cfg.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            self.optimizer.step()
            # A fused step writes the parameters without bumping their version counters,
            # which anything keyed on them (inference caches) relies on.
            torch.autograd.graph.increment_version([p for g in self.optimizer.param_groups for p in g["params"]])
            self.state = detach(out.state)
            self.pos += x.shape[0]
            self.step += 1
            self.tokens_seen += x.numel() * self.world
            self.train_seconds += time.time() - t_step  # evaluations and checkpoints not counted
            for g in self.optimizer.param_groups:  # what the log and the plateau scheduler see
                g["lr"] = self.scheduled_lr(total) if cfg.lr_schedule == "cosine" else base
            loss_sum += loss.item()
            loss_n += 1
            bar.update()
            if self.step % cfg.log_interval == 0 or loss_n == 1:
                self._recent_loss = loss_sum / loss_n
                rate = (self.tokens_seen - tokens_start) / max(self.train_seconds - seconds_before, 1e-9)
                bar.set_postfix(loss=f"{self._recent_loss:.3f}", ppl=f"{math.exp(min(self._recent_loss, 50)):.1f}",
                                tok_s=f"{rate:,.0f}", lr=f"{lr:.1e}", refresh=False)
                if bar.disable and self.main and self.step % (cfg.log_interval * 10) == 0:
                    # No terminal (a log file, nohup, CI): tqdm stays quiet, so say it in plain lines.
                    left = (total - self.step) * (self.train_seconds - seconds_before) / max(self.step - step_start, 1)
                    if cfg.time_budget:
                        left = min(left, cfg.time_budget * 60 - self.train_seconds)
                    print(f"step {self.step}/{total} | loss {self._recent_loss:.3f} | ppl "
                          f"{math.exp(min(self._recent_loss, 50)):.1f} | {rate:,.0f} tokens/s | lr {lr:.1e} | "
                          f"~{left / 60:.1f} min left", flush=True)
                if self.step % cfg.log_interval == 0:
                    loss_sum, loss_n = 0.0, 0
            if self.step % eval_every == 0:
                if not self.evaluate_and_checkpoint():
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

    def finish(self) -> dict:
        """Evaluate the steps since the last evaluation, then final valid/test scores with
        the best weights, summary, curves."""
        cfg = self.cfg
        last_eval = self.history[-1]["step"] if self.history else 0
        if self.step > last_eval and not self.stop_reason.startswith("interrupted"):
            self.evaluate_and_checkpoint(final=True)
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
    cfg = load_config(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        backend = "nccl" if torch.cuda.is_available() and cfg.device in ("auto", "cuda") else "gloo"
        dist.init_process_group(backend)
    try:
        trainer = Trainer(cfg)
        trainer.setup()
        summary = trainer.run()
        if trainer.stop_reason.startswith("interrupted"):
            return 130
        return 0 if summary else 1
    except (CorpusError, checkpoint.CheckpointError, ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1 if isinstance(e, FloatingPointError) else 2
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
