"""Make tests/data/legacy/: a small checkpoint and the answers it gave, from the code of
commit a3c5793 (before the #9 redesign). Kept as the record of how the fixture was made;
tests/test_legacy.py checks that today's code loads it and gives the same answers.

    python tests/data/make_legacy.py   # run once, at a3c5793; do not re-run on newer code
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))  # conftest's arabic_documents
sys.path.insert(0, str(HERE.parents[1]))
torch.set_num_threads(1)

from conftest import arabic_documents  # noqa: E402

import arlm  # noqa: E402
from arlm.train import main  # noqa: E402

PROMPTS = ["", "ذهب الولد إلى", "رجع الطبيب", "سافر التاجر إلى المدينة صباحا ."]
SCORED = ["ذهب الولد إلى المدرسة صباحا .", "جاء المعلم إلى السوق مساء . رجع الفلاح"]
TINY = ["--emb-size", "16", "--hidden-size", "32", "--num-layers", "2", "--batch-size", "4", "--bptt", "10",
        "--vocab-size", "200", "--min-freq", "1", "--cutoffs", "12,24", "--eval-interval", "10",
        "--log-interval", "5", "--time-budget", "0", "--workers", "1", "--threads", "1", "--seed", "7"]


def answers(lm) -> dict:
    return {"next": {p: lm.next_distribution(p).tolist() for p in PROMPTS},
            "score": {t: lm.score(t) for t in SCORED},
            "generate": lm.generate("ذهب الولد", max_new_tokens=8, temperature=0.8, seed=3)}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(arabic_documents(1500)) + "\n", encoding="utf-8")
        run = Path(tmp) / "run"
        assert main(["--corpus", str(corpus), "--out", str(run), *TINY, "--max-steps", "40"]) == 0
        out = HERE / "legacy"
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(run / "best", out / "model")
        trajectory = [json.loads(line)["valid_ppl"] for line in (run / "log.jsonl").read_text().splitlines()]
        result = {"commit": "a3c5793", "train_args": TINY + ["--max-steps", "40"], "valid_ppl": trajectory,
                  "float32": answers(arlm.load(out / "model"))}
        for w in ("float16", "int8"):
            result[w] = answers(arlm.load(out / "model", weights=w))
        (out / "answers.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
        print(trajectory)
