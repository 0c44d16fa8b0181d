import math
from collections import Counter

import pytest
import torch

from arlm.checkpoint import load, save
from arlm.model import LanguageModel, ModelConfig, load_vectors
from arlm.tokenizer import TokenizerConfig, WordTokenizer, count_words

SENTENCES = [
    "ذهب الولد الى المدرسة صباحا",
    "قرأت البنت كتابا جميلا في المكتبة",
    "يزرع الفلاح القمح في الحقل",
    "سافر التاجر الى المدينة مع قافلة كبيرة",
]


def tiny(softmax="full", **kw) -> LanguageModel:
    cfg = dict(vocab_size=60, emb_size=16, hidden_size=24, num_layers=2, softmax=softmax, cutoffs=[10, 30],
               dropout=0, dropout_input=0, dropout_hidden=0, dropout_embedding=0, weight_drop=0)
    cfg.update(kw)
    return LanguageModel(ModelConfig(**cfg))


@pytest.mark.parametrize("softmax", ["full", "adaptive"])
def test_log_probs_are_a_distribution_and_match_the_loss(softmax):
    torch.manual_seed(0)
    m = tiny(softmax).eval()
    ids, tg = torch.randint(0, 60, (6, 3)), torch.randint(0, 60, (6, 3))
    out = m(ids, targets=tg)
    lp = m.log_probs(out.features)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(6, 3), atol=1e-5, rtol=0)
    manual = -lp.gather(-1, tg.unsqueeze(-1)).mean()
    torch.testing.assert_close(out.loss, manual, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("softmax", ["full", "adaptive"])
def test_state_carried_across_two_windows_equals_one_long_window(softmax):
    torch.manual_seed(1)
    m = tiny(softmax).eval()
    ids = torch.randint(0, 60, (12, 4))
    whole = m(ids)
    first = m(ids[:5])
    second = m(ids[5:], first.state)
    torch.testing.assert_close(torch.cat([first.features, second.features]), whole.features, atol=1e-6, rtol=0)
    torch.testing.assert_close(second.state[1], whole.state[1], atol=1e-6, rtol=0)


def test_step_equals_full_forward():
    torch.manual_seed(2)
    m = tiny("adaptive").eval()
    ids = torch.randint(0, 60, (7, 2))
    full = m.log_probs(m(ids).features)
    state = None
    for t in range(7):
        lp, state = m.step(ids[t], state)
        torch.testing.assert_close(lp, full[t], atol=1e-5, rtol=0)


def test_weight_tying_shares_the_embedding():
    m = tiny("full", emb_size=16, hidden_size=24)
    assert m.decoder.weight is m.embedding.weight and m.projection is not None
    a = tiny("adaptive")
    head = a.adaptive.head
    assert head.embedding is a.embedding  # shortlist rows are the embedding rows
    untied = tiny("full", tie_weights=False)
    assert untied.decoder.weight is not untied.embedding.weight and untied.projection is None


def test_adaptive_falls_back_to_full_when_vocab_is_smaller_than_cutoffs():
    m = tiny("adaptive", vocab_size=8, cutoffs=[2000])
    assert m.adaptive is None and m.decoder is not None


def test_regularization_only_in_training():
    torch.manual_seed(3)
    m = tiny("full", dropout=0.5, dropout_input=0.3, dropout_hidden=0.3, dropout_embedding=0.2, weight_drop=0.5)
    ids = torch.randint(0, 60, (5, 2))
    m.eval()
    a, b = m(ids).features, m(ids).features
    assert torch.equal(a, b)
    m.train()
    assert not torch.equal(m(ids).features, m(ids).features)


def test_embedding_dropout_drops_whole_words():
    from arlm.model import embedding_dropout

    torch.manual_seed(0)
    weight = torch.randn(50, 8)
    ids = torch.randint(0, 10, (40, 3))  # every word occurs many times
    x = embedding_dropout(weight, ids, 0.3, training=True)
    ratio = (x / weight[ids])[..., 0]  # per occurrence: 0 or 1 / (1 - p)
    assert ((ratio == 0) | ((ratio - 1 / 0.7).abs() < 1e-5)).all()
    for word in ids.unique():
        assert ratio[ids == word].unique().numel() == 1  # the same for every occurrence
    assert torch.equal(embedding_dropout(weight, ids, 0.3, training=False), weight[ids])


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        ModelConfig(vocab_size=10, hidden_size=0)
    with pytest.raises(ValueError, match="dropout must be in"):
        ModelConfig(vocab_size=10, dropout=1.5)
    with pytest.raises(ValueError, match="softmax must be full or adaptive"):
        ModelConfig(vocab_size=10, softmax="hierarchical")


def _stream(tok):
    ids = []
    for s in SENTENCES:
        ids += [tok.eos_id] + tok.encode(s)
    return torch.tensor(ids + [tok.eos_id])


@pytest.mark.parametrize("softmax", ["full", "adaptive"])
def test_small_word_model_memorizes_arabic_sentences(softmax, tmp_path):
    cfg = TokenizerConfig(min_freq=1)
    tok, _ = WordTokenizer.from_counts(count_words(SENTENCES, cfg), cfg)
    stream = _stream(tok)
    torch.manual_seed(0)
    m = tiny(softmax, vocab_size=tok.vocab_size, cutoffs=[8, 16], adaptive_div=1.5)
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    x, y = stream[:-1].unsqueeze(1), stream[1:].unsqueeze(1)
    # Every document starts from the same state (reset at <eos>), so only a sentence's first
    # word is uncertain (one of four); every later word is determined by the sentence.
    inside = x[:, 0] != tok.eos_id
    for _ in range(150):
        nll = m.nll(m(x).features[:, 0], y[:, 0])
        loss = nll[inside].mean() + nll[~inside].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert nll[inside].mean().item() < 0.05
    assert nll[~inside].mean().item() < math.log(len(SENTENCES)) + 0.05  # ≈ uniform over the 4 starts
    # it saves, loads back as the same model, and predicts each next word
    save(tmp_path / "m", m, tok, {"note": "test"})
    m2, tok2, config = load(tmp_path / "m")
    assert config["model"]["softmax"] == softmax and tok2.itos == tok.itos
    lp = m2.log_probs(m2(x).features)[:, 0]
    assert torch.equal(lp.argmax(-1)[inside], y[inside, 0])
    starts = {tok.encode(s)[0] for s in SENTENCES}
    assert set(lp[~inside].topk(len(SENTENCES), -1).indices[0].tolist()) == starts


def test_reset_at_eos_makes_every_document_start_alike():
    torch.manual_seed(4)
    m = tiny("full").eval()
    doc = torch.tensor([3, 11, 12, 13, 14]).view(-1, 1)
    after_other = torch.cat([torch.tensor([3, 40, 41, 42, 43, 44]).view(-1, 1), doc])
    a = m(doc).features
    b = m(after_other).features[6:]
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    carried = tiny("full", reset_at_eos=False).eval()
    carried.load_state_dict(m.state_dict())
    assert not torch.allclose(carried(doc).features, carried(after_other).features[6:], atol=1e-4)


def test_pretrained_vectors_fill_known_words_and_report_coverage(tmp_path):
    vec = tmp_path / "ar.vec"
    vec.write_text("3 4\nأحمد 0.1 0.2 0.3 0.4\nكتاب 1 1 1 1\nغريب 5 5 5 5\n", encoding="utf-8")
    from arlm.normalize import normalize

    words = ["<pad>", "<unk>", "<bos>", "<eos>", "احمد", "كتاب", "قلم"]
    matrix, coverage = load_vectors(str(vec), words, 4, normalize)
    assert coverage == pytest.approx(2 / 7)
    torch.testing.assert_close(matrix[4], torch.tensor([0.1, 0.2, 0.3, 0.4]))
    torch.testing.assert_close(matrix[5], torch.ones(4))
    with pytest.raises(ValueError, match="set --emb-size 4"):
        load_vectors(str(vec), words, 8, normalize)


def test_parameter_count_is_what_the_config_says():
    m = tiny("full", tie_weights=False, emb_size=16, hidden_size=16, num_layers=1)
    H, E, V = 16, 16, 60
    expected = V * E + 4 * H * (H + E) + 4 * H + H * V + V
    assert m.num_parameters() == expected
    assert math.isfinite(m(torch.zeros(2, 1, dtype=torch.long)).features.sum().item())


@pytest.mark.parametrize("engine", [False, True])
def test_evaluation_follows_fused_optimizer_steps(engine):
    """A fused optimizer writes parameters without bumping their versions: evaluation must
    still see the new weights. The model keeps no derived copies, so it always does; an
    inference engine (FrozenModel) is a snapshot: one built after the step sees the new
    weights, one built before keeps the old answers."""
    import copy

    from arlm.inference import FrozenModel

    torch.manual_seed(4)
    m = tiny("adaptive", tie_weights=True, emb_size=24, hidden_size=24)
    ids, tg = torch.randint(0, 60, (7, 2)), torch.randint(0, 60, (7, 2))
    opt = torch.optim.AdamW(m.parameters(), lr=0.05, fused=True)

    def evaluate():
        m.eval()
        if engine:
            frozen = FrozenModel(m)
            return frozen.log_probs(frozen(ids).features), frozen
        with torch.no_grad():
            return m.log_probs(m(ids).features), None

    for _ in range(3):
        before, old_engine = evaluate()
        m.train()
        loss = m(ids, targets=tg).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        after, _ = evaluate()
        with torch.no_grad():
            fresh = copy.deepcopy(m)
            expected = fresh.log_probs(fresh(ids).features)
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, expected, atol=1e-6, rtol=0)
        if engine:  # the snapshot taken before the step is unchanged
            torch.testing.assert_close(old_engine.log_probs(old_engine(ids).features), before, atol=0, rtol=0)
