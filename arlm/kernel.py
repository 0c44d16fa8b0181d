"""Build and load the C element-wise LSTM step (arlm/lstm_step.c) on first use.

The kernel is plain C99 with no torch headers, compiled with the system C compiler in
well under a second and cached by source, compiler flags and CPU, so a second process
loads it at once. Without a compiler (or with ARLM_KERNEL=0, or off CPU float32) the
cell runs the same equations as separate torch operations: same results, slower.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("lstm_step.c")
FLAGS = ["-O3", "-march=native", "-std=c99", "-shared", "-fPIC", "-fopenmp"]
# -fopenmp links libgomp.so.1, the same soname torch's CPU build has already loaded, so
# the step shares torch's OpenMP runtime. Where it is not available the step is built
# single-threaded (the pragma is ignored).
FALLBACK_FLAGS = [f for f in FLAGS if f != "-fopenmp"]

_lib: ctypes.CDLL | None | bool = False  # False: not tried yet; None: unavailable


def _cache_dir() -> Path:
    return Path(os.environ.get("ARLM_CACHE") or Path.home() / ".cache" / "arlm") / "kernels"


def _cpu_id() -> str:
    """What -march=native depends on: a cached build must not move to a different CPU."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc) found")
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *FLAGS]).encode() + _cpu_id().encode()).hexdigest()[:16]
    out = _cache_dir() / f"lstm_step-{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        # Build beside the target and rename: processes starting together (DDP ranks)
        # never load a half-written library.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            r = subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True)
            if r.returncode != 0:
                r = subprocess.run([cc, *FALLBACK_FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"{cc} failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(out))
    i64, p = ctypes.c_int64, ctypes.c_void_p
    lib.arlm_lstm_forward.argtypes = [i64, i64, i64] + [p] * 11
    lib.arlm_lstm_forward.restype = None
    lib.arlm_lstm_backward.argtypes = [i64, i64, i64] + [p] * 9
    lib.arlm_lstm_backward.restype = None
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled step, or None where it cannot be used (the cell then uses torch ops)."""
    global _lib
    if _lib is False:
        if os.environ.get("ARLM_KERNEL", "1") == "0":
            _lib = None
        else:
            try:
                _lib = _build()
            except Exception as e:  # a missing compiler must never stop training
                warnings.warn(f"arlm: the C LSTM step could not be built ({e}); using torch operations, "
                              "which give the same results more slowly. Install a C compiler (e.g. gcc) "
                              "to speed up, or set ARLM_KERNEL=0 to silence this.", stacklevel=2)
                _lib = None
    return _lib or None


def set_enabled(enabled: bool) -> None:
    """Switch the C step on or off for this process (tests compare both paths)."""
    global _lib
    _lib = False if enabled else None
    if enabled and os.environ.get("ARLM_KERNEL") == "0":
        del os.environ["ARLM_KERNEL"]


if __name__ == "__main__":  # python -m arlm.kernel: build now, say where it is
    lib = load()
    print(lib._name if lib else "unavailable", file=sys.stdout)
