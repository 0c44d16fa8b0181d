"""Tests for arlm.gates: recording equals the model's own computation (batched, padded,
step by step), gate ranges, saturation on a hand-made case, the unit search finding planted
units, and the corpus streams statistics read."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from arlm import gates
from arlm.gates import GATES, CorpusStats
from arlm.model import LanguageModel, ModelConfig
from arlm.tokenizer import TokenizerConfig, WordTokenizer, count_words
from conftest import GATE_TEXTS as TEXTS



def tiny_model(tok, **overrides) -> LanguageModel:
    cfg = dict(vocab_size=tok.vocab_size, emb_size=12, hidden_size=10, num_layers=2, dropout=0.3, dropout_input=0.3,
               dropout_hidden=0.3, dropout_embedding=0.1, weight_drop=0.2, softmax="full", tie_weights=False)
    cfg.update(overrides)
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(**cfg))
    with torch.no_grad():  # larger weights than the init, so gates really saturate somewhere
        for p in model.lstm.parameters():
            p.mul_(4)
    return model.eval()


@pytest.fixture(scope="module")
def tok():
    cfg = TokenizerConfig(min_freq=1)
    return WordTokenizer.from_counts(count_words(TEXTS, cfg), cfg)[0]


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok)


def features_alone(model, tok, text):
    """The model's own output for [eos] + sentence, read alone (batch of one, no padding)."""
    ids = torch.tensor([tok.eos_id] + tok.encode(text)).view(-1, 1)
    with torch.no_grad():
        return model(ids).features[:, 0]


# --- recording ---------------------------------------------------------------------------


@pytest.mark.parametrize("config", [
    {},                                                                   # full softmax, h is the output
    {"softmax": "adaptive", "cutoffs": [20], "tie_weights": True, "emb_size": 6},  # projection H→E, adaptive head
])
def test_recorded_h_equals_the_models_own_output(tok, config):
    model = tiny_model(tok, **config).train()  # record must switch dropout off, then back on
    sentences = [TEXTS[2], "قال", TEXTS[0]]  # different lengths: batched and right-padded
    rec = gates.record(model, tok, sentences, top_k=4, batch_size=8)
    assert model.training
    model.eval()
    assert [s.text for s in rec.sentences] == sentences
    for s, text in zip(rec.sentences, sentences):
        feats = features_alone(model, tok, text)
        h = torch.from_numpy(s.layers[-1]["h"])
        want = feats[1:]  # step 0 read <eos>
        with torch.no_grad():
            got = model.projection(h) if model.projection is not None else h
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        # guesses and probabilities from the same log-probabilities the model predicts with
        with torch.no_grad():
            probs = model.log_probs(feats).exp()
        assert [w for w, _ in s.top[0]] == [tok.id_to_token(i) for i in probs[1].topk(4).indices.tolist()]
        np.testing.assert_allclose(s.token_probs, probs[torch.arange(len(s)), torch.tensor(s.ids)].numpy(), rtol=1e-5)


def test_recorded_gates_equal_the_step_by_step_definition(model, tok):
    """LSTMCell.forward, one step at a time, layer by layer, gives the recorded values."""
    s = gates.record(model, tok, [TEXTS[1]]).sentences[0]
    x = model.embedding(torch.tensor([tok.eos_id] + s.ids))
    with torch.no_grad():
        for l, cell in enumerate(model.lstm.cells):
            state = (torch.zeros(1, cell.hidden_size), torch.zeros(1, cell.hidden_size))
            outputs = []
            for t in range(len(x)):
                step = cell(x[t : t + 1], state)
                state = (step.h, step.c)
                outputs.append(step.h)
                if t > 0:
                    for g, v in zip(("f", "i", "c_tilde", "o", "c", "h"), (*step.gates, step.c, step.h)):
                        np.testing.assert_allclose(s.layers[l][g][t - 1], v[0].numpy(), rtol=1e-5, atol=1e-6)
            x = torch.cat(outputs)


def test_padding_changes_nothing_and_tokens_keep_reading_order(model, tok):
    alone = gates.record(model, tok, TEXTS[4]).sentences[0]
    batched = gates.record(model, tok, [TEXTS[0] + " " + TEXTS[2], TEXTS[4]]).sentences[1]
    assert alone.tokens == batched.tokens == tok.tokenize(TEXTS[4])
    assert alone.tokens[0] == "قال" and alone.tokens[-1] == "؟"
    for a, b in zip(alone.layers, batched.layers):
        for g in GATES:
            np.testing.assert_array_equal(a[g].shape, (len(alone), 10))
            # equal up to float32 rounding: batches of different size may use other GEMM blockings
            np.testing.assert_allclose(a[g], b[g], rtol=1e-5, atol=1e-6)


def test_unknown_words_show_as_typed(model, tok):
    s = gates.record(model, tok, "قال زيدٌ").sentences[0]
    assert s.tokens == ["قال", "زيد"] and s.ids[1] == tok.unk_id


def test_subword_tokens_are_the_pieces_in_reading_order():
    from arlm.tokenizer import SentencePieceTokenizer

    spm, _ = SentencePieceTokenizer.train(TEXTS * 20, TokenizerConfig(kind="sentencepiece", vocab_size=330))
    s = gates.record(tiny_model(spm), spm, TEXTS[0]).sentences[0]
    assert s.tokens == spm.tokenize(TEXTS[0]) and len(s.tokens) == len(s.ids) > len(TEXTS[0].split())
    assert s.tokens[0] == "▁قال" and s.layers[1]["h"].shape == (len(s), 10)


@pytest.mark.parametrize("bad", ["", "   \n", "ً ُ"])  # the last is only diacritics: nothing left to read
def test_empty_sentences_are_refused_clearly(model, tok, bad):
    with pytest.raises(ValueError, match="empty|no tokens"):
        gates.record(model, tok, ["قال", bad])
    with pytest.raises(ValueError, match="no sentences"):
        gates.record(model, tok, [])


@settings(max_examples=15, deadline=None)
@given(st.lists(st.lists(st.integers(4, 40), min_size=1, max_size=12), min_size=1, max_size=3))
def test_gates_stay_in_their_ranges(model, tok, word_ids):
    sentences = [" ".join(tok.id_to_token(min(i, tok.vocab_size - 1)) for i in ids) for ids in word_ids]
    for s in gates.record(model, tok, sentences).sentences:
        for layer in s.layers:
            for g in ("f", "i", "o"):
                assert layer[g].min() >= 0 and layer[g].max() <= 1
            for g in ("c_tilde", "h"):
                assert layer[g].min() >= -1 and layer[g].max() <= 1
            np.testing.assert_allclose(layer["h"], layer["o"] * np.tanh(layer["c"]), atol=1e-6)
        for guesses in s.top:
            probs = [p for _, p in guesses]
            assert probs == sorted(probs, reverse=True) and 0 <= min(probs) and sum(probs) <= 1 + 1e-5


# --- saturation ----------------------------------------------------------------------------


def test_saturation_on_a_hand_made_case():
    values = np.array([[0.05, 0.50, 0.95],
                       [0.95, 0.50, 0.95],
                       [0.50, 0.10, 0.90],   # exactly at a threshold is not saturated
                       [0.01, 0.00, 1.00]])
    left, right = gates.saturation(values)
    np.testing.assert_allclose(left, [2 / 4, 1 / 4, 0])
    np.testing.assert_allclose(right, [1 / 4, 0, 3 / 4])
    with pytest.raises(ValueError):
        gates.saturation(np.zeros((0, 3)))


def test_corpus_stats_carry_state_across_windows_and_count_like_the_model(model, tok):
    ids = np.array(sum(([tok.eos_id] + tok.encode(t) for t in TEXTS), []))
    stats = gates.corpus_stats(model, tok, ids, search_gates=("c", "f"), window=7)  # windows split sentences
    with torch.no_grad():
        traces = model(torch.from_numpy(ids).view(-1, 1), record=True).traces  # one pass, no windows
    for l, trace in enumerate(traces):
        for j, g in enumerate(gates.SIGMOID_GATES):
            left, right = gates.saturation(getattr(trace, g)[:, 0].numpy())
            np.testing.assert_allclose(stats.left[l, j], left)
            np.testing.assert_allclose(stats.right[l, j], right)
        np.testing.assert_allclose(stats.activations["c"][:, l], trace.c[:, 0].numpy(), rtol=1e-5, atol=1e-6)
    assert stats.steps == len(ids) and stats.tokens[1] == "قال"
    first = len(tok.encode(TEXTS[0]))
    assert stats.positions[: first + 3].tolist() == [0, *range(1, first + 1), 0, 1]
    assert 0 < stats.right.max() and stats.left.max() <= 1
    with pytest.raises(ValueError, match="unknown gate"):
        gates.corpus_stats(model, tok, ids, search_gates=("x",))


# --- the unit search ------------------------------------------------------------------------


def test_token_properties():
    tokens = ["الكتاب", "والكتاب", "بالنيات", "للناس", "الا", "الي", "قال", "،", ".", "2015", "▁المدينة", "؟", "▁ال", "ال"]
    props = gates.token_properties(tokens, np.arange(len(tokens)), pattern="^ق")
    assert props["article ال"].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0]
    assert props["punctuation"].tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0]
    assert props["digits"].tolist() == [0] * 9 + [1] + [0] * 4
    assert props["regex ^ق"].tolist() == [0] * 6 + [1] + [0] * 7
    with pytest.raises(ValueError, match="regular expression"):
        gates.token_properties(tokens, np.arange(len(tokens)), pattern="(")


def test_rank_statistics_agree_with_their_definitions():
    assert gates.rankdata(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(60, 3)).astype(float)  # many ties
    y = rng.random(60) < 0.3
    r, auc = gates.rank_correlation(x, y)
    for u in range(3):  # AUC by counting pairs, ties counting half
        pos, neg = x[y, u], x[~y, u]
        pairs = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
        assert auc[u] == pytest.approx(pairs / (len(pos) * len(neg)))
        assert r[u] == pytest.approx(2 * auc[u] - 1)
    rho, none = gates.rank_correlation(np.c_[np.arange(10.0), -np.arange(10.0) ** 3], np.arange(10.0))
    assert none is None and rho.tolist() == pytest.approx([1.0, -1.0])


def test_unit_search_finds_planted_units():
    rng = np.random.default_rng(1)
    words = ["الكتاب", "قال", "،", "2015", "رجل", "المدينة", "ذهب", "."]
    N, L, H = 1500, 2, 12
    ids = rng.integers(4, 40, size=N)
    tokens = [words[k] for k in rng.integers(0, len(words), size=N)]
    ids[::25] = 3  # some <eos>: left out of the search
    tokens = ["<eos>" if i == 3 else t for t, i in zip(tokens, ids)]
    positions = np.arange(N) % 25
    props = gates.token_properties(tokens, positions)
    acts = {g: rng.normal(size=(N, L, H)).astype(np.float32) for g in ("c", "h")}
    acts["c"][:, 1, 5] += 2.0 * props["article ال"]          # fires on the article
    acts["h"][:, 0, 3] -= 1.5 * props["punctuation"]         # switches off on punctuation
    acts["c"][:, 0, 7] = positions / 25 + rng.normal(scale=0.05, size=N)  # counts the position
    stats = CorpusStats(ids, tokens, positions, np.zeros((L, 3, H)), np.zeros((L, 3, H)), acts, special_ids=(0, 1, 2, 3))
    found = gates.search_units(stats, top=3)
    best = {name: (s[0].layer, s[0].gate, s[0].unit) for name, s in found.items()}
    assert best["article ال"] == (2, "c", 5) and found["article ال"][0].r > 0.6
    assert best["punctuation"] == (1, "h", 3) and found["punctuation"][0].r < -0.5
    assert found["punctuation"][0].auc < 0.25 and found["punctuation"][0].mean_yes < found["punctuation"][0].mean_no
    assert best["position"] == (1, "c", 7) and found["position"][0].r > 0.9 and found["position"][0].auc is None
    assert all(len(s) == 3 and abs(s[0].r) >= abs(s[-1].r) for s in found.values())
    assert found["article ال"][0].count == int(props["article ال"][ids > 3].sum())


def test_properties_nobody_has_are_skipped():
    stats = CorpusStats(np.array([4, 5, 6]), ["قال", "رجل", "ذهب"], np.array([1, 2, 3]), np.zeros((1, 3, 2)),
                        np.zeros((1, 3, 2)), {"h": np.random.default_rng(0).random((3, 1, 2)).astype(np.float32)})
    found = gates.search_units(stats)
    assert [name for name, scores in found.items() if scores] == ["position"]
    assert found["digits"] == [] and found["article ال"] == []


# --- corpus streams -------------------------------------------------------------------------


def test_corpus_ids_from_a_file_of_sentences(tok, tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text(f"{TEXTS[0]}\n\n{TEXTS[1]}\n", encoding="utf-8")
    ids = gates.corpus_ids(str(path), tok)
    assert ids.tolist() == [3] + tok.encode(TEXTS[0]) + [3] + tok.encode(TEXTS[1])
    assert gates.corpus_ids(str(path), tok, max_tokens=5).tolist() == ids[:5].tolist()
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="no text"):
        gates.corpus_ids(str(tmp_path / "blank.txt"), tok)


def test_corpus_ids_from_a_card_uses_the_checkpoints_vocabulary(tok, tmp_path, monkeypatch):
    from arlm import corpus

    monkeypatch.setenv("ARLM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "docs.txt").write_text("\n".join(f"{t} {k}" for k in range(30) for t in TEXTS[:3]), encoding="utf-8")
    card = tmp_path / "tiny.toml"
    card.write_text(f'name = "tiny"\n[source]\ntype = "path"\npath = "{tmp_path / "docs.txt"}"\n'
                    '[split]\nmethod = "hash"\nvalid = 0.2\ntest = 0.1\n', encoding="utf-8")
    prepared = corpus.prepare(str(card), tok.config, verbose=False, workers=1)
    # the corpus's own vocabulary: its cached valid ids, after one <eos>
    same = gates.corpus_ids(str(card), prepared.tokenizer, max_tokens=10_000)
    assert same.tolist() == [3] + prepared.valid.tolist()
    # another vocabulary: the same valid documents, re-encoded with the checkpoint's tokenizer
    other = gates.corpus_ids(str(card), tok, max_tokens=40)
    valid = corpus.documents(corpus.resolve(str(card)))["valid"]
    want = [3] + sum((tok.encode(t) + [3] for t in valid), [])
    assert len(other) == 40 and other.tolist() == want[:40]
