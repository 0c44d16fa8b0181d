"""Bad input from anywhere: the text pipeline never raises, outputs stay stable, limits hold."""

import pytest
from camel_tools.tokenizers.word import simple_word_tokenize
from hypothesis import example, given, settings
from hypothesis import strategies as st

import arlm.corpus as corpus
from arlm.normalize import normalize
from arlm.tokenizer import TokenizerConfig, WordTokenizer, count_words, word_tokenize
from arlm.train import main
from conftest import arabic_documents

# Characters scraped text is full of: bidi controls, zero-width joiners, combining marks on
# non-letters, lone surrogates (what surrogateescape makes of undecodable bytes), emoji.
NASTY = ["\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
         "\u2069", "\u200d", "\u200c", "\u200b", "\ufeff", "\u0301", "\u0651", "\u064b", "\u0653", "\u0654",
         "\udc80", "\udcff", "\ud800", "ـ", "👍🏽", "🇸🇦", "1\u20e3", "\u00a0", "\t", "\n", "\r", " "]
nasty_text = st.lists(st.one_of(st.sampled_from(NASTY), st.sampled_from(list("ابت 5٣.،!aZ")), st.characters()),
                      max_size=60).map("".join)


@settings(max_examples=500, deadline=None)
@given(nasty_text)
@example("ا🏳🏻")
def test_normalize_and_tokenize_never_raise_and_are_idempotent(text):
    once = normalize(text)
    assert normalize(once) == once
    tokens = word_tokenize(once)
    again = word_tokenize(" ".join(tokens))  # tokenizing the tokens changes nothing ...
    if again != tokens:  # ... except where camel-tools' own tokenizer, which arlm matches, is not
        # idempotent either: a letter, a flag and a skin tone ('ا🏳🏻') give ['ا🏳', '🏻'].
        assert tokens == simple_word_tokenize(once, split_digits=True)
        assert again == simple_word_tokenize(" ".join(tokens), split_digits=True)
    assert all(t and not any(c.isspace() for c in t) for t in tokens)


@settings(max_examples=200, deadline=None)
@given(nasty_text)
def test_a_tokenizer_encodes_anything(text):
    tok = _TOK
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.encode(tok.decode(ids).replace("<unk>", "غريب")) == ids or tok.unk_id in ids


_CFG = TokenizerConfig(min_freq=1)
_TOK, _ = WordTokenizer.from_counts(count_words(arabic_documents(50), _CFG), _CFG)


def test_huge_documents_are_cut_at_whitespace_with_the_same_ids(monkeypatch):
    text = " ".join(arabic_documents(400))  # one long line, ~10k words
    whole = _TOK.encode(text)
    monkeypatch.setattr(corpus, "PIECE_CHARS", 997)
    pieces = list(corpus._pieces(text))
    assert len(pieces) > 20 and all(len(p) <= 997 for p in pieces)
    assert [i for p in pieces for i in _TOK.encode(p)] == whole


def test_a_50_mb_line_streams_through_prepare(tmp_path):
    """One 50 MB line with no newline among ordinary documents: cut into pieces, encoded,
    and memory grows by about the line itself, not by gigabytes of token lists."""
    import resource

    chunk = " ".join(arabic_documents(200)) + " "  # ~40 KB of text
    repeats = 50 * 2**20 // len(chunk.encode())
    path = tmp_path / "huge.txt"
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(arabic_documents(60, seed=9)) + "\n")
        for _ in range(repeats):
            f.write(chunk)  # no newline: one 50 MB document
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    p = corpus.prepare(str(path), _CFG, cache_dir=tmp_path / "c", workers=1, verbose=False)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    total = sum(len(a) for a in (p.train, p.valid, p.test))
    assert total > repeats * len(chunk.split())  # every word of the huge line became an id
    assert grown_mb < 800, grown_mb


def test_unwritable_output_is_refused_before_training(text_corpus, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["--corpus", str(text_corpus), "--out", str(blocker / "run"), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: cannot write to --out") and "choose a writable directory" in err


def test_text_with_little_arabic_trains_with_a_warning(tmp_path, capsys):
    english = tmp_path / "en.txt"
    english.write_text("\n".join(f"the quick brown fox number {i} jumps over the lazy dog" for i in range(400)))
    assert main(["--corpus", str(english), "--out", str(tmp_path / "o"), "--min-freq", "1", "--batch-size", "4",
                 "--bptt", "8", "--max-steps", "3", "--emb-size", "8", "--hidden-size", "8", "--time-budget", "0"]) == 0
    assert "warning: only 0% of the letters in this corpus are Arabic" in capsys.readouterr().err
