from collections import Counter

import pytest
from camel_tools.tokenizers.word import simple_word_tokenize
from hypothesis import given, settings
from hypothesis import strategies as st

from arlm.normalize import normalize
from arlm.tokenizer import (
    SentencePieceTokenizer,
    TokenizerConfig,
    WordTokenizer,
    count_words,
    load_tokenizer,
    word_tokenize,
)
from conftest import arabic_documents, hadith_texts


def test_fast_word_tokenize_equals_camel_tools_on_real_text():
    for text in hadith_texts(2000):
        norm = normalize(text)
        assert word_tokenize(norm) == simple_word_tokenize(norm, split_digits=True)
        assert word_tokenize(norm, split_digits=False) == simple_word_tokenize(norm)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ابت ثج،.؛؟!:\"'()[]«»-_/0123456789٣a#*😀👍🏽\u200d\u20e3\ufe0f🇸🇦 \n")) | st.characters()))
def test_fast_word_tokenize_equals_camel_tools_on_any_text(text):
    assert word_tokenize(text) == simple_word_tokenize(text, split_digits=True)
    assert word_tokenize(text, False) == simple_word_tokenize(text)


def test_vocabulary_is_ordered_by_count_then_string_with_min_freq_and_max_size():
    counts = Counter({"ب": 5, "ا": 5, "ج": 3, "د": 1, "ه": 2})
    tok, stats = WordTokenizer.from_counts(counts, TokenizerConfig(min_freq=2, vocab_size=10))
    assert tok.itos == ["<pad>", "<unk>", "<bos>", "<eos>", "ا", "ب", "ج", "ه"]
    assert stats["coverage"] == pytest.approx(15 / 16) and stats["oov_rate"] == pytest.approx(1 / 16)
    small, _ = WordTokenizer.from_counts(counts, TokenizerConfig(min_freq=1, vocab_size=2))
    assert small.itos[4:] == ["ا", "ب"]


def test_word_round_trip_and_unknowns():
    docs = arabic_documents(200)
    tok, _ = WordTokenizer.from_counts(count_words(docs, TokenizerConfig()), TokenizerConfig(min_freq=1))
    for doc in docs[:50]:
        assert tok.decode(tok.encode(doc)) == " ".join(tok.tokenize(doc))
    ids = tok.encode("ذهب الولد إلى القمر")  # القمر never seen
    assert ids[-1] == tok.unk_id and tok.decode(ids) == "ذهب الولد الي <unk>"
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.oov_rate(["القمر والشمس"]) == 1.0


def test_word_save_load(tmp_path):
    docs = arabic_documents(100)
    cfg = TokenizerConfig(min_freq=1, split_digits=False)
    tok, _ = WordTokenizer.from_counts(count_words(docs, cfg), cfg)
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert back.itos == tok.itos and back.config == tok.config
    assert back.encode(docs[0]) == tok.encode(docs[0])


def test_sentencepiece_exact_round_trip_and_save_load(tmp_path):
    docs = hadith_texts(400)
    for model_type in ("unigram", "bpe"):
        cfg = TokenizerConfig(kind="sentencepiece", vocab_size=600, sp_model=model_type)
        tok, _ = SentencePieceTokenizer.train(docs, cfg)
        assert tok.vocab_size == 600
        assert (tok.id_to_token(0), tok.id_to_token(1), tok.id_to_token(2), tok.id_to_token(3)) == ("<pad>", "<unk>", "<bos>", "<eos>")
        for doc in docs[:40] + ["نص فيه حروف غريبة: ڤ ژ ☃ و English"]:
            assert tok.decode(tok.encode(doc)) == normalize(doc)
        tok.save(tmp_path / model_type)
        back = load_tokenizer(tmp_path / model_type)
        assert back.encode(docs[0]) == tok.encode(docs[0])


def test_sentencepiece_frequency_order_renumbers_ids_and_round_trips(tmp_path):
    from collections import Counter

    docs = hadith_texts(300)
    tok, _ = SentencePieceTokenizer.train(docs, TokenizerConfig(kind="sentencepiece", vocab_size=500))
    counts = Counter(i for d in docs for i in tok.encode_sp(d))
    ordered = tok.with_frequency_order([counts.get(i, 0) for i in range(tok.vocab_size)])
    assert ordered.frequency_ordered and not tok.frequency_ordered
    freq = Counter(i for d in docs for i in ordered.encode(d))
    ranked = [freq.get(i, 0) for i in range(4, ordered.vocab_size)]
    assert ranked == sorted(ranked, reverse=True)  # id 4 is the most frequent piece, and so on
    assert freq[4] == max(counts.values())
    for doc in docs[:30]:
        ids = ordered.encode(doc)
        assert ordered.decode(ids) == tok.decode(tok.encode(doc)) == normalize(doc)
        assert [ordered.id_to_token(i) for i in ids] == tok.tokenize(doc)
        assert [ordered.token_to_id(t) for t in tok.tokenize(doc)] == ids
    assert [ordered.id_to_token(i) for i in range(4)] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    ordered.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert back.order == ordered.order and back.encode(docs[0]) == ordered.encode(docs[0])
    import pickle

    assert pickle.loads(pickle.dumps(ordered)).encode(docs[1]) == ordered.encode(docs[1])  # worker processes
    with pytest.raises(ValueError, match="permutation"):
        SentencePieceTokenizer(tok.model_proto, tok.config, [1, 0] + list(range(2, tok.vocab_size)))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid arlm tokenizer file"):
        load_tokenizer(tmp_path)


def test_bad_config_values():
    with pytest.raises(ValueError, match="kind must be word or sentencepiece, got 'char'"):
        TokenizerConfig(kind="char")
    with pytest.raises(ValueError, match="min_freq must be at least 1"):
        TokenizerConfig(min_freq=0)
