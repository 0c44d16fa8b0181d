"""The fast backend (arlm/fast/): every path equals the readable step (LSTMCell.forward),
forward and backward, and the stack equals torch.nn.LSTM."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arlm.cell import LSTMCell
from arlm.fast import Window
from arlm.fast import build as kernel
from arlm.model import StackedLSTM


ISAS = kernel.available_isas()  # every build of the C step this CPU runs (avx512, avx2, generic on x86-64)


@pytest.fixture(params=[*(f"C window/{isa}" for isa in ISAS), *(f"C step/{isa}" for isa in ISAS), "torch ops",
                        f"C window/{ISAS[0]}/onednn", f"C step/{ISAS[0]}/onednn"])
def path(request, monkeypatch):
    """Run a test on each implementation of the fast path: the whole window in one C call
    (where H is whole vectors and T·B >= 32), a Python time loop around the compiled C
    step (for up to four sequences the forward's time loop in C too), and the
    torch-operations fallback (arlm/fast/); the C paths in every build this CPU runs
    (lanes of 16, 8 or 4 floats), their large products by torch's BLAS, and the best
    build's also by oneDNN (products.mm: the default on some CPUs, so every CI machine
    runs both)."""
    name, _, rest = request.param.partition("/")
    isa, _, products = rest.partition("/")
    compiled = name != "torch ops"
    monkeypatch.setenv("ARLM_WINDOW", "1" if name == "C window" else "0")
    monkeypatch.setenv("ARLM_MATMUL", products or "blas")
    kernel.set_enabled(compiled, isa=isa or None)
    if compiled:
        k = kernel.load()
        assert k is not None, "the C step did not build: is a C compiler installed?"
        assert k.isa == isa
    else:
        assert kernel.load() is None
    yield request.param
    kernel.set_enabled(True)


def readable_run(cell: LSTMCell, x, h, c, keep=None):
    """The definition: the seed's equations, one step at a time (with `keep`, the state
    zeroed before the steps where a document starts)."""
    hs = []
    for t, x_t in enumerate(x):
        if keep is not None:
            h, c = h * keep[t], c * keep[t]
        step = cell(x_t, (h, c))
        h, c = step.h, step.c
        hs.append(h)
    return torch.stack(hs), h, c


@pytest.mark.parametrize("T,B,I,H", [(1, 1, 3, 4), (7, 5, 6, 9), (20, 3, 16, 8), (9, 4, 5, 32)])
def test_fast_sequence_equals_readable_step(T, B, I, H, path):
    torch.manual_seed(T)
    cell = LSTMCell(I, H)
    x, h0, c0 = torch.randn(T, B, I), torch.randn(B, H), torch.randn(B, H)
    hs, (h, c), trace = cell.sequence(x, (h0, c0))
    ref_hs, ref_h, ref_c = readable_run(cell, x, h0, c0)
    torch.testing.assert_close(hs, ref_hs, atol=1e-5, rtol=0)
    torch.testing.assert_close(c, ref_c, atol=1e-5, rtol=0)
    # the trace holds the same gates the readable step computes
    step0 = cell(x[0], (h0, c0))
    for name in ("f", "i", "c_tilde", "o"):
        torch.testing.assert_close(getattr(trace, name)[0], getattr(step0.gates, name), atol=1e-6, rtol=0)
    torch.testing.assert_close(trace.c[-1], c)
    torch.testing.assert_close(trace.h, hs)


def test_hand_written_backward_equals_autograd_of_the_readable_step(path):
    torch.manual_seed(0)
    cell = LSTMCell(5, 6)
    x = torch.randn(9, 4, 5, requires_grad=True)
    h0, c0 = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    w_out, w_h, w_c = torch.randn(9, 4, 6), torch.randn(4, 6), torch.randn(4, 6)

    def grads(run):
        hs, h, c = run()
        loss = (hs * w_out).sum() + (h * w_h).sum() + (c * w_c).sum()
        return torch.autograd.grad(loss, [x, h0, c0, *cell.parameters()])

    fast = grads(lambda: (lambda r: (r[0], *r[1]))(cell.sequence(x, (h0, c0))))
    slow = grads(lambda: readable_run(cell, x, h0, c0))
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gradcheck_float64():
    torch.manual_seed(0)
    cell = LSTMCell(3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    W, b = (t.detach().clone().requires_grad_() for t in cell.fused())
    assert torch.autograd.gradcheck(lambda *a: Window.apply(*a)[:3], (x, h0, c0, W, b))
    # with a DropConnect mask on W_h (the gradient to W's h columns goes through it)
    from arlm.fast import dropout_mask
    mask = dropout_mask((16, 4), 0.5, W)
    assert mask.dtype == torch.float64 and 0 < int((mask == 0).sum()) < 64
    assert torch.autograd.gradcheck(lambda *a: Window.apply(*a, None, mask)[:3], (x, h0, c0, W, b))
    # the readable step, through the named parameters
    assert torch.autograd.gradcheck(lambda x, h, c: tuple(cell(x, (h, c))[:2]), (x[0], h0, c0))


@pytest.mark.parametrize("layers,T,B,I,H", [(1, 4, 1, 3, 5), (2, 12, 4, 8, 16), (3, 6, 7, 10, 6)])
def test_stack_matches_torch_lstm_outputs_states_and_all_gradients(layers, T, B, I, H, path):
    torch.manual_seed(layers)
    ref = nn.LSTM(I, H, layers)
    ours = StackedLSTM.from_torch(ref)
    x = torch.randn(T, B, I)
    h0, c0 = torch.randn(layers, B, H), torch.randn(layers, B, H)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, (h_ref, c_ref) = ref(x1, (h0, c0))
    y, (h, c), _ = ours(x2, (h0, c0))
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(c, c_ref, atol=1e-5, rtol=0)
    w = torch.randn_like(y)
    ((y_ref * w).sum() + h_ref.sum() + 2 * c_ref.sum()).backward()
    ((y * w).sum() + h.sum() + 2 * c.sum()).backward()
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-5, rtol=0)
    # map our per-gate gradients back onto torch's (i, f, g, o) layout and compare
    for k, cell in enumerate(ours.cells):
        for gate, j in (("i", 0), ("f", 1), ("c", 2), ("o", 3)):
            rows = slice(j * H, (j + 1) * H)
            g_w = getattr(cell, f"W_{gate}").grad
            torch.testing.assert_close(g_w[:, :H], getattr(ref, f"weight_hh_l{k}").grad[rows], atol=1e-5, rtol=0)
            torch.testing.assert_close(g_w[:, H:], getattr(ref, f"weight_ih_l{k}").grad[rows], atol=1e-5, rtol=0)
            torch.testing.assert_close(getattr(cell, f"b_{gate}").grad, getattr(ref, f"bias_ih_l{k}").grad[rows], atol=1e-5, rtol=0)
            torch.testing.assert_close(getattr(cell, f"b_{gate}").grad, getattr(ref, f"bias_hh_l{k}").grad[rows], atol=1e-5, rtol=0)








def test_reset_mask_equals_readable_steps_with_zeroed_state_and_gradients_match():
    torch.manual_seed(5)
    cell = LSTMCell(3, 4).double()
    T, B = 7, 3
    x = torch.randn(T, B, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(B, 4, dtype=torch.float64, requires_grad=True)
    keep = torch.ones(T, B, 1, dtype=torch.float64)
    keep[0, 1] = keep[3, 0] = keep[5, 2] = 0  # documents start there
    hs, (h, c), _ = cell.sequence(x, (h0, c0), keep=keep)
    torch.testing.assert_close(hs, readable_run(cell, x, h0, c0, keep)[0])
    W, b = (t.detach().clone().requires_grad_() for t in cell.fused())
    assert torch.autograd.gradcheck(lambda *a: Window.apply(*a, keep)[:3], (x, h0, c0, W, b))


def _sequence(cell: LSTMCell, x, h0, c0, keep):
    """The fast path through the cell: (hs, h, c)."""
    hs, (h, c), _ = cell.sequence(x, (h0, c0), keep=keep)
    return hs, h, c


def _outputs_and_grads(cell: LSTMCell, x, h0, c0, w, run) -> list:
    """hs, h, c of run() and the gradients of a weighted sum of them (weights w = (w_out, w_h,
    w_c)) to x, h0, c0 and every parameter of the cell."""
    hs, h, c = run()
    loss = (hs * w[0]).sum() + (h * w[1]).sum() + (c * w[2]).sum()
    return [hs, h, c, *torch.autograd.grad(loss, [x, h0, c0, *cell.parameters()])]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("H", [260, 48])
def test_reset_mask_float32_forward_and_gradients_equal_readable_steps(path, threads, H):
    """The fast paths with document resets, against autograd through the readable step.
    260 units end in a part vector of 16 or 8 (the C step's tail; no whole-window call);
    48 are three vectors of 16, which two threads split unevenly in the whole-window call.
    B * H is large enough that the C step splits rows over threads when given two."""
    torch.manual_seed(6)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        T, B, I = 6, 16, 8
        cell = LSTMCell(I, H)
        x = torch.randn(T, B, I, requires_grad=True)
        h0, c0 = torch.randn(B, H, requires_grad=True), torch.randn(B, H, requires_grad=True)
        keep = torch.ones(T, B, 1)
        keep[0, 1] = keep[2, 0] = keep[2, 5] = keep[5, 15] = 0
        w = torch.randn(T, B, H), torch.randn(B, H), torch.randn(B, H)
        fast = _outputs_and_grads(cell, x, h0, c0, w, lambda: _sequence(cell, x, h0, c0, keep))
        if (threads, H) not in _READABLE:  # the same for every path: computed once
            _READABLE[threads, H] = _outputs_and_grads(cell, x, h0, c0, w, lambda: readable_run(cell, x, h0, c0, keep))
        for a, b in zip(fast, _READABLE[threads, H]):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(old)


_READABLE: dict = {}  # (threads, H) → the readable step's outputs and gradients


@pytest.mark.parametrize("B", [1, 13, 32])
def test_window_row_blocks_of_every_size_equal_readable_steps(path, B):
    """The whole-window micro-kernel takes the batch in row blocks sized to the register file
    (at most 6 rows on AVX2 and SSE, 8 on AVX-512, as equal as the batch allows): 1 row; 13
    (5, 4, 4 or 7, 6); 32 (6, 6, 5, 5, 5, 5 or four 8s). Forward and every gradient against
    autograd through the readable step, two threads, with a document reset."""
    torch.manual_seed(B)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        T, I, H = max(3, -(-40 // B)), 5, 32  # T·B ≥ 32: the whole-window call applies
        cell = LSTMCell(I, H)
        x = torch.randn(T, B, I, requires_grad=True)
        h0, c0 = torch.randn(B, H, requires_grad=True), torch.randn(B, H, requires_grad=True)
        keep = torch.ones(T, B, 1)
        keep[1, B - 1] = 0
        w = torch.randn(T, B, H), torch.randn(B, H), torch.randn(B, H)
        fast = _outputs_and_grads(cell, x, h0, c0, w, lambda: _sequence(cell, x, h0, c0, keep))
        for a, b in zip(fast, _outputs_and_grads(cell, x, h0, c0, w, lambda: readable_run(cell, x, h0, c0, keep))):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("H", [16, 256])  # multiples of every build's vector width
def test_window_forward_writing_its_gates_over_gx_gives_the_same_bits(isa, H):
    # c_window.forward hands the C forward gx as its gates buffer too (in place)
    k = kernel.load(isa)
    assert H % k.lanes == 0
    torch.manual_seed(0)
    T, B = 7, 13
    W, b = torch.randn(4 * H, 2 * H) * 0.1, torch.randn(4 * H) * 0.1
    gx, h0, c0 = torch.randn(T, B, 4 * H), torch.randn(B, H), torch.randn(B, H)
    keep = (torch.rand(T, B) > 0.2).float()
    apart = [torch.empty(T, B, 4 * H)] + [torch.empty(T, B, H) for _ in range(3)]
    k.window_forward(W, gx, b, h0, c0, keep, *apart)
    inplace, rest = gx.clone(), [torch.empty(T, B, H) for _ in range(3)]
    k.window_forward(W, inplace, b, h0, c0, keep, inplace, *rest)
    for a, c in zip(apart, [inplace, *rest]):
        assert torch.equal(a, c)
    assert not torch.equal(inplace, gx)  # the gates did replace gx


@pytest.mark.parametrize("T,B,H,threads", [(9, 4, 32, 2), (5, 3, 12, 1), (2, 40, 16, 2)])
def test_drop_connect_mask_read_by_the_window_equals_the_masked_weight_bit_for_bit(path, T, B, H, threads):
    """DropConnect as the window applies it (h_mask: the C window multiplies while it packs
    W_h, the other paths read a masked copy) against the previous formulation, the dropped
    weight cat([F.dropout(W_h), W_x]) given to the same path: outputs and every gradient
    (x, h0, c0, each named weight, b) equal bit for bit, with a document reset. Shapes where the
    C window applies (H whole vectors, T·B ≥ 32) and where it does not."""
    from arlm.fast import dropout_mask
    torch.manual_seed(T * B + H)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        I = 7
        cell = LSTMCell(I, H)
        x = torch.randn(T, B, I, requires_grad=True)
        h0, c0 = torch.randn(B, H, requires_grad=True), torch.randn(B, H, requires_grad=True)
        keep = torch.ones(T, B, 1)
        keep[1, 0] = 0
        g = torch.randn(T, B, H), torch.randn(B, H), torch.randn(B, H)
        params = [x, h0, c0, *cell.parameters()]

        def run(new: bool):
            torch.manual_seed(0)
            W, b = cell.fused()
            if new:
                hs, h, c = Window.apply(x, h0, c0, W, b, keep, dropout_mask((4 * H, H), 0.3, W))[:3]
            else:
                dropped = torch.cat([F.dropout(W[:, :H], 0.3), W[:, H:]], dim=1)
                hs, h, c = Window.apply(x, h0, c0, dropped, b, keep)[:3]
            return [hs, h, c, *torch.autograd.grad((hs, h, c), params, g)]

        new, previous = run(True), run(False)
        assert all(torch.equal(a, b) for a, b in zip(new, previous))
        assert all(bool(t.abs().sum() > 0) for t in new[3:])  # every gradient reached
    finally:
        torch.set_num_threads(old)


def test_c_step_propagates_nan():
    """A diverging run must still be seen as NaN (the exp clamps must not hide it)."""
    torch.manual_seed(0)
    cell = LSTMCell(3, 20)
    x = torch.randn(4, 2, 3)
    x[1, 0, 0] = float("nan")
    hs, _, _ = cell.sequence(x, (torch.zeros(2, 20), torch.zeros(2, 20)))
    assert torch.isnan(hs[1, 0]).all() and not torch.isnan(hs[:, 1]).any()


def test_without_a_compiler_the_torch_path_runs_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("ARLM_CACHE", str(tmp_path))          # nothing built here yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    kernel.set_enabled(True)
    try:
        with pytest.warns(UserWarning, match="could not be built"):
            assert kernel.load() is None
        cell = LSTMCell(3, 4)
        x, s = torch.randn(5, 2, 3), (torch.zeros(2, 4), torch.zeros(2, 4))
        torch.testing.assert_close(cell.sequence(x, s)[0], readable_run(cell, x, *s)[0], atol=1e-5, rtol=0)
    finally:
        monkeypatch.undo()
        kernel.set_enabled(True)


def test_a_failed_build_is_remembered_until_the_compiler_changes(tmp_path, monkeypatch):
    """Every process paid the failing compiles again before falling back; now the failure is
    kept beside the cache entry with the compiler's identity."""
    import shutil

    calls, cc = tmp_path / "calls", tmp_path / "cc"
    broken = f'#!/bin/sh\necho run >> {calls}\necho "error: this compiler is broken" >&2\nexit 1\n'
    cc.write_text(broken)
    cc.chmod(0o755)
    monkeypatch.setenv("ARLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(cc))
    isa = kernel.available_isas()[-1]
    kernel._builds.pop(isa, None)
    try:
        with pytest.raises(RuntimeError, match="this compiler is broken"):
            kernel.load(isa)
        runs = calls.read_text().count("run")
        assert runs == 2  # the flags, then the fallback flags
        with pytest.raises(RuntimeError, match="this compiler is broken.*remembered in .*delete it to retry"):
            kernel.load(isa)
        assert calls.read_text().count("run") == runs  # not compiled again
        cc.write_text(broken + "# upgraded\n")  # another compiler at the same path: tried afresh
        with pytest.raises(RuntimeError, match="this compiler is broken"):
            kernel.load(isa)
        assert calls.read_text().count("run") == 2 * runs
        real = shutil.which("cc") or shutil.which("gcc")
        cc.write_text(f'#!/bin/sh\nexec {real} "$@"\n')  # and once it works, it builds and the memo goes
        assert kernel.load(isa).isa == isa
        assert not list((tmp_path / "cache" / "kernels").glob("*.failed"))
    finally:
        kernel._builds.pop(isa, None)


def test_cpu_autocast_and_odd_inputs_never_reach_the_c_paths_wrongly():
    """Found in review: under CPU bfloat16 autocast the input product came back bfloat16
    and the C step read it as float32. And a keep mask that broadcasts over the batch."""
    torch.manual_seed(2)
    cell = LSTMCell(8, 16)
    for T, B in [(2, 3), (4, 8)]:  # the step loop, and the whole-window call
        x, s = torch.randn(T, B, 8), (torch.zeros(B, 16), torch.zeros(B, 16))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            hs = cell.sequence(x, s)[0]
        torch.testing.assert_close(hs.float(), readable_run(cell, x, *s)[0], atol=2e-2, rtol=0)
        keep = torch.ones(T, 1, 1)
        keep[1] = 0
        torch.testing.assert_close(cell.sequence(x, s, keep=keep)[0],
                                   readable_run(cell, x, *s, keep.expand(T, B, 1))[0], atol=1e-5, rtol=0)


# --- one build per instruction set (arlm/fast/build.py) ---------------------------------


def expected_lanes(isa: str) -> int:
    """lstm_step.c's vector width in each build: one register of the ISA."""
    if isa == "avx512" or (isa == "native" and "avx512f" in kernel.cpu_features()):
        return 16
    if isa == "generic" and kernel._is_x86_64():
        return 4  # one SSE register
    return 8


def test_every_build_this_cpu_runs_loads_with_its_own_lanes_and_low_dtypes(monkeypatch):
    monkeypatch.delenv("ARLM_ISA", raising=False)
    assert ISAS and ISAS[-1] == "generic"  # the fallback runs on any CPU of the architecture
    if kernel._is_x86_64():
        assert set(ISAS) <= {"avx512", "avx2", "generic"}
        flags = kernel.cpu_features()
        assert ("avx512" in ISAS) == ({"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags)
    paths = set()
    for isa in ISAS:
        k = kernel.load(isa)
        assert k.isa == isa and k.lanes == expected_lanes(isa)
        assert k.low == {"float16", "int8"}  # float16 in every build (F16C, _Float16 or bit arithmetic)
        assert hasattr(k.lib, "arlm_lstm_sequence_f32")  # and float32 through the same loops
        assert f"-{isa}-" in k.path and k.path.startswith(str(kernel._cache_dir()))
        paths.add(k.path)
    assert len(paths) == len(ISAS)
    kernel.set_enabled(True)
    try:
        assert kernel.load().isa == ISAS[0]  # the best one, unless forced
    finally:
        monkeypatch.undo()
        kernel.set_enabled(True)


def test_arlm_isa_forces_a_build_and_a_wrong_one_is_refused(monkeypatch):
    try:
        for isa in ISAS:
            monkeypatch.setenv("ARLM_ISA", isa)
            kernel.set_enabled(True)
            assert kernel.load().isa == isa
        monkeypatch.setenv("ARLM_ISA", "no-such-isa")
        kernel.set_enabled(True)
        with pytest.warns(UserWarning, match="ARLM_ISA=no-such-isa ignored"):
            assert kernel.load().isa == ISAS[0]
        monkeypatch.delenv("ARLM_ISA")
        with pytest.raises(ValueError, match="no-such-isa"):
            kernel.load("no-such-isa")
        with pytest.raises(ValueError, match="no-such-isa"):
            kernel.set_enabled(True, isa="no-such-isa")
    finally:
        monkeypatch.undo()
        kernel.set_enabled(True)


def test_a_build_that_fails_to_compile_falls_back_to_the_next_with_a_warning(monkeypatch):
    real = kernel.isas()
    monkeypatch.delenv("ARLM_ISA", raising=False)
    monkeypatch.setattr(kernel, "isas", lambda: {"broken": (["-mno-such-instruction-set"], set()), **real})
    kernel.set_enabled(True)
    try:
        assert kernel.available_isas()[0] == "broken"
        with pytest.warns(UserWarning, match="best build failed.*using " + ISAS[0]):
            assert kernel.load().isa == ISAS[0]
    finally:
        monkeypatch.undo()
        kernel.set_enabled(True)


def test_python_m_build_names_the_isa_and_library(capsys):
    assert kernel._main([]) == 0
    out = capsys.readouterr().out
    k = kernel.load()
    assert f"in use: {k.isa}  lanes {k.lanes}" in out and k.path in out and "available: " + ", ".join(ISAS) in out


def test_gpu_check_script_runs_its_cpu_smoke_mode(tmp_path, capsys):
    """scripts/gpu_check.py, the one prepared GPU run, end to end with --device cpu --quick:
    the torch-operations path (what CUDA runs) against the C paths, timing and generation."""
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", script)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    try:
        out = tmp_path / "report.json"
        assert gpu_check.main(["--device", "cpu", "--quick", "--steps", "4", "--out", str(out)]) == 0
        report = json.loads(out.read_text())
        assert report["ok"] and len(report["checks"]) == 6 and all(c["ok"] for c in report["checks"])
        assert report["throughput"][0]["ours_ms"] > 0 and report["generation"][0]["device_tok_s"] > 0
        assert "ALL PASSED" in capsys.readouterr().out
        assert kernel.load() is not None  # the C step is back on after the torch-ops side ran
    finally:
        kernel.set_enabled(True)


# --- the adaptive softmax's tail clusters (arlm/fast/adaptive.py) --------------------------


def zipf(V: int, n: int) -> torch.Tensor:
    return torch.distributions.Categorical(probs=1 / torch.arange(1, V + 1).float()).sample((n,))


def loss_and_grads(fn, asm, x, t, g):
    out = fn(asm, x, t)
    return out, torch.autograd.grad(out, [x, *asm.parameters()], g, allow_unused=True)


def torch_nll(asm, x, t):
    return -asm(x, t).output


# (vocabulary, in features, cutoffs, tokens): the §5 shape (clusters 64 and 16 wide, 40,000
# words, not a whole number of blocks), widths of 32 and 8 (whole vectors for some builds
# only: the others take torch's way for that cluster), a single token, a cluster nobody hits.
ADAPTIVE_CASES = [(50000, 256, [2000, 10000], 300), (3001, 128, [100, 1000], 77), (700, 128, [50, 300], 1),
                  (500, 64, [10, 100], 40)]


@pytest.mark.parametrize("isa", [*ISAS, "torch ops"])
@pytest.mark.parametrize("V,E,cutoffs,N", ADAPTIVE_CASES)
def test_adaptive_nll_equals_torch_module_values_and_every_gradient(isa, V, E, cutoffs, N):
    from arlm.fast import adaptive_nll

    torch.manual_seed(V + N)
    asm = nn.AdaptiveLogSoftmaxWithLoss(E, V, cutoffs, 4.0)
    x = torch.randn(N, E, requires_grad=True)
    t = zipf(V, N)
    if V == 500:
        t = t.clamp(max=99)  # the last cluster gets no token
    else:
        t[0] = V - 1  # the last word of the last cluster: the partial last block
    g = torch.randn(N)
    want, want_grads = loss_and_grads(torch_nll, asm, x, t, g)
    try:
        kernel.set_enabled(isa != "torch ops", isa=None if isa == "torch ops" else isa)
        got, got_grads = loss_and_grads(adaptive_nll, asm, x, t, g)
    finally:
        kernel.set_enabled(True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)
    names = ["x", *(n for n, _ in asm.named_parameters())]
    for name, a, b in zip(names, got_grads, want_grads):
        if b is None:  # a cluster without tokens has no gradient either way
            assert a is None or not a.any(), name
            continue
        # float32 sums over up to 40,000 words in another order: 1e-5 of the gradient's scale
        scale = b.abs().max().item()
        torch.testing.assert_close(a, b, atol=1e-5 * scale, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        assert (a - b).norm() <= 1e-5 * b.norm(), name


def test_c_clusters_run_where_they_apply_and_give_the_same_answer_on_every_thread_count():
    from arlm.fast import adaptive
    from arlm.fast.adaptive import ClusterLogProb

    torch.manual_seed(4)
    asm = nn.AdaptiveLogSoftmaxWithLoss(256, 50000, [2000, 10000], 4.0)
    x, t = torch.randn(400, 256), zipf(50000, 400)
    calls = []
    real = ClusterLogProb.apply
    adaptive.ClusterLogProb.apply = lambda *a: calls.append(a[0].shape) or real(*a)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            outs.append(adaptive.adaptive_nll(asm, x, t))
    finally:
        torch.set_num_threads(before)
        adaptive.ClusterLogProb.apply = real
    assert sorted(s[1] for s in calls[:2]) == [16, 64]  # both clusters went through C
    assert torch.equal(outs[1], outs[2])                 # the same threads: the same bits
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)


def test_c_clusters_propagate_nan_and_refuse_targets_out_of_range():
    from arlm.fast import adaptive_nll

    torch.manual_seed(5)
    asm = nn.AdaptiveLogSoftmaxWithLoss(128, 3000, [100, 1000], 4.0)
    x, t = torch.randn(50, 128), torch.full((50,), 2000)
    t[:10] = 5
    with torch.no_grad():
        asm.tail[1][1].weight[1234, 0] = float("nan")  # one word of the last cluster
    out = adaptive_nll(asm, x, t)
    assert torch.isnan(out[10:]).all() and not torch.isnan(out[:10]).any()
    t[3] = 3000
    with pytest.raises(RuntimeError, match=r"Target values should be in \[0, 2999\]"):
        adaptive_nll(asm, x, t)


def test_model_loss_under_bfloat16_autocast_is_torch_modules():
    """Autocast changes what torch's module computes (bfloat16 products); the C clusters
    read float32, so under autocast the loss must be torch's own."""
    from arlm.config import ModelConfig
    from arlm.model import LanguageModel

    torch.manual_seed(6)
    model = LanguageModel(ModelConfig(vocab_size=3000, emb_size=128, hidden_size=64, cutoffs=[100, 1000]))
    ids = zipf(3000, 5 * 3).view(5, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(ids[:-1]).features.reshape(-1, 128)
        got = model.nll(y, ids[1:].reshape(-1))
        want = -model.adaptive(y, ids[1:].reshape(-1)).output
    assert torch.equal(got, want)


def test_cluster_kernel_reads_int32_targets_as_int64_and_refuses_a_partial_vector_width():
    from arlm.fast.adaptive import ClusterLogProb

    torch.manual_seed(7)
    k = kernel.load()
    P, Wc, y = torch.randn(5, 2 * k.lanes), torch.randn(300, 2 * k.lanes), torch.randint(0, 300, (5,))
    want = torch.log_softmax(P @ Wc.t(), 1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(ClusterLogProb.apply(P, Wc, y.int(), k), want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="whole vectors"):
        k.cluster_forward(P[:, 1:].contiguous(), Wc[:, 1:].contiguous(), y, torch.empty(5), torch.empty(5))


# --- dropout masks (arlm/fast/masks.py): torch's own draws, in C --------------------------

@pytest.fixture(params=ISAS)
def mask_isa(request):
    """The C draws in every build this CPU runs."""
    from arlm.fast import masks
    kernel.set_enabled(True, isa=request.param)
    masks._checked = None
    assert masks._kernel() is not None, "the C draws did not pass their check against torch's"
    yield request.param
    kernel.set_enabled(True)
    masks._checked = None


# sizes across the generator's refills (every 312 draws), one element, a DropConnect mask
@pytest.mark.parametrize("n", [1, 2, 311, 312, 313, 1000, 2048 * 512 + 3])
def test_c_bernoulli_masks_and_the_generator_after_them_equal_torch(mask_isa, n):
    from arlm.fast import masks
    for p in (0.9, 0.5, 0.05, 1 / 3, 0.0, 1.0):
        torch.manual_seed(n)
        torch.rand(5)  # start mid-state
        theirs = torch.empty(n).bernoulli_(p)
        state = torch.get_rng_state()
        torch.manual_seed(n)
        torch.rand(5)
        ours = masks.bernoulli_(torch.empty(n), p)
        assert torch.equal(ours, theirs), p
        assert torch.equal(torch.get_rng_state(), state), p
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(masks.bernoulli_(torch.empty(n), 0.8, generator=g1), torch.empty(n).bernoulli_(0.8, generator=g2))
    assert torch.equal(torch.rand(9, generator=g1), torch.rand(9, generator=g2))


def test_c_dropout_equals_torch_dropout_values_and_gradients(mask_isa):
    from arlm.fast import masks
    W = torch.randn(64, 80, requires_grad=True)
    for x in (W[:, :48], W, W.t()):  # a column slice (DropConnect's W_h), whole, transposed
        g = torch.randn(x.shape)
        torch.manual_seed(1)
        theirs = F.dropout(x, 0.3)
        (d_theirs,) = torch.autograd.grad(theirs, W, g)
        torch.manual_seed(1)
        ours = masks.dropout(x, 0.3)
        (d_ours,) = torch.autograd.grad(ours, W, g)
        assert torch.equal(ours, theirs) and torch.equal(d_ours, d_theirs)
        assert 0.2 < (ours == 0).float().mean() < 0.4
    assert masks.dropout(W, 0.0) is W and masks.dropout(W, 0.5, training=False) is W
    assert torch.equal(masks.dropout(W, 1.0), torch.zeros_like(W))


def _previous_sequence(self, x, state, weight_drop=0.0, keep=None):
    """LSTMCell.sequence as it was before the window read DropConnect's mask itself: the
    dropped weight made by torch (F.dropout on W's h columns, then cat)."""
    from arlm import fast
    from arlm.cell import trace_of
    W, b = self.fused()
    if weight_drop > 0 and self.training:
        H = self.hidden_size
        W = torch.cat([F.dropout(W[:, :H], weight_drop), W[:, H:]], dim=1)
    hs, h, c, gates, cs = fast.lstm_window(x, state[0], state[1], W, b, keep)
    return hs, (h, c), trace_of(gates, cs, hs)


def sgd_steps(cfg, steps: int = 3) -> list[torch.Tensor]:
    """A model seeded with 0, after `steps` SGD steps on one random window of its vocabulary."""
    from arlm.model import LanguageModel

    torch.manual_seed(0)
    model = LanguageModel(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ids = torch.randint(0, cfg.vocab_size, (13, 4))
    for _ in range(steps):
        loss = model(ids[:-1], targets=ids[1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_a_seeded_run_with_every_dropout_trains_the_same_with_c_masks_as_with_torch_masks(monkeypatch):
    """Same seed, same trajectory: three SGD steps of a model using all five dropouts give
    bit-identical weights whether the masks come from C or from torch's bernoulli_, and the
    same as with the previous code's DropConnect (torch's masks, the dropped weight made by
    torch) — the C window runs here (H 16, 48 rows a window)."""
    from arlm.config import ModelConfig
    from arlm.fast import masks
    cfg = ModelConfig(vocab_size=50, emb_size=16, hidden_size=16, num_layers=2, softmax="full", dropout=0.3,
                      dropout_input=0.2, dropout_hidden=0.2, dropout_embedding=0.1, weight_drop=0.4)

    def train(c_masks: bool, previous: bool = False):
        monkeypatch.setattr(masks, "_checked", None if c_masks else False)
        if previous:
            monkeypatch.setattr(LSTMCell, "sequence", _previous_sequence)
        params = sgd_steps(cfg)
        assert (masks._kernel() is not None) == c_masks
        return params, torch.get_rng_state()

    (ours, state_ours), (theirs, state_theirs) = train(True), train(False)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert torch.equal(state_ours, state_theirs)
    before, state_before = train(False, previous=True)
    assert all(torch.equal(a, b) for a, b in zip(ours, before))
    assert torch.equal(state_ours, state_before)


def test_c_masks_fall_back_to_torch_when_the_generator_state_is_not_the_expected_layout(monkeypatch):
    from arlm.fast import masks
    monkeypatch.setattr(masks, "_STATE_BYTES", 5057)
    monkeypatch.setattr(masks, "_checked", None)
    assert masks._kernel() is None and masks._checked is False
    torch.manual_seed(3)
    theirs = torch.empty(100).bernoulli_(0.5)
    torch.manual_seed(3)
    assert torch.equal(masks.bernoulli_(torch.empty(100), 0.5), theirs)
    monkeypatch.setattr(masks, "_STATE_BYTES", 5056)
    monkeypatch.setattr(masks, "_checked", None)
    monkeypatch.setattr(masks, "_threshold", lambda p: 0)  # C draws that differ from torch's are refused
    assert masks._kernel() is None


@pytest.mark.parametrize("backend", ["blas", "onednn"])
def test_mm_equals_torch_mm_for_plain_transposed_and_column_sliced_matrices(backend, monkeypatch):
    """products.mm, the window's large products (W_x·x for every step, dL/dx, dL/dW): the
    same product as torch.mm on every layout the backend hands it — a column slice W[:, H:]
    included, which oneDNN must not read in place — and torch.mm itself off CPU float32."""
    from arlm.fast import products

    monkeypatch.setenv("ARLM_MATMUL", backend)
    assert products.onednn_products() is (backend == "onednn" and products.ONEDNN)
    torch.manual_seed(0)
    W = torch.randn(64, 48 + 40)
    dG, x, hx = torch.randn(70, 64), torch.randn(70, 40), torch.randn(70, 88)
    cases = {"x W_xᵀ (a sliced, transposed weight)": (x, W[:, 48:].t()),
             "dG W_x (a column slice)": (dG, W[:, 48:]),
             "dGᵀ hx (a transposed left side)": (dG.t(), hx),
             "plain": (hx, W.t())}
    for name, (a, b) in cases.items():
        want = (a.double() @ b.double()).float()
        torch.testing.assert_close(products.mm(a, b), want, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        assert torch.equal(products.mm(a, b), products.mm(a, b)), name  # the same bits every call
    a64, b64 = torch.randn(5, 6, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    assert torch.equal(products.mm(a64, b64), torch.mm(a64, b64))


@pytest.mark.parametrize("vendor, features, blas, onednn", [
    ("AuthenticAMD", {"avx512f", "avx2"}, "BLAS_INFO=mkl", True),    # Zen 4/5: MKL runs AVX2 kernels there
    ("GenuineIntel", {"avx512f", "avx2"}, "BLAS_INFO=mkl", False),   # MKL's own AVX-512 kernels
    ("AuthenticAMD", {"avx2"}, "BLAS_INFO=mkl", False),              # Zen 3: both run AVX2
    ("AuthenticAMD", {"avx512f", "avx2"}, "BLAS_INFO=open", False),  # another BLAS: no vendor check to avoid
])
def test_onednn_runs_the_products_by_default_only_where_mkl_leaves_avx512_unused(vendor, features, blas, onednn,
                                                                                monkeypatch):
    from arlm.fast import build, products

    monkeypatch.delenv("ARLM_MATMUL", raising=False)
    monkeypatch.setattr(products, "_cpu_vendor", lambda: vendor)
    monkeypatch.setattr(build, "cpu_features", lambda: frozenset(features))
    monkeypatch.setattr(torch.__config__, "show", lambda: f"Build settings: {blas}, USE_MKLDNN=ON")
    products._auto_onednn.cache_clear()
    try:
        assert products.onednn_products() is (onednn and products.ONEDNN)
        monkeypatch.setenv("ARLM_MATMUL", "blas")
        assert products.onednn_products() is False
        monkeypatch.setenv("ARLM_MATMUL", "onednn")
        assert products.onednn_products() is products.ONEDNN
    finally:
        products._auto_onednn.cache_clear()


def test_a_seeded_model_trains_to_the_same_bits_every_run_with_onednn_products_and_close_to_blas(monkeypatch):
    """oneDNN's products round differently from MKL's, so a seed has one trajectory per
    backend: each reproducible to the bit, and the two within float32 rounding of each other
    after a few steps (the C window runs here: H 16, 48 rows a window)."""
    from arlm.config import ModelConfig
    cfg = ModelConfig(vocab_size=50, emb_size=16, hidden_size=16, num_layers=2, softmax="full")

    def train(backend: str):
        monkeypatch.setenv("ARLM_MATMUL", backend)
        return sgd_steps(cfg)

    from arlm.fast import products
    handed = []  # what oneDNN was given: only its branch of products.mm makes matrices dense
    real = products._dense
    monkeypatch.setattr(products, "_dense", lambda t: handed.append(t.shape) or real(t))
    onednn = train("onednn")
    # at least 2 layers × (W_x·x, dL/dx — the embedding below needs it too — dL/dW) × 3 steps,
    # two operands each; then the output layer's three products
    assert len(handed) >= 2 * 3 * 3 * 2 if products.ONEDNN else not handed
    handed.clear()
    again = train("onednn")
    handed.clear()
    blas = train("blas")
    assert not handed  # blas hands oneDNN nothing
    assert all(torch.equal(a, b) for a, b in zip(onednn, again))
    for a, b in zip(onednn, blas):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["blas", "onednn"])
def test_linear_equals_f_linear_values_and_gradients_and_is_f_linear_itself_off_onednn(backend, monkeypatch):
    """fast.linear / fast.Linear (the projection, the full softmax's decoder, the adaptive
    head and its clusters' projections): F.linear's values and gradients to float32 rounding
    on oneDNN, and F.linear itself, bit for bit, wherever oneDNN is not used."""
    from arlm import fast
    from arlm.fast import products

    monkeypatch.setenv("ARLM_MATMUL", backend)
    torch.manual_seed(1)
    for shape, bias in [((7, 5, 24), True), ((40, 24), False)]:
        x = torch.randn(*shape, requires_grad=True)
        W, b = torch.randn(33, 24, requires_grad=True), (torch.randn(33, requires_grad=True) if bias else None)
        g = torch.randn(*shape[:-1], 33)
        leaves = [x, W, *([b] if bias else [])]
        got = fast.linear(x, W, b)
        got_grads = torch.autograd.grad((got * g).sum(), leaves)
        want = F.linear(x, W, b)
        want_grads = torch.autograd.grad((want * g).sum(), leaves)
        if backend == "blas" or not products.ONEDNN:
            assert torch.equal(got, want) and all(torch.equal(a, w) for a, w in zip(got_grads, want_grads))
        else:
            assert got.grad_fn is not None and "_Linear" in type(got.grad_fn).__name__  # oneDNN's way was taken
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        for a, w in zip(got_grads, want_grads):
            torch.testing.assert_close(a, w, atol=1e-5, rtol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast sees torch's own op
            assert fast.linear(x, W, b).dtype == torch.bfloat16
    layer = fast.Linear(24, 33)
    assert isinstance(layer, nn.Linear) and set(layer.state_dict()) == {"weight", "bias"}
    x = torch.randn(6, 24)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_adaptive_nll_with_onednn_products_equals_torch_module_values_and_every_gradient(monkeypatch):
    """The §5 shape with the head and the clusters' projections by oneDNN (products.linear)."""
    from arlm.fast import adaptive_nll

    monkeypatch.setenv("ARLM_MATMUL", "onednn")
    torch.manual_seed(5)
    asm = nn.AdaptiveLogSoftmaxWithLoss(256, 50000, [2000, 10000], 4.0)
    x, t, g = torch.randn(300, 256, requires_grad=True), zipf(50000, 300), torch.randn(300)
    want, want_grads = loss_and_grads(torch_nll, asm, x, t, g)
    got, got_grads = loss_and_grads(adaptive_nll, asm, x, t, g)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)
    for a, b in zip(got_grads, want_grads):
        assert (a - b).norm() <= 1e-5 * b.norm()
