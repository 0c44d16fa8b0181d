"""Build and load the C LSTM step (lstm_step.c beside this file) on first use, and call it
with tensors.

The kernel is plain C99 with no torch headers, compiled with the system C compiler in well
under a second. It is built once per instruction set ("ISA"), and a process loads the best
one its CPU runs:

    x86-64    avx512   AVX-512 F/BW/VL/DQ, AVX2, FMA, F16C      16 lanes
              avx2     AVX2, FMA, F16C (x86-64-v3's vectors)    8 lanes
              generic  -march=x86-64: SSE2, any x86-64 CPU      4 lanes (one SSE register)
    others    native   -mcpu=native on ARM, else -march=native  8 lanes (NEON: two registers)
              generic  the compiler's default target           8 lanes

The CPU's features come from /proc/cpuinfo (sysctl on macOS); `available_isas()` lists what
this CPU runs, best first. ARLM_ISA=avx512|avx2|generic|native forces one (as does
`set_enabled(True, isa=...)`); `load(isa=...)` returns a given build without switching the
process to it. Only the build a process uses is compiled, cached under ~/.cache/arlm/kernels
(or $ARLM_CACHE/kernels) by source, compiler and flags (and by CPU for "native"), so a second
process loads it at once; a build that fails is remembered there too (a `.failed` file with
the compiler's identity), so later processes go straight to the next build down until the
compiler changes. `python -m arlm.fast.build` says which build is in use.

Without a compiler (or with ARLM_KERNEL=0, or off CPU float32) the backend runs the same
equations as torch operations (torch_loop.py): same results, slower.

`Kernel` wraps the loaded library: its methods take tensors (checked float32, contiguous,
on the CPU) and pass their addresses, so no caller computes pointers by hand.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("lstm_step.c")
FLAGS = ["-O3", "-std=c99", "-ffp-contract=fast", "-shared", "-fPIC", "-fopenmp"]  # every build's
# -fopenmp links libgomp.so.1, the same soname torch's CPU build has already loaded, so
# the step shares torch's OpenMP runtime. Where it is not available the step is built
# single-threaded (the pragma is ignored).
FALLBACK_FLAGS = [f for f in FLAGS if f != "-fopenmp"]
LIBS = ["-lm"]  # after the source: expf and logf (the adaptive-softmax cluster's scalar ends)
LOW_DTYPES = {"float16": "f16", "int8": "i8"}  # smaller inference weight types → the C functions' suffix
SUFFIX = {"float32": "f32", **LOW_DTYPES}       # every weight type the C inference products read

# name: (the compiler flags beyond FLAGS, the CPU features it needs as /proc/cpuinfo names it),
# best first. The x86-64 builds name their instructions rather than -march=native, so a
# build is the same on every CPU and its cache entry can be shared.
X86_64_ISAS = {
    "avx512": (["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"],
               {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx", "avx2", "fma", "f16c"}),
    "avx2": (["-mavx2", "-mfma", "-mf16c"], {"avx", "avx2", "fma", "f16c"}),
    "generic": (["-march=x86-64", "-mtune=generic"], set()),
}
# ARM and the rest: whatever this CPU has (-mcpu=native is ARM's and POWER's spelling, which
# clang accepts on ARM where older versions refuse -march=native), or the compiler's default.
_NATIVE = "-mcpu=native" if platform.machine().lower().startswith(("aarch64", "arm", "ppc", "powerpc")) else "-march=native"
OTHER_ISAS = {
    "native": ([_NATIVE], set()),
    "generic": ([], set()),
}

_kernel: "Kernel | None | bool" = False  # the process's build. False: not tried yet; None: unavailable
_forced: str | None = None                # set_enabled(True, isa=...)
_builds: dict[str, "Kernel"] = {}         # every build loaded so far, by ISA
_lock = threading.RLock()


def _cache_dir() -> Path:
    return Path(os.environ.get("ARLM_CACHE") or Path.home() / ".cache" / "arlm") / "kernels"


def _is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "x64")


def isas() -> dict[str, tuple[list[str], set[str]]]:
    """Every build this kind of machine has, best first: name → (flags, CPU features needed)."""
    return X86_64_ISAS if _is_x86_64() else OTHER_ISAS


def _cpu_id() -> str:
    """What a native build depends on: a cached one must not move to a different CPU."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """The CPU's features, lower case as Linux's /proc/cpuinfo names them (the features every
    core has); on macOS from sysctl; empty where neither answers (then only "generic" runs)."""
    features: set[str] | None = None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")) and ":" in line:
                    core = set(line.split(":", 1)[1].split())
                    features = core if features is None else features & core
    except OSError:
        pass
    if features is None and sys.platform == "darwin":
        try:
            r = subprocess.run(["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
                               capture_output=True, text=True, timeout=5)
            features = {f.lower().replace("avx1.0", "avx") for f in r.stdout.split()}
        except (OSError, subprocess.SubprocessError):
            pass
    return frozenset(features or ())


def available_isas() -> list[str]:
    """The builds this CPU runs, best first (the first is the one a process loads)."""
    have = cpu_features()
    return [name for name, (_, needs) in isas().items() if needs <= have]


def _choice() -> list[str]:
    """The builds to try, in order: the forced one (set_enabled, ARLM_ISA) or all that run here."""
    available = available_isas()
    wanted = _forced or os.environ.get("ARLM_ISA", "").strip().lower()
    if wanted and wanted != "auto":
        if wanted in available:
            return [wanted]
        why = "this CPU does not run it" if wanted in isas() else f"known: {', '.join(isas())}"
        warnings.warn(f"arlm: ARLM_ISA={wanted} ignored ({why}); using {available[0]}", stacklevel=4)
    return available


def _compile(isa: str) -> Path:
    """The library built for `isa`, compiled now unless the cache has it."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise FileNotFoundError("no C compiler (cc/gcc) found")
    flags = [*FLAGS, *isas()[isa][0]]
    fallback = [*FALLBACK_FLAGS, *isas()[isa][0]]
    key_text = " ".join([cc, *flags, *LIBS]) + (_cpu_id() if any(f.endswith("=native") for f in flags) else "")
    key = hashlib.sha256(SOURCE.read_bytes() + key_text.encode()).hexdigest()[:16]
    out = _cache_dir() / f"lstm_step-{isa}-{key}.so"
    # A build that failed is remembered beside where it would be, with the compiler's identity:
    # every process would otherwise pay the failing compiles again before falling back.
    failed = out.with_suffix(".failed")
    compiler = _identity(cc)
    if not out.exists() and failed.is_file():
        lines = failed.read_text(encoding="utf-8", errors="replace").splitlines()
        if lines and lines[0] == compiler:
            raise RuntimeError(f"{' '.join(lines[1:])} (remembered in {failed}; delete it to retry)")
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        # Build beside the target and rename: processes starting together (DDP ranks)
        # never load a half-written library.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            try:
                r = subprocess.run([cc, *flags, "-o", tmp, str(SOURCE), *LIBS], capture_output=True, text=True)
                if r.returncode != 0:
                    r = subprocess.run([cc, *fallback, "-o", tmp, str(SOURCE), *LIBS], capture_output=True, text=True)
            except OSError as e:  # CC names no program
                raise FileNotFoundError(f"the C compiler {cc} could not be run ({e})") from e
            if r.returncode != 0:
                why = f"{cc} failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}"
                with contextlib.suppress(OSError):  # remembering is a courtesy, never a second error
                    failed.write_text(f"{compiler}\n{why}\n", encoding="utf-8")
                raise RuntimeError(why)
            os.replace(tmp, out)
            failed.unlink(missing_ok=True)
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

    def __init__(self, path: Path, isa: str | None = None):
        lib = self.lib = ctypes.CDLL(str(path))
        self.path = str(path)
        self.isa = isa  # which build (see isas()); None for a library loaded by hand
        i64, p = ctypes.c_int64, ctypes.c_void_p

        def sig(name: str, n_ints: int, n_ptrs: int, mid: tuple = ()) -> None:
            fn = getattr(lib, name)
            fn.argtypes = [i64] * n_ints + list(mid) + [p] * n_ptrs
            fn.restype = None

        sig("arlm_lstm_forward", 3, 11)
        sig("arlm_lstm_backward", 3, 9)
        lib.arlm_lanes.argtypes, lib.arlm_lanes.restype = [], i64
        lib.arlm_lstm_window_forward.argtypes = [i64, i64, i64, i64, p, i64] + [p] * 13
        lib.arlm_lstm_window_forward.restype = None
        lib.arlm_lstm_window_backward.argtypes = [i64, i64, i64, i64, p, i64] + [p] * 12
        lib.arlm_lstm_window_backward.restype = None
        self.low = set()  # the smaller weight types this build multiplies from
        for dtype, suffix in SUFFIX.items():  # float16 is absent where the compiler has no half type
            if hasattr(lib, f"arlm_matmul_{suffix}"):
                getattr(lib, f"arlm_matmul_{suffix}").argtypes = [i64, i64, i64, i64, p, i64, p, p, p]
                getattr(lib, f"arlm_matmul_{suffix}").restype = None
                getattr(lib, f"arlm_matmul_{suffix}_t").argtypes = [i64, i64, i64, p, p, p, p]
                getattr(lib, f"arlm_matmul_{suffix}_t").restype = None
                getattr(lib, f"arlm_lstm_sequence_{suffix}").argtypes = [i64, i64, i64, i64, p, i64] + [p] * 12
                getattr(lib, f"arlm_lstm_sequence_{suffix}").restype = None
                getattr(lib, f"arlm_decode_{suffix}").argtypes = [i64, p, i64] + [p] * 6
                getattr(lib, f"arlm_decode_{suffix}").restype = ctypes.c_int
                if dtype != "float32":
                    self.low.add(dtype)
        for name in ("arlm_cluster_forward", "arlm_cluster_backward"):
            getattr(lib, name).argtypes = [i64] * 4 + [p] * (6 if name.endswith("forward") else 8)
            getattr(lib, name).restype = None
        lib.arlm_bernoulli.argtypes = [i64, ctypes.c_uint64] + [p] * 4
        lib.arlm_bernoulli.restype = None
        self.lanes = lib.arlm_lanes()  # the vector width: the window calls need H % lanes == 0

    def __repr__(self) -> str:
        return f"Kernel(isa={self.isa}, lanes={self.lanes}, low={sorted(self.low)}, path={self.path})"

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
                       gates: Tensor, cs: Tensor, tanh_cs: Tensor, hs: Tensor, mask: Tensor | None = None) -> None:
        """Every step of a window in one call: each thread owns a slice of the hidden units,
        computes their share of W_h·h_{t-1} and their gates, then waits once per step.
        W (4H, H + I) the fused weight; gx (T, B, 4H) = W_x·x_t; keep (T, B) or None;
        mask (4H, H) or None: the recurrence multiplies by W_h ⊙ mask (DropConnect)."""
        T, B, H = hs.shape
        _f32(W, gx, b, h0, c0, keep, gates, cs, tanh_cs, hs, mask)
        # scratch, held here while C writes it: the packed weight, h_{t-1} twice, W_h·h
        packed, h_in, zh = hs.new_empty(4 * H * H), hs.new_empty(2 * B * H), hs.new_empty(B * 4 * H)
        self.lib.arlm_lstm_window_forward(
            torch.get_num_threads(), T, B, H, _ptr(W), W.shape[1], _ptr(gx), _ptr(b), _ptr(h0), _ptr(c0),
            _ptr(keep), _ptr(gates), _ptr(cs), _ptr(tanh_cs), _ptr(hs), _ptr(packed), _ptr(h_in), _ptr(zh), _ptr(mask))

    def window_backward(self, W: Tensor, gates: Tensor, c0: Tensor, cs: Tensor, tanh_cs: Tensor,
                        keep: Tensor | None, d_hs: Tensor | None, dh: Tensor, dc: Tensor, dG: Tensor,
                        mask: Tensor | None = None) -> None:
        """The recurrence of a window backwards in one call: fills dG (T, B, 4H); dh and dc
        go in as ∂L/∂h_T, ∂L/∂c_T and come out as ∂L/∂h_0, ∂L/∂c_0. mask: as window_forward."""
        T, B, H = cs.shape
        _f32(W, gates, c0, cs, tanh_cs, keep, d_hs, dh, dc, dG, mask)
        packed, dh_rec = cs.new_empty(4 * H * H), cs.new_empty(B * H)  # scratch, held during the call
        self.lib.arlm_lstm_window_backward(
            torch.get_num_threads(), T, B, H, _ptr(W), W.shape[1], _ptr(gates), _ptr(c0), _ptr(cs), _ptr(tanh_cs),
            _ptr(keep), _ptr(d_hs), _ptr(dh), _ptr(dc), _ptr(dG), _ptr(packed), _ptr(dh_rec), _ptr(mask))

    # -- one adaptive-softmax tail cluster (adaptive.py) --

    def cluster_forward(self, P: Tensor, Wc: Tensor, y: Tensor, out: Tensor, lse: Tensor) -> None:
        """out (n) = log-softmax(P · Wcᵀ)[t, y[t]] and lse (n) its log-sum-exp, never forming
        the n × V logits. P (n, d), Wc (V, d), y (n,) int64 in [0, V)."""
        (n, d), V, threads = P.shape, Wc.shape[0], torch.get_num_threads()
        _f32(P, Wc, out, lse)
        if y.dtype != torch.int64 or d % self.lanes:
            raise ValueError(f"cluster_forward needs int64 targets and a width of whole vectors ({self.lanes})")
        scratch = P.new_empty(threads * (2 * n * self.lanes + d * 8 * self.lanes))
        self.lib.arlm_cluster_forward(threads, n, V, d, _ptr(P), _ptr(Wc), _ptr(y), _ptr(out), _ptr(lse),
                                      _ptr(scratch))

    def cluster_backward(self, P: Tensor, Wc: Tensor, y: Tensor, lse: Tensor, g: Tensor,
                         dP: Tensor, dWc: Tensor) -> None:
        """dP (n, d) and dWc (V, d) from g (n) = ∂L/∂out of cluster_forward."""
        (n, d), V, threads = P.shape, Wc.shape[0], torch.get_num_threads()
        _f32(P, Wc, lse, g, dP, dWc)
        scratch = P.new_empty(threads * (n * d + (d + n) * 8 * self.lanes))
        self.lib.arlm_cluster_backward(threads, n, V, d, _ptr(P), _ptr(Wc), _ptr(y), _ptr(lse), _ptr(g),
                                       _ptr(dP), _ptr(dWc), _ptr(scratch))

    # -- dropout masks (masks.py) --

    def bernoulli(self, state: Tensor, threshold: int, out: Tensor) -> None:
        """out (float32, contiguous) = 1 where the generator's next uniforms are below p, else 0;
        `state` a generator's state blob (uint8, torch's layout: masks.py checks it), advanced in place."""
        _f32(out)
        if state.dtype != torch.uint8 or not state.is_contiguous():
            raise TypeError("the generator state is a contiguous uint8 tensor")
        base = state.data_ptr()
        self.lib.arlm_bernoulli(out.numel(), threshold, base + 8, base + 16, base + 24, _ptr(out))

    # -- inference products and windows from float32, float16 or int8 weights (lowp.py) --

    def low_matmul(self, dtype: str, data: Tensor, scale: Tensor | None, x: Tensor, y: Tensor,
                   ld: int, column: int = 0) -> None:
        """y (M, N) = x (M, K) · W[:, column:column + K]ᵀ, W stored (N, ld) as `dtype`."""
        M, K = x.shape
        _f32(x, y, scale)
        start = _ptr(data) + column * data.element_size()  # the column range of a row-major weight
        getattr(self.lib, f"arlm_matmul_{SUFFIX[dtype]}")(
            torch.get_num_threads(), M, y.shape[1], K, start, ld, _ptr(scale), _ptr(x), _ptr(y))

    def low_matmul_t(self, dtype: str, data_t: Tensor, scale: Tensor | None, x: Tensor, y: Tensor) -> None:
        """y (M, N) = x (M, K) · W^T, from W stored transposed (K, N) (few-column weights)."""
        M, K = x.shape
        _f32(x, y, scale)
        getattr(self.lib, f"arlm_matmul_{SUFFIX[dtype]}_t")(M, y.shape[1], K, _ptr(data_t), _ptr(scale),
                                                                _ptr(x), _ptr(y))

    def low_window(self, dtype: str, data: Tensor, scale: Tensor | None, gx: Tensor, b: Tensor, h0: Tensor,
                   c0: Tensor, keep: Tensor | None, gates: Tensor, cs: Tensor, tanh_cs: Tensor, hs: Tensor) -> None:
        """A layer's whole window for inference from a float32/float16/int8 fused weight (4H, H + I)."""
        T, B, H = hs.shape
        _f32(gx, b, h0, c0, keep, gates, cs, tanh_cs, hs, scale)
        zh, h_in = hs.new_empty(B, 4 * H), hs.new_empty(B, H)  # scratch
        getattr(self.lib, f"arlm_lstm_sequence_{SUFFIX[dtype]}")(
            torch.get_num_threads(), T, B, H, _ptr(data), data.shape[1], _ptr(scale), _ptr(gx), _ptr(b),
            _ptr(h0), _ptr(c0), _ptr(keep), _ptr(gates), _ptr(cs), _ptr(tanh_cs), _ptr(hs), _ptr(zh), _ptr(h_in))


    def decode(self, dtype: str, model: ctypes.Structure, ids: Tensor, h0: Tensor, c0: Tensor, h: Tensor,
               c: Tensor, out: Tensor) -> None:
        """One decoding step of a whole model (lowp.Decoder's `model`, weights of `dtype`): ids (B,)
        int64, the state h0, c0 (layers, B, H) → the new state h, c and out (B, V) log-probabilities."""
        if ids.dtype != torch.int64:
            raise TypeError(f"token ids must be int64, got {ids.dtype}")
        _f32(h0, c0, h, c, out)
        status = getattr(self.lib, f"arlm_decode_{SUFFIX[dtype]}")(
            torch.get_num_threads(), ctypes.addressof(model), ids.shape[0], _ptr(ids), _ptr(h0), _ptr(c0),
            _ptr(h), _ptr(c), _ptr(out))
        if status != 0:
            raise MemoryError("the C decoding step could not allocate its scratch memory")


def _identity(cc: str) -> str:
    """The compiler as a failed build remembers it: its resolved path, size and time, so an
    upgraded or replaced compiler is tried afresh."""
    path = shutil.which(cc) or cc
    try:
        st = os.stat(path)
    except OSError:
        return path
    return f"{os.path.realpath(path)} {st.st_size} {st.st_mtime_ns}"


def _build(isa: str) -> Kernel:
    """The Kernel for one build, compiled and loaded on first use (raises if it cannot be)."""
    with _lock:
        k = _builds.get(isa)
        if k is None:
            k = _builds[isa] = Kernel(_compile(isa), isa)
        return k


def _load_default() -> Kernel | None:
    if os.environ.get("ARLM_KERNEL", "1") == "0":
        return None
    failed = []
    for isa in _choice():
        try:
            k = _build(isa)
        except FileNotFoundError as e:  # no compiler: no build will do better
            failed.append(str(e))
            break
        except Exception as e:  # e.g. a compiler too old for these flags: the next build down
            failed.append(f"{isa}: {e}")
            continue
        if failed:
            warnings.warn(f"arlm: the C LSTM step's best build failed ({'; '.join(failed)}); using {isa}",
                          stacklevel=3)
        return k
    # a missing compiler must never stop training
    warnings.warn(f"arlm: the C LSTM step could not be built ({'; '.join(failed)}); using torch operations, "
                  "which give the same results more slowly. Install a C compiler (e.g. gcc) "
                  "to speed up, or set ARLM_KERNEL=0 to silence this.", stacklevel=3)
    return None


def load(isa: str | None = None) -> Kernel | None:
    """The compiled step, or None where it cannot be used (the backend then uses torch ops).

    With `isa` (one of available_isas()), that build, whatever the process uses; it raises
    ValueError for a build this CPU cannot run, and whatever stopped the build."""
    global _kernel
    if isa is not None:
        if isa not in available_isas():
            raise ValueError(f"no {isa!r} build runs on this CPU (it runs: {', '.join(available_isas())})")
        return _build(isa)
    if _kernel is False:
        with _lock:
            if _kernel is False:
                _kernel = _load_default()
    return _kernel or None


def supports(dtype: str) -> bool:
    """Whether inference weights of this dtype can be used here ("float32" always can)."""
    if dtype == "float32":
        return True
    k = load()
    return k is not None and dtype in k.low


def set_enabled(enabled: bool, isa: str | None = None) -> None:
    """Switch the C step on or off for this process (tests compare every path). With `isa`
    (one of available_isas()), the process uses that build from now on; without it, the one
    ARLM_ISA names or the best one."""
    global _kernel, _forced
    if isa is not None and isa not in available_isas():
        raise ValueError(f"no {isa!r} build runs on this CPU (it runs: {', '.join(available_isas())})")
    with _lock:
        _forced = isa if enabled else None
        _builds.clear()  # looked for again (a test may have changed CC or the cache)
        _kernel = False if enabled else None
    if enabled and os.environ.get("ARLM_KERNEL") == "0":
        del os.environ["ARLM_KERNEL"]


def _main(argv: list[str]) -> int:
    """python -m arlm.fast.build [--all]: build now, say which build and where it is."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m arlm.fast.build", description=_main.__doc__)
    ap.add_argument("--all", action="store_true", help="also build (and check) every ISA this CPU runs")
    args = ap.parse_args(argv)
    k = load()
    print(f"available: {', '.join(available_isas())} (best first; ARLM_ISA forces one)")
    if k is None:
        print("in use: none (torch operations)")
        return 1
    print(f"in use: {k.isa}  lanes {k.lanes}  low-precision weights: {', '.join(sorted(k.low)) or 'none'}")
    print(f"flags: {' '.join([*FLAGS, *isas()[k.isa][0]])}")
    print(k.path)
    if args.all:
        for isa in available_isas():
            b = load(isa)
            print(f"  {isa:8s} lanes {b.lanes:2d}  low: {', '.join(sorted(b.low)) or 'none':15s} {b.path}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
