"""Shared test setup: offline hub, a private token cache, small thread counts, tiny data."""

import json
import os
import random
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import torch  # noqa: E402

# One thread: the suite's models are tiny, and on a shared 2-core machine a second thread
# mostly waits (tests that need more set it themselves).
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny models: a second thread only adds OpenMP
    spinning, ruinous (10-40x slower) on a busy shared machine. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    os.environ["ARLM_CACHE"] = str(tmp_path_factory.mktemp("arlm-cache"))


SUBJECTS = ["الولد", "البنت", "المعلم", "الطبيب", "الفلاح", "التاجر", "الكاتب", "الطالب"]
VERBS = ["ذهب", "رجع", "سافر", "مشى", "جاء"]
PLACES = ["المدرسة", "السوق", "المدينة", "البيت", "المسجد", "الحقل", "المكتبة"]
TIMES = ["صباحا", "مساء", "يوم الجمعة", "بعد الظهر"]


def arabic_documents(n: int, seed: int = 0) -> list[str]:
    """Small, regular Arabic documents: enough structure for a model to learn quickly."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sents = []
        for _ in range(rng.randint(1, 3)):
            sents.append(f"{rng.choice(VERBS)} {rng.choice(SUBJECTS)} إلى {rng.choice(PLACES)} {rng.choice(TIMES)} .")
        docs.append(" ".join(sents))
    return docs


@pytest.fixture
def text_corpus(tmp_path) -> Path:
    """A .txt corpus, one document per line (~30k tokens)."""
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(arabic_documents(1500)) + "\n", encoding="utf-8")
    return path


def hadith_texts(n: int = 2000) -> list[str]:
    """Real, fully diacritized Classical Arabic from the embedded default corpus."""
    from arlm.corpus import _package_documents, resolve

    return [t for _, t in zip(range(n), (text for _, text in _package_documents(resolve("hadith"), "strict")))]


# Sentences with punctuation, digits, the article and a question: for gate recording tests.
GATE_TEXTS = [
    "قال رسول الله صلى الله عليه وسلم: إنما الأعمال بالنيات.",
    "حدثنا عبد الله بن يوسف، قال: أخبرنا مالك عن نافع.",
    "كتب الطالب الدرس في الكتاب سنة 2015 في المدينة.",
    "ذهب الرجل إلى السوق واشترى الخبز والتمر.",
    "قال النبي: الدين النصيحة، قلنا: لمن؟",
]
