"""CalibscopeECE is a torchmetrics Metric whose number equals torchmetrics' own calibration error."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("CI") is None:
    pytest.importorskip("torchmetrics")

from torchmetrics.classification import MulticlassCalibrationError  # noqa: E402

from calibscope.diagnostics.calibration import calibration_metrics  # noqa: E402
from calibscope.integrations.torchmetrics import CalibscopeECE  # noqa: E402


def _off_edges(z: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Rows whose float32 confidence is at least 1e-6 away from every bin edge m/M (there the two
    conventions, right-closed here and left-closed in torchmetrics, agree)."""
    conf = z.softmax(1).max(1).values.double()
    edges = torch.arange(n_bins + 1, dtype=torch.float64) / n_bins
    return (conf[:, None] - edges).abs().min(1).values > 1e-6


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_equals_torchmetrics_off_bin_edges(norm):
    g = torch.Generator().manual_seed(1)
    z = 3 * torch.randn(4000, 10, generator=g)
    y = torch.randint(0, 10, (4000,), generator=g)
    keep = _off_edges(z, 15)
    z, y = z[keep], y[keep]
    ours, theirs = CalibscopeECE(n_bins=15, norm=norm), MulticlassCalibrationError(num_classes=10, n_bins=15,
                                                                                   norm=norm)
    for zb, yb in zip(z.split(512), y.split(512), strict=True):
        ours.update(zb, yb)
        theirs.update(zb, yb)
    value = float(ours.compute())
    assert value == pytest.approx(float(theirs.compute()), abs=1e-6)
    assert value > 0.05  # a real gap, not 0 = 0
    if norm == "l1":
        assert abs(value - calibration_metrics(z, y).value("ece")) < 1e-12
        report = ours.report()
        assert report.n == len(y) and abs(report.ece - value) < 1e-15


def test_reset_states_and_bad_input():
    metric = CalibscopeECE(num_classes=3)
    assert set(metric._defaults) == {"count", "sum_confidence", "sum_correct", "totals"}
    assert all(fx is not None for fx in metric._reductions.values())  # every state is reduced across ranks
    metric.update(torch.randn(20, 3), torch.randint(0, 3, (20,)))
    metric.reset()
    assert float(metric.totals[0]) == 0
    from calibscope.errors import InputError

    with pytest.raises(InputError, match="N = 0"):
        metric.compute()
    with pytest.raises(InputError, match="3 classes"):
        metric.update(torch.randn(4, 5), torch.zeros(4, dtype=torch.int64))
