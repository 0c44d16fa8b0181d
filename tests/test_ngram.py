"""Tests for arlm.ngram: normalization, the discount formula, the eos boundary rule,
agreement with a slow dict-based reference written straight from the formulas,
and the command-line entry point."""

import json
import math
import sys
import types
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

# the package is not installed in the venv and pytest does not put the repo root on sys.path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from arlm.ngram import KneserNey, main, modified_kn_discounts

EOS = 3
V = 30


def random_stream(seed: int, n: int = 3000, doc_len: int = 20) -> np.ndarray:
    """Ids 4..V-2 plus some <unk>=1, an eos about every `doc_len` tokens; id V-1 never occurs."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, V - 1, size=n)
    ids[rng.random(n) < 0.03] = 1
    ids[rng.random(n) < 1 / doc_len] = EOS
    ids[-1] = EOS
    return ids.astype(np.uint16)


# ---------------------------------------------------------------- slow reference

def reference_model(train, order, vocab_size, eos=EOS):
    """Modified Kneser-Ney with Counters over tuples, straight from the formulas; returns prob(ctx, w)."""
    s = [eos] + [int(t) for t in train]
    raw = [Counter() for _ in range(order + 1)]
    for i in range(1, len(s)):
        for k in range(1, order + 1):
            start = i - k + 1
            if start < 0 or eos in s[start + 1:i]:
                break
            raw[k][tuple(s[start:i + 1])] += 1
    counts = {order: raw[order]}
    for k in range(1, order):
        left = Counter(g[1:] for g in raw[k + 1])  # distinct left extensions
        counts[k] = {g: (c if k > 1 and g[0] == eos else left[g]) for g, c in raw[k].items()}
    discounts, totals, backoff = {}, {}, {}
    for k in range(1, order + 1):
        cc = Counter(counts[k].values())
        n1, n2, n3, n4 = cc[1], cc[2], cc[3], cc[4]
        d = (0.5, 1.0, 1.5)
        if min(n1, n2, n3, n4) > 0:
            y = n1 / (n1 + 2 * n2)
            cand = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
            d = cand if min(cand) > 0 else d
        discounts[k] = (0.0, *d)
        totals[k], backoff[k] = defaultdict(float), defaultdict(float)
        for g, c in counts[k].items():
            totals[k][g[:-1]] += c
            backoff[k][g[:-1]] += discounts[k][min(c, 3)]

    def prob(ctx, w):
        ctx = tuple(ctx)
        p = 1.0 / vocab_size
        for k in range(1, len(ctx) + 2):
            h = ctx[len(ctx) - (k - 1):] if k > 1 else ()
            if totals[k][h] > 0:
                c = counts[k].get(h + (w,), 0)
                p = (c - discounts[k][min(c, 3)] + backoff[k][h] * p) / totals[k][h]
        return p

    return prob


def boundary_context(stream, i, order):
    """Context of stream[i]: previous order-1 ids, restarting at the last eos (stream starts after an eos)."""
    history = [EOS] + [int(t) for t in stream[:i]]
    last_eos = max(j for j, t in enumerate(history) if t == EOS)
    return history[last_eos:][-(order - 1):]


# ---------------------------------------------------------------- tests

CONTEXTS = [
    [],                       # start of stream
    [EOS],                    # right after eos
    [5, 6, EOS],              # after eos, with older ids that must be ignored
    [V - 1, V - 1, V - 1, V - 1],  # id never seen in training
    [5, EOS, 7, 8],           # eos in the middle
    [1, 1],                   # <unk> is an ordinary token
]


@pytest.mark.parametrize("order", [2, 3, 4, 5])
def test_distribution_normalized_positive_and_matches_reference(order):
    train = random_stream(0)
    model = KneserNey(order, V, eos_id=EOS).fit(train)
    ref = reference_model(train, order, V)
    seen = [list(train[100:104]), list(train[2000:2010])]
    after_eos = int(np.flatnonzero(train == EOS)[5])
    seen.append(list(train[after_eos - 3:after_eos + 1]))
    for ctx in CONTEXTS + seen:
        p = model.distribution(ctx)
        assert p.shape == (V,)
        assert abs(p.sum() - 1.0) < 1e-9
        assert p.min() > 0
        bctx = boundary_context(ctx, len(ctx), order)
        expected = np.array([ref(bctx, w) for w in range(V)])
        np.testing.assert_allclose(p, expected, rtol=1e-10, atol=0)
        for w in (0, 1, EOS, 7, int(np.argmax(p)), V - 1):
            assert model.logprob(ctx, w) == pytest.approx(math.log(p[w]), rel=1e-12, abs=1e-12)


def test_context_restarts_after_eos():
    model = KneserNey(4, V, eos_id=EOS).fit(random_stream(1))
    np.testing.assert_array_equal(model.distribution([9, 8, EOS, 7]), model.distribution([EOS, 7]))
    np.testing.assert_array_equal(model.distribution([EOS, 7]), model.distribution([7]))
    np.testing.assert_array_equal(model.distribution([EOS]), model.distribution([]))
    assert not np.array_equal(model.distribution([9, 8, 7]), model.distribution([7]))


def test_discount_formula_on_hand_counts():
    # Documents "4 5" x4, "6" x3, "7 8" x2, "9" x1 (each followed by eos; the stream starts after an eos).
    # Bigram counts: (eos,4) (4,5) (5,eos) -> 4; (eos,6) (6,eos) -> 3; (eos,7) (7,8) (8,eos) -> 2;
    # (eos,9) (9,eos) -> 1.  So n1=2, n2=3, n3=2, n4=3, Y = 2/8 = 0.25,
    # D1 = 1 - 2*0.25*3/2 = 0.25, D2 = 2 - 3*0.25*2/3 = 1.5, D3+ = 3 - 4*0.25*3/2 = 1.5.
    stream = np.array([4, 5, EOS] * 4 + [6, EOS] * 3 + [7, 8, EOS] * 2 + [9, EOS], dtype=np.uint16)
    model = KneserNey(2, 10, eos_id=EOS).fit(stream)
    np.testing.assert_allclose(model.levels[1].discounts, [0.0, 0.25, 1.5, 1.5], rtol=0, atol=1e-15)
    np.testing.assert_allclose(modified_kn_discounts(model.levels[1].counts), [0.0, 0.25, 1.5, 1.5], atol=1e-15)
    # Unigram continuation counts: 4,5,6,7,8,9 each have one left neighbour, eos has four (5,6,8,9):
    # n2 = 0, so the fallback discounts 0.5/1/1.5 apply. Total 10, backoff mass 6*0.5 + 1.5 = 4.5,
    # P1(5) = (1 - 0.5)/10 + 0.45/10 = 0.095.
    # Context "4": only (4,5), count 4 -> P(5|4) = (4 - 1.5)/4 + (1.5/4) * 0.095.
    assert math.exp(model.logprob([4], 5)) == pytest.approx(2.5 / 4 + 1.5 / 4 * 0.095, rel=1e-12)
    # P(4 | start of document) uses the raw bigram counts after eos: (eos,4)=4, (eos,6)=3, (eos,7)=2, (eos,9)=1,
    # backoff mass (1.5 + 1.5 + 1.5 + 0.25) / 10; P1(4) = 0.095 as well.
    assert math.exp(model.logprob([], 4)) == pytest.approx(2.5 / 10 + 4.75 / 10 * 0.095, rel=1e-12)


def test_discount_formula_direct_and_fallback():
    counts = np.array([1] * 10 + [2] * 4 + [3] * 3 + [4] * 2 + [7] * 5)
    y = 10 / (10 + 2 * 4)
    expected = [0.0, 1 - 2 * y * 4 / 10, 2 - 3 * y * 3 / 4, 3 - 4 * y * 2 / 3]
    np.testing.assert_allclose(modified_kn_discounts(counts), expected, atol=1e-15)
    np.testing.assert_array_equal(modified_kn_discounts(np.array([1, 1, 2, 5])), [0.0, 0.5, 1.0, 1.5])


def test_lower_orders_use_continuation_counts_except_after_eos():
    # order 3 on "4 5 eos" x4 + "6 5 eos": bigram (4,5) occurs 4 times but has 1 left context (eos),
    # (eos,4) has no left context so keeps its raw count 4; unigram 5 follows two ids (4 and 6).
    stream = np.array([4, 5, EOS] * 4 + [6, 5, EOS], dtype=np.uint16)
    model = KneserNey(3, 10, eos_id=EOS).fit(stream)
    lvl1, lvl2 = model.levels[0], model.levels[1]

    def count(level, rank_prefix, w):
        idx = int(KneserNey._lookup(level, np.array([rank_prefix * 10 + w]))[0])
        return int(level.counts[idx])

    r = {w: int(KneserNey._lookup(lvl1, np.array([w]))[0]) for w in (4, 5, 6, EOS)}
    assert count(lvl1, 0, 5) == 2
    assert count(lvl2, r[4], 5) == 1
    assert count(lvl2, r[EOS], 4) == 4
    assert count(lvl2, r[EOS], 6) == 1
    assert count(model.levels[2], int(KneserNey._lookup(lvl2, np.array([r[EOS] * 10 + 4]))[0]), 5) == 4


def test_repetitive_stream():
    # after 5 comes 6, 8 or 10 and after 6 comes 7 or 5, but two ids always determine the next one
    sentence = [5, 6, 7, 5, 8, 9, 6, 5, 10, 11, EOS]
    stream = np.array(sentence * 100, dtype=np.uint16)
    shuffled = np.random.default_rng(0).permutation(stream)
    ppl = {}
    for order in (2, 3):
        model = KneserNey(order, V, eos_id=EOS).fit(stream)
        ppl[order] = model.evaluate(stream)["perplexity"]
        assert model.evaluate(shuffled)["perplexity"] > 4 * ppl[order]
    assert ppl[3] < 1.05
    assert ppl[3] < ppl[2] - 0.1


@pytest.mark.parametrize("order", [2, 3, 4, 5])
def test_evaluate_matches_token_by_token(order):
    train = random_stream(2)
    model = KneserNey(order, V, eos_id=EOS).fit(train)
    # held-out stream with an unseen id, <unk>, empty documents (eos eos) and no final eos
    held = random_stream(3, n=400)
    held[[10, 50, 51, 52, 200]] = [V - 1, EOS, EOS, 1, V - 1]
    held = held[:-3]
    nll = [-model.logprob(boundary_context(held, i, order), int(held[i])) for i in range(len(held))]
    result = model.evaluate(held)
    assert result["tokens"] == len(held)
    assert result["nll"] == pytest.approx(float(np.mean(nll)), rel=1e-12)
    assert result["perplexity"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-12)
    # and the full-history form of logprob (the model applies the boundary rule itself) agrees
    full = [-model.logprob(held[:i], int(held[i])) for i in range(len(held))]
    np.testing.assert_allclose(full, nll, rtol=1e-12)
    # uint32 input gives the same result
    assert model.evaluate(held.astype(np.uint32))["nll"] == result["nll"]


def test_rejects_out_of_range_ids():
    model = KneserNey(2, V, eos_id=EOS)
    with pytest.raises(ValueError):
        model.fit(np.array([4, V, EOS]))
    with pytest.raises(ValueError):
        model.fit(np.array([], dtype=np.uint16))
    with pytest.raises(ValueError):
        KneserNey(1, V)


def test_orders_absent_from_training_back_off():
    # only empty documents: no 3-gram exists (eos may only start a context), yet everything normalizes
    model = KneserNey(4, V, eos_id=EOS).fit(np.array([EOS, EOS], dtype=np.uint16))
    assert model.num_ngrams() == [1, 1, 0, 0]
    for ctx in ([], [5], [EOS, 5], [5, 6, 7]):
        p = model.distribution(ctx)
        assert abs(p.sum() - 1) < 1e-12 and p.min() > 0
    assert math.isfinite(model.evaluate(np.array([5, 6, 7, EOS], dtype=np.uint16))["perplexity"])


# ---------------------------------------------------------------- command line

def fake_corpus_modules(monkeypatch, calls):
    tokenizer_mod = types.ModuleType("arlm.tokenizer")
    corpus_mod = types.ModuleType("arlm.corpus")

    class TokenizerConfig:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    def prepare(corpus, tokenizer):
        calls.append((corpus, tokenizer.__dict__))
        return types.SimpleNamespace(train=random_stream(4), valid=random_stream(5, n=500),
                                     test=random_stream(6, n=500),
                                     tokenizer=types.SimpleNamespace(vocab_size=V, eos_id=EOS))

    tokenizer_mod.TokenizerConfig = TokenizerConfig
    corpus_mod.prepare = prepare
    monkeypatch.setitem(sys.modules, "arlm.tokenizer", tokenizer_mod)
    monkeypatch.setitem(sys.modules, "arlm.corpus", corpus_mod)


def test_main_writes_json(monkeypatch, tmp_path, capsys):
    calls = []
    fake_corpus_modules(monkeypatch, calls)
    out = tmp_path / "ngram.json"
    assert main(["--corpus", "tiny", "--order", "2", "4", "--vocab-size", "123", "--min-freq", "3",
                 "--json", str(out)]) == 0
    assert calls == [("tiny", {"kind": "word", "vocab_size": 123, "min_freq": 3})]
    results = json.loads(out.read_text())["results"]
    assert [r["order"] for r in results] == [2, 4]
    for r in results:
        expected = KneserNey(r["order"], V, EOS).fit(random_stream(4)).evaluate(random_stream(6, n=500))
        assert r["test"]["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-12)
        assert 1 < r["valid"]["perplexity"] < math.inf
    assert "valid ppl" in capsys.readouterr().out


def test_main_help_and_validation(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for option, default in [("--corpus", "hadith"), ("--order", "[3, 5]"), ("--vocab-size", "50000"),
                            ("--min-freq", "2"), ("--tokenizer", "word"), ("--json", "None")]:
        assert option in help_text and f"default: {default}" in help_text
    with pytest.raises(SystemExit) as exc:
        main(["--order", "6"])
    assert exc.value.code == 2


# ---------------------------------------------------------------- files and mixing


@pytest.mark.parametrize("order", [2, 5])
def test_fast_distribution_is_the_slow_formula_bit_for_bit(order):
    model = KneserNey(order, V, eos_id=EOS).fit(random_stream(7))
    train = random_stream(7)
    for ctx in CONTEXTS + [list(train[i:i + 6]) for i in range(0, 2000, 97)]:
        slow = model._prob(model._context_ranks(ctx), np.arange(V, dtype=np.int64))
        np.testing.assert_array_equal(model.distribution(ctx), slow)


def test_token_probs_are_the_per_token_probabilities():
    model = KneserNey(4, V, eos_id=EOS).fit(random_stream(8))
    stream = random_stream(9, n=300)
    probs = model.token_probs(stream)
    assert probs.shape == (len(stream),)
    for j in (0, 1, 17, 150, len(stream) - 1):
        assert math.log(probs[j]) == pytest.approx(model.logprob(list(stream[:j]), int(stream[j])), rel=1e-12)
    assert model.evaluate(stream)["nll"] == pytest.approx(-np.log(probs).mean(), rel=1e-15)


def test_save_and_load_round_trip_exactly(tmp_path):
    model = KneserNey(5, V, eos_id=EOS).fit(random_stream(10))
    path = tmp_path / "ngram.npz"
    model.save(path, weight=0.25, note="x")
    back, meta = KneserNey.load(path)
    assert (back.order, back.vocab_size, back.eos_id) == (5, V, EOS)
    assert meta["weight"] == 0.25 and meta["note"] == "x"
    stream = random_stream(11, n=400)
    np.testing.assert_array_equal(back.token_probs(stream), model.token_probs(stream))
    np.testing.assert_array_equal(back.distribution([5, 6, 7]), model.distribution([5, 6, 7]))
    assert [p.name for p in tmp_path.iterdir()] == ["ngram.npz"]  # no temporary left behind
    path.write_bytes(path.read_bytes()[:100])  # truncated: one clear error
    with pytest.raises(ValueError, match="not a readable arlm n-gram file"):
        KneserNey.load(path)
    with pytest.raises(RuntimeError, match="fit"):
        KneserNey(3, V).save(tmp_path / "empty.npz")


def test_mixture_weight_maximizes_the_likelihood():
    from arlm.ngram import mixture_weight

    rng = np.random.default_rng(0)
    p_model, p_ngram = rng.uniform(0.01, 1, 2000), rng.uniform(0.01, 1, 2000) ** 2
    w = mixture_weight(p_model, p_ngram)
    grid = np.linspace(0, 1, 10001)
    ll = [np.log((1 - g) * p_model + g * p_ngram).sum() for g in grid]
    assert w == pytest.approx(grid[int(np.argmax(ll))], abs=2e-4)
    assert mixture_weight(p_model, p_model * 1e-3) < 1e-3     # a useless n-gram gets ~0
    assert mixture_weight(p_ngram * 1e-3, p_ngram) > 1 - 1e-3  # a useless model: ~1
    with pytest.raises(ValueError):
        mixture_weight([], [])
