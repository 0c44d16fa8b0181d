"""Tests for the scripts that show gates: scripts/inspect_gates.py runs `arlm-inspect` as a
program (exit statuses included), and the seed's scripts/hello_lstm.py walk-through still
learns "hello" and prints every gate."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import torch

from report_helpers import SENTENCE, trained  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]


def test_script_wrapper_runs_as_a_program(trained):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, str(ROOT / "scripts" / "inspect_gates.py"), "--checkpoint", str(trained[0]),
                         SENTENCE, "--summary"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "h output" in ok.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "inspect_gates.py"), "--checkpoint", str(trained[0]), " "],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")


def load_hello():
    spec = importlib.util.spec_from_file_location("hello_lstm", ROOT / "scripts" / "hello_lstm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hello_lstm_learns_hello_and_prints_the_gates(capsys):
    hello = load_hello()
    logged = []
    model, losses = hello.train(log=logged.append)
    assert len(losses) == 200 and losses[-1] < 0.01
    assert logged[0].startswith("epoch   0 loss") and len(logged) == 10
    inputs, targets = hello.data()
    assert inputs.shape == (4, 1, 4) and targets.tolist() == [0, 2, 2, 3]
    with torch.no_grad():
        logits, trace = model(inputs)
    assert "".join(hello.CHARS[int(k)] for k in logits[:, 0].argmax(-1)) == "ello"
    assert trace.f.shape == (4, 1, 8)
    hello.step_by_hand()
    hello.show(model)
    out = capsys.readouterr().out
    assert "forget gate f : tensor([[" in out
    assert "timestep 3: reading 'l' → predicts 'o'" in out
    for meaning in ("KEEP", "WRITE", "proposed", "EXPOSE", "long-term memory", "predicted from"):
        assert meaning in out
