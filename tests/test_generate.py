"""Tests for arlm.generate: a tiny LSTM is trained here until it has memorized five short
Arabic sentences, saved with arlm.checkpoint and loaded with arlm.load; then prediction,
sampling, beam search, scoring and the command line are checked against what it learned
and against the model's own full forward pass. Full and adaptive softmax both, where cheap."""

import math
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import arlm
import arlm.generate as gen
from arlm import checkpoint
from arlm.generate import Predictor, filter_top_k, filter_top_p, main
from arlm.model import LanguageModel, ModelConfig
from arlm.tokenizer import SentencePieceTokenizer, TokenizerConfig, WordTokenizer, count_words

SENTENCES = [
    "ذهب الولد إلى المدرسة صباحا",
    "قرأت البنت كتابا جميلا في المكتبة",
    "يشرب الجد الشاي بعد العشاء",
    "تطير العصافير فوق الأشجار العالية",
    "كتب المعلم الدرس على السبورة .",
]


def train_and_save(directory, softmax: str):
    """Memorize SENTENCES (each ends with <eos>) and save a checkpoint to `directory`."""
    config = TokenizerConfig(min_freq=1)
    tok, _ = WordTokenizer.from_counts(count_words(SENTENCES, config), config)
    docs = [tok.encode(s) + [tok.eos_id] for s in SENTENCES]
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(
        vocab_size=tok.vocab_size, emb_size=24, hidden_size=48, num_layers=1, dropout=0.0, dropout_input=0.0,
        dropout_hidden=0.0, dropout_embedding=0.0, weight_drop=0.0, softmax=softmax, cutoffs=[8]))
    assert model.config.uses_adaptive == (softmax == "adaptive")
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    rng = random.Random(0)
    model.train()
    for _ in range(150):
        # 8 streams [eos] s_a [eos] s_b ... in shuffled orders, read from the zero state as
        # at inference: every sentence is seen both right after a fresh start and mid-stream.
        streams = []
        for _ in range(8):
            order = rng.sample(docs, len(docs))
            streams.append([tok.eos_id] + [t for d in order for t in d])
        ids = torch.tensor(streams).T  # (T, 8)
        loss = model(ids[:-1], targets=ids[1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    # The first word after <eos> is a 1-in-5 guess; everything else is memorized.
    assert loss.item() < math.log(5) / 5 + 0.05, loss.item()
    checkpoint.save(directory, model, tok, {"test": softmax})
    return directory


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    made = {}

    def get(softmax: str):
        if softmax not in made:
            made[softmax] = train_and_save(root / softmax, softmax)
        return made[softmax]

    return get


@pytest.fixture(scope="module", params=["full", "adaptive"])
def lm(request, checkpoints) -> Predictor:
    return arlm.load(checkpoints(request.param))


@pytest.fixture(scope="module")
def lm_full(checkpoints) -> Predictor:
    return arlm.load(checkpoints("full"))


def words(lm, sentence):
    return lm.tokenizer.tokenize(sentence)


def full_forward_log_probs(lm, text):
    """(targets, log-prob of each target) from one forward pass over [eos] + text, by the
    predictor's inference engine; in float32 also checked equal to the readable model's."""
    tok, engine = lm.tokenizer, lm.engine
    ids = [tok.eos_id] + tok.encode(text)
    x = torch.tensor(ids).view(-1, 1)
    log_probs = engine.log_probs(engine(x).features[:, 0])  # (T, V)
    if engine.weights == "float32":
        with torch.no_grad():
            plain = lm.model.log_probs(lm.model(x).features[:, 0])
        torch.testing.assert_close(log_probs, plain, atol=1e-5, rtol=0)
    return ids, log_probs


# --- what the model memorized -------------------------------------------------------


def test_load_gives_a_predictor(lm, checkpoints):
    assert isinstance(lm, Predictor)
    assert lm.model.training is False
    assert lm.config["run"]["test"] in ("full", "adaptive")
    assert "Predictor(" in repr(lm)


def test_predict_next_knows_every_next_word(lm):
    for s in SENTENCES:
        w = words(lm, s)
        for n in range(1, len(w) + 1):
            token, p = lm.predict_next(" ".join(w[:n]), k=3)[0]
            assert token == (w[n] if n < len(w) else "<eos>"), (s, n)
            assert p > 0.9, (s, n, p)


def test_predict_next_normalizes_like_training(lm_full):
    # Diacritics, hamza on alef and teh marbuta are normalized away exactly as in training.
    assert lm_full.predict_next("ذَهَبَ الوَلَدُ", k=1)[0][0] == lm_full.tokenizer.tokenize("إلى")[0]
    assert lm_full.predict_next("ذهب الولد إلى المدرسة", k=1)[0][0] == "صباحا"


def test_empty_prefix_is_the_start_of_a_document(lm):
    top = lm.predict_next("", k=5)
    assert {t for t, _ in top} == {words(lm, s)[0] for s in SENTENCES}
    assert all(0.1 < p < 0.35 for _, p in top)
    assert lm.predict_next("   ", k=5) == top  # whitespace normalizes to nothing


def test_next_distribution_sums_to_one(lm):
    for prefix in ["", "ذهب", "كلمات غير معروفة"]:
        probs = lm.next_distribution(prefix)
        assert probs.shape == (lm.vocab_size,)
        assert abs(probs.sum().item() - 1) < 1e-5
        assert (probs >= 0).all()
    assert not probs.is_inference()


def test_predict_next_probabilities_are_the_models_own(lm_full):
    probs = lm_full.next_distribution("يشرب")
    top = lm_full.predict_next("يشرب", k=lm_full.vocab_size)
    tok = lm_full.tokenizer
    # pad, bos, unk are left out of the ranking but nothing is renormalized
    assert {"<pad>", "<bos>", "<unk>"}.isdisjoint(t for t, _ in top)
    assert len(top) == lm_full.vocab_size - 3
    for t, p in top:
        assert p == pytest.approx(probs[tok.token_to_id(t)].item(), rel=1e-5)
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    with_unk = lm_full.predict_next("يشرب", k=lm_full.vocab_size, allow_unk=True)
    assert "<unk>" in {t for t, _ in with_unk} and len(with_unk) == lm_full.vocab_size - 2


def test_unknown_words_and_punctuation_only_prompts(lm_full):
    tok = lm_full.tokenizer
    assert set(tok.encode("سيارة حمراء سريعة")) == {tok.unk_id}
    for prompt in ["سيارة حمراء سريعة", ".", "؟ ! ،"]:
        top = lm_full.predict_next(prompt, k=4)
        assert len(top) == 4 and all(t != "<unk>" for t, _ in top)
        assert "<unk>" not in lm_full.generate(prompt, max_new_tokens=10, seed=1)


def test_greedy_regenerates_each_sentence(lm):
    for s in SENTENCES:
        w = words(lm, s)
        assert lm.generate(w[0], temperature=0) == " ".join(w[1:])


def test_very_long_prompt(lm_full, monkeypatch):
    prompt = " ".join(SENTENCES * 400)  # 10,400 words
    assert len(lm_full.tokenizer.encode(prompt)) > 10_000
    # A defined answer (the model's ranking after the whole walk), not an error; whether it
    # is a good guess depends on the model having seen documents that long.
    top = lm_full.predict_next(prompt + " ذهب", k=3)
    assert len(top) == 3 and all(0 < p <= 1 for _, p in top) and top[0][1] >= top[1][1] >= top[2][1]
    # Reading in chunks is the same walk as reading at once.
    dist = lm_full.next_distribution(prompt)
    monkeypatch.setattr(gen, "READ_CHUNK", 100_000)
    assert torch.allclose(dist, lm_full.next_distribution(prompt), atol=1e-6)


# --- sampling -----------------------------------------------------------------------


def test_seed_makes_samples_reproducible(lm_full):
    kw = dict(max_new_tokens=12, temperature=3.0, stop_at_eos=False)
    a = lm_full.generate("", seed=7, **kw)
    assert a == lm_full.generate("", seed=7, **kw)
    assert len({lm_full.generate("", seed=s, **kw) for s in range(8)}) > 1
    # the global RNG is neither used nor disturbed
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    lm_full.generate("", seed=3, **kw)
    lm_full.generate("", **kw)
    assert torch.rand(1) == before


def test_top_k_1_is_greedy(lm):
    for s in SENTENCES[:3]:
        w = words(lm, s)
        greedy = lm.generate(w[0], temperature=0, max_new_tokens=8, stop_at_eos=False)
        assert lm.generate(w[0], temperature=2.0, top_k=1, seed=5, max_new_tokens=8, stop_at_eos=False) == greedy
        assert lm.generate(w[0], temperature=1e-30, seed=5, max_new_tokens=8, stop_at_eos=False) == greedy


def test_never_emits_pad_bos_unk(lm_full):
    tok = lm_full.tokenizer
    for ids in lm_full._generate_ids(["", "ذهب"], max_new_tokens=200, temperature=50.0, seed=0, stop_at_eos=False):
        assert len(ids) == 200 and {tok.pad_id, tok.bos_id, tok.unk_id}.isdisjoint(ids)
        assert tok.eos_id in ids  # at this temperature documents do end, and generation goes on
    ids = lm_full._generate_ids([""], max_new_tokens=300, temperature=50.0, seed=0, allow_unk=True,
                                stop_at_eos=False)[0]
    assert tok.unk_id in ids and {tok.pad_id, tok.bos_id}.isdisjoint(ids)


def test_stop_at_eos(lm_full):
    w = words(lm_full, SENTENCES[2])
    assert lm_full.generate(w[0], temperature=0, max_new_tokens=50) == " ".join(w[1:])
    more = lm_full.generate(w[0], temperature=0, max_new_tokens=50, stop_at_eos=False)
    assert more.startswith(" ".join(w[1:]) + "\n")  # the next document starts a new line
    assert lm_full.generate(w[0], temperature=0, max_new_tokens=2) == " ".join(w[1:3])
    assert lm_full.generate(w[0], max_new_tokens=0) == ""


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([0.125, 0.5, 0.125, 0.25]).log()  # sorted: 0.5, 0.25, 0.125, 0.125
    kept = lambda p: torch.isfinite(filter_top_p(logits, p)).tolist()  # noqa: E731
    assert kept(0.3) == [False, True, False, False]
    assert kept(0.5) == [False, True, False, False]   # 0.5 alone reaches 0.5
    assert kept(0.6) == [False, True, False, True]
    assert kept(0.75) == [False, True, False, True]   # 0.5 + 0.25 reaches 0.75 exactly
    assert sum(kept(0.8)) == 3
    assert kept(1.0) == [True] * 4
    # rows are filtered independently; kept logits are unchanged
    batch = torch.stack([logits, logits.flip(0)])
    out = filter_top_p(batch, 0.6)
    assert torch.isfinite(out).tolist() == [[False, True, False, True], [True, False, True, False]]
    assert torch.equal(out[torch.isfinite(out)], batch[torch.isfinite(out)])


def test_top_k_filter():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert torch.isfinite(filter_top_k(logits, 2)).tolist() == [[False, True, True, False]]
    assert torch.equal(filter_top_k(logits, 10), logits)


def test_batched_generate_equals_one_at_a_time(lm):
    prompts = ["ذهب", "", "يشرب الجد", "سيارة", "تطير العصافير فوق"]
    assert lm.generate(prompts, temperature=0) == [lm.generate(p, temperature=0) for p in prompts]
    kw = dict(max_new_tokens=10, temperature=1.5, top_p=0.95, stop_at_eos=False)
    batched = lm.generate(prompts, seed=11, **kw)
    assert batched == [lm.generate(p, seed=11 + i, **kw) for i, p in enumerate(prompts)]
    assert lm.generate([]) == []


def test_thread_safe(lm_full):
    jobs = [("", s) for s in range(6)] + [(SENTENCES[1], s) for s in range(6)]
    kw = dict(max_new_tokens=15, temperature=2.0, stop_at_eos=False)
    serial = [lm_full.generate(p, seed=s, **kw) for p, s in jobs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda job: lm_full.generate(job[0], seed=job[1], **kw), jobs))
        tops = list(pool.map(lambda s: lm_full.predict_next(s, k=2), SENTENCES))
    assert parallel == serial
    assert tops == [lm_full.predict_next(s, k=2) for s in SENTENCES]


# --- beam search --------------------------------------------------------------------


def test_beam_size_1_is_greedy(lm):
    for prompt in ["ذهب", "", "سيارة حمراء", "كتب المعلم"]:
        greedy = lm.generate(prompt, temperature=0, max_new_tokens=20)
        [(text, score)] = lm.beam_search(prompt, beam_size=1, max_new_tokens=20)
        assert text == greedy


def test_beam_search_finds_the_memorized_sentence(lm):
    w = words(lm, SENTENCES[1])
    beams = lm.beam_search(w[0], beam_size=4, max_new_tokens=20)
    assert len(beams) == 4
    assert beams[0][0] == " ".join(w[1:])
    assert [s for _, s in beams] == sorted((s for _, s in beams), reverse=True)
    # the score is the continuation's log-probability (with its eos) over its length
    tok = lm.tokenizer
    ids, log_probs = full_forward_log_probs(lm, SENTENCES[1])
    targets = ids[2:] + [tok.eos_id]
    expected = sum(log_probs[i + 1, t].item() for i, t in enumerate(targets)) / len(targets)
    assert beams[0][1] == pytest.approx(expected, abs=1e-4)
    assert len(lm.beam_search(w[0], beam_size=4, n_best=2)) == 2
    # length_penalty 0 is the plain total log-probability
    [(t0, s0)] = lm.beam_search(w[0], beam_size=3, n_best=1, length_penalty=0.0)
    assert t0 == beams[0][0] and s0 == pytest.approx(expected * len(targets), abs=1e-4)


def test_beam_search_without_eos_runs_to_max_new_tokens(lm_full):
    for text, _ in lm_full.beam_search("ذهب", beam_size=3, max_new_tokens=7, stop_at_eos=False):
        assert len(text.split()) + text.count("\n") == 7  # each <eos> inside shows as a line break
    assert lm_full.beam_search("ذهب", beam_size=2, max_new_tokens=0) == [("", 0.0)]


# --- scoring: the state walk equals the full forward pass ---------------------------


def assert_steps_equal_full_forward(lm, text: str) -> torch.Tensor:
    """engine.step token by token gives the log-probabilities of one forward pass."""
    ids, log_probs = full_forward_log_probs(lm, text)
    state = None
    with torch.no_grad():
        for t, token in enumerate(ids):
            step_log_probs, state = lm.engine.step(torch.tensor([token]), state)
            assert torch.allclose(step_log_probs[0], log_probs[t], atol=1e-5), t
    return log_probs


def test_step_by_step_equals_full_forward(lm):
    text = SENTENCES[3] + " " + SENTENCES[0] + " كلمة"
    log_probs = assert_steps_equal_full_forward(lm, text)
    # and what the predictor reads for a prefix is the same distribution
    assert torch.allclose(lm.next_distribution(text), log_probs[-1].exp(), atol=1e-6)


@pytest.mark.parametrize("chunk", [3, 1024])
def test_score_equals_full_forward(lm, monkeypatch, chunk):
    monkeypatch.setattr(gen, "READ_CHUNK", chunk)
    text = SENTENCES[4] + " كلمة " + SENTENCES[2]
    ids, log_probs = full_forward_log_probs(lm, text)
    tok = lm.tokenizer
    targets = ids[1:] + [tok.eos_id]
    expected = [log_probs[i, t].item() for i, t in enumerate(targets)]
    result = lm.score(text)
    assert [t for t, _ in result["tokens"]] == [tok.id_to_token(t) for t in targets]
    assert result["tokens"][-1][0] == "<eos>" and "<unk>" in [t for t, _ in result["tokens"]]
    assert [lp for _, lp in result["tokens"]] == pytest.approx(expected, abs=1e-4)
    assert result["num_tokens"] == len(targets)
    assert result["total_logprob"] == pytest.approx(sum(expected), abs=1e-3)
    assert result["perplexity"] == pytest.approx(math.exp(-sum(expected) / len(targets)), rel=1e-3)


def test_score_of_a_memorized_sentence(lm_full):
    result = lm_full.score(SENTENCES[0])
    assert result["num_tokens"] == len(words(lm_full, SENTENCES[0])) + 1
    # only the first word is uncertain (1 in 5), so the perplexity is about 5 ** (1 / 6)
    assert 1.0 < result["perplexity"] < 1.5
    assert lm_full.score("")["num_tokens"] == 1


def test_sentencepiece_tokenizer():
    # An untrained model: this checks the plumbing (pieces, special names, decoding), not quality.
    config = TokenizerConfig(kind="sentencepiece", vocab_size=300)
    tok, _ = SentencePieceTokenizer.train(SENTENCES * 20, config)
    torch.manual_seed(0)
    lm = Predictor(LanguageModel(ModelConfig(vocab_size=tok.vocab_size, emb_size=16, hidden_size=16, num_layers=2,
                                             softmax="adaptive", cutoffs=[50])), tok)
    top = lm.predict_next("ذهب الولد", k=tok.vocab_size)
    assert len(top) == tok.vocab_size - 3 and "<eos>" in {t for t, _ in top}
    assert {"</s>", "<s>", "<pad>", "<unk>"}.isdisjoint(t for t, _ in top)
    result = lm.score("ذهب الولد")
    assert result["tokens"][-1][0] == "<eos>" and result["num_tokens"] == len(tok.encode("ذهب الولد")) + 1
    texts = lm.generate(["ذهب", "يشرب"], max_new_tokens=6, seed=2, stop_at_eos=False)
    assert texts == [lm.generate("ذهب", max_new_tokens=6, seed=2, stop_at_eos=False),
                     lm.generate("يشرب", max_new_tokens=6, seed=3, stop_at_eos=False)]
    assert len(lm.beam_search("ذهب", beam_size=3, max_new_tokens=4)) == 3


# --- argument checks ----------------------------------------------------------------


@pytest.mark.parametrize("call, message", [
    (lambda lm: lm.generate("x", top_p=1.5), "top_p must be in (0, 1]"),
    (lambda lm: lm.generate("x", top_p=0), "top_p must be in (0, 1]"),
    (lambda lm: lm.generate("x", temperature=-1), "temperature must be"),
    (lambda lm: lm.generate("x", top_k=0), "top_k must be"),
    (lambda lm: lm.generate("x", max_new_tokens=-1), "max_new_tokens must be"),
    (lambda lm: lm.generate("x", seed=-3), "seed must be"),
    (lambda lm: lm.generate(["x", 3]), "prompt must be a string"),
    (lambda lm: lm.generate(None), "prompt must be a string or a list of strings"),
    (lambda lm: lm.predict_next("x", k=0), "k must be an integer >= 1"),
    (lambda lm: lm.predict_next(None), "prompt must be a string"),
    (lambda lm: lm.beam_search("x", beam_size=0), "beam_size must be"),
    (lambda lm: lm.beam_search("x", beam_size=2, n_best=3), "n_best must be"),
    (lambda lm: lm.beam_search("x", length_penalty=-1), "length_penalty must be"),
])
def test_bad_arguments_raise_one_line_value_errors(lm_full, call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        call(lm_full)
    assert "\n" not in str(info.value)


# --- command line -------------------------------------------------------------------


def test_cli_next_word_table(checkpoints, capsys):
    assert main(["--checkpoint", str(checkpoints("full")), "--prompt", "ذهب الولد", "--next-word", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "prompt: ذهب الولد"
    assert out[1].split() == ["rank", "probability", "token"]
    rank, p, token = out[2].split()
    assert (rank, token) == ("1", "الي") and float(p) > 0.9
    assert len([line for line in out if line.strip()]) == 5


def test_cli_sampling_beam_and_prompt_file(checkpoints, capsys, tmp_path):
    ckpt = str(checkpoints("full"))
    assert main(["--checkpoint", ckpt, "--prompt", "يشرب", "--temperature", "0"]) == 0
    assert "sample 1: الجد الشاي بعد العشاء" in capsys.readouterr().out
    assert main(["--checkpoint", ckpt, "--prompt", "يشرب", "--num-samples", "3", "--seed", "1",
                 "--temperature", "2", "--top-k", "5", "--top-p", "0.9", "--max-new-tokens", "4"]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()[1:4]] == \
        ["sample 1", "sample 2", "sample 3"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ذهب\n\nتطير\n", encoding="utf-8")
    assert main(["--checkpoint", ckpt, "--prompt-file", str(prompts), "--beam-size", "3", "--num-samples", "2",
                 "--length-penalty", "0.5"]) == 0
    out = capsys.readouterr().out
    assert out.count("prompt: ") == 2 and out.count("beam 2 (score ") == 2
    assert "beam 1 (score -" in out and ": الولد الي المدرسه صباحا\n" in out


def test_cli_interactive(checkpoints, capsys, monkeypatch):
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO("ذهب\n\nقرأت البنت\n"))
    assert main(["--checkpoint", str(checkpoints("full")), "--interactive", "--next-word", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("prompt: ") == 3 and "prompt: (empty: the start of a document)" in out
    assert "كتابا" in out


@pytest.mark.parametrize("args, message", [
    (["--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["--temperature", "-2"], "temperature must be"),
    (["--beam-size", "2", "--num-samples", "3"], "--num-samples must be at most --beam-size"),
    (["--top-k", "many"], "invalid int value"),
    (["--prompt", "x", "--interactive"], "not allowed with"),
    (["--prompt-file", "/nonexistent/prompts.txt"], "No such file"),
    (["--device", "no-such-device"], "device"),
])
def test_cli_bad_inputs_exit_2_with_one_line(checkpoints, capsys, args, message):
    assert main(["--checkpoint", str(checkpoints("full"))] + args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert message in captured.err


def test_cli_missing_checkpoint(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "nope"), "--prompt", "ذهب"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no such checkpoint" in err
    assert main(["--prompt", "ذهب"]) == 2  # --checkpoint is required
    assert "--checkpoint" in capsys.readouterr().err


def test_cli_help_documents_every_option(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ["--checkpoint", "--prompt", "--prompt-file", "--num-samples", "--max-new-tokens", "--temperature",
                   "--top-k", "--top-p", "--seed", "--beam-size", "--length-penalty", "--allow-unk",
                   "--no-stop-at-eos", "--next-word", "--interactive", "--device"]:
        assert option in out
    assert out.count("default") >= 15


# --- faster CPU inference from float16 / int8 copies of the weights ------------------------


@pytest.fixture(scope="module", params=[("full", "float16"), ("adaptive", "float16"), ("full", "int8"), ("adaptive", "int8")],
                ids=lambda p: "-".join(p))
def lm_low(request, checkpoints) -> Predictor:
    softmax, weights = request.param
    return arlm.load(checkpoints(softmax), weights=weights)


def test_low_precision_weights_agree_with_float32(lm_low, checkpoints):
    exact = arlm.load(checkpoints("full" if lm_low.model.adaptive is None else "adaptive"))
    tolerance = 2e-3 if lm_low.engine.weights == "float16" else 3e-2
    for sentence in SENTENCES:
        w = words(exact, sentence)
        for n in range(len(w) + 1):
            prefix = " ".join(w[:n])
            p, q = exact.next_distribution(prefix), lm_low.next_distribution(prefix)
            assert abs(float(q.sum()) - 1) < 1e-5
            assert (p - q).abs().max() < tolerance, (prefix, (p - q).abs().max())
        # (the first word is a near tie, 1 in 5; from it on the sentence is memorized)
        assert lm_low.generate(" ".join(w[:1]), temperature=0) == " ".join(w[1:])


def test_low_precision_step_by_step_equals_full_forward(lm_low):
    assert_steps_equal_full_forward(lm_low, SENTENCES[3] + " " + SENTENCES[0] + " كلمة")


def test_low_precision_leaves_training_exact_and_follows_weight_updates(checkpoints):
    """The int8 copies live in the Predictor's engine, never in the model: training reads the
    float32 parameters whatever the Predictor's weights. The engine is a snapshot; a new one
    built after the weights change follows them."""
    from arlm.inference import FrozenModel

    lm = arlm.load(checkpoints("adaptive"), weights="int8")
    exact_lm = arlm.load(checkpoints("adaptive"))
    model = lm.model
    ids = torch.tensor(lm.tokenizer.encode(SENTENCES[1])).view(-1, 1)
    with torch.enable_grad():
        assert torch.equal(model(ids).features.detach(), exact_lm.model(ids).features.detach())
    before = lm.next_distribution(SENTENCES[1])
    with torch.no_grad():  # an optimizer step in place
        for p in model.parameters():
            p.mul_(0.5)
    assert torch.equal(lm.next_distribution(SENTENCES[1]), before)  # the snapshot is unchanged
    after = Predictor(model, lm.tokenizer, weights="int8").next_distribution(SENTENCES[1])
    exact_after = Predictor(model, lm.tokenizer).next_distribution(SENTENCES[1])
    assert not torch.allclose(before, after, atol=1e-3)
    assert torch.allclose(after, exact_after, atol=3e-2)


def test_bad_inference_weights(checkpoints, capsys):
    from arlm.inference import FrozenModel

    with pytest.raises(ValueError, match="weights must be one of float32, float16, int8"):
        arlm.load(checkpoints("full"), weights="bf16")
    lm = arlm.load(checkpoints("full"))
    with pytest.raises(ValueError, match="float32, float16 or int8"):
        FrozenModel(lm.model, "int4")
    assert main(["--checkpoint", str(checkpoints("full")), "--weights", "int4"]) == 2
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_cli_int8_weights(checkpoints, capsys):
    assert main(["--checkpoint", str(checkpoints("adaptive")), "--prompt", "ذهب الولد", "--next-word", "2",
                 "--weights", "int8"]) == 0
    rank, p, token = capsys.readouterr().out.splitlines()[2].split()
    assert (rank, token) == ("1", "الي") and float(p) > 0.9
