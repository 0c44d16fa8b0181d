"""Autocomplete (arlm/complete.py): the word being typed, typing sessions, bad input, the
command line, and a subword model suggesting a word it never saw whole."""

import random
import subprocess
import sys

import pytest
import torch

import arlm
from arlm.complete import Suggestion
from arlm.generate import main
from test_generate import SENTENCES, train_and_save


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module", params=["full", "adaptive"])
def lm(request, tmp_path_factory):
    return arlm.load(train_and_save(tmp_path_factory.mktemp("complete") / request.param, request.param))


def same(a: list[Suggestion], b: list[Suggestion]) -> None:
    assert [s.word for s in a] == [s.word for s in b]
    for x, y in zip(a, b):
        assert x.probability == pytest.approx(y.probability, abs=1e-5)
        assert x.share == pytest.approx(y.share, abs=1e-5)


def test_the_word_being_typed_is_completed_from_what_came_before(lm):
    got = lm.complete("ذهب الولد إلى الم", k=3)
    assert got[0].word == "المدرسه" and got[0].probability > 0.9  # memorized, normalized (ة → ه)
    assert all(s.word.startswith("الم") for s in got)
    assert 1 >= got[0].share >= got[0].probability
    assert sum(s.share for s in lm.complete("ذهب الولد إلى الم", k=100)) == pytest.approx(1, abs=1e-5)
    # ranked by P(word | text before it): the same numbers as the next-word distribution
    dist = lm.next_distribution("ذهب الولد إلى")
    for s in got:
        assert s.probability == pytest.approx(float(dist[lm.tokenizer.token_to_id(s.word)]), abs=1e-6)
    assert lm.complete("قرأت البنت ك")[0].word == "كتابا"


def test_the_prefix_is_matched_after_normalization(lm):
    plain = lm.complete("ذهب الولد ا")
    assert plain[0].word == "الي"  # إلى, normalized
    for typed in ("ذهب الولد أ", "ذهب الولد إ", "ذهب الولد إِ", "ذهب الولد ـإ", "ذهب الولد \u200fإ"):
        same(lm.complete(typed), plain)  # alef forms, harakat, tatweel, a bidi mark: all ignored
    same(lm.complete("ذهب الولد إلى المدرسـة"), lm.complete("ذهب الولد إلى المدرسه"))


def test_at_a_word_boundary_it_is_next_word_prediction(lm):
    got = lm.complete("ذهب الولد ", k=3)
    assert got[0].word == "الي"
    expected = [(t, p) for t, p in lm.predict_next("ذهب الولد", k=10) if t not in (".", "<eos>")][:3]
    assert [(s.word, pytest.approx(s.probability, abs=1e-6)) for s in got] == expected


def test_punctuation_and_numbers_only_when_asked(lm):
    text = "كتب المعلم الدرس على السبورة "
    assert lm.predict_next(text, k=1)[0][0] == "."
    assert all(s.word != "." for s in lm.complete(text, k=10))
    assert lm.complete(text, k=1, punctuation=True)[0].word == "."
    assert all(s.word not in ("<eos>", "<unk>", "<pad>", "<bos>") for s in lm.complete(text, k=50, punctuation=True,
                                                                                       numbers=True))


@pytest.mark.parametrize("text", ["", "   ", "... ،", "ذهب xyz", "ذهب الولد ززز", "ذهب " + "ب" * 10_000,
                                  "hello ال", "ذهب الولد \u200f", "ذهب الولد َ", "\u202bذهب ال\u202c"])
def test_bad_input_has_a_defined_answer(lm, text):
    got = lm.complete(text)
    assert isinstance(got, list) and len(got) <= 5
    if text.rstrip().endswith(("ززز", "xyz", "ب" * 20)):
        assert got == []  # no word begins with these letters
    elif text.strip() in ("", "... ،", "\u200f", "ذهب الولد \u200f", "ذهب الولد َ"):
        assert got  # a boundary: the next word


def test_bad_arguments_are_refused(lm):
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be an integer"):
            lm.complete("ذهب", k=k)
    with pytest.raises(ValueError, match="must be a string"):
        lm.complete(None)


def test_the_prefix_index_is_built_once_and_sorted(lm):
    c = lm.completer
    assert lm.completer is c
    assert c.sorted_words == sorted(c.sorted_words) and len(c.sorted_words) == lm.vocab_size - 4


def test_a_session_costs_no_step_inside_a_word_and_one_per_finished_word(lm):
    s = lm.session()
    s.update("")
    start = s.steps
    for n in range(1, len("ذهب") + 1):
        s.update("ذهب"[:n])
    assert s.steps == start  # letters of the first word: filters only
    s.update("ذهب ")
    assert s.steps == start + 1  # the finished word: one step
    for text in ("ذهب ا", "ذهب ال", "ذهب الو", "ذهب الولد"):
        s.update(text)
    assert s.steps == start + 1
    s.update("ذهب الولد إلى ")
    assert s.steps == start + 3
    s.update("ذهب الو")  # backspace into an earlier word: back to a kept state, no step
    assert s.steps == start + 3


def test_a_session_equals_fresh_completions_over_random_edits(lm):
    rng = random.Random(0)
    alphabet = "ابتدذرسصعفقكلمنهوي ةأإ.،"
    words = [w for s in SENTENCES for w in s.split()]
    for trial in range(3):
        session, text = lm.session(k=4), ""
        for _ in range(60):
            r = rng.random()
            if r < 0.45:
                text += rng.choice(alphabet)                      # a keystroke
            elif r < 0.6:
                text = text[:-1]                                  # backspace
            elif r < 0.75:
                text += rng.choice(words) + " "                   # a pasted word
            elif r < 0.85 and text:
                text = text[: rng.randrange(len(text))]           # the cursor moved back, the rest retyped
            else:
                text += " "
            same(session.update(text), lm.complete(text, k=4))


def test_cli_complete_and_a_piped_typing_session(lm, capsys, tmp_path):
    ckpt = tmp_path / "ckpt"
    from arlm import checkpoint

    checkpoint.save(ckpt, lm.model, lm.tokenizer)
    assert main(["--checkpoint", str(ckpt), "--complete", "ذهب الولد إلى الم", "--next-word", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "text: ذهب الولد إلى الم" and out[2].split()[-1] == "المدرسه"
    typed = "ذ\nذه\nذهب \nذهب الولد إلى الم\n"
    r = subprocess.run([sys.executable, "-m", "arlm.generate", "--checkpoint", str(ckpt), "--interactive", "--complete",
                        "--next-word", "1"], input=typed, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    blocks = [b.splitlines() for b in r.stdout.strip().split("\n\n")]
    assert [b[0] for b in blocks] == ["text: ذ", "text: ذه", "text: ذهب ", "text: ذهب الولد إلى الم"]
    assert blocks[-1][2].split()[-1] == "المدرسه"


# --- a subword model suggests a word it never saw whole --------------------------------


def clitic_texts(n: int, seed: int = 0) -> list[str]:
    """Sentences with nouns behind the clitics ب، و، وب — but never وبالمدرسه: only
    بالمدرسه and والمدرسه, and وب + every other noun."""
    rng = random.Random(seed)
    nouns = ["البيت", "السوق", "المدينه", "المسجد", "الحقل", "المكتبه", "المدرسه"]
    texts = []
    for _ in range(n):
        word = rng.choice(["ب", "و", "وب"]) + rng.choice(nouns)
        if word == "وبالمدرسه":
            word = rng.choice(["بالمدرسه", "والمدرسه"])
        texts.append(f"مر {rng.choice(['الولد', 'البنت', 'المعلم', 'الطبيب', 'التاجر'])} {word} ثم رجع")
    return texts


def test_a_subword_model_suggests_a_clitic_form_never_seen_whole():
    from arlm.generate import Predictor
    from arlm.model import LanguageModel, ModelConfig
    from arlm.tokenizer import SentencePieceTokenizer, TokenizerConfig, WordTokenizer, count_words

    texts = clitic_texts(1500)
    assert not any("وبالمدرسه" in t for t in texts)
    tok, _ = SentencePieceTokenizer.train(texts, TokenizerConfig(kind="sentencepiece", vocab_size=330, min_freq=1))
    stream = [tok.eos_id] + [i for t in texts for i in tok.encode(t) + [tok.eos_id]]
    ids = torch.tensor(stream[: len(stream) // 8 * 8]).view(8, -1).T
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=tok.vocab_size, emb_size=32, hidden_size=64, num_layers=1, dropout=0.0,
                                      dropout_input=0.0, dropout_hidden=0.0, dropout_embedding=0.0, weight_drop=0.0,
                                      softmax="full", eos_id=tok.eos_id))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(6):
        for s in range(0, ids.shape[0] - 31, 30):
            loss = model(ids[s : s + 30], targets=ids[s + 1 : s + 31]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    lm = Predictor(model.eval(), tok)
    # assembled from pieces (this small vocabulary spells the end of a word letter by letter)
    assert lm.complete("مر الولد وبالمدرس")[0].word == "وبالمدرسه"
    assert "وبالمدرسه" in [s.word for s in lm.complete("مر الولد وبالمدر", k=5)]
    seen = lm.complete("مر الولد وب", k=3)  # the forms it did see come first
    assert all(s.word.startswith("وبال") for s in seen) and seen[0].share > 0.1
    got = lm.complete("مر الولد ", k=5)  # at a boundary: whole words, not pieces
    assert all(s.word.split() == [s.word] and len(s.word) > 3 for s in got)
    # a word model of the same text cannot: the form is not in its vocabulary
    config = TokenizerConfig(min_freq=1)
    words, _ = WordTokenizer.from_counts(count_words(texts, config), config)
    assert "وبالمدرسه" not in words.itos and "بالمدرسه" in words.itos
