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

import torch

SOURCE = Path(__file__).with_name("lstm_step.c")
FLAGS = ["-O3", "-march=native", "-std=c99", "-ffp-contract=fast", "-shared", "-fPIC", "-fopenmp"]
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
    lib.arlm_lanes.argtypes, lib.arlm_lanes.restype = [], i64
    lib.arlm_lstm_window_forward.argtypes = [i64, i64, i64, i64, p, i64] + [p] * 12
    lib.arlm_lstm_window_forward.restype = None
    lib.arlm_lstm_window_backward.argtypes = [i64, i64, i64, i64, p, i64] + [p] * 11
    lib.arlm_lstm_window_backward.restype = None
    lib.lanes = lib.arlm_lanes()
    for suffix in DTYPES.values():  # float16 is absent where the compiler has no half type
        if hasattr(lib, f"arlm_matmul_{suffix}"):
            getattr(lib, f"arlm_matmul_{suffix}").argtypes = [i64, i64, i64, i64, p, i64, p, p, p]
            getattr(lib, f"arlm_matmul_{suffix}").restype = None
            getattr(lib, f"arlm_matmul_{suffix}_t").argtypes = [i64, i64, i64, p, p, p, p]
            getattr(lib, f"arlm_matmul_{suffix}_t").restype = None
            getattr(lib, f"arlm_lstm_sequence_{suffix}").argtypes = [i64, i64, i64, i64, p, i64] + [p] * 12
            getattr(lib, f"arlm_lstm_sequence_{suffix}").restype = None
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


class LowPrecision:
    """A float32 weight (N, K) kept for inference as float16, or as int8 with one float32
    scale per row (w ≈ scale[n] · q[n, k]), multiplied in float32 by lstm_step.c.

    Few-column matrices (K < 128: the adaptive softmax's tail) are stored transposed, so
    the product runs along their thousands of rows, unless not `transposable` (a weight
    whose column ranges are multiplied separately, like a cell's fused W)."""

    def __init__(self, weight: torch.Tensor, dtype: str, transposable: bool = True):
        if dtype == "float32" or not supports(dtype):
            raise ValueError(f"{dtype} inference weights need the C step (a C compiler); use float32")
        W = weight.detach().float()
        self.shape, self.transposed = tuple(W.shape), transposable and W.shape[1] < 128
        if dtype == "float16":
            data, self.scale = W.to(torch.float16), None
        else:  # symmetric, per row: the largest |w| of a row maps to 127
            scale = W.abs().amax(1).clamp_min(1e-30) / 127
            data, self.scale = torch.round(W / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale.contiguous()
        self.data = (data.t() if self.transposed else data).contiguous()
        lib = load()
        self._matmul = getattr(lib, f"arlm_matmul_{DTYPES[dtype]}{'_t' if self.transposed else ''}")
        self._sequence = getattr(lib, f"arlm_lstm_sequence_{DTYPES[dtype]}")

    def lstm_sequence(self, gx, b, h0, c0, keep, gates, cs, tanh_cs, hs) -> None:
        """Run one layer's window from this weight (the fused W of a cell) in C; fills
        gates, cs, tanh_cs and hs. gx: W_x·x_t for every step, (T, B, 4H); keep (T, B, 1) or None."""
        T, B, H = hs.shape
        zh, h_in = hs.new_empty(B, 4 * H), hs.new_empty(B, H)
        k = keep.data_ptr() if keep is not None else None
        self._sequence(torch.get_num_threads(), T, B, H, self.data.data_ptr(), self.shape[1],
                       self.scale.data_ptr() if self.scale is not None else None, gx.data_ptr(), b.data_ptr(),
                       h0.data_ptr(), c0.data_ptr(), k, gates.data_ptr(), cs.data_ptr(), tanh_cs.data_ptr(),
                       hs.data_ptr(), zh.data_ptr(), h_in.data_ptr())

    def matmul(self, x: torch.Tensor, start: int = 0, width: int | None = None) -> torch.Tensor:
        """x (M, width) @ W[:, start:start + width]^T as float32 (M, N)."""
        N, K = self.shape
        width = K - start if width is None else width
        x = x.contiguous()
        y = x.new_empty(x.shape[0], N)
        scale = self.scale.data_ptr() if self.scale is not None else None
        if self.transposed:
            assert start == 0 and width == K, "a transposed weight is multiplied whole"
            self._matmul(x.shape[0], N, K, self.data.data_ptr(), scale, x.data_ptr(), y.data_ptr())
        else:
            self._matmul(torch.get_num_threads(), x.shape[0], N, width, self.data.data_ptr() + start * self.data.element_size(),
                         K, scale, x.data_ptr(), y.data_ptr())
        return y


DTYPES = {"float16": "f16", "int8": "i8"}


def supports(dtype: str) -> bool:
    """Whether inference weights of this dtype can be used here ("float32" always can)."""
    if dtype == "float32":
        return True
    lib = load()
    return dtype in DTYPES and lib is not None and hasattr(lib, f"arlm_matmul_{DTYPES[dtype]}")


def set_enabled(enabled: bool) -> None:
    """Switch the C step on or off for this process (tests compare both paths)."""
    global _lib
    _lib = False if enabled else None
    if enabled and os.environ.get("ARLM_KERNEL") == "0":
        del os.environ["ARLM_KERNEL"]


if __name__ == "__main__":  # python -m arlm.kernel: build now, say where it is
    lib = load()
    print(lib._name if lib else "unavailable", file=sys.stdout)
