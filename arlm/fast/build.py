"""Build and load the C LSTM step (lstm_step.c beside this file) on first use, and call it
with tensors.

The kernel is plain C99 with no torch headers, compiled with the system C compiler in well
under a second and cached by source, compiler flags and CPU, so a second process loads it
at once. Without a compiler (or with ARLM_KERNEL=0, or off CPU float32) the backend runs
the same equations as torch operations (torch_loop.py): same results, slower.

`Kernel` wraps the loaded library: its methods take tensors (checked float32, contiguous,
on the CPU) and pass their addresses, so no caller computes pointers by hand.
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
from torch import Tensor

SOURCE = Path(__file__).with_name("lstm_step.c")
FLAGS = ["-O3", "-march=native", "-std=c99", "-ffp-contract=fast", "-shared", "-fPIC", "-fopenmp"]
# -fopenmp links libgomp.so.1, the same soname torch's CPU build has already loaded, so
# the step shares torch's OpenMP runtime. Where it is not available the step is built
# single-threaded (the pragma is ignored).
FALLBACK_FLAGS = [f for f in FLAGS if f != "-fopenmp"]
LOW_DTYPES = {"float16": "f16", "int8": "i8"}  # inference weight types → the C functions' suffix

_kernel: "Kernel | None | bool" = False  # False: not tried yet; None: unavailable


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


def _compile() -> Path:
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
    return out


def _ptr(t: Tensor | None) -> int | None:
    """The address of a float32 (or int8/float16 weight) CPU tensor laid out contiguously."""
    if t is None:
        return None
    if t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError("the C step reads contiguous CPU tensors")
    return t.data_ptr()


def _f32(*tensors: Tensor | None) -> None:
    for t in tensors:
        if t is not None and t.dtype != torch.float32:
            raise TypeError(f"the C step reads float32, got {t.dtype}")


class Kernel:
    """The compiled library, called with tensors. Shapes follow lstm_step.c's comments:
    gates (B, 4H) in the order f, i, c̃, o; states (B, H); keep (B,) floats or None."""

    def __init__(self, path: Path):
        lib = self.lib = ctypes.CDLL(str(path))
        self.path = str(path)
        i64, p = ctypes.c_int64, ctypes.c_void_p

        def sig(name: str, n_ints: int, n_ptrs: int, mid: tuple = ()) -> None:
            fn = getattr(lib, name)
            fn.argtypes = [i64] * n_ints + list(mid) + [p] * n_ptrs
            fn.restype = None

        sig("arlm_lstm_forward", 3, 11)
        sig("arlm_lstm_backward", 3, 9)
        lib.arlm_lanes.argtypes, lib.arlm_lanes.restype = [], i64
        lib.arlm_lstm_window_forward.argtypes = [i64, i64, i64, i64, p, i64] + [p] * 12
        lib.arlm_lstm_window_forward.restype = None
        lib.arlm_lstm_window_backward.argtypes = [i64, i64, i64, i64, p, i64] + [p] * 11
        lib.arlm_lstm_window_backward.restype = None
        self.low = set()
        for dtype, suffix in LOW_DTYPES.items():  # float16 is absent where the compiler has no half type
            if hasattr(lib, f"arlm_matmul_{suffix}"):
                getattr(lib, f"arlm_matmul_{suffix}").argtypes = [i64, i64, i64, i64, p, i64, p, p, p]
                getattr(lib, f"arlm_matmul_{suffix}").restype = None
                getattr(lib, f"arlm_matmul_{suffix}_t").argtypes = [i64, i64, i64, p, p, p, p]
                getattr(lib, f"arlm_matmul_{suffix}_t").restype = None
                getattr(lib, f"arlm_lstm_sequence_{suffix}").argtypes = [i64, i64, i64, i64, p, i64] + [p] * 12
                getattr(lib, f"arlm_lstm_sequence_{suffix}").restype = None
                self.low.add(dtype)
        self.lanes = lib.arlm_lanes()  # the vector width: the window calls need H % lanes == 0

    # -- one step's element-wise half --

    def step_forward(self, zh: Tensor, zx: Tensor, b: Tensor, c_prev: Tensor, keep: Tensor | None,
                     gates: Tensor, c: Tensor, tanh_c: Tensor, h: Tensor,
                     keep_next: Tensor | None = None, h_next: Tensor | None = None) -> None:
        """gates, c, tanh(c), h of one step from zh = W_h·h_{t-1} and zx = W_x·x_t (each (B, 4H))
        plus b; with keep_next also h_next = h ⊙ keep_next (what the next product reads)."""
        B, H = c.shape
        _f32(zh, zx, b, c_prev, keep, gates, c, tanh_c, h, keep_next, h_next)
        self.lib.arlm_lstm_forward(torch.get_num_threads(), B, H, _ptr(zh), _ptr(zx), _ptr(b), _ptr(c_prev),
                                   _ptr(keep), _ptr(gates), _ptr(c), _ptr(tanh_c), _ptr(h), _ptr(keep_next),
                                   _ptr(h_next) if keep_next is not None else None)

    def step_backward(self, gates: Tensor, c_prev: Tensor, keep: Tensor | None, tanh_c: Tensor, dh: Tensor,
                      keep_after: Tensor | None, d_h: Tensor | None, dc: Tensor, dG: Tensor) -> None:
        """dG (B, 4H), the gradient on one step's pre-activations; dc (in/out) carries
        ∂L/∂c back through f. dh: the gradient from step t+1; d_h: from above (or None)."""
        B, H = dc.shape
        _f32(gates, c_prev, keep, tanh_c, dh, keep_after, d_h, dc, dG)
        self.lib.arlm_lstm_backward(torch.get_num_threads(), B, H, _ptr(gates), _ptr(c_prev), _ptr(keep),
                                    _ptr(tanh_c), _ptr(dh), _ptr(keep_after), _ptr(d_h), _ptr(dc), _ptr(dG))

    # -- a whole window --

    def window_forward(self, W: Tensor, gx: Tensor, b: Tensor, h0: Tensor, c0: Tensor, keep: Tensor | None,
                       gates: Tensor, cs: Tensor, tanh_cs: Tensor, hs: Tensor) -> None:
        """Every step of a window in one call: each thread owns a slice of the hidden units,
        computes their share of W_h·h_{t-1} and their gates, then waits once per step.
        W (4H, H + I) the fused weight; gx (T, B, 4H) = W_x·x_t; keep (T, B) or None."""
        T, B, H = hs.shape
        _f32(W, gx, b, h0, c0, keep, gates, cs, tanh_cs, hs)
        # scratch, held here while C writes it: the packed weight, h_{t-1} twice, W_h·h
        packed, h_in, zh = hs.new_empty(4 * H * H), hs.new_empty(2 * B * H), hs.new_empty(B * 4 * H)
        self.lib.arlm_lstm_window_forward(
            torch.get_num_threads(), T, B, H, _ptr(W), W.shape[1], _ptr(gx), _ptr(b), _ptr(h0), _ptr(c0),
            _ptr(keep), _ptr(gates), _ptr(cs), _ptr(tanh_cs), _ptr(hs), _ptr(packed), _ptr(h_in), _ptr(zh))

    def window_backward(self, W: Tensor, gates: Tensor, c0: Tensor, cs: Tensor, tanh_cs: Tensor,
                        keep: Tensor | None, d_hs: Tensor | None, dh: Tensor, dc: Tensor, dG: Tensor) -> None:
        """The recurrence of a window backwards in one call: fills dG (T, B, 4H); dh and dc
        go in as ∂L/∂h_T, ∂L/∂c_T and come out as ∂L/∂h_0, ∂L/∂c_0."""
        T, B, H = cs.shape
        _f32(W, gates, c0, cs, tanh_cs, keep, d_hs, dh, dc, dG)
        packed, dh_rec = cs.new_empty(4 * H * H), cs.new_empty(B * H)  # scratch, held during the call
        self.lib.arlm_lstm_window_backward(
            torch.get_num_threads(), T, B, H, _ptr(W), W.shape[1], _ptr(gates), _ptr(c0), _ptr(cs), _ptr(tanh_cs),
            _ptr(keep), _ptr(d_hs), _ptr(dh), _ptr(dc), _ptr(dG), _ptr(packed), _ptr(dh_rec))

    # -- products and windows from float16 / int8 weights (lowp.py) --

    def low_matmul(self, dtype: str, data: Tensor, scale: Tensor | None, x: Tensor, y: Tensor,
                   ld: int, column: int = 0) -> None:
        """y (M, N) = x (M, K) · W[:, column:column + K]ᵀ, W stored (N, ld) as `dtype`."""
        M, K = x.shape
        _f32(x, y, scale)
        start = _ptr(data) + column * data.element_size()  # the column range of a row-major weight
        getattr(self.lib, f"arlm_matmul_{LOW_DTYPES[dtype]}")(
            torch.get_num_threads(), M, y.shape[1], K, start, ld, _ptr(scale), _ptr(x), _ptr(y))

    def low_matmul_t(self, dtype: str, data_t: Tensor, scale: Tensor | None, x: Tensor, y: Tensor) -> None:
        """y (M, N) = x (M, K) · W^T, from W stored transposed (K, N) (few-column weights)."""
        M, K = x.shape
        _f32(x, y, scale)
        getattr(self.lib, f"arlm_matmul_{LOW_DTYPES[dtype]}_t")(M, y.shape[1], K, _ptr(data_t), _ptr(scale),
                                                                _ptr(x), _ptr(y))

    def low_window(self, dtype: str, data: Tensor, scale: Tensor | None, gx: Tensor, b: Tensor, h0: Tensor,
                   c0: Tensor, keep: Tensor | None, gates: Tensor, cs: Tensor, tanh_cs: Tensor, hs: Tensor) -> None:
        """A layer's whole window for inference from a float16/int8 fused weight (4H, H + I)."""
        T, B, H = hs.shape
        _f32(gx, b, h0, c0, keep, gates, cs, tanh_cs, hs, scale)
        zh, h_in = hs.new_empty(B, 4 * H), hs.new_empty(B, H)  # scratch
        getattr(self.lib, f"arlm_lstm_sequence_{LOW_DTYPES[dtype]}")(
            torch.get_num_threads(), T, B, H, _ptr(data), data.shape[1], _ptr(scale), _ptr(gx), _ptr(b),
            _ptr(h0), _ptr(c0), _ptr(keep), _ptr(gates), _ptr(cs), _ptr(tanh_cs), _ptr(hs), _ptr(zh), _ptr(h_in))


def load() -> Kernel | None:
    """The compiled step, or None where it cannot be used (the backend then uses torch ops)."""
    global _kernel
    if _kernel is False:
        if os.environ.get("ARLM_KERNEL", "1") == "0":
            _kernel = None
        else:
            try:
                _kernel = Kernel(_compile())
            except Exception as e:  # a missing compiler must never stop training
                warnings.warn(f"arlm: the C LSTM step could not be built ({e}); using torch operations, "
                              "which give the same results more slowly. Install a C compiler (e.g. gcc) "
                              "to speed up, or set ARLM_KERNEL=0 to silence this.", stacklevel=2)
                _kernel = None
    return _kernel or None


def supports(dtype: str) -> bool:
    """Whether inference weights of this dtype can be used here ("float32" always can)."""
    if dtype == "float32":
        return True
    k = load()
    return k is not None and dtype in k.low


def set_enabled(enabled: bool) -> None:
    """Switch the C step on or off for this process (tests compare every path)."""
    global _kernel
    _kernel = False if enabled else None
    if enabled and os.environ.get("ARLM_KERNEL") == "0":
        del os.environ["ARLM_KERNEL"]


if __name__ == "__main__":  # python -m arlm.fast.build: build now, say where it is
    k = load()
    print(k.path if k else "unavailable", file=sys.stdout)
