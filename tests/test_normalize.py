import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arlm.normalize import NormalizeConfig, arabic_share, normalize, normalize_reference
from conftest import hadith_texts

CONFIGS = [
    NormalizeConfig(),
    NormalizeConfig(unicode="NFC", latin="lower", punctuation="drop", emoji="drop"),
    NormalizeConfig(unicode="none", diacritics=False, alef=False, digits=False, latin="drop"),
    NormalizeConfig(tatweel=False, teh_marbuta=False, alef_maksura=False, invisible=False),
]


def test_each_step():
    assert normalize("أحمد وإبراهيم وآدم وٱبن") == "احمد وابراهيم وادم وابن"
    assert normalize("مستشفى") == "مستشفي"
    assert normalize("مدرسة") == "مدرسه"
    assert normalize("مُحَمَّدٌ") == "محمد"
    assert normalize("جمــــيل") == "جميل"
    assert normalize("٢٠١٥ و ۱۳۹۴") == "2015 و 1394"
    assert normalize("  كلمة \n\t أخرى  ") == "كلمه اخري"
    assert normalize("ﻻ") == "لا"  # NFKC folds presentation forms
    assert normalize("الله\u200f قال\u200d\ufeff") == "الله قال"  # invisible marks go
    assert normalize("Hello, عالم 😀!", NormalizeConfig(latin="lower")) == "hello, عالم 😀!"
    assert normalize("Hello, عالم 😀!", NormalizeConfig(latin="drop", emoji="drop", punctuation="drop")) == "عالم"


def test_options_can_be_turned_off():
    cfg = NormalizeConfig(diacritics=False, alef=False, teh_marbuta=False, alef_maksura=False, digits=False, tatweel=False)
    assert normalize("أَحمـد ى ة ٣", cfg) == "أَحمـد ى ة ٣"


def test_bad_option_is_a_clear_error():
    with pytest.raises(ValueError, match="latin must be keep, lower or drop, got 'upper'"):
        NormalizeConfig(latin="upper")
    with pytest.raises(ValueError, match="unknown normalization option"):
        NormalizeConfig.from_dict({"colour": 1})


@pytest.mark.parametrize("cfg", CONFIGS)
def test_fast_path_equals_camel_tools_reference_on_real_text(cfg):
    for text in hadith_texts(1500):
        assert normalize(text, cfg) == normalize_reference(text, cfg)


@settings(max_examples=300, deadline=None)
@given(st.text(), st.sampled_from(CONFIGS))
def test_fast_path_equals_reference_on_any_unicode(text, cfg):
    assert normalize(text, cfg) == normalize_reference(text, cfg)


# Arabic-looking text built from the pieces normalization touches.
arabic_soup = st.text(alphabet=st.sampled_from(list("ابتثجحخدذرزسشصضطظعغفقكلمنهويءأإآٱىةـًٌٍَُِّْٰ٠١٢٣۴۵ ،.؟!:") + ["\u0653", "\u0654", "\u0655", "ﻻ", "ﷲ", "\n", "😀", "a", "Z"]))


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), arabic_soup), st.sampled_from(CONFIGS))
def test_idempotent_and_never_crashes(text, cfg):
    once = normalize(text, cfg)
    assert normalize(once, cfg) == once


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ابتثجحخدذرزسشصضطظعغفقكلمنهويء", min_size=1, max_size=8), min_size=1, max_size=12))
def test_already_normal_arabic_is_unchanged(words):
    text = " ".join(words)
    assert normalize(text) == text


def test_surrogates_and_controls_do_not_crash():
    nasty = "\udc80\udcff ‏‎\u202e\u200d\u200c ́x ٌ"
    assert normalize(normalize(nasty)) == normalize(nasty)


def test_arabic_share():
    assert arabic_share("hello world") == 0.0
    assert arabic_share("مرحبا") == 1.0
    assert 0.4 < arabic_share("مرحبا hello") < 0.6
    assert arabic_share("123 !!") == 0.0
