"""The lean top-label pass (confidence = max softmax, first argmax) against scipy's float64 softmax and numpy's
argmax, on every path it has: short and many blocks, several threads, rows recomputed with the shift (logits
beyond exp's range), 16-bit and float64 logits, non-contiguous views and tensors that require grad."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import softmax

from calibscope.diagnostics import _top_label
from calibscope.diagnostics._top_label import confidence_and_prediction


def reference(z: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = z.detach().to(torch.float64).numpy()
    p = softmax(x, axis=1)
    return x.max(axis=1), x.argmax(axis=1), p.max(axis=1)


def check(z: torch.Tensor) -> None:
    zmax, prediction, confidence = confidence_and_prediction(z)
    ref_max, ref_prediction, ref_confidence = reference(z)
    assert zmax.dtype == confidence.dtype == torch.float64 and prediction.dtype == torch.int64
    np.testing.assert_array_equal(zmax.numpy(), ref_max)
    np.testing.assert_array_equal(prediction.numpy(), ref_prediction)
    np.testing.assert_allclose(confidence.numpy(), ref_confidence, rtol=1e-14, atol=0)


def logits(seed: int, n: int, k: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(n, k, generator=g)
    z[::7, 3] = z[::7].max(1).values  # ties: the first maximum is the prediction
    z[::11, 5] = -math.inf
    return z


@pytest.mark.parametrize("elements", [7, 130, 1 << 16])  # one row per block, short blocks, the default
def test_blocks_equal_scipy_softmax(monkeypatch, elements):
    monkeypatch.setattr(_top_label, "_CPU_BLOCK_ELEMENTS", elements)
    check(logits(0, 1001, 10, 4.0))


def test_threads_equal_one_thread(monkeypatch):
    monkeypatch.setattr(_top_label, "_MIN_ELEMENTS_PER_THREAD", 1000)
    monkeypatch.setattr(_top_label, "_CPU_THREADED_BLOCK_ELEMENTS", 300)
    z = logits(1, 3001, 20, 3.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        many = confidence_and_prediction(z)
    finally:
        torch.set_num_threads(threads)
    check(z)
    one = confidence_and_prediction(z)
    for a, b in zip(many, one, strict=True):
        assert torch.equal(a, b)


def test_rows_beyond_exps_range_are_shifted():
    """exp(z) overflows above 709.8 and turns subnormal below −708: those rows take the shifted form."""
    z = logits(2, 40, 12, 5.0).to(torch.float64)
    z[0] += 705.0  # inside float64 exp's range, but K · exp(max) is not
    z[1] += 3.0e4
    z[2] -= 650.0
    z[3] -= 1.0e5
    z[4] = torch.linspace(-1.0e30, 1.0e30, 12, dtype=torch.float64)
    check(z)
    check(z.to(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_are_cast_exactly(dtype):
    check(logits(3, 500, 9, 4.0).to(dtype))


def test_views_and_grad():
    z = logits(4, 300, 16, 2.0)
    check(z[::2, ::3])  # strided: read through numpy views without a copy
    check(z.t().contiguous().t())  # column-major
    check(z.clone().requires_grad_(True))
