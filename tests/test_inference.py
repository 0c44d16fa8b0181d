"""The inference engine (arlm/inference.py): a FrozenModel gives the readable model's own
numbers in float32 — features, states, gates, log-probabilities, NLL — on every backend
path; it is a snapshot that never changes, and building it leaves the model untouched."""

import pickle
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from arlm.fast import build
from arlm.inference import FrozenModel, frozen
from arlm.model import LanguageModel, ModelConfig


def model(softmax: str, tie: bool = True, hidden: int = 32, layers: int = 2, vocab: int = 80, emb: int = 16,
          seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    return LanguageModel(ModelConfig(vocab_size=vocab, emb_size=emb, hidden_size=hidden, num_layers=layers,
                                     softmax=softmax, cutoffs=[10, 40], tie_weights=tie, eos_id=3)).eval()


CASES = [("full", True, 32, 2), ("adaptive", True, 32, 2), ("adaptive", False, 20, 1), ("full", False, 48, 3)]


@pytest.fixture(params=["C", "torch ops"])
def compiled(request):
    build.set_enabled(request.param == "C")
    yield request.param
    build.set_enabled(True)


@pytest.mark.parametrize("softmax,tie,hidden,layers", CASES)
# one token; the per-step paths (the time loop in C for a prompt's one sequence, in Python for 6); the C window
@pytest.mark.parametrize("T,B", [(1, 1), (5, 2), (31, 1), (5, 6), (40, 3)])
def test_frozen_float32_equals_the_model(softmax, tie, hidden, layers, T, B, compiled):
    m = model(softmax, tie, hidden, layers)
    engine = FrozenModel(m)
    # decoding steps read float32 through lowp's C loop, longer windows the training forward's paths
    assert [layer.low_for(T * B) is not None for layer in engine.layers] == [compiled == "C" and T * B <= 4] * layers
    ids = torch.randint(0, 80, (T, B))
    ids[T // 2, 0] = 3  # a document starts inside the window: the state is reset there
    state = (torch.randn(layers, B, hidden), torch.randn(layers, B, hidden))
    with torch.no_grad():
        ref = m(ids, state, record=True)
        ref_lp = m.log_probs(ref.features)
        ref_nll = m.nll(ref.features.reshape(-1, ref.features.shape[-1]), ids.reshape(-1))
    out = engine(ids, state, record=True)
    torch.testing.assert_close(out.features, ref.features, atol=1e-5, rtol=0)
    for a, b in zip(out.state, ref.state):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    for ta, tb in zip(out.traces, ref.traces):
        for name in ta._fields:
            torch.testing.assert_close(getattr(ta, name), getattr(tb, name), atol=1e-5, rtol=0)
    lp = engine.log_probs(out.features)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(T, B), atol=1e-5, rtol=0)
    nll = engine.nll(out.features.reshape(-1, out.features.shape[-1]), ids.reshape(-1))
    torch.testing.assert_close(nll, ref_nll, atol=1e-5, rtol=0)
    torch.testing.assert_close(nll, -lp.reshape(-1, lp.shape[-1]).gather(1, ids.reshape(-1, 1)).squeeze(1),
                               atol=1e-5, rtol=0)
    last = engine(ids, state, last_only=True)
    torch.testing.assert_close(last.features, out.features[-1:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("softmax,tie,hidden,layers", CASES + [("adaptive", True, 512, 2)])
@pytest.mark.parametrize("weights,compiled", [("float32", "C"), ("float32", "torch ops"), ("float16", "C"), ("int8", "C")])
def test_decoding_step_in_one_c_call_equals_the_window_path(softmax, tie, hidden, layers, weights, compiled):
    # engine.step (one token per sequence: generation, beam search, typing) runs the whole model in
    # one C call (lowp.Decoder); its state is the window path's to the bit, its log-probabilities
    # the same to float32 rounding, for sequences that go on and one that starts a document.
    build.set_enabled(compiled == "C")
    try:
        _check_decoding_steps(softmax, tie, hidden, layers, weights, compiled)
    finally:
        build.set_enabled(True)


def _check_decoding_steps(softmax, tie, hidden, layers, weights, compiled):
    emb = 256 if hidden == 512 else 16  # the default model's sizes too: its products are blocked by 4 rows
    m = model(softmax, tie, hidden, layers, vocab=3000 if hidden == 512 else 80, emb=emb)
    engine = FrozenModel(m, weights)
    assert (engine.c_step is not None) == (compiled == "C")
    for B in (1, 3, 4, 6):  # 6: more than a decoding step's rows; float32 goes back to torch's products
        ids = torch.randint(0, m.config.vocab_size, (B,))
        ids[-1] = 3  # <eos>: this sequence starts afresh
        state = (torch.randn(layers, B, hidden), torch.randn(layers, B, hidden))
        lp, (h, c) = engine.step(ids, state)
        out = engine(ids.view(1, -1), state)
        torch.testing.assert_close(lp, engine.log_probs(out.features[0]), atol=1e-6, rtol=0)
        assert torch.equal(h, out.state[0]) and torch.equal(c, out.state[1])
        if weights == "float32":  # and the readable model's own numbers
            with torch.no_grad():
                ref = m(ids.view(1, -1), state)
                torch.testing.assert_close(lp, m.log_probs(ref.features[0]), atol=1e-5, rtol=0)
                torch.testing.assert_close(h, ref.state[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(B), atol=1e-5, rtol=0)
    lp0, _ = engine.step(torch.tensor([5]))  # no state: from zeros, as the window path
    torch.testing.assert_close(lp0, engine.log_probs(engine(torch.tensor([[5]])).features[0]), atol=1e-6, rtol=0)
    with pytest.raises(IndexError):
        engine.step(torch.tensor([m.config.vocab_size]))


@pytest.mark.parametrize("weights", ["float16", "int8"])
def test_low_precision_engine_is_close_and_consistent(weights):
    m = model("adaptive", hidden=32)
    exact, low = FrozenModel(m), FrozenModel(m, weights)
    ids = torch.randint(0, 80, (12, 2))
    a, b = exact.log_probs(exact(ids).features), low.log_probs(low(ids).features)
    assert (a.exp() - b.exp()).abs().max() < (2e-3 if weights == "float16" else 3e-2)
    # one token at a time from the same engine gives its own full-window numbers
    state, steps = None, []
    for t in range(ids.shape[0]):
        lp, state = low.step(ids[t], state)
        steps.append(lp)
    torch.testing.assert_close(torch.stack(steps), b, atol=1e-5, rtol=0)


def test_engine_is_a_snapshot_and_leaves_the_model_alone():
    m = model("adaptive")
    before_dict = set(m.__dict__)
    before_params = {k: v.clone() for k, v in m.state_dict().items()}
    engine = FrozenModel(m, "int8")
    ids = torch.randint(0, 80, (6, 1))
    answer = engine.log_probs(engine(ids).features)
    assert set(m.__dict__) == before_dict  # nothing hung on the model
    for k, v in m.state_dict().items():
        assert torch.equal(v, before_params[k])
    pickle.loads(pickle.dumps(m))  # and it pickles as plain parameters
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(0.5)
    torch.testing.assert_close(engine.log_probs(engine(ids).features), answer, atol=0, rtol=0)
    again = FrozenModel(m)
    with torch.no_grad():
        torch.testing.assert_close(again.log_probs(again(ids).features), m.log_probs(m(ids).features), atol=1e-5, rtol=0)


def test_one_engine_serves_threads_with_the_single_threaded_answers():
    engine = FrozenModel(model("adaptive"))
    prompts = [torch.randint(0, 80, (n, 1)) for n in range(1, 17)]
    alone = [engine.log_probs(engine(p, last_only=True).features) for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: engine.log_probs(engine(p, last_only=True).features), prompts * 3))
    for k, lp in enumerate(together):
        torch.testing.assert_close(lp, alone[k % len(prompts)], atol=0, rtol=0)
    # decoding steps too (one C call each, its scratch its own)
    ids = [torch.tensor([n % 80]) for n in range(16)]
    alone = [engine.step(i)[0] for i in ids]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda i: engine.step(i)[0], ids * 3))
    for k, lp in enumerate(together):
        torch.testing.assert_close(lp, alone[k % len(ids)], atol=0, rtol=0)


def test_bad_weights_and_inputs_are_refused():
    m = model("full")
    with pytest.raises(ValueError, match="float32, float16 or int8"):
        FrozenModel(m, "bf16")
    with pytest.raises(TypeError, match="LanguageModel, FrozenModel or Predictor"):
        frozen("not a model")
    engine = FrozenModel(m)
    assert frozen(engine) is engine and isinstance(frozen(m), FrozenModel)
    assert "weights=float32" in repr(engine)

