"""The compiled products from low-precision weights (arlm/fast/lowp.py, arlm/fast/lstm_step.c)
against plain float32 arithmetic on the numbers they stand for."""

import pytest
import torch

from arlm.fast import build
from arlm.fast.lowp import LowPrecision


def dequantized(q: LowPrecision) -> torch.Tensor:
    W = q.data.t() if q.transposed else q.data
    return W.float() if q.scale is None else W.float() * q.scale[:, None]


@pytest.mark.parametrize("dtype", ["float16", "int8"])
@pytest.mark.parametrize("N,K", [(64, 48), (37, 19), (130, 200), (300, 16), (2000, 64)])
@pytest.mark.parametrize("M", [1, 3, 4, 6])
def test_products_equal_float32_on_the_stored_numbers(dtype, N, K, M):
    torch.manual_seed(N * K + M)
    W = torch.randn(N, K)
    q = LowPrecision(W, dtype)
    assert q.transposed == (K < 128)
    x = torch.randn(M, K)
    torch.testing.assert_close(q.matmul(x), x @ dequantized(q).t(), atol=2e-5 * K ** 0.5, rtol=1e-5)
    # the stored numbers are close to the weight: half precision, or 1/254 of a row's range
    err = (dequantized(q) - W).abs()
    bound = W.abs() * 2 ** -11 if dtype == "float16" else W.abs().amax(1, keepdim=True) / 254 + 1e-7
    assert (err <= bound + 1e-7).all()


@pytest.mark.parametrize("dtype", ["float16", "int8"])
@pytest.mark.parametrize("H,I", [(40, 24), (200, 72)])
def test_a_column_range_of_the_fused_weight(dtype, H, I):
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
