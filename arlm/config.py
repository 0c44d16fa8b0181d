"""Configuration: every option written once, as a dataclass field that says what it means.

    hidden_size: int = option(512, "LSTM units per layer", **POSITIVE)

is a field whose metadata carries its help text, choices and range. From that one line
come the command-line flag (`--hidden-size`), its --help text, the TOML key
(`hidden_size`) and the checks (`check` for one config, `validate` for a whole run from
flags, TOML files or a resumed checkpoint). Each component owns its config:

    NormalizeConfig   arlm/normalize.py   how text is normalized
    TokenizerConfig   arlm/tokenizer.py   how text becomes ids (holds a NormalizeConfig)
    ModelConfig       here                everything needed to rebuild the network
    TrainConfig       here                one training run: data, tokenizer, model, optim + the loop

A run's options have flat names (`hidden_size`, `tokenizer`, `bptt`): the flags, TOML
files (tokenizers/*.toml) and the run config saved in checkpoints all use them, so a
nested TOML table (`[model]` with `hidden_size = 64`) is accepted but never required.

This module imports nothing from arlm at load time (normalize.py and tokenizer.py import
`option` and `check` from here).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import MISSING, asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from arlm.tokenizer import TokenizerConfig


# --- options -----------------------------------------------------------------------


def option(default: Any = MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
           kind: type | None = None, choices: tuple | None = None, low: float | None = None,
           high: float | None = None, low_open: bool = False, high_open: bool = False,
           name: str | None = None, flag: bool = True, table: bool = False) -> Any:
    """A dataclass field that is an option: `default` (or `factory` for a list or a
    config), what it means (`help`), and the values it may take: `choices`, or a range
    from `low` to `high` (closed unless `low_open`/`high_open`).

    kind:  the value's type when there is no default to tell it (a required field).
    name:  its flat name (flag and TOML key) when not the field's own name.
    flag:  False for a field that is not set by the user (ModelConfig.vocab_size: the
           tokenizer's).
    table: a config held by another one (TokenizerConfig.normalize), set as one option
           whose value is a table of its fields (`--normalize a=b,c=d`, `[normalize]`).
    """
    if kind is None:
        kind = type(factory() if factory is not None else default) if (factory or default is not MISSING) else None
    meta = {"help": help, "kind": kind, "choices": choices, "low": low, "high": high, "low_open": low_open,
            "high_open": high_open, "name": name, "flag": flag, "table": table}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# Ranges used often enough to name.
POSITIVE = {"low": 0, "low_open": True}                   # > 0: "a positive integer"
FRACTION = {"low": 0, "high": 1, "high_open": True}        # [0, 1): dropout rates and the like


def _kind_name(kind: type) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list"}.get(kind, kind.__name__)


def _is(value: Any, kind: type) -> bool:
    """Whether `value` can stand for an option of this type (an int for a float, a tuple for a list)."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, (list, tuple)) and all(_is(v, int) for v in value)
    if dataclasses.is_dataclass(kind):
        return isinstance(value, (kind, dict))
    return isinstance(value, kind)


def _or_list(items) -> str:
    items = list(map(str, items))
    return " or ".join(items) if len(items) <= 2 else ", ".join(items[:-1]) + " or " + items[-1]


def range_text(meta: dict, kind: type) -> str:
    """The range of an option in words: 'a positive integer', '0 or more', 'in [0, 1)'."""
    low, high = meta["low"], meta["high"]
    if low is None and high is None:
        return ""
    if high is None:
        if low == 0:
            return ("a positive integer" if kind is int else "positive") if meta["low_open"] else "0 or more"
        return f"more than {low:g}" if meta["low_open"] else f"at least {low:g}"
    if low is None:
        return f"less than {high:g}" if meta["high_open"] else f"at most {high:g}"
    return f"in {'(' if meta['low_open'] else '['}{low:g}, {high:g}{')' if meta['high_open'] else ']'}"


def problem(f: dataclasses.Field, value: Any, label: str) -> str | None:
    """What is wrong with `value` for the option `f` (its type, a non-finite number, a
    choice not offered, a value out of range), named `label`; None when nothing is.
    The one rule every check of every config goes through."""
    meta, kind = f.metadata, f.metadata.get("kind")
    if kind is None:
        return None
    if not _is(value, kind):
        return f"{label} must be {_kind_name(kind)}, got {value!r}"
    if kind is float and not math.isfinite(value):
        return f"{label} must be a finite number (got {value})"
    if meta["choices"] is not None and value not in meta["choices"]:
        return f"{label} must be {_or_list(meta['choices'])}, got {value!r}"
    low, high = meta["low"], meta["high"]
    if kind in (int, float) and (
        (low is not None and (value <= low if meta["low_open"] else value < low))
        or (high is not None and (value >= high if meta["high_open"] else value > high))
    ):
        return f"{label} must be {range_text(meta, kind)} (got {value})"
    return None


def check(config: Any) -> None:
    """Refuse a config (a dataclass made of `option` fields) with any value that breaks its
    field's rule; called by each config's __post_init__. The message names every field."""
    problems = [p for f in dataclasses.fields(config) if (p := problem(f, getattr(config, f.name), f.name))]
    if problems:
        raise ValueError("; ".join(problems))


# --- the model ---------------------------------------------------------------------


SOFTMAX_HELP = ("full softmax, or adaptive softmax (Grave et al. 2017) for large vocabularies: frequent "
                "words in a small head, rare ones in narrower clusters")


@dataclass
class ModelConfig:
    """Everything that defines the network; saved as JSON beside the weights.

    vocab_size:      number of token ids (from the tokenizer).
    emb_size:        embedding width (and output width when weights are tied).
    hidden_size:     LSTM units per layer.
    num_layers:      stacked LSTM layers.
    dropout:         locked dropout on the LSTM output, before the softmax.
    dropout_input:   locked dropout on the embeddings, before layer 1.
    dropout_hidden:  locked dropout between LSTM layers.
    dropout_embedding: drop whole words from the embedding matrix (AWD-LSTM's dropoute).
    weight_drop:     DropConnect on the hidden-to-hidden weights.
    tie_weights:     the output layer reuses the embedding matrix (Press & Wolf 2017; Inan
                     et al. 2017); with hidden_size ≠ emb_size a projection H→E comes first.
                     With the adaptive softmax, the head's shortlist rows are tied (the tail
                     clusters have their own, narrower projections).
    softmax:         "full", or "adaptive" (Grave et al. 2017): frequent words in a small
                     head, rare words in clusters of smaller width, for large vocabularies.
    reset_at_eos:    zero the LSTM state before reading <eos> (id `eos_id`): every document
                     is read from the same start-of-document state, in training, evaluation
                     and generation alike, and the state never drifts over thousands of
                     tokens of unrelated documents.
    cutoffs:         adaptive softmax cluster boundaries (ids are frequency-ordered);
                     cutoffs ≥ vocab_size - 1 are dropped, and with none left the full
                     softmax is used.
    adaptive_div:    how much narrower each adaptive cluster is than the one before.
    eos_id:          the tokenizer's end-of-document id.
    """

    vocab_size: int = option(help="number of token ids (from the tokenizer)", kind=int, **POSITIVE, flag=False)
    emb_size: int = option(256, "embedding width", **POSITIVE)
    hidden_size: int = option(512, "LSTM units per layer", **POSITIVE)
    num_layers: int = option(2, "stacked LSTM layers", **POSITIVE)
    dropout: float = option(0.2, "locked dropout on the LSTM output", **FRACTION)
    dropout_input: float = option(0.2, "locked dropout on the embeddings", **FRACTION)
    dropout_hidden: float = option(0.1, "locked dropout between LSTM layers", **FRACTION)
    dropout_embedding: float = option(0.05, "probability of dropping a whole word from the embedding matrix",
                                      **FRACTION)
    weight_drop: float = option(0.1, "DropConnect on the hidden-to-hidden weights", **FRACTION)
    tie_weights: bool = option(True, "share the embedding matrix with the output layer")
    softmax: str = option("adaptive", SOFTMAX_HELP, choices=("full", "adaptive"))
    cutoffs: list[int] = option(factory=lambda: [2000, 10000],
                                help="adaptive softmax cluster boundaries in frequency rank, comma-separated")
    adaptive_div: float = option(4.0, "adaptive softmax: how much narrower each cluster is than the one before",
                                 **POSITIVE)
    reset_at_eos: bool = option(True, "zero the LSTM state before each end-of-document token, so that every "
                                      "document is read from the same start state")
    eos_id: int = option(3, "the tokenizer's end-of-document id", low=0, flag=False)

    def __post_init__(self) -> None:
        check(self)

    @property
    def effective_cutoffs(self) -> list[int]:
        return [c for c in sorted(self.cutoffs) if 0 < c < self.vocab_size - 1]

    @property
    def uses_adaptive(self) -> bool:
        return self.softmax == "adaptive" and bool(self.effective_cutoffs)

    def to_dict(self) -> dict:
        return asdict(self)

    def parameter_count(self) -> int:
        """The number of parameters `LanguageModel(self)` has, by arithmetic alone (no
        tensor is made): what a config asks for can be weighed before it is built, and a
        size no machine can hold refused in a sentence instead of an allocation error.
        Tested equal to `num_parameters()` of the built model."""
        V, E, H, L = self.vocab_size, self.emb_size, self.hidden_size, self.num_layers
        total = V * E                                       # embedding
        total += 4 * (H * (H + E) + H)                      # layer 1: four gates over [h, x]
        total += (L - 1) * 4 * (H * (H + H) + H)            # layers 2..L
        out = E if self.tie_weights else H
        if out != H:
            total += H * out + out                          # projection H → E
        if self.uses_adaptive:
            cutoffs = self.effective_cutoffs
            head = cutoffs[0] + len(cutoffs)                # shortlist + one row per cluster
            total += len(cutoffs) * out if self.tie_weights else head * out  # tied: the clusters' rows only
            bounds = cutoffs + [V]
            for i in range(len(cutoffs)):
                width = int(out // (self.adaptive_div ** (i + 1)))
                total += out * width + width * (bounds[i + 1] - bounds[i])
        else:
            total += V + (0 if self.tie_weights else out * V)  # decoder bias (+ weight unless tied)
        return total


@dataclass
class ModelSpec(ModelConfig):
    """The network: ModelConfig's options as a run sets them, before a tokenizer exists.

    It becomes a ModelConfig in `TrainConfig.model_config(tokenizer)`, which fills in what
    only the tokenizer knows (vocab_size, eos_id) and resolves softmax "auto"."""

    vocab_size: int = option(0, "from the tokenizer", flag=False)
    softmax: str = option("auto", SOFTMAX_HELP + "; auto: adaptive for the word tokenizer (frequency-ordered "
                                                 "ids) and for sentencepiece (ids renumbered by frequency in the token cache)",
                          choices=("auto", "full", "adaptive"))
    vectors: str = option("", "initialize embeddings from word vectors in word2vec/fastText text format (.vec)")


# --- a training run ----------------------------------------------------------------


@dataclass
class DataConfig:
    """Where the text comes from."""

    corpus: str = option("hadith", "corpus card name ({cards}), a card .toml file, or a .txt/.jsonl file or folder")
    text_field: str = option("text", "JSON field holding the text when --corpus is a .jsonl path")
    encoding_errors: str = option("strict", "on bytes that are not UTF-8: stop with the file and byte offset, or "
                                            "replace them and go on", choices=("strict", "replace"))
    workers: int = option(0, "processes for tokenizing a new corpus (0: all cores)", low=0)


@dataclass
class OptimConfig:
    """The optimizer and its learning-rate schedule."""

    optimizer: str = option("adamw", "AdamW, plain SGD, or NT-ASGD (SGD, then weight averaging once valid stops "
                                     "improving)", choices=("adamw", "sgd", "ntasgd"))
    lr: float = option(3e-3, "learning rate", low=0, low_open=True)
    lr_schedule: str = option("plateau", "plateau: cut the learning rate by --lr-factor when valid stalls; cosine: "
                                         "decay it from --lr to 0 along a half cosine over the run's length "
                                         "(--time-budget, --max-steps or --epochs, whichever ends first; with a time "
                                         "budget the clock sets the pace)", choices=("plateau", "cosine"))
    decay_start: float = option(0.0, "cosine: the fraction of the run at the constant --lr before the decay starts, "
                                     "e.g. 0.85 decays over the last 15% only (0: decay from the start)",
                                **FRACTION)
    warmup: int = option(0, "steps over which the learning rate rises linearly from 0 to --lr (0: none)", low=0)
    embedding_update: str = option("rows", "AdamW: update only the embedding rows each window reads (lazy "
                                           "row-wise AdamW, arlm/optim.py: a row not read keeps its weights and "
                                           "moments; at a large vocabulary a cheaper step and a better model per "
                                           "minute), or every row (dense AdamW); the two agree when every row is "
                                           "read. Rows needs a single process and no full softmax tied to the "
                                           "embedding; otherwise dense",
                                   choices=("rows", "dense"))
    weight_decay: float = option(0.01, "decoupled weight decay (AdamW) or L2 (SGD)", low=0)
    clip: float = option(0.25, "clip the global gradient norm to this (0: no clipping)", low=0)
    lr_patience: int = option(1, "evaluations without improvement before the learning rate is cut", low=0)
    lr_factor: float = option(0.5, "factor the learning rate is multiplied by on a plateau", low=0, high=1,
                              low_open=True, high_open=True)
    nonmono: int = option(3, "NT-ASGD: evaluations without improvement before averaging starts", low=0)


def _tokenizer_config() -> TokenizerConfig:
    from arlm.tokenizer import TokenizerConfig  # here, not above: tokenizer.py imports this module

    return TokenizerConfig()


@dataclass
class TrainConfig:
    """One training run, start to finish: its parts, then the loop's own options. Filled
    from these defaults, then TOML files (--config), then command-line flags; saved (flat,
    `to_flat`) with every checkpoint."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=_tokenizer_config)
    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # the loop
    batch_size: int = option(32, "parallel token streams per step, across all processes", **POSITIVE)
    bptt: int = option(35, "tokens per truncated-BPTT window", **POSITIVE)
    variable_bptt: bool = option(False, "randomize window lengths as in AWD-LSTM")
    epochs: int = option(20, "passes over the training data", **POSITIVE)
    max_steps: int = option(0, "stop after this many steps (0: no limit)", low=0)
    time_budget: float = option(5.0, "stop after this many minutes of training, evaluations not counted, over the "
                                     "whole run (a resumed run finishes the budget; pass a larger one to extend it) "
                                     "(0: no limit)", low=0)
    eval_interval: int = option(400, "steps between validation runs (0: at the end of each epoch)", low=0)
    eval_batch_size: int = option(10, "streams for scoring valid/test", **POSITIVE)
    eval_tokens: int = option(0, "score only the first N valid tokens at interval evaluations, for big corpora; "
                                 "the final valid and test scores always use every token (0: all)", low=0)
    early_stop: int = option(5, "evaluations without improvement before training stops (0: never; "
                             "not counted while --lr-schedule cosine holds --lr before --decay-start)", low=0)
    log_interval: int = option(50, "steps between progress-bar updates of the loss", **POSITIVE)
    # the run
    out: str = option("runs/hadith", "run directory: latest/ and best/ checkpoints, log.jsonl, curves.png")
    seed: int = option(1111, "random seed: the same seed and settings give the same run on CPU")
    device: str = option("auto", "where to train: auto picks CUDA, then MPS, then CPU",
                         choices=("auto", "cpu", "cuda", "mps"))
    threads: int = option(0, "CPU threads for torch (0: all cores)", low=0)
    resume: str = option("", "continue the run saved in this directory (its config, weights, optimizer and position)")
    overwrite: bool = option(False, "replace the run already in --out (without it, arlm refuses to mix two runs "
                                    "in one directory)")

    def softmax_for(self, tokenizer) -> str:
        """softmax "auto": adaptive where the tokenizer's ids are ordered by frequency (the
        word vocabulary; sentencepiece ids renumbered by the token cache), else full (a
        sentencepiece tokenizer from an older cache, whose 256 byte pieces come first)."""
        if self.model.softmax == "auto":
            return "adaptive" if getattr(tokenizer, "frequency_ordered", False) else "full"
        return self.model.softmax

    def model_config(self, tokenizer) -> ModelConfig:
        """The network this run trains on `tokenizer`'s ids: its vocabulary size and
        end-of-document id come from the tokenizer, never from a literal."""
        spec = {f.name: getattr(self.model, f.name) for f in dataclasses.fields(ModelConfig)}
        spec.update(vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id, softmax=self.softmax_for(tokenizer),
                    cutoffs=list(self.model.cutoffs))
        return ModelConfig(**spec)

    def tokenizer_config(self) -> TokenizerConfig:
        return self.tokenizer


# --- flat names: flags, TOML keys, the saved run -----------------------------------


@dataclass(frozen=True)
class Leaf:
    """One option of a run, where it sits in the nested config and what it is called flat."""

    path: tuple[str, ...]     # attribute path from the run config, e.g. ("model", "hidden_size")
    field: dataclasses.Field
    default: Any

    @property
    def name(self) -> str:
        return self.field.metadata.get("name") or self.field.name

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _is_group(f: dataclasses.Field, value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not f.metadata.get("table")


def leaves(config: Any, path: tuple[str, ...] = ()) -> Iterator[Leaf]:
    """Every option of `config` (an instance, whose values are the defaults), depth first."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if _is_group(f, value):
            yield from leaves(value, path + (f.name,))
        elif f.metadata.get("flag", False):
            yield Leaf(path + (f.name,), f, value)


def groups(config: Any) -> dict[str, Any]:
    """The nested configs of a run by attribute name: {"data": DataConfig(), ...}."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if _is_group(f, getattr(config, f.name))}


def _table_diff(value: Any) -> dict:
    """A table option as the fields that differ from its defaults (as the run config is saved)."""
    if isinstance(value, dict):
        return dict(value)
    default = type(value)()
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if getattr(value, f.name) != getattr(default, f.name)}


def to_flat(config: Any) -> dict:
    """{flat name: value} for every option: the run config as checkpoints save it."""
    out = {}
    for leaf in leaves(config):
        value = _get(config, leaf.path)
        out[leaf.name] = _table_diff(value) if leaf.field.metadata.get("table") else (
            list(value) if isinstance(value, (list, tuple)) else value)
    return out


def _get(config: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        config = getattr(config, name)
    return config


def flatten(data: dict, config: Any) -> tuple[dict, list[str]]:
    """TOML data (flat keys, or nested tables named after the run's parts: `[model]`,
    `[optim]`, ...) as flat names; and the keys that are not options."""
    by_name = {leaf.name: leaf for leaf in leaves(config)}
    by_path = {leaf.path: leaf for leaf in by_name.values()}
    parts = groups(config)
    flat, unknown = {}, []
    for key, value in data.items():
        if key in parts and isinstance(value, dict):
            for sub, v in value.items():
                leaf = by_path.get((key, sub))
                if leaf is None:
                    unknown.append(f"{key}.{sub}")
                else:
                    flat[leaf.name] = v
        elif key in by_name:
            flat[key] = value
        else:
            unknown.append(key)
    return flat, unknown


def validate(values: dict, config: Any | None = None) -> None:
    """Refuse flat option values (from flags, TOML files or a resumed run) that break
    their field's rule, naming each by its flag; a table option (normalize) is checked by
    building it. The same rule as `check`, over a whole run."""
    config = config if config is not None else TrainConfig()
    problems = []
    for leaf in leaves(config):
        if leaf.name not in values:
            continue
        value = values[leaf.name]
        if leaf.field.metadata.get("table"):
            try:
                _make_table(leaf, value)
            except (TypeError, ValueError) as e:
                problems.append(f"{leaf.flag}: {e}")
        elif (p := problem(leaf.field, value, leaf.flag)) is not None:
            problems.append(p)
    if problems:
        raise ValueError("; ".join(problems))


def _make_table(leaf: Leaf, value: Any) -> Any:
    kind = leaf.field.metadata["kind"]
    if isinstance(value, kind):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"expected a table of {kind.__name__} options, got {value!r}")
    from_dict = getattr(kind, "from_dict", None)
    return from_dict(value) if from_dict else kind(**value)


def from_flat(values: dict, config_class: type | None = None) -> Any:
    """The nested run config from flat option values (missing ones keep their defaults)."""
    config_class = config_class or TrainConfig
    defaults = config_class()
    nested: dict[tuple[str, ...], dict] = {}
    for leaf in leaves(defaults):
        if leaf.name in values:
            value = values[leaf.name]
            if leaf.field.metadata.get("table"):
                value = _make_table(leaf, value)
            elif isinstance(value, tuple):
                value = list(value)
            nested.setdefault(leaf.path[:-1], {})[leaf.path[-1]] = value
    return _build(type(defaults), (), nested, defaults)


def _build(cls: type, path: tuple[str, ...], nested: dict, default: Any) -> Any:
    kwargs = dict(nested.get(path, {}))
    for name, part in groups(default).items():
        kwargs[name] = _build(type(part), path + (name,), nested, part)
    return cls(**kwargs)


# --- command-line flags ------------------------------------------------------------


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_table(text: str, kind: type) -> dict:
    """`a=b,c=d` as a table of `kind`'s options, each value parsed by its field's type."""
    by_name = {f.name: f for f in dataclasses.fields(kind)}
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = item.partition("=")
        if key not in by_name or not value:
            raise ValueError(f"{item!r}: expected name=value with a name among {', '.join(by_name)}")
        out[key] = parse_bool(value) if by_name[key].metadata.get("kind") is bool else value
    from_dict = getattr(kind, "from_dict", None)
    from_dict(out) if from_dict else kind(**out)  # refuse a bad value here, naming it
    return out


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse`, its ValueError turned into the one error whose message argparse shows."""
    import argparse

    def parse_flag(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse_flag


def _parser_for(leaf: Leaf) -> Callable[[str], Any]:
    kind = leaf.field.metadata["kind"]
    if leaf.field.metadata.get("table"):
        return _argument_type(lambda text: parse_table(text, kind))
    if kind is bool:
        return _argument_type(parse_bool)
    if kind is list:
        return lambda text: [int(x) for x in text.split(",") if x.strip()]
    return kind


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if dataclasses.is_dataclass(value) or value == "":
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_flags(parser, config: Any | None = None, fill: dict | None = None) -> None:
    """One flag per option of `config` (default: a TrainConfig), grouped by part, with its
    type, choices, range and default taken from the field. `fill` fills {placeholders} in
    help texts. Flags left out of a command line are left out of its namespace."""
    import argparse

    config = config if config is not None else TrainConfig()
    def title(name: str, part: Any) -> str:  # "data: where the text comes from", from its docstring
        first = " ".join((type(part).__doc__ or "").split()).split(". ")[0].rstrip(".")
        return f"{name}: {first[:1].lower()}{first[1:]}"

    titles = {(): "the run: the loop, where it writes, and how it runs"} | {
        (name,): title(name, part) for name, part in groups(config).items()}
    sections = {}
    for leaf in leaves(config):
        meta, kind = leaf.field.metadata, leaf.field.metadata["kind"]
        section = leaf.path[:1] if len(leaf.path) > 1 else ()
        if section not in sections:
            sections[section] = parser.add_argument_group(titles[section])
        text = meta["help"].format(**(fill or {})) if fill else meta["help"]
        facts = [f for f in (range_text(meta, kind) if kind in (int, float) else "",) if f]
        facts.append(f"default: {_shown(leaf.default)}")
        kw: dict = {"dest": leaf.name, "default": argparse.SUPPRESS, "type": _parser_for(leaf),
                    "help": f"{text} ({'; '.join(facts)})".replace("%", "%%")}
        if meta["choices"]:
            kw["choices"] = meta["choices"]
        if kind is bool:
            kw["metavar"] = "{true,false}"
        elif meta.get("table"):
            kw["metavar"] = "NAME=VALUE,..."
        elif kind is list:
            kw["metavar"] = "N,N"
        sections[section].add_argument(leaf.flag, **kw)
