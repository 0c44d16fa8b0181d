"""The compiled inference products from float16/int8 weights, and from float32 ones
(arlm/fast/lowp.py, arlm/fast/lstm_step.c), against plain float32 arithmetic on the numbers
they stand for."""

import pytest
import torch

from arlm.fast import build, torch_loop
from arlm.fast.lowp import LowPrecision
from arlm.fast.products import LayerWeights


@pytest.fixture(params=build.available_isas())
def isa(request):
    """Each build of the C step this CPU runs (avx512, avx2, generic on x86-64)."""
    build.set_enabled(True, isa=request.param)
    assert build.load().isa == request.param
    yield request.param
    build.set_enabled(True)


def dequantized(q: LowPrecision) -> torch.Tensor:
    W = q.data.t() if q.transposed else q.data
    return W.float() if q.scale is None else W.float() * q.scale[:, None]


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("N,K", [(64, 48), (37, 19), (130, 200), (300, 16), (2000, 64)])
@pytest.mark.parametrize("M", [1, 3, 4, 6])
def test_products_equal_float32_on_the_stored_numbers(dtype, N, K, M, isa):
    torch.manual_seed(N * K + M)
    W = torch.randn(N, K)
    q = LowPrecision(W, dtype)
    assert q.transposed == (K < 128)
    x = torch.randn(M, K)
    torch.testing.assert_close(q.matmul(x), x @ dequantized(q).t(), atol=2e-5 * K ** 0.5, rtol=1e-5)
    # the stored numbers are close to the weight: half precision, or 1/254 of a row's range
    err = (dequantized(q) - W).abs()
    if dtype == "float32":  # the weight itself
        assert torch.equal(dequantized(q), W)
        return
    bound = W.abs() * 2 ** -11 if dtype == "float16" else W.abs().amax(1, keepdim=True) / 254 + 1e-7
    assert (err <= bound + 1e-7).all()


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("H,I", [(40, 24), (200, 72)])
def test_a_column_range_of_the_fused_weight(dtype, H, I, isa):
    torch.manual_seed(1)
    W = torch.randn(4 * H, H + I)
    q = LowPrecision(W, dtype, transposable=False)
    h, x = torch.randn(2, H), torch.randn(5, I)
    D = dequantized(q)
    torch.testing.assert_close(q.matmul(h, 0, H), h @ D[:, :H].t(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(q.matmul(x, H, I), x @ D[:, H:].t(), atol=1e-4, rtol=1e-5)


def test_unknown_dtype_is_refused():
    assert build.supports("float32") and not build.supports("int4")
    with pytest.raises(ValueError, match="int4"):
        LowPrecision(torch.randn(4, 4), "int4")


@pytest.mark.parametrize("transposable", [False, True])
def test_float16_special_values_convert_exactly(transposable, isa):
    """Zeros, subnormal halves, the largest half, infinities, NaN: every build converts them
    as torch does (the generic x86-64 build by integer arithmetic), in vector lanes and in
    the scalar tails: 38 rows and 21 columns are no whole number of vectors of 4, 8 or 16."""
    torch.manual_seed(3)
    specials = torch.tensor([0.0, -0.0, 6e-8, -3e-6, 6.0e-5, -65504.0, 1e-7, -2e-7, 5e-6, 65504.0])
    W = torch.randn(38, 21)
    W[0, :6], W[0, 16:] = specials[:6], specials[5:]
    W[37, :6], W[37, 16:] = specials[:6], specials[5:]
    q = LowPrecision(W, "float16", transposable)
    assert q.transposed == transposable
    # times the identity: each output is one stored number (x · 1 plus zeros: exact)
    torch.testing.assert_close(q.matmul(torch.eye(21)), W.half().float().t(), atol=0, rtol=0)
    W[1, 2], W[2, 19], W[36, 5], W[37, 20] = float("inf"), float("-inf"), float("nan"), float("-inf")
    q = LowPrecision(W, "float16", transposable)
    x = torch.rand(3, 21) + 0.5  # positive: an infinity stays one
    torch.testing.assert_close(q.matmul(x), x @ W.half().float().t(), atol=1e-5, rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("T,B,H,I", [(5, 3, 40, 24), (3, 2, 37, 11), (4, 1, 200, 72)])
def test_a_low_precision_window_equals_float32_steps_on_the_stored_numbers(dtype, T, B, H, I, isa):
    """lowp's whole window in C (a product and a step per time step) against the torch
    reference path on the dequantized weight, document resets included."""
    torch.manual_seed(T * H)
    W, b = torch.randn(4 * H, H + I) / H ** 0.5, torch.randn(4 * H)
    q = LowPrecision(W, dtype, transposable=False)
    x, h0, c0 = torch.randn(T, B, I), torch.randn(B, H), torch.randn(B, H)
    keep = torch.ones(T, B, 1)
    keep[T // 2, 0] = 0
    got = q.lstm_window(x, b, h0, c0, keep)
    ref = torch_loop.forward(LayerWeights(dequantized(q), b, H), x, h0, c0, keep)
    for a, r in zip(got, ref):  # gates, cs, tanh_cs, hs
        torch.testing.assert_close(a, r, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("layers,H,E,adaptive", [(2, 37, 19, True), (1, 40, 40, False), (3, 16, 130, True)])
def test_a_whole_decoding_step_equals_float32_arithmetic_on_the_stored_numbers(dtype, layers, H, E, adaptive, isa):
    """lowp.Decoder's one C call (embedding, every layer's step, projection, the log-softmax over
    the whole vocabulary, adaptive or not) against torch on the dequantized weights, with
    sizes that are no multiple of any vector width and a sequence that starts a document."""
    from arlm.fast.lowp import Decoder
    torch.manual_seed(layers * H + E)
    V, eos, B = 300, 3, 3
    emb = torch.randn(V, E)
    cells, inputs = [], E
    for _ in range(layers):
        cells.append((LowPrecision(torch.randn(4 * H, H + inputs) / H ** 0.5, dtype, transposable=False), torch.randn(4 * H)))
        inputs = H
    projection = (LowPrecision(torch.randn(E, H) / H ** 0.5, dtype), torch.randn(E)) if H != E else None
    if adaptive:  # a shortlist of 50 + 2 clusters (widths E // 4 and E // 16) over 60 and 190 words
        cutoffs = [50, 110, V]
        head = (LowPrecision(torch.randn(52, E), dtype), None)
        tails = [(LowPrecision(torch.randn(max(E // d, 1), E), dtype), LowPrecision(torch.randn(n, max(E // d, 1)), dtype))
                 for d, n in ((4, 60), (16, 190))]
    else:
        cutoffs, head, tails = [], (LowPrecision(torch.randn(V, E), dtype), torch.randn(V)), []
    decoder = Decoder(emb, cells, projection, head, tails, cutoffs, eos)
    ids = torch.tensor([7, 250, eos])
    h0, c0 = torch.randn(layers, B, H), torch.randn(layers, B, H)
    lp, (h, c) = decoder.step(ids, h0, c0)

    keep = (ids != eos).float().view(1, B, 1)
    x = emb[ids].view(1, B, E)
    for k, (q, b) in enumerate(cells):
        _, cs, _, hs = torch_loop.forward(LayerWeights(dequantized(q), b, H), x, h0[k], c0[k], keep)
        torch.testing.assert_close(h[k], hs[0], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(c[k], cs[0], atol=2e-5, rtol=1e-5)
        x = hs
    y = x[0] if projection is None else x[0] @ dequantized(projection[0]).t() + projection[1]
    if adaptive:
        head_lp = torch.log_softmax(y @ dequantized(head[0]).t(), -1)
        parts = [head_lp[:, :50]] + [torch.log_softmax(y @ dequantized(d).t() @ dequantized(u).t(), -1) + head_lp[:, 50 + k, None]
                                     for k, (d, u) in enumerate(tails)]
        ref = torch.cat(parts, -1)
    else:
        ref = torch.log_softmax(y @ dequantized(head[0]).t() + head[1], -1)
    torch.testing.assert_close(lp, ref, atol=5e-5, rtol=1e-5)
