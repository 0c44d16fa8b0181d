import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from arlm import checkpoint
from arlm.model import Output
from arlm.train import Trainer, TrainConfig, load_config, lr_at, main, schedule_lr

TINY = ["--emb-size", "16", "--hidden-size", "24", "--num-layers", "2", "--batch-size", "4", "--bptt", "10",
        "--vocab-size", "200", "--min-freq", "1", "--cutoffs", "20,60", "--eval-interval", "10", "--log-interval", "5",
        "--time-budget", "0", "--workers", "1", "--threads", "1"]


def run(corpus, out, *extra) -> int:
    return main(["--corpus", str(corpus), "--out", str(out), *TINY, *extra])


def weights(run_dir: Path, which="latest") -> dict:
    return load_file(str(run_dir / which / "model.safetensors"))


def test_end_to_end_run_leaves_loadable_checkpoints_logs_and_curves(text_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(text_corpus, out, "--max-steps", "40") == 0
    for f in ("latest/config.json", "latest/model.safetensors", "latest/tokenizer.json", "latest/trainer.pt",
              "best/model.safetensors", "log.jsonl", "curves.png", "summary.json"):
        assert (out / f).is_file(), f
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30, 40]
    assert log[-1]["valid_ppl"] < log[0]["valid_ppl"]  # it learns
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_ppl"] > 1 and summary["steps"] == 40
    model, tok, config = checkpoint.load(out)
    assert config["run"]["bptt"] == 10 and model.config.hidden_size == 24
    printed = capsys.readouterr().out
    assert "test perplexity" in printed and "resume with --resume" in printed


def test_same_seed_same_run_and_resume_equals_uninterrupted(text_corpus, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run(text_corpus, a, "--max-steps", "30", "--variable-bptt", "true") == 0
    assert run(text_corpus, b, "--max-steps", "30", "--variable-bptt", "true") == 0
    la, lb = (p / "log.jsonl" for p in (a, b))
    assert la.read_text() != "" and [json.loads(x)["train_loss"] for x in la.read_text().splitlines()] == \
        [json.loads(x)["train_loss"] for x in lb.read_text().splitlines()]
    # 15 steps, stop, resume to 30 == 30 in one go (dropout on: RNG states must be restored too)
    assert run(text_corpus, c, "--max-steps", "15", "--variable-bptt", "true") == 0
    assert main(["--resume", str(c), "--max-steps", "30"]) == 0
    wa, wc = weights(a), weights(c)
    assert wa.keys() == wc.keys()
    for k in wa:
        torch.testing.assert_close(wc[k], wa[k], atol=1e-6, rtol=0)


def test_corpus_too_small_says_how_many_tokens_and_what_fits(tmp_path, capsys):
    small = tmp_path / "small.txt"
    small.write_text("\n".join(["ذهب الولد الى البيت"] * 6), encoding="utf-8")
    assert main(["--corpus", str(small), "--out", str(tmp_path / "o"), "--batch-size", "32", "--bptt", "35", "--min-freq", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "error: the train split has 20 tokens, fewer than batch_size × (bptt + 1) = 1,152; try --batch-size 1 --bptt 9"


def test_invalid_options_are_argparse_errors(capsys):
    for argv, message in ((["--hidden-size", "-1"], "--hidden-size must be a positive integer"),
                          (["--optimizer", "adam"], "invalid choice: 'adam'"),
                          (["--dropout", "1.5"], "--dropout must be in [0, 1)")):
        with pytest.raises(SystemExit) as e:
            load_config(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_config_file_then_flags(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('hidden_size = 64\nbptt = 20\ncutoffs = [100, 500]\n')
    cfg = load_config(["--config", str(toml), "--bptt", "30"])
    assert (cfg.model.hidden_size, cfg.bptt, cfg.model.cutoffs, cfg.model.emb_size) == \
        (64, 30, [100, 500], TrainConfig().model.emb_size)
    toml.write_text('hiden_size = 64\n')
    with pytest.raises(SystemExit):
        load_config(["--config", str(toml)])


def test_nan_loss_stops_and_names_the_last_good_checkpoint(text_corpus, tmp_path, capsys):
    cfg = load_config(["--corpus", str(text_corpus), "--out", str(tmp_path / "r"), *TINY, "--max-steps", "50"])
    trainer = Trainer(cfg)
    trainer.setup()
    real = trainer.net
    calls = {"n": 0}

    def poisoned(x, state, y):
        out = real(x, state, y)
        calls["n"] += 1
        return Output(out.features, out.state, out.loss * float("nan") if calls["n"] == 14 else out.loss, None)

    trainer.net = poisoned
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 14; .*latest"):
        trainer.run()
    model, _, config = checkpoint.load(tmp_path / "r" / "latest")
    assert config["step"] == 10 and all(torch.isfinite(p).all() for p in model.parameters())


def test_sigterm_saves_a_resumable_checkpoint_and_exits_cleanly(text_corpus, tmp_path):
    out = tmp_path / "sig"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "arlm.train", "--corpus", str(text_corpus), "--out", str(out), *TINY,
                             "--max-steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.time() + 120
    while not (out / "latest" / "trainer.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted (SIGTERM)" in stdout and "Traceback" not in stderr
    state = checkpoint.load_trainer_state(out / "latest")
    assert state["step"] > 0
    assert main(["--resume", str(out), "--max-steps", str(state["step"] + 5)]) == 0
    assert checkpoint.load_trainer_state(out / "latest")["step"] == state["step"] + 5


def _ddp_worker(rank, world, init_file, corpus, out, cache):
    import torch.distributed as dist

    os.environ["ARLM_CACHE"] = cache
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = load_config(["--corpus", corpus, "--out", out, *TINY, "--batch-size", "8", "--max-steps", "4",
                           "--softmax", "full", "--dropout", "0", "--dropout-input", "0", "--dropout-hidden", "0",
                           "--dropout-embedding", "0", "--weight-drop", "0", "--eval-interval", "0"])
        trainer = Trainer(cfg)
        trainer.setup()
        trainer.run()
    finally:
        dist.destroy_process_group()


def test_two_ranks_with_batch_b_match_one_process_with_batch_2b(text_corpus, tmp_path):
    import torch.multiprocessing as mp

    cache = os.environ["ARLM_CACHE"]
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(text_corpus), str(ddp_out), cache), nprocs=2, join=True)
    assert main(["--corpus", str(text_corpus), "--out", str(single_out), *TINY, "--batch-size", "8", "--max-steps", "4",
                 "--softmax", "full", "--dropout", "0", "--dropout-input", "0", "--dropout-hidden", "0",
                 "--dropout-embedding", "0", "--weight-drop", "0", "--eval-interval", "0"]) == 0
    a, b = weights(ddp_out), weights(single_out)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)


def _ddp_refused_worker(rank, world, init_file, corpus, out, cache, errors):
    import torch.distributed as dist

    os.environ["ARLM_CACHE"] = cache
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        Trainer(load_config(["--corpus", corpus, "--out", out, *TINY, "--max-steps", "2"])).setup()
        Path(errors, f"rank{rank}").write_text("set up")
    except Exception as e:
        Path(errors, f"rank{rank}").write_text(f"{type(e).__name__}: {e}")
    finally:
        dist.destroy_process_group()


def test_a_run_refused_by_rank_0_stops_every_rank_with_its_message(text_corpus, tmp_path):
    """When rank 0 refused (here: --out held by another run), the other ranks died at the
    setup barrier of gloo's lost connection (a wall of C++ text; NCCL waits for its timeout
    instead); now each says why, in rank 0's words."""
    import torch.multiprocessing as mp

    out, errors = tmp_path / "held", tmp_path / "errors"
    out.mkdir()
    errors.mkdir()
    held = checkpoint.RunLock(out).acquire()
    try:
        ctx = mp.start_processes(_ddp_refused_worker, nprocs=2, join=False, start_method="spawn",
                                 args=(2, str(tmp_path / "init"), str(text_corpus), str(out),
                                       os.environ["ARLM_CACHE"], str(errors)))
        for p in ctx.processes:
            p.join(timeout=120)
        assert not any(p.is_alive() for p in ctx.processes), "a rank is still waiting"
    finally:
        for p in ctx.processes:
            p.kill()
        held.release()
    assert (errors / "rank0").read_text().startswith("RunInUse: ") and "in use by another training run" in (errors / "rank0").read_text()
    assert (errors / "rank1").read_text() == "ValueError: rank 0 could not start the run: " + (errors / "rank0").read_text()[len("RunInUse: "):]


def test_tokenizer_specs_and_normalize_options_reach_the_tokenizer(capsys):
    specs = sorted(Path(__file__).resolve().parent.parent.glob("tokenizers/*.toml"))
    assert len(specs) >= 4
    for spec in specs:
        load_config(["--config", str(spec)]).tokenizer_config()  # every spec is a valid config
    keep = load_config(["--config", str(specs[0].parent / "word-keep-orthography.toml"), "--normalize", "latin=lower"])
    norm = keep.tokenizer_config().normalize
    assert (norm.teh_marbuta, norm.alef, norm.latin, norm.diacritics) == (False, False, "lower", True)
    with pytest.raises(SystemExit):
        load_config(["--normalize", "latin=upper"])
    assert "latin must be keep, lower or drop, got 'upper'" in capsys.readouterr().err


def test_out_with_a_run_is_refused_unless_resumed_or_overwritten(text_corpus, tmp_path, capsys):
    out = tmp_path / "o"
    assert run(text_corpus, out, "--max-steps", "5") == 0
    assert run(text_corpus, out, "--max-steps", "5") == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    assert run(text_corpus, out, "--max-steps", "7", "--overwrite", "true") == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 7


def test_time_budget_is_the_runs_total_and_resume_writes_in_place(text_corpus, tmp_path, capsys):
    out = tmp_path / "tb"
    assert run(text_corpus, out, "--max-steps", "500", "--time-budget", "0.002") == 0
    spent = checkpoint.load_trainer_state(out / "latest")
    assert 0 < spent["step"] < 500 and spent["train_seconds"] >= 0.12
    moved = tmp_path / "moved"
    out.rename(moved)
    # The budget is spent: a resume with it trains nothing and says how to go on ...
    assert main(["--resume", str(moved)]) == 0
    assert "resume with a larger one" in capsys.readouterr().out
    assert checkpoint.load_trainer_state(moved / "latest")["step"] == spent["step"]
    # ... a larger one trains on, in the run's (moved) directory.
    assert main(["--resume", str(moved), "--max-steps", str(spent["step"] + 5), "--time-budget", "5"]) == 0
    assert checkpoint.load_trainer_state(moved / "latest")["step"] == spent["step"] + 5


def _recorded_lrs(cfg: TrainConfig) -> list[float]:
    """The learning rate of every optimizer step of a run."""
    trainer = Trainer(cfg)
    trainer.setup()
    lrs, step = [], trainer.optimizer.step

    def recording_step(*a, **k):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*a, **k)

    trainer.optimizer.step = recording_step
    trainer.run()
    return lrs


def test_cosine_schedule_with_warmup_follows_its_formula_and_the_log_shows_it(text_corpus, tmp_path):
    cfg = load_config(["--corpus", str(text_corpus), "--out", str(tmp_path / "c"), *TINY, "--max-steps", "20",
                       "--lr-schedule", "cosine", "--warmup", "4", "--lr", "0.01"])
    lrs = _recorded_lrs(cfg)
    expected = [0.01 * min(1, (k + 1) / 4) * 0.5 * (1 + math.cos(math.pi * k / 20)) for k in range(20)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    log = [json.loads(line) for line in (tmp_path / "c" / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log] == pytest.approx([0.005, 0.0], abs=1e-12)  # the schedule at steps 10 and 20


def test_plateau_schedule_warms_up_then_keeps_lr_until_valid_stalls(text_corpus, tmp_path):
    cfg = load_config(["--corpus", str(text_corpus), "--out", str(tmp_path / "p"), *TINY, "--max-steps", "10",
                       "--warmup", "5", "--lr", "0.002"])
    assert _recorded_lrs(cfg) == pytest.approx([0.002 * min(1, (k + 1) / 5) for k in range(10)], rel=1e-9)


def test_cosine_schedule_under_a_time_budget_follows_the_clock():
    cfg = load_config(["--lr-schedule", "cosine", "--lr", "0.004", "--time-budget", "10"])
    assert lr_at(0, 0.0, cfg, total_steps=1000) == pytest.approx(0.004)
    # half the budget spent, few steps taken: the clock decides
    assert lr_at(10, 5 * 60, cfg, total_steps=1000) == pytest.approx(0.002)
    # the step limit comes first
    assert lr_at(750, 60, cfg, total_steps=1000) == pytest.approx(0.004 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    cfg.optim.decay_start = 0.8  # constant for 80% of the run, then the half cosine over the rest
    assert lr_at(750, 60, cfg, total_steps=1000) == pytest.approx(0.004)
    assert lr_at(900, 60, cfg, total_steps=1000) == pytest.approx(0.002)
    assert lr_at(1000, 60, cfg, total_steps=1000) == 0.0
    with pytest.raises(SystemExit):
        load_config(["--decay-start", "1"])


def test_lr_at_is_its_formula_for_every_schedule():
    """warm-up × (cosine of the run's progress, the clock's or the steps', past --decay-start | the plateau rate)."""
    for warmup, decay_start, budget in ((0, 0.0, 0), (5, 0.0, 0), (5, 0.5, 0), (3, 0.25, 2.0)):
        cfg = load_config(["--lr-schedule", "cosine", "--lr", "0.01", "--warmup", str(warmup),
                           "--decay-start", str(decay_start), "--time-budget", str(budget)])
        for step, seconds in ((0, 0.0), (2, 1.0), (4, 90.0), (40, 30.0), (99, 200.0), (100, 0.0)):
            progress = max(step / 100, seconds / (budget * 60) if budget else 0.0)
            decayed = max(0.0, min(progress, 1.0) - decay_start) / (1 - decay_start)
            warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
            expected = 0.01 * 0.5 * (1 + math.cos(math.pi * decayed))
            assert schedule_lr(step, seconds, cfg, 100, plateau_lr=123.0) == pytest.approx(expected, rel=1e-12)
            assert lr_at(step, seconds, cfg, 100) == pytest.approx(warm * expected, rel=1e-12)
    plateau = load_config(["--warmup", "4", "--lr", "0.01"])
    assert [lr_at(k, 0.0, plateau, 100) for k in range(6)] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01])
    assert lr_at(50, 1e6, plateau, 100, plateau_lr=0.005) == 0.005  # the rate ReduceLROnPlateau left


def test_evaluation_time_is_not_training_time(text_corpus, tmp_path, monkeypatch):
    from arlm import train

    # A first build of the fast backend (~1 s) is training time; keep it out of the comparison.
    assert run(text_corpus, tmp_path / "warm", "--max-steps", "1") == 0
    slow = train.evaluate

    def slow_evaluate(*a, **k):
        time.sleep(1.0)
        return slow(*a, **k)

    monkeypatch.setattr(train, "evaluate", slow_evaluate)
    assert run(text_corpus, tmp_path / "e", "--max-steps", "20") == 0  # 2 interval + 2 final evaluations
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    log = [json.loads(line) for line in (tmp_path / "e" / "log.jsonl").read_text().splitlines()]
    assert summary["train_seconds"] < 1.0 and log[1]["seconds"] < 1.0


def test_wrong_types_in_a_config_file_are_one_line_errors(tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text('bptt = "35"\n')
    with pytest.raises(SystemExit):
        load_config(["--config", str(toml)])
    assert "bptt must be int, got '35'" in capsys.readouterr().err
    toml.write_text('[normalize]\ncolour = true\n')
    with pytest.raises(SystemExit):
        load_config(["--config", str(toml)])
    assert "unknown normalization option(s): colour" in capsys.readouterr().err


def test_ntasgd_switches_to_averaging_and_resumes_exactly(text_corpus, tmp_path):
    common = ["--optimizer", "ntasgd", "--lr", "20", "--nonmono", "1", "--eval-interval", "5", "--early-stop", "0"]
    a, c = tmp_path / "a", tmp_path / "c"
    assert run(text_corpus, a, *common, "--max-steps", "30") == 0
    state = checkpoint.load_trainer_state(a / "latest")
    assert state["asgd"]  # a large SGD step overshoots: valid stalls once and averaging starts
    assert run(text_corpus, c, *common, "--max-steps", "15") == 0
    assert main(["--resume", str(c), "--max-steps", "30"]) == 0
    wa, wc = weights(a), weights(c)
    for k in wa:
        torch.testing.assert_close(wc[k], wa[k], atol=1e-6, rtol=0)


def test_early_stop_after_n_evaluations_without_improvement(text_corpus, tmp_path):
    out = tmp_path / "es"
    assert run(text_corpus, out, "--lr", "1e-9", "--eval-interval", "2", "--early-stop", "2", "--max-steps", "200") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"].startswith("early stop") and summary["steps"] < 200


def test_early_stop_waits_for_the_decay_of_a_warmup_stable_decay_schedule(text_corpus, tmp_path):
    # The same stalled run under cosine with --decay-start 0.5 of 40 steps: the evaluations
    # while the rate is held (steps 2-20) do not count, the first two in the decay do.
    out = tmp_path / "wsd"
    assert run(text_corpus, out, "--lr", "1e-9", "--eval-interval", "2", "--early-stop", "2", "--max-steps", "40",
               "--lr-schedule", "cosine", "--decay-start", "0.5") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"].startswith("early stop")
    assert 20 < summary["steps"] < 40
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    held = [r for r in log if "valid_ppl" in r and r["step"] <= 20]
    assert len(held) == 10 and all(r["lr"] == 1e-9 for r in held)


def test_resume_refuses_other_model_sizes_and_other_vocabularies(text_corpus, tmp_path, capsys):
    out = tmp_path / "r"
    assert run(text_corpus, out, "--max-steps", "5") == 0
    assert main(["--resume", str(out), "--hidden-size", "32", "--max-steps", "8"]) == 2
    assert "other sizes than these settings" in capsys.readouterr().err
    assert main(["--resume", str(out), "--vocab-size", "20", "--max-steps", "8"]) == 2
    assert "its vocabulary is not the one" in capsys.readouterr().err


def test_softmax_auto_is_adaptive_where_ids_are_frequency_ordered():
    from conftest import arabic_documents

    from arlm.tokenizer import SentencePieceTokenizer, TokenizerConfig, WordTokenizer, count_words

    texts = arabic_documents(300)
    word_cfg = TokenizerConfig(min_freq=1)
    words, _ = WordTokenizer.from_counts(count_words(texts, word_cfg), word_cfg)
    sp, _ = SentencePieceTokenizer.train(texts, TokenizerConfig(kind="sentencepiece", vocab_size=300))
    ordered = sp.with_frequency_order([0] * sp.vocab_size)
    assert load_config([]).softmax_for(words) == "adaptive"
    assert load_config(["--tokenizer", "sentencepiece"]).softmax_for(ordered) == "adaptive"  # renumbered by the cache
    assert load_config(["--tokenizer", "sentencepiece"]).softmax_for(sp) == "full"  # an older cache's ids
    assert load_config(["--tokenizer", "sentencepiece", "--softmax", "adaptive"]).softmax_for(sp) == "adaptive"
    assert load_config(["--softmax", "full"]).softmax_for(words) == "full"


def test_plain_progress_lines_when_not_a_terminal(text_corpus, tmp_path, capsys):
    assert run(text_corpus, tmp_path / "p", "--max-steps", "50", "--log-interval", "2") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step 20/")]
    assert lines and "tokens/s" in lines[0] and "min left" in lines[0]


LEGACY = Path(__file__).parent / "data" / "legacy"


@pytest.mark.parametrize("embedding_update", ["dense", "rows"])
def test_same_seed_gives_the_old_codes_valid_perplexities(tmp_path, embedding_update):
    """The run tests/data/make_legacy.py made with the code before the #9 redesign, rerun
    today: the same seed must give the same trajectory (the same draws, in the same order).
    The old code updated every embedding row (dense); row-wise updates (the default now)
    differ only in the rows a window does not read, and stay on the same trajectory."""
    from conftest import arabic_documents

    answers = json.loads((LEGACY / "answers.json").read_text(encoding="utf-8"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(arabic_documents(1500)) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["--corpus", str(corpus), "--out", str(out), *answers["train_args"],
                 "--embedding-update", embedding_update]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["valid_ppl"] for r in log] == pytest.approx(answers["valid_ppl"], rel=1e-3)


def _trainer(corpus, out, *extra) -> Trainer:
    trainer = Trainer(load_config(["--corpus", str(corpus), "--out", str(out), *TINY, *extra]))
    trainer.setup()
    return trainer


@pytest.mark.parametrize("extra, rows", [((), True), (("--embedding-update", "dense"), False),
                                         (("--optimizer", "sgd"), False),
                                         (("--softmax", "full"), False),  # tied to the embedding: dense anyway
                                         (("--softmax", "full", "--tie-weights", "false"), True)])
def test_row_wise_embedding_updates_where_they_apply(text_corpus, tmp_path, extra, rows):
    from arlm.optim import RowAdamW

    trainer = _trainer(text_corpus, tmp_path / "run", *extra)
    try:
        assert trainer.model.embedding.sparse is rows
        assert isinstance(trainer.optimizer, RowAdamW) is rows
        x = torch.randint(0, trainer.model.config.vocab_size, (10, 4))
        trainer.model(x, targets=x).loss.backward()
        assert trainer.model.embedding.weight.grad.is_sparse is rows
    finally:
        trainer.close()


def test_a_run_saved_before_row_wise_updates_resumes_with_dense_ones(text_corpus, tmp_path):
    out = tmp_path / "old"
    assert run(text_corpus, out, "--max-steps", "5") == 0
    path = out / "latest" / "config.json"
    saved = json.loads(path.read_text())
    del saved["run"]["embedding_update"]
    path.write_text(json.dumps(saved))
    assert load_config(["--resume", str(out)]).optim.embedding_update == "dense"
    assert main(["--resume", str(out), "--max-steps", "8"]) == 0


def test_a_run_saved_before_the_new_options_existed_resumes(text_corpus, tmp_path):
    """Checkpoints made before #9 saved the flat run config without split_digits,
    reset_at_eos and adaptive_div: they resume with those at the values they had."""
    out = tmp_path / "old"
    assert run(text_corpus, out, "--max-steps", "5") == 0
    path = out / "latest" / "config.json"
    saved = json.loads(path.read_text())
    for key in ("split_digits", "reset_at_eos", "adaptive_div"):
        del saved["run"][key]
    path.write_text(json.dumps(saved))
    assert main(["--resume", str(out), "--max-steps", "8"]) == 0
    assert checkpoint.load_trainer_state(out / "latest")["step"] == 8


# --- refused up front, in one line ----------------------------------------------------------


@pytest.mark.parametrize("device, name", [("mps", "no MPS device (Apple GPU)"), ("cuda", "no CUDA device")])
def test_a_device_this_machine_lacks_is_one_line(tmp_path, capsys, monkeypatch, device, name):
    # as on a machine without it, whatever this one has
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--device", device, "--out", str(tmp_path / "o"), "--max-steps", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"error: --device {device}: {name} is available; use --device auto or cpu"


@pytest.mark.parametrize("flag, value", [("--hidden-size", "100000000"), ("--emb-size", "2000000000")])
def test_a_model_too_big_for_this_machine_is_refused_before_the_corpus_is_read(tmp_path, capsys, monkeypatch, flag, value):
    from arlm import train

    monkeypatch.setattr(train, "prepare", lambda *a, **k: pytest.fail("the corpus was read"))
    assert main(["--out", str(tmp_path / "o"), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --emb-size ") and f"{flag} {value}" in err[0]
    assert " parameters, about " in err[0] and "GiB to train" in err[0] and "more than this machine's" in err[0]
    assert err[0].endswith("GiB of memory; choose smaller sizes")
    assert not (tmp_path / "o").exists()


def test_the_memory_check_weighs_the_real_vocabulary(text_corpus, tmp_path, capsys, monkeypatch):
    from arlm import train

    cfg = load_config(["--corpus", str(text_corpus), *TINY])
    smallest = cfg.model_config(train._SmallestVocabulary()).parameter_count()
    # memory for the smallest vocabulary's model (the check before the corpus), not for this corpus's
    monkeypatch.setattr(checkpoint, "physical_memory", lambda: 16 * smallest + 64)
    assert run(text_corpus, tmp_path / "o", "--max-steps", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: --emb-size 16, --hidden-size 24 and --num-layers 2 with a vocabulary of ")
    assert not (tmp_path / "o" / "latest").exists()


@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "nan"), ("--clip", "nan"), ("--time-budget", "nan"),
                                         ("--time-budget", "inf"), ("--weight-decay", "-inf"), ("--lr-factor", "nan")])
def test_non_finite_numbers_on_the_command_line_are_refused_naming_the_flag(capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main([f"{flag}={value}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{flag} must be a finite number (got {float(value)})" in err
    assert "Invalid learning rate" not in err and "Traceback" not in err


def test_non_finite_numbers_in_a_config_file_or_a_resumed_run_are_refused_naming_the_flag(text_corpus, tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text("lr = nan\n[optim]\nclip = inf\n")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(toml)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--lr must be a finite number (got nan); --clip must be a finite number (got inf)" in err
    out = tmp_path / "r"
    assert run(text_corpus, out, "--max-steps", "2") == 0
    path = out / "latest" / "config.json"
    saved = json.loads(path.read_text())
    saved["run"]["lr"] = float("nan")  # json writes NaN
    path.write_text(json.dumps(saved))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--resume", str(out), "--max-steps", "4"])
    err = capsys.readouterr().err
    assert "--lr must be a finite number (got nan)" in err and "Invalid learning rate" not in err


# --- a run that has stopped stays stopped ----------------------------------------------------


def _log_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_a_run_that_stopped_early_resumed_trains_nothing_and_says_so(text_corpus, tmp_path, capsys):
    out = tmp_path / "es"
    assert run(text_corpus, out, "--lr", "1e-9", "--eval-interval", "2", "--early-stop", "2", "--max-steps", "200") == 0
    steps = json.loads((out / "summary.json").read_text())["steps"]
    log = (out / "log.jsonl").read_text()
    capsys.readouterr()
    assert main(["--resume", str(out)]) == 0
    assert "the run has already stopped early (valid did not improve for 2 evaluations, --early-stop 2); " \
           "resume with a larger --early-stop, or 0, to train on." in capsys.readouterr().out
    assert checkpoint.load_trainer_state(out / "latest")["step"] == steps and (out / "log.jsonl").read_text() == log
    assert main(["--resume", str(out), "--early-stop", "0", "--max-steps", str(steps + 2)]) == 0
    assert checkpoint.load_trainer_state(out / "latest")["step"] == steps + 2


def test_a_run_at_its_step_or_epoch_limit_resumed_trains_nothing(tmp_path, capsys):
    from conftest import arabic_documents

    corpus = tmp_path / "small.txt"
    corpus.write_text("\n".join(arabic_documents(200)) + "\n", encoding="utf-8")
    out = tmp_path / "lim"
    assert run(corpus, out, "--max-steps", "12") == 0
    capsys.readouterr()
    assert main(["--resume", str(out)]) == 0  # once, this trained one more step
    assert "the run has already reached --max-steps 12 (step 12)" in capsys.readouterr().out
    assert checkpoint.load_trainer_state(out / "latest")["step"] == 12 and _log_steps(out) == [10, 12]
    epochs = tmp_path / "ep"
    assert run(corpus, epochs, "--epochs", "1", "--eval-interval", "0") == 0
    steps = checkpoint.load_trainer_state(epochs / "latest")["step"]
    capsys.readouterr()
    assert main(["--resume", str(epochs)]) == 0  # once, this trained a whole second epoch
    assert "the run has already trained its --epochs 1" in capsys.readouterr().out
    assert checkpoint.load_trainer_state(epochs / "latest")["step"] == steps


# --- the log agrees with the checkpoint; TensorBoard with the log ----------------------------


def test_a_resumed_run_drops_log_lines_past_its_checkpoint(text_corpus, tmp_path):
    out = tmp_path / "log"
    assert run(text_corpus, out, "--max-steps", "20") == 0
    with open(out / "log.jsonl", "a") as f:  # a run killed after logging step 30, before saving it
        f.write(json.dumps({"step": 30, "valid_ppl": 1.0}) + "\n" + '{"step": 40, "val')
    assert main(["--resume", str(out), "--max-steps", "30"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30] and log[-1]["valid_ppl"] > 1.0
    assert log == json.loads(checkpoint.load_trainer_state(out / "latest")["history"])


def test_tensorboard_gets_the_scalars_of_log_jsonl_across_a_resume(text_corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert run(text_corpus, out, "--max-steps", "20") == 0
    assert main(["--resume", str(out), "--max-steps", "30"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    keys = sorted(k for k in log[0] if k != "step")
    assert sorted(events.Tags()["scalars"]) == keys
    for k in keys:
        scalars = events.Scalars(k)
        assert [e.step for e in scalars] == [r["step"] for r in log] == [10, 20, 30], k
        assert [e.value for e in scalars] == pytest.approx([float(r[k]) for r in log], rel=1e-6), k


# --- one run per directory --------------------------------------------------------------------

# A training process whose steps take 50 ms: slow enough to be caught in the act.
SLOW = ("import sys, time; from arlm import batching, train; real = batching.window; "
        "batching.window = lambda *a, **k: (time.sleep(0.05), real(*a, **k))[1]; sys.exit(train.main(sys.argv[1:]))")


def _wait_for(condition, proc, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_second_run_or_a_resume_into_a_directory_being_trained_is_refused_naming_its_pid(text_corpus, tmp_path, capsys):
    out = tmp_path / "busy"
    proc = subprocess.Popen([sys.executable, "-c", SLOW, "--corpus", str(text_corpus), "--out", str(out), *TINY,
                             "--max-steps", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    in_use = f"{out}: in use by another training run (PID {proc.pid}); wait for it to finish, or choose another directory"
    try:
        lock = out / ".lock"
        _wait_for(lambda: lock.exists() and lock.read_text().strip() == str(proc.pid), proc, "the lock")
        assert run(text_corpus, out, "--max-steps", "5", "--overwrite", "true") == 2  # and nothing deleted
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {in_use}"
        _wait_for(lambda: (out / "latest" / "trainer.pt").exists(), proc, "the first checkpoint")
        assert main(["--resume", str(out)]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {in_use}"
        assert proc.poll() is None and (out / "latest" / "trainer.pt").exists()
    finally:
        proc.kill()  # SIGKILL: the system releases the lock
        proc.wait()
    state = checkpoint.load_trainer_state(checkpoint.resumable(out))
    assert main(["--resume", str(out), "--max-steps", str(state["step"] + 1)]) == 0
