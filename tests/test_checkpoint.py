import json
import os
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


# --- the tokenizer belongs to the weights: its fingerprint is in config.json --------------


def _swapped_vocabulary(d):
    """Another run's tokenizer with as many tokens: two words trade ids."""
    other = json.loads((d / "tokenizer.json").read_text())
    other["vocab"][4], other["vocab"][5] = other["vocab"][5], other["vocab"][4]
    (d / "tokenizer.json").write_text(json.dumps(other, ensure_ascii=False))


def _other_normalization(d):
    other = json.loads((d / "tokenizer.json").read_text())
    other["config"]["normalize"]["teh_marbuta"] = False
    (d / "tokenizer.json").write_text(json.dumps(other, ensure_ascii=False))


@pytest.mark.parametrize("swap", [_swapped_vocabulary, _other_normalization])
def test_a_tokenizer_from_another_run_of_the_same_size_is_refused_naming_both_files(tmp_path, swap):
    import arlm

    m, tok = _model_and_tokenizer()
    d = save(tmp_path / "m", m, tok)
    assert json.loads((d / "config.json").read_text())["tokenizer_fingerprint"].startswith("sha256:")
    swap(d)
    assert load_tokenizer_size(d) == m.config.vocab_size  # the size check alone would let it through
    for loader in (load, arlm.load):
        with pytest.raises(CheckpointError) as e:
            loader(d)
        message = str(e.value)
        assert "\n" not in message and str(d / "tokenizer.json") in message and str(d / "config.json") in message
        assert "belongs to another run" in message


def load_tokenizer_size(d) -> int:
    from arlm.tokenizer import load_tokenizer

    return load_tokenizer(d).vocab_size


def test_the_fingerprint_is_of_what_decides_the_ids():
    from arlm.normalize import NormalizeConfig
    from arlm.tokenizer import fingerprint

    _, tok = _model_and_tokenizer()
    same = WordTokenizer(list(tok.itos), TokenizerConfig(min_freq=1, vocab_size=7))  # build settings, no counts
    assert fingerprint(same) == fingerprint(tok)
    assert fingerprint(WordTokenizer(list(tok.itos), TokenizerConfig(split_digits=False))) != fingerprint(tok)
    other = WordTokenizer(list(tok.itos), TokenizerConfig(normalize=NormalizeConfig(latin="lower")))
    assert fingerprint(other) != fingerprint(tok)


def test_a_checkpoint_saved_before_fingerprints_still_loads(tmp_path):
    m, tok = _model_and_tokenizer()
    d = save(tmp_path / "m", m, tok)
    config = json.loads((d / "config.json").read_text())
    del config["tokenizer_fingerprint"]
    (d / "config.json").write_text(json.dumps(config))
    assert load(d)[1].itos == tok.itos


# --- sizes weighed before anything is built --------------------------------------------


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # a tail cluster 0 wide: counted too
@pytest.mark.parametrize("spec", [
    dict(softmax="full", tie_weights=True), dict(softmax="full", tie_weights=False, hidden_size=12),
    dict(softmax="adaptive", cutoffs=[6, 10], tie_weights=True, hidden_size=12, num_layers=3),
    dict(softmax="adaptive", cutoffs=[6, 10], tie_weights=False, adaptive_div=3.0),
    dict(softmax="adaptive", cutoffs=[100], tie_weights=True),  # a cutoff past the vocabulary: full softmax
])
def test_parameter_count_is_the_built_models(spec):
    config = ModelConfig(vocab_size=17, emb_size=8, **{"hidden_size": 8, **spec})
    assert config.parameter_count() == LanguageModel(config).num_parameters()


def test_a_config_json_asking_for_more_memory_than_there_is_is_refused_with_the_number(tmp_path):
    import arlm

    m, tok = _model_and_tokenizer()
    d = save(tmp_path / "m", m, tok)
    config = json.loads((d / "config.json").read_text())
    config["model"]["hidden_size"] = 10**12
    (d / "config.json").write_text(json.dumps(config))
    n = ModelConfig(**config["model"]).parameter_count()
    for loader in (load, arlm.load):
        with pytest.raises(CheckpointError) as e:
            loader(d)
        message = str(e.value)
        assert message.startswith(f"{d / 'config.json'}: describes a model of {n:,} parameters (")
        assert "more than this machine's" in message and "GiB of memory" in message and "\n" not in message


# --- what a path and a device must be -----------------------------------------------------


@pytest.mark.parametrize("bad", [None, 42, ["runs/x"]])
def test_a_path_that_is_not_a_path_is_one_line_saying_what_is_expected(bad):
    import arlm

    for loader in (load, arlm.load, ckpt.model_dir):
        with pytest.raises(TypeError) as e:
            loader(bad)
        assert str(e.value) == ("expected a checkpoint path (a str or os.PathLike naming a model or run directory), "
                                f"got {type(bad).__name__}")


def test_an_empty_path_is_refused_rather_than_read_as_the_current_directory():
    with pytest.raises(CheckpointError, match="the checkpoint path is empty"):
        load("  ")


def test_a_device_this_machine_lacks_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)  # also on a Mac that has one
    m, tok = _model_and_tokenizer()
    d = save(tmp_path / "m", m, tok)
    with pytest.raises(CheckpointError, match=r"^device mps requested but no MPS device \(Apple GPU\) is available; use cpu$"):
        load(d, "mps")


# --- temporary folders are per process, and a run directory has one trainer ----------------


def test_temporary_folders_are_per_process_and_a_dead_ones_is_cleared(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    m, tok = _model_and_tokenizer()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"latest.tmp-{int(dead.stdout)}"  # what a process killed mid-save left
    live = tmp_path / f"latest.tmp-{os.getppid()}"  # another process, alive, saving now
    for d in (stale, live):
        d.mkdir()
    save(tmp_path / "latest", m, tok)
    assert not stale.exists() and live.exists()

    written = []

    def disk_full(model, filename):
        written.append(filename)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "_save_weights", disk_full)
    with pytest.raises(OSError):
        save(tmp_path / "latest", m, tok)
    assert os.path.basename(os.path.dirname(written[0])) == f"latest.tmp-{os.getpid()}"  # this process's own name
    assert not (tmp_path / f"latest.tmp-{os.getpid()}").exists()  # and removed when the save failed
    assert load(tmp_path / "latest")[0] is not None


def test_a_run_directory_is_locked_while_held_and_free_once_its_holder_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from arlm.checkpoint import RunLock; "
                               f"lock = RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert ckpt.RunLock.holder(tmp_path) == holder.pid
        with pytest.raises(ckpt.RunInUse) as e:
            ckpt.RunLock(tmp_path).acquire()
        assert str(e.value) == (f"{tmp_path}: in use by another training run (PID {holder.pid}); "
                                "wait for it to finish, or choose another directory")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.05)
    assert ckpt.RunLock.holder(tmp_path) is None  # no stale lock after kill -9
    with ckpt.RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    m, tok = _model_and_tokenizer()
    d = save(tmp_path / "latest", m, tok, trainer_state={"step": 1})
    before = {k: v.clone() for k, v in load(d)[0].state_dict().items()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    for target in ("_save_weights", "_fsync_dir"):
        with monkeypatch.context() as mp:
            mp.setattr(ckpt, target, full)
            with pytest.raises(ckpt.CheckpointWriteError) as e:
                save(tmp_path / "latest", m, tok, trainer_state={"step": 2})
        message = str(e.value)
        assert "\n" not in message and message.startswith(f"cannot write the checkpoint {tmp_path / 'latest'}")
        assert "no space left on device" in message and "MB needed" in message and "MB free" in message
        assert "the previous checkpoint is whole" in message
        assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]  # no temporary folder left
        again = load(d)[0].state_dict()
        assert all(torch.equal(again[k], v) for k, v in before.items())
        assert load_trainer_state(d)["step"] == 1


def test_a_full_disk_during_training_is_a_failed_run_in_one_line(tmp_path, text_corpus, monkeypatch, capsys):
    import errno

    from arlm.train import main

    monkeypatch.setattr(ckpt, "_save_weights", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    argv = ["--corpus", str(text_corpus), "--out", str(tmp_path / "run"), "--emb-size", "16", "--hidden-size", "16",
            "--num-layers", "1", "--batch-size", "4", "--bptt", "10", "--min-freq", "1", "--eval-interval", "5",
            "--max-steps", "5", "--time-budget", "0", "--workers", "1", "--threads", "1"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: cannot write the checkpoint ") and "no space left on device" in err
    assert not any(".tmp" in p.name for p in (tmp_path / "run").iterdir())


def test_a_forked_worker_does_not_keep_a_killed_runs_lock(tmp_path):
    """An flock lives while any copy of its descriptor is open: a corpus worker forked by
    the run, still alive after the run was killed, kept the directory locked under the
    dead run's PID."""
    import signal
    import subprocess
    import sys
    import time

    code = ("import os, time; from arlm.checkpoint import RunLock; lock = RunLock(%r).acquire(); pid = os.fork()\n"
            "if pid == 0: time.sleep(60); os._exit(0)\n"
            "print(pid, flush=True); time.sleep(60)") % str(tmp_path)
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(run.stdout.readline())
    try:
        assert ckpt.RunLock.holder(tmp_path) == run.pid
        run.send_signal(signal.SIGKILL)
        run.wait()
        os.kill(child, 0)  # the worker lives on
        time.sleep(0.05)
        assert ckpt.RunLock.holder(tmp_path) is None
        with ckpt.RunLock(tmp_path):
            pass
    finally:
        run.kill()
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
