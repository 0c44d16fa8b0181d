"""A checkpoint made by the code before the #9 redesign (tests/data/make_legacy.py, commit
a3c5793) still loads, and gives the answers it gave then."""

import json
from pathlib import Path

import pytest
import torch

import arlm

LEGACY = Path(__file__).parent / "data" / "legacy"
ANSWERS = json.loads((LEGACY / "answers.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("weights", ["float32", "float16", "int8"])
def test_old_checkpoint_gives_the_same_next_word_probabilities(weights):
    lm = arlm.load(LEGACY / "model", weights=weights)
    for prompt, expected in ANSWERS[weights]["next"].items():
        torch.testing.assert_close(lm.next_distribution(prompt), torch.tensor(expected), atol=1e-5, rtol=0)


# The old code scored low-precision models with the float32 softmax while it predicted with
# the low-precision one; the engine uses one set of products for both, so score() now agrees
# with next_distribution() (checked below) and moves from the old score by float16/int8
# rounding only.
SCORE_TOLERANCE = {"float32": 1e-5, "float16": 5e-4, "int8": 2e-2}


@pytest.mark.parametrize("weights", ["float32", "float16", "int8"])
def test_old_checkpoint_gives_the_same_scores_and_text(weights):
    lm = arlm.load(LEGACY / "model", weights=weights)
    old = ANSWERS[weights]
    for text, expected in old["score"].items():
        got = lm.score(text)
        assert [t for t, _ in got["tokens"]] == [t for t, _ in expected["tokens"]]
        log_probs = torch.tensor([lp for _, lp in got["tokens"]])
        torch.testing.assert_close(log_probs, torch.tensor([lp for _, lp in expected["tokens"]]),
                                   atol=SCORE_TOLERANCE[weights], rtol=0)
        ids = lm.tokenizer.encode(text) + [lm.tokenizer.eos_id]
        tokens = [t for t, _ in got["tokens"]]
        predicted = torch.stack([lm.next_distribution(" ".join(tokens[:n]))[i].log() for n, i in enumerate(ids)])
        torch.testing.assert_close(log_probs, predicted, atol=1e-5, rtol=0)  # score agrees with prediction
        if weights == "float32":
            assert got["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-5)
    assert lm.generate("ذهب الولد", max_new_tokens=8, temperature=0.8, seed=3) == old["generate"]
