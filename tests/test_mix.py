"""An n-gram mixed into the LSTM's predictions (arlm.ngram.Mixture, `python -m arlm.ngram
--mix`): every way a Predictor reads text gives (1 - w) P_lstm + w P_ngram, a session still
equals fresh completions, and the file saved beside a checkpoint loads back with it."""

import math
import random

import numpy as np
import pytest
import torch

import arlm
from arlm import checkpoint
from arlm.generate import Predictor, main as generate_main
from arlm.ngram import MIX_FILE, KneserNey, Mixture, main as ngram_main
from test_complete import same
from test_generate import SENTENCES, train_and_save
from test_train import TINY, run as train_run


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(the LSTM alone, the LSTM with a 3-gram of the same sentences mixed in at 0.3)."""
    lm = arlm.load(train_and_save(tmp_path_factory.mktemp("mix") / "m", "adaptive"))
    tok = lm.tokenizer
    ids = np.array([i for s in SENTENCES for i in tok.encode(s) + [tok.eos_id]])
    kn = KneserNey(3, tok.vocab_size, tok.eos_id).fit(ids)
    return lm, Predictor(lm.model, tok, lm.config, ngram=Mixture(kn, 0.3, {}))


def test_next_distribution_is_the_mixture(pair):
    lm, mixed = pair
    kn = mixed.ngram.ngram
    for text in ("", "ذهب الولد", "قرأت البنت كتابا جميلا", "كلمة غريبة جدا"):
        ids = [lm.tokenizer.eos_id] + lm.tokenizer.encode(text)
        expected = 0.7 * lm.next_distribution(text).double() + 0.3 * torch.from_numpy(kn.distribution(ids))
        torch.testing.assert_close(mixed.next_distribution(text).double(), expected, rtol=1e-5, atol=1e-7)
        assert float(mixed.next_distribution(text).sum()) == pytest.approx(1, abs=1e-5)
    # weight 0 is the LSTM alone, exactly
    alone = Predictor(lm.model, lm.tokenizer, ngram=Mixture(kn, 0.0, {}))
    assert torch.equal(alone.next_distribution("ذهب الولد"), lm.next_distribution("ذهب الولد"))


def test_scores_are_the_mixture_token_by_token(pair):
    lm, mixed = pair
    text = "ذهب الولد إلى المكتبة صباحا"
    ids = lm.tokenizer.encode(text) + [lm.tokenizer.eos_id]
    p_kn = mixed.ngram.ngram.token_probs(np.array(ids))
    got = mixed.score(text)
    for (tok, lp), (tok2, lp_lstm), q in zip(got["tokens"], lm.score(text)["tokens"], p_kn):
        assert tok == tok2
        assert lp == pytest.approx(math.log(0.7 * math.exp(lp_lstm) + 0.3 * q), abs=1e-6)
    # the same numbers as reading each prefix and looking the next token up
    for j in range(len(ids)):
        prefix = lm.tokenizer.decode(ids[:j])
        assert got["tokens"][j][1] == pytest.approx(math.log(float(mixed.next_distribution(prefix)[ids[j]])), abs=1e-5)


def test_completion_sessions_generation_and_beams_use_the_mixture(pair):
    lm, mixed = pair
    got = mixed.complete("ذهب الولد إلى الم", k=3)
    dist = mixed.next_distribution("ذهب الولد إلى")
    for s in got:
        assert s.probability == pytest.approx(float(dist[mixed.tokenizer.token_to_id(s.word)]), abs=1e-6)
    rng = random.Random(1)
    words = [w for s in SENTENCES for w in s.split()]
    session, text = mixed.session(k=4), ""
    for _ in range(50):
        r = rng.random()
        text = (text + rng.choice("ابتدرسلمنهوي ") if r < 0.5 else text[:-1] if r < 0.65
                else text[: rng.randrange(len(text) + 1)] if r < 0.75 else text + rng.choice(words) + " ")
        same(session.update(text), mixed.complete(text, k=4))
    # greedy generation: every token is the mixture's most likely one after what came before
    # (mostly the n-gram's at weight 0.9, beside a stronger LSTM: the history must be right)
    heavy = Predictor(lm.model, lm.tokenizer, ngram=Mixture(mixed.ngram.ngram, 0.9, {}))
    seen = []  # the distribution each generation step chose from
    choose = heavy._choose
    heavy._choose = lambda log_probs, *rest: seen.append(log_probs.clone()) or choose(log_probs, *rest)
    for prompt, stop in (("تطير العصافير", True), ("كتب المعلم", False), ("", False)):
        seen.clear()
        new = heavy._generate_ids([prompt], max_new_tokens=8, temperature=0, stop_at_eos=stop)[0]
        ids = [heavy.tokenizer.eos_id] + heavy.tokenizer.encode(prompt)
        for token, used in zip(new, seen):
            log_probs, _ = heavy._read_ids(ids)  # read afresh: prompt and every token so far
            torch.testing.assert_close(used[0], log_probs, rtol=1e-5, atol=1e-5)
            assert token == int(log_probs.index_fill(-1, heavy._banned(False), -math.inf).argmax())
            ids.append(token)
        (text, _), = heavy.beam_search(prompt, beam_size=1, max_new_tokens=8, stop_at_eos=stop)
        assert text == heavy._decode(new)


def test_mix_command_saves_a_file_that_load_mixes_in(text_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_run(text_corpus, out, "--max-steps", "30") == 0
    assert ngram_main(["--mix", str(out), "--order", "2", "--mix-tokens", "3000"]) == 0
    printed = capsys.readouterr().out
    assert "mixing weight of the 2-gram" in printed and "valid" in printed and "test" in printed
    path = checkpoint.model_dir(out) / MIX_FILE
    mixture = Mixture.load(path)
    # (on this template corpus a bigram is all but perfect and 30 steps of LSTM are not: the
    # fitted weight is ~1; the weight's fit itself is tested in test_ngram.py, on numbers with an inside optimum)
    assert 0 <= mixture.weight <= 1 and mixture.ngram.order == 2
    valid = mixture.meta["valid"]
    assert valid["mixture"] <= min(valid["model"], valid["ngram"]) * (1 + 1e-12)  # never worse than either on valid
    mixed, alone = arlm.load(out), arlm.load(out, ngram=False)
    assert mixed.ngram is not None and alone.ngram is None and "2-gram" in repr(mixed)
    # the n-gram is the one fitted on the train split with the model's own ids
    from arlm.corpus import documents, resolve

    splits = documents(resolve(str(text_corpus)))
    tok = alone.tokenizer
    train = np.array([i for d in splits["train"] for i in tok.encode(d) + [tok.eos_id]])
    assert mixture.meta["train_tokens"] == len(train)
    kn = KneserNey(2, alone.vocab_size, tok.eos_id).fit(train)
    text = splits["test"][0]
    probe = np.array(tok.encode(text) + [tok.eos_id])
    np.testing.assert_array_equal(mixture.ngram.token_probs(probe), kn.token_probs(probe))
    lp_alone = alone.score(text)["tokens"]
    p_kn = mixture.ngram.token_probs(np.array(alone.tokenizer.encode(text) + [alone.tokenizer.eos_id]))
    w = mixture.weight
    for (_, a), (_, m), q in zip(lp_alone, mixed.score(text)["tokens"], p_kn):
        assert m == pytest.approx(math.log((1 - w) * math.exp(a) + w * q), abs=1e-6)
    # the command line: --ngram off reads the LSTM alone
    assert generate_main(["--checkpoint", str(out), "--prompt", "ذهب", "--next-word", "3", "--ngram", "off"]) == 0
    off = capsys.readouterr().out
    assert generate_main(["--checkpoint", str(out), "--prompt", "ذهب", "--next-word", "3"]) == 0
    assert capsys.readouterr().out != off


def test_training_on_keeps_the_mixture_and_says_its_weight_is_stale(text_corpus, tmp_path, capsys):
    from arlm.train import main as train_main

    out = tmp_path / "run"
    assert train_run(text_corpus, out, "--max-steps", "20", "--eval-interval", "10") == 0
    assert ngram_main(["--mix", str(out), "--order", "2", "--mix-tokens", "2000"]) == 0
    before = (out / "best" / MIX_FILE).read_bytes()
    weights_before = (out / "best" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert train_main(["--resume", str(out), "--max-steps", "60"]) == 0
    err = capsys.readouterr().err
    assert (out / "best" / "model.safetensors").read_bytes() != weights_before  # best/ was saved anew
    assert (out / "best" / MIX_FILE).read_bytes() == before  # and the n-gram came with it, byte for byte
    assert err.count("mixing weight was fitted to earlier weights") == 1  # said once, not at every save
    assert f"python -m arlm.ngram --mix {out}" in err
    assert arlm.load(out).ngram is not None


def test_a_missing_or_foreign_mixture_is_one_clear_error(pair, tmp_path, capsys):
    lm, mixed = pair
    ckpt = tmp_path / "ckpt"
    checkpoint.save(ckpt, lm.model, lm.tokenizer)
    with pytest.raises(checkpoint.CheckpointError, match="arlm.ngram --mix"):
        arlm.load(ckpt, ngram=True)
    assert arlm.load(ckpt).ngram is None  # auto: no file, no mixture
    mixed.ngram.ngram.save(ckpt / MIX_FILE, weight=0.3, tokenizer_fingerprint="sha256:another")
    with pytest.raises(checkpoint.CheckpointError, match="another tokenizer"):
        arlm.load(ckpt)
    assert arlm.load(ckpt, ngram=False).ngram is None
    assert generate_main(["--checkpoint", str(ckpt), "--prompt", "ذهب", "--next-word", "1"]) == 2
    assert "another tokenizer" in capsys.readouterr().err
    with pytest.raises(ValueError, match="ngram must be"):
        arlm.load(ckpt, ngram="yes")
    # a mixing command on a checkpoint that does not say its corpus
    assert ngram_main(["--mix", str(ckpt)]) == 2
    assert "corpus" in capsys.readouterr().err
