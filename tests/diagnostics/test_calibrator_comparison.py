"""The comparison table's numbers equal a direct numpy computation on each fitted calibrator's output, and
the best method is the one with the smallest criterion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibscope.diagnostics.calibrator_comparison import compare_calibrators
from calibscope.diagnostics.calibrators import apply_calibrator


def _ece(p, y, m=15):
    conf, right = p.max(1), (p.argmax(1) == y)
    bins = np.clip(np.ceil(conf * m).astype(int) - 1, 0, m - 1)
    return sum(abs(right[bins == b].mean() - conf[bins == b].mean()) * (bins == b).mean()
               for b in range(m) if (bins == b).any())


@pytest.fixture(scope="module")
def comparison():
    g = torch.Generator().manual_seed(5)
    z = 1.5 * torch.randn(900, 3, generator=g, dtype=torch.float64)
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    z = 3 * z
    return z, y, compare_calibrators(z[:450], y[:450], z[450:], y[450:], criterion="ece", bootstrap=200, seed=1)


def test_every_number_equals_numpy_on_the_calibrated_output(comparison):
    z, y, c = comparison
    yt = y[450:].numpy()
    assert [s.method for s in c.scores] == ["uncalibrated", "temperature", "vector", "matrix", "dirichlet",
                                            "histogram", "isotonic"]
    for s in c.scores:
        zz = z[450:] if s.calibrator is None else apply_calibrator(s.calibrator, z[450:])
        p = zz.softmax(1).numpy()
        assert s.metrics.value("ece") == pytest.approx(_ece(p, yt), abs=1e-12)
        assert s.metrics.value("nll") == pytest.approx(-np.log(p[np.arange(450), yt]).mean(), abs=1e-10)
        assert s.metrics.value("brier") == pytest.approx(((p - np.eye(3)[yt]) ** 2).sum(1).mean(), abs=1e-12)
        low, high = s.intervals["ece"]
        assert low <= s.metrics.value("ece") <= high
    values = {s.method: s.metrics.value("ece") for s in c.scores}
    assert c.best == min(values, key=values.get)
    assert c.margin[0] == pytest.approx(values[c.runner_up] - values[c.best], abs=1e-12)
    assert c.margin[1] <= c.margin[2]
    assert values["temperature"] < values["uncalibrated"]


def test_bootstrap_replicates_use_the_metrics_definitions(comparison):
    """One 'resample' that takes every example once gives calibration_metrics' values."""
    from calibscope.diagnostics.calibration import calibration_metrics
    from calibscope.diagnostics.calibrator_comparison import _table_replicates

    z, y, _ = comparison
    got = _table_replicates(torch.ones(1, 900, dtype=torch.float64), z, y, 15)
    expected = calibration_metrics(z, y)
    for name in ("ece", "sce", "nll", "brier", "accuracy"):
        assert float(got[name][0]) == pytest.approx(expected.value(name), abs=1e-12)
