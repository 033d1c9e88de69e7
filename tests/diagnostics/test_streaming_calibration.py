"""StreamingCalibration: batches, merged streams and reset give the one-shot ``calibration_metrics``."""

from __future__ import annotations

import pytest
import torch

from calibscope import StreamingCalibration
from calibscope.diagnostics.calibration import ALL_METRICS, calibration_metrics
from calibscope.errors import InputError


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    z = 2.5 * torch.randn(3000, 7, generator=g)
    y = torch.multinomial((1.4 * z).softmax(1), 1, generator=g).squeeze(1)  # over-confident: ECE well above 0
    return z, y


def _close(a, b, tol=1e-12):
    for name in ALL_METRICS:
        assert abs(a.value(name) - b.value(name)) <= tol, (name, a.value(name), b.value(name))
    assert a.n == b.n and a.report.bins.count == b.report.bins.count


def test_ten_batches_equal_the_one_shot_metrics(data):
    z, y = data
    whole = calibration_metrics(z, y)
    stream = StreamingCalibration(n_bins=15)
    for zb, yb in zip(z.tensor_split(10), y.tensor_split(10), strict=True):
        stream.update(zb, yb)
    assert stream.n == 3000
    _close(stream.compute(), whole)
    assert whole.value("ece") > 0.02  # a case where the numbers mean something
    assert stream.compute().warnings == whole.warnings


def test_merge_reset_and_empty_batches(data):
    z, y = data
    a, b = StreamingCalibration(), StreamingCalibration()
    for stream, rows in ((a, (0, 1000)), (a, (0, 0)), (b, (1000, 2200)), (b, (2200, 3000))):
        stream.update(z[slice(*rows)], y[slice(*rows)])
    _close(a.merge(b).compute(), calibration_metrics(z, y))
    assert a.merge(StreamingCalibration()).n == 3000  # merging an empty stream changes nothing
    a.reset()
    with pytest.raises(InputError, match="N = 0"):
        a.compute()
    a.update(z[:500], y[:500])
    _close(a.compute(), calibration_metrics(z[:500], y[:500]))


def test_bootstrap_and_kept_logits(data):
    z, y = data[0][:400], data[1][:400]
    stream = StreamingCalibration(bootstrap=200, seed=3, smooth_grid=128)  # a coarse grid keeps this fast
    for zb, yb in zip(z.split(150), y.split(150), strict=True):
        stream.update(zb, yb)
    streamed, whole = stream.compute(), calibration_metrics(z, y, bootstrap=200, seed=3, smooth_grid=128)
    _close(streamed, whole)
    assert streamed["ece"].interval == whole["ece"].interval
    assert torch.equal(stream.logits, z) and torch.equal(stream.labels, y)
    plain = StreamingCalibration()
    plain.update(z, y)
    with pytest.raises(InputError, match="keep_logits=True"):
        plain.logits  # noqa: B018


def test_float64_bf16_and_bad_input(data):
    z, y = data
    s = StreamingCalibration(keep_logits=True)
    s.update(z.double()[:100], y[:100])
    s.update(z[100:200].bfloat16(), y[100:200])
    ref = calibration_metrics(torch.cat([z.double()[:100], z[100:200].bfloat16().double()]), y[:200])
    _close(s.compute(), ref)
    with pytest.raises(InputError, match="7 classes, but got 3"):
        s.update(z[:5, :3], y[:5].clamp(max=2))
    with pytest.raises(InputError, match="n_bins"):
        StreamingCalibration(n_bins=0)
    with pytest.raises(InputError, match="bootstrap"):
        StreamingCalibration(bootstrap=10)
    with pytest.raises(InputError, match="same n_bins"):
        StreamingCalibration(n_bins=10).merge(StreamingCalibration())
