"""What the tests of arlm.report share (tests/test_report_*.py): a tiny word model trained
here and saved like a real run, a record of three sentences, and `arlm-inspect` in-process.

A test file uses the fixtures by importing them: `from report_helpers import rec, trained`."""

import contextlib
import io

import pytest
import torch

from arlm import checkpoint, gates, report
from arlm.model import LanguageModel, ModelConfig
from arlm.tokenizer import TokenizerConfig, WordTokenizer, count_words
from conftest import GATE_TEXTS as TEXTS

SENTENCE = "قال رسول الله صلى الله عليه وسلم"
EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> قال'
H, L = 8, 2  # the tiny model's units per layer and layers


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny word model trained for a few steps and saved like a real run:
    (checkpoint directory, model, tokenizer)."""
    cfg = TokenizerConfig(min_freq=1)
    tok = WordTokenizer.from_counts(count_words(TEXTS, cfg), cfg)[0]
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=tok.vocab_size, emb_size=12, hidden_size=H, num_layers=L,
                                      softmax="full", tie_weights=False))
    stream = torch.tensor(sum(([tok.eos_id] + tok.encode(t) for t in TEXTS * 2), []))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(25):
        loss = model(stream[:-1].view(-1, 1), targets=stream[1:].view(-1, 1)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    directory = checkpoint.save(tmp_path_factory.mktemp("ckpt") / "model", model, tok, {"corpus": "tiny"})
    model.eval()
    return directory, model, tok


@pytest.fixture(scope="module")
def rec(trained):
    """Three sentences recorded with the trained model, three guesses per position."""
    _, model, tok = trained
    return gates.record(model, tok, [TEXTS[0], SENTENCE, TEXTS[2]], top_k=3)


def run_cli(*args):
    """`arlm-inspect` (report.main) in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = report.main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()
