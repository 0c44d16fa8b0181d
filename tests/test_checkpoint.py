import json
import pickle

import pytest
import torch

import arlm.checkpoint as ckpt
from arlm.checkpoint import CheckpointError, load, load_trainer_state, save
from arlm.model import LanguageModel, ModelConfig
from arlm.tokenizer import TokenizerConfig, WordTokenizer, count_words


def _model_and_tokenizer(seed=0):
    cfg = TokenizerConfig(min_freq=1)
    tok, _ = WordTokenizer.from_counts(count_words(["ذهب الولد الى المدرسة", "رجع الولد"], cfg), cfg)
    torch.manual_seed(seed)
    return LanguageModel(ModelConfig(vocab_size=tok.vocab_size, emb_size=8, hidden_size=8, softmax="full")), tok


def test_round_trip_is_exact(tmp_path):
    m, tok = _model_and_tokenizer()
    save(tmp_path / "run" / "latest", m, tok, {"lr": 1.0}, {"step": 7, "rng": torch.get_rng_state()})
    m2, tok2, config = load(tmp_path / "run")  # a run dir resolves to best/ or latest/
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    assert config["run"] == {"lr": 1.0} and tok2.itos == tok.itos
    assert load_trainer_state(tmp_path / "run" / "latest")["step"] == 7


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    old, tok = _model_and_tokenizer(0)
    new, _ = _model_and_tokenizer(1)
    save(tmp_path / "latest", old, tok)

    def disk_full(model, filename):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "_save_weights", disk_full)
    with pytest.raises(OSError):
        save(tmp_path / "latest", new, tok)
    back, _, _ = load(tmp_path / "latest")
    assert torch.equal(back.embedding.weight, old.embedding.weight)


def test_a_crash_between_the_two_renames_is_recovered(tmp_path):
    m, tok = _model_and_tokenizer()
    save(tmp_path / "latest", m, tok)
    (tmp_path / "latest").rename(tmp_path / "latest.old")  # as if killed right after the first rename
    back, _, _ = load(tmp_path)
    assert torch.equal(back.embedding.weight, m.embedding.weight)


@pytest.mark.parametrize("damage", ["missing_weights", "truncated_weights", "missing_config", "edited_config", "other_tokenizer"])
def test_damaged_checkpoints_are_refused_naming_the_file(tmp_path, damage):
    m, tok = _model_and_tokenizer()
    d = save(tmp_path / "m", m, tok)
    if damage == "missing_weights":
        (d / "model.safetensors").unlink()
        name = "model.safetensors"
    elif damage == "truncated_weights":
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[: len(data) // 2])
        name = "model.safetensors"
    elif damage == "missing_config":
        (d / "config.json").unlink()
        name = "config.json"
    elif damage == "edited_config":
        config = json.loads((d / "config.json").read_text())
        config["model"]["hidden_size"] = 16
        (d / "config.json").write_text(json.dumps(config))
        name = "model.safetensors"
    else:
        other = json.loads((d / "tokenizer.json").read_text())
        other["vocab"].append("كلمة")
        other["counts"].append(1)
        (d / "tokenizer.json").write_text(json.dumps(other, ensure_ascii=False))
        name = "tokenizer.json"
    with pytest.raises(CheckpointError, match=name) as e:
        load(d)
    assert "\n" not in str(e.value)


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/arlm-pwned-by-pickle",))


def test_a_pickle_payload_is_never_executed(tmp_path):
    import os

    m, tok = _model_and_tokenizer()
    d = save(tmp_path / "m", m, tok, trainer_state={"step": 1})
    if os.path.exists("/tmp/arlm-pwned-by-pickle"):
        os.remove("/tmp/arlm-pwned-by-pickle")
    with open(d / "trainer.pt", "wb") as f:
        pickle.dump({"step": _Payload()}, f)
    with pytest.raises(CheckpointError, match="trainer.pt: refused or damaged"):
        load_trainer_state(d)
    assert not os.path.exists("/tmp/arlm-pwned-by-pickle")
    # the weights themselves are safetensors: plain data, no code path at all
    assert load(d)[0] is not None


def test_resumable_is_latest_or_what_a_crash_mid_save_left_of_it(tmp_path):
    m, tok = _model_and_tokenizer()
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        ckpt.resumable(tmp_path / "nowhere")
    save(tmp_path / "run" / "best", m, tok)
    with pytest.raises(CheckpointError, match="no latest/config.json"):
        ckpt.resumable(tmp_path / "run")  # best/ is for use, not for resuming
    save(tmp_path / "run" / "latest", m, tok)
    assert ckpt.resumable(tmp_path / "run") == tmp_path / "run" / "latest"
    (tmp_path / "run" / "latest").rename(tmp_path / "run" / "latest.old")  # killed between the two renames
    assert ckpt.resumable(tmp_path / "run") == tmp_path / "run" / "latest.old"
    assert ckpt.model_dir(tmp_path / "run") == tmp_path / "run" / "best"
