"""arlm/config.py: every option declared once, and everything generated from it."""

import argparse
import dataclasses
import json
import math
from pathlib import Path

import pytest

from arlm import config
from arlm.config import ModelConfig, ModelSpec, TrainConfig, from_flat, leaves, option, to_flat, validate
from arlm.normalize import NormalizeConfig
from arlm.tokenizer import TokenizerConfig, WordTokenizer, count_words
from arlm.train import build_parser, load_config

LEGACY_RUN = Path(__file__).parent / "data" / "legacy" / "model" / "config.json"


def test_model_config_is_importable_from_model_and_config():
    from arlm.model import ModelConfig as FromModel

    assert FromModel is ModelConfig
    cfg = ModelConfig(vocab_size=100, cutoffs=[20, 60, 200])
    assert cfg.effective_cutoffs == [20, 60] and cfg.uses_adaptive
    assert ModelConfig(**cfg.to_dict()) == cfg


def test_every_option_has_help_and_a_flag_and_the_flat_names_are_unique():
    names = [leaf.name for leaf in leaves(TrainConfig())]
    assert len(names) == len(set(names))
    parser = build_parser()
    flags = {a.dest: a for a in parser._actions}
    for leaf in leaves(TrainConfig()):
        assert leaf.field.metadata["help"], leaf.name
        assert leaf.name in flags and flags[leaf.name].help and leaf.flag in flags[leaf.name].option_strings
    # the options that could not be set for a run before #9
    assert {"split_digits", "reset_at_eos", "adaptive_div"} <= set(names)
    # what only the tokenizer knows is not an option
    assert "eos_id" not in names and names.count("vocab_size") == 1


def test_the_flags_of_today_keep_their_names_and_meaning():
    old = json.loads(LEGACY_RUN.read_text(encoding="utf-8"))["run"]
    names = {leaf.name for leaf in leaves(TrainConfig())}
    assert set(old) <= names  # every setting an old run saved is still an option of that name
    cfg = load_config(["--normalize", "teh_marbuta=false,latin=lower", "--cutoffs", "20,60", "--tie-weights", "false",
                       "--tokenizer", "sentencepiece", "--hidden-size", "64", "--lr", "0.01", "--bptt", "20"])
    assert cfg.tokenizer.kind == "sentencepiece" and cfg.model.hidden_size == 64 and cfg.model.tie_weights is False
    assert cfg.model.cutoffs == [20, 60] and cfg.optim.lr == 0.01 and cfg.bptt == 20
    assert (cfg.tokenizer.normalize.teh_marbuta, cfg.tokenizer.normalize.latin) == (False, "lower")


def test_split_digits_reset_at_eos_and_adaptive_div_are_settable_from_flags_and_toml(tmp_path):
    cfg = load_config(["--split-digits", "false", "--reset-at-eos", "false", "--adaptive-div", "2"])
    assert cfg.tokenizer.split_digits is False and cfg.model.reset_at_eos is False and cfg.model.adaptive_div == 2
    toml = tmp_path / "run.toml"
    toml.write_text("split_digits = false\nreset_at_eos = false\nadaptive_div = 3.0\n")
    cfg = load_config(["--config", str(toml)])
    assert cfg.tokenizer.split_digits is False and cfg.model.reset_at_eos is False and cfg.model.adaptive_div == 3.0
    tok = WordTokenizer.from_counts(count_words(["ذهب الولد"], TokenizerConfig(min_freq=1)), TokenizerConfig(min_freq=1))[0]
    model = cfg.model_config(tok)
    assert (model.reset_at_eos, model.adaptive_div, model.vocab_size, model.eos_id) == (False, 3.0, tok.vocab_size, tok.eos_id)


def test_eos_id_comes_from_the_tokenizer():
    class Tok:
        vocab_size, eos_id, frequency_ordered = 50, 7, True

    model = TrainConfig().model_config(Tok())
    assert (model.vocab_size, model.eos_id, model.softmax) == (50, 7, "adaptive")


def test_nested_toml_tables_are_accepted_beside_flat_keys(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('bptt = 20\n[model]\nhidden_size = 64\n[tokenizer]\nkind = "sentencepiece"\n'
                    '[optim]\nlr = 0.01\n[normalize]\nalef = false\n')
    cfg = load_config(["--config", str(toml)])
    assert (cfg.bptt, cfg.model.hidden_size, cfg.tokenizer.kind, cfg.optim.lr) == (20, 64, "sentencepiece", 0.01)
    assert cfg.tokenizer.normalize.alef is False
    toml.write_text("[model]\nhiden_size = 64\n")
    with pytest.raises(SystemExit):
        load_config(["--config", str(toml)])


@pytest.mark.parametrize("flag", ["--lr", "--dropout", "--time-budget", "--clip", "--adaptive-div"])
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_numbers_are_refused_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        load_config([f"{flag}={value}"])  # -inf as its own word would read as a flag
    assert e.value.code == 2 and f"{flag} must be a finite number" in capsys.readouterr().err


def test_one_rule_checks_flags_toml_values_and_configs_built_in_code():
    field = {f.name: f for f in dataclasses.fields(ModelConfig)}
    assert config.problem(field["dropout"], 1.0, "--dropout") == "--dropout must be in [0, 1) (got 1.0)"
    assert config.problem(field["hidden_size"], 0, "hidden_size") == "hidden_size must be a positive integer (got 0)"
    assert config.problem(field["hidden_size"], "8", "x") == "x must be int, got '8'"
    assert config.problem(field["tie_weights"], 1, "x") == "x must be bool, got 1"
    assert config.problem(field["dropout"], 0, "x") is None  # an int is a float
    assert config.problem(field["softmax"], "x", "softmax") == "softmax must be full or adaptive, got 'x'"
    with pytest.raises(ValueError, match="dropout must be in"):
        ModelConfig(vocab_size=10, dropout=1.5)
    with pytest.raises(ValueError, match="dropout must be a finite number"):
        ModelConfig(vocab_size=10, dropout=math.nan)
    with pytest.raises(ValueError, match="--bptt must be a positive integer"):
        validate({"bptt": 0})
    with pytest.raises(ValueError, match="--normalize: unknown normalization option"):
        validate({"normalize": {"colour": True}})
    validate({leaf.name: leaf.default for leaf in leaves(TrainConfig())})  # the defaults pass


def test_an_old_checkpoints_flat_run_config_is_read_as_today():
    old = json.loads(LEGACY_RUN.read_text(encoding="utf-8"))["run"]
    validate(old)
    cfg = from_flat(old)
    assert (cfg.model.hidden_size, cfg.model.cutoffs, cfg.bptt, cfg.seed, cfg.tokenizer.vocab_size) == (32, [12, 24], 10, 7, 200)
    assert cfg.tokenizer.normalize == NormalizeConfig() and cfg.model.softmax == "auto"
    assert to_flat(cfg) == {**old, **{k: v for k, v in to_flat(TrainConfig()).items() if k not in old}}


def test_to_flat_and_from_flat_round_trip():
    cfg = load_config(["--hidden-size", "64", "--normalize", "alef=false", "--cutoffs", "5,9", "--split-digits", "false"])
    flat = to_flat(cfg)
    assert flat["normalize"] == {"alef": False} and flat["hidden_size"] == 64 and flat["tokenizer"] == "word"
    assert from_flat(json.loads(json.dumps(flat))) == cfg


def test_a_new_option_is_one_field(tmp_path):
    """What CONTRIBUTING.md promises: declare the field, and flag, help, check and TOML key follow."""

    @dataclasses.dataclass
    class Part:
        """A part of a run."""

        width: int = option(8, "how wide", low=2)

    @dataclasses.dataclass
    class Run:
        part: Part = dataclasses.field(default_factory=Part)
        mode: str = option("a", "which mode", choices=("a", "b"))

    parser = argparse.ArgumentParser()
    config.add_flags(parser, Run())
    help_text = parser.format_help()
    assert "--width WIDTH" in help_text and "how wide (at least 2; default: 8)" in help_text
    assert vars(parser.parse_args(["--width", "3"])) == {"width": 3}
    assert from_flat({"width": 3, "mode": "b"}, Run) == Run(Part(3), "b")
    with pytest.raises(ValueError, match="--width must be at least 2"):
        validate({"width": 1}, Run())
    assert config.flatten({"part": {"width": 4}, "mode": "b"}, Run()) == ({"width": 4, "mode": "b"}, [])


def test_model_spec_is_model_config_with_the_runs_differences():
    spec = {f.name for f in dataclasses.fields(ModelSpec)}
    assert {f.name for f in dataclasses.fields(ModelConfig)} | {"vectors"} == spec
    with pytest.raises(ValueError, match="softmax"):
        ModelSpec(softmax="hierarchical")
