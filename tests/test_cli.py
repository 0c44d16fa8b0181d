"""Tests for arlm/cli.py, the one error → exit-status convention of every arlm command:
0 success, 1 a failed run, 2 bad input, 130 Ctrl-C; an expected error is one `error: ...`
line on stderr and no traceback; a bug keeps its traceback."""

import argparse
import errno
import subprocess
import sys
from pathlib import Path

import pytest

from arlm import cli

ROOT = Path(__file__).resolve().parents[1]


def call(body, *args):
    """cli.run(body, *args) with what it printed: (status, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.run(body, *args)
    return status, out.getvalue(), err.getvalue()


def raising(error: BaseException):
    def body():
        print("some output first")
        raise error
    return body


def test_the_body_returns_its_status():
    assert call(lambda: None) == (0, "", "")
    assert call(lambda: 0) == (0, "", "")
    assert call(lambda: 1) == (1, "", "")  # e.g. train's "the run produced no summary"
    assert call(lambda: 130) == (130, "", "")  # e.g. train stopped by a signal, cleanly
    assert call(lambda a, b: a + b, 1, 2)[0] == 3  # arguments are passed through


@pytest.mark.parametrize("error, status, line", [
    (ValueError("--top-k must be\n   at least 1"), 2, "error: --top-k must be at least 1"),
    (ValueError(), 2, "error: ValueError"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 2, "error: 'utf-8' codec can't decode"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/missing.txt"), 2,
     "error: /x/missing.txt: No such file or directory"),
    (FileNotFoundError("/x/tokenizer.json: no tokenizer file"), 2, "error: /x/tokenizer.json: no tokenizer file"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/out"), 2, "error: /root/out: Permission denied"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp"), 2, "error: /tmp: Is a directory"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/etc/passwd/x"), 2, "error: /etc/passwd/x: Not a directory"),
    (FileExistsError(errno.EEXIST, "File exists", "a", None, "b"), 2, "error: a -> b: File exists"),
    (FloatingPointError("the loss is nan at step 12"), 1, "error: the loss is nan at step 12"),
    (cli.RunFailed("no batch fits in memory"), 1, "error: no batch fits in memory"),
    (OSError(errno.ENOSPC, "No space left on device", "runs/x/model.safetensors"), 1,
     "error: runs/x/model.safetensors: No space left on device"),
    (OSError("I/O error"), 1, "error: I/O error"),
    (MemoryError(), 1, "error: MemoryError"),
    (KeyboardInterrupt(), 130, "aborted"),
])
def test_expected_errors_are_one_line_and_a_status(error, status, line):
    got, out, err = call(raising(error))
    assert got == status
    assert out == "some output first\n"  # what the run printed stays
    assert err.count("\n") == 1 and err.startswith(line) and "Traceback" not in err, err


def test_the_projects_input_errors_are_bad_input():
    from arlm.checkpoint import CheckpointError
    from arlm.corpus import CorpusError

    for error in (CorpusError("corpus 'x' is neither a card nor a file"), CheckpointError("no such checkpoint: x")):
        status, _, err = call(raising(error))
        assert status == 2 and err == f"error: {error}\n"


def test_they_are_matched_by_class_not_only_as_value_errors():
    # were CorpusError ever to stop being a ValueError, it would still be bad input
    corpus_error = type("CorpusError", (Exception,), {"__module__": "arlm.corpus"})
    assert cli.exit_status(corpus_error("x")) == 2
    assert cli.exit_status(type("CheckpointError", (LookupError,), {"__module__": "arlm.checkpoint"})()) == 2
    assert cli.exit_status(type("CorpusError", (Exception,), {"__module__": "elsewhere"})()) is None


def test_out_of_memory_is_a_failed_run():
    # torch.cuda.OutOfMemoryError is a RuntimeError; matched by name, without importing torch
    oom = type("OutOfMemoryError", (RuntimeError,), {})
    status, _, err = call(raising(oom("CUDA out of memory. Tried to allocate 2.00 GiB")))
    assert status == 1 and err == "error: CUDA out of memory. Tried to allocate 2.00 GiB\n"


@pytest.mark.parametrize("bug", [KeyError("x"), TypeError("bad operand"), RuntimeError("shape mismatch"),
                                 AttributeError("no attribute"), ZeroDivisionError()])
def test_bugs_keep_their_traceback(bug):
    with pytest.raises(type(bug)):
        cli.run(raising(bug))


def test_system_exit_inside_the_body_is_returned():
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--n", type=int)
    assert call(parser.parse_args, ["--help"])[:2] == (0, parser.format_help())
    status, _, err = call(parser.parse_args, ["--n", "x"])
    assert status == 2 and "usage: tool" in err and "invalid int value" in err  # argparse's own message
    assert call(sys.exit)[0] == 0
    assert call(sys.exit, 3)[0] == 3
    assert call(sys.exit, "stopped: see the log") == (1, "", "stopped: see the log\n")


def test_the_decorator_gives_main_the_convention():
    @cli.command
    def main(argv: list[str] | None = None) -> int:
        """A command."""
        if argv:
            raise ValueError(f"unexpected {argv[0]}")
        return 0

    assert main.__name__ == "main" and main.__doc__ == "A command."
    assert main() == 0
    assert call(main, ["--x"]) == (2, "", "error: unexpected --x\n")


def test_a_real_command_as_a_program(tmp_path):
    """arlm-ngram follows the convention from a shell: one line, status 2, no traceback;
    argparse's usage errors stay argparse's (status 2, usage on stderr)."""
    missing = tmp_path / "no-such-corpus.txt"
    bad = subprocess.run([sys.executable, "-m", "arlm.ngram", "--corpus", str(missing), "--order", "2"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1 and str(missing) in bad.stderr
    usage = subprocess.run([sys.executable, "-m", "arlm.ngram", "--order", "9"],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")
