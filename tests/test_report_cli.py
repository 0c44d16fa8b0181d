"""Tests for arlm/report/cli.py, the `arlm-inspect` command: it runs end to end on a
checkpoint trained here, --help explains every option, and bad input is one `error:` line
and exit status 2 (the arlm.cli convention)."""

import json

import pytest

from arlm import report
from arlm.gates import GATES
from arlm.report.cli import _parser
from conftest import GATE_TEXTS as TEXTS
from report_helpers import H, L, SENTENCE, run_cli, trained  # noqa: F401  (fixtures)


def test_cli_end_to_end(trained, tmp_path):
    directory, _, _ = trained
    status, out, err = run_cli("--checkpoint", directory, SENTENCE, "--units", 4, "--top-k", 2,
                               "--json", tmp_path / "g.json", "--csv", tmp_path / "g.csv", "--npz", tmp_path / "g.npz",
                               "--html", tmp_path / "new" / "g.html", "--plot", tmp_path / "plots", "--units-plot", "0,7")
    assert status == 0, err
    assert "reading 'قال'" in out and "expose" in out and "next:" in out
    for name in ("g.json", "g.csv", "g.npz", "new/g.html"):
        assert (tmp_path / name).stat().st_size > 0 and f"wrote {tmp_path / name}" in err
    assert len(list((tmp_path / "plots").glob("*.png"))) == L * len(GATES) + L
    assert report.read_json(tmp_path / "g.json").sentences[0].tokens == trained[2].tokenize(SENTENCE)


def test_cli_file_summary_and_stats(trained, tmp_path):
    directory, _, _ = trained
    (tmp_path / "in.txt").write_text(f"{TEXTS[0]}\n\n{TEXTS[3]}\n", encoding="utf-8")
    (tmp_path / "corpus.txt").write_text("\n".join(TEXTS * 4), encoding="utf-8")
    status, out, err = run_cli("--checkpoint", directory, "--file", tmp_path / "in.txt", "--summary", "--stats",
                               "--corpus", tmp_path / "corpus.txt", "--max-tokens", 120, "--regex", "^قال$",
                               "--search-gates", "c,h,o", "--plot", tmp_path / "plots", "--stats-json", tmp_path / "s.json")
    assert status == 0, err
    saved = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert saved["steps"] == 120 and set(saved["saturation"]) == {"layer1", "layer2"}
    left = saved["saturation"]["layer1"]["f"]["left"]
    assert len(left) == len(saved["saturation"]["layer1"]["f"]["right"]) == H
    assert all(0 <= v <= 1 for v in left)
    assert saved["unit_search"]["punctuation"][0]["layer"] in (1, 2)
    assert "sentence 2: ذهب" in out and "reading" not in out  # summary only
    assert "saturation over 120 steps" in out and "unit search over" in out
    for name in ("article ال", "punctuation", "digits", "position", "regex ^قال$"):
        assert name in out
    assert (tmp_path / "plots" / "saturation.png").is_file()
    # every step but the special ones (<eos> here) is scored and counted
    tok = trained[2]
    lines = (tmp_path / "corpus.txt").read_text(encoding="utf-8").splitlines()
    ids = sum(([tok.eos_id] + tok.encode(t) for t in lines), [])[:120]
    assert f"unit search over {sum(i not in (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) for i in ids):,} tokens" in out


def test_cli_quiet_prints_nothing(trained, tmp_path):
    status, out, err = run_cli("--checkpoint", trained[0], SENTENCE, "--quiet", "--json", tmp_path / "q.json")
    assert status == 0 and out == "" and "wrote" in err


def test_cli_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        report.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "units from 0" in out
    for action in _parser()._actions:
        assert action.help, f"{action.dest} has no help"
        for option in action.option_strings:
            assert option in out


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{tmp}/nowhere", SENTENCE], "no such checkpoint"),
    (["--checkpoint", "{ckpt}", ""], "empty"),
    (["--checkpoint", "{ckpt}", "ً"], "no tokens"),
    (["--checkpoint", "{ckpt}"], "nothing to inspect"),
    (["--checkpoint", "{ckpt}", "--file", "{tmp}/missing.txt"], "missing.txt"),
    (["--checkpoint", "{ckpt}", "--file", "{tmp}/blank.txt"], "no sentences"),
    (["--checkpoint", "{ckpt}", SENTENCE, "--file", "{tmp}/blank.txt"], "not both"),
    (["--checkpoint", "{ckpt}", SENTENCE, "--plot", "{tmp}/p", "--units-plot", "a,b"], "comma-separated"),
    (["--checkpoint", "{ckpt}", SENTENCE, "--plot", "{tmp}/p", "--units-plot", "99"], "units are 0..7"),
    (["--checkpoint", "{ckpt}", SENTENCE, "--units-plot", "1"], "needs --plot"),
    (["--checkpoint", "{ckpt}", "--stats", "--corpus", "{tmp}/no-such-corpus"], "no-such-corpus"),
    (["--checkpoint", "{ckpt}", "--stats", "--corpus", "{tmp}/blank.txt", "--search-gates", "q"], "unknown gate"),
    (["--checkpoint", "{ckpt}", "--stats", "--corpus", "{tmp}/blank.txt"], "no text"),
    (["--checkpoint", "{ckpt}", "--stats", "--corpus", "{tmp}/blank.txt", "--max-tokens", "0"], "must be positive"),
    (["--checkpoint", "{bad}", SENTENCE], "damaged or not an arlm config"),
    (["--checkpoint", "{tmp}/nowhere", "--stats", "--regex", "("], "regular expression"),
    (["--checkpoint", "{ckpt}", SENTENCE, "--corpus", "hadith"], "are for --stats"),
    (["--checkpoint", "{ckpt}", "--file", "{tmp}"], "Is a directory"),
])
def test_cli_bad_input_is_one_error_line_and_exit_2(trained, tmp_path, args, message):
    (tmp_path / "blank.txt").write_text("\n  \n")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{ not json")
    args = [a.format(tmp=tmp_path, ckpt=trained[0], bad=tmp_path / "bad") for a in args]
    status, out, err = run_cli(*args)
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
