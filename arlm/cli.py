"""How every arlm command line turns an error into an exit status: one convention for all.

    0    success
    1    the run failed: it started from good input but could not finish
         (FloatingPointError: training diverged; RunFailed; out of memory; an OSError that is
         not about a path the user named, e.g. a full disk or an I/O error)
    2    bad input: ValueError (CorpusError, CheckpointError, a bad config, text that does
         not decode, ...) and the OSErrors that name a path the user gave (FileNotFoundError,
         PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError);
         argparse's own usage errors are also 2
    130  interrupted (Ctrl-C): `aborted`

An expected error is one line on stderr, `error: <message>`, and no traceback: the user
gave something wrong or the machine ran out of something, and a traceback would only hide
the sentence that says which. Anything else (a KeyError, a TypeError, a plain
RuntimeError from torch) is a bug and keeps its traceback.

Use it by parsing the arguments first (argparse prints usage and exits 2, or 0 for --help,
as every argparse program does) and running the rest through `run`:

    def main(argv: list[str] | None = None) -> int:
        args = build_parser().parse_args(argv)
        return cli.run(_main, args)          # _main(args) -> int | None

or decorate the whole `main` with `@cli.command`. A SystemExit raised inside the body
(argparse parsing there, or sys.exit(n)) becomes the returned status, so `main` returns a
status in-process instead of exiting the test runner.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable

OK, FAILED, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130


class RunFailed(RuntimeError):
    """Raise this (not a plain RuntimeError) when a run cannot finish for a reason the user
    should read, not debug: `run` prints it as one line and returns 1. A plain RuntimeError
    keeps its traceback, because torch raises those for bugs too."""


# Path errors are bad input: the user named a file that is missing, a directory where a file
# belongs, a place they cannot write. Every other OSError (no space left, an I/O error, a
# broken pipe) happened to a good command, so the run failed.
_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)

# The project's own input errors, matched by module and class name so this module imports
# nothing from arlm (arlm.checkpoint pulls in torch; arlm.corpus imports half the project)
# and stays right even if one of them stops being a ValueError.
_BAD_INPUT_CLASSES = {("arlm.corpus", "CorpusError"), ("arlm.checkpoint", "CheckpointError")}


def _is(error: BaseException, names: set[tuple[str, str]]) -> bool:
    return any((c.__module__, c.__name__) in names for c in type(error).__mro__)


def _out_of_memory(error: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError (and torch.OutOfMemoryError) subclass RuntimeError; by name,
    # so this module does not import torch.
    return isinstance(error, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(error).__mro__)


def exit_status(error: BaseException) -> int | None:
    """The exit status for an expected error, or None for one that is a bug (re-raised)."""
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED
    if _is(error, _BAD_INPUT_CLASSES) or isinstance(error, (ValueError, *_PATH_ERRORS)):
        return BAD_INPUT
    if isinstance(error, (FloatingPointError, RunFailed, OSError)) or _out_of_memory(error):
        return FAILED
    return None


def message(error: BaseException) -> str:
    """The error as one line: whitespace (newlines included) collapsed; an OSError from the
    system as `path: reason` rather than `[Errno 2] No such file or directory: 'path'`."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        where = str(error.filename) + (f" -> {error.filename2}" if error.filename2 is not None else "")
        text = f"{where}: {error.strerror}"
    else:
        text = str(error)
    return " ".join(text.split()) or type(error).__name__


def run(body: Callable[..., int | None], *args, **kwargs) -> int:
    """Call body(*args, **kwargs) and return its exit status: what it returns (None is 0),
    or the status of an expected error after printing it as `error: <message>` (or
    `aborted` for Ctrl-C) on one line of stderr. Bugs propagate with their traceback."""
    try:
        status = body(*args, **kwargs)
    except SystemExit as e:  # argparse inside the body (--help, a usage error) or sys.exit(n)
        if e.code is None or isinstance(e.code, int):
            return e.code or OK
        print(e.code, file=sys.stderr)  # sys.exit("text") prints the text and means failure
        return FAILED
    except BaseException as e:
        status = exit_status(e)
        if status is None:
            raise
        _flush(sys.stdout)  # what the run printed so far comes before the error line
        print("aborted" if status == INTERRUPTED else f"error: {message(e)}", file=sys.stderr)
        return status
    return OK if status is None else int(status)


def command(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorator form of `run`: @cli.command on a `main(argv)` gives it the convention."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        return run(main, *args, **kwargs)

    return wrapper


def _flush(stream) -> None:
    try:
        stream.flush()
    except (OSError, ValueError):  # a closed or broken stdout must not hide the error line
        pass
