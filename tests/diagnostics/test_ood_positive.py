"""``positive="ood"`` (default, as pytorch-ood / torch-uncertainty) and ``positive="in"`` for FPR@95TPR and the ROC
curve, against a direct computation from ``sklearn.metrics.roc_curve`` with each class as label 1, and against
pytorch-ood 0.4's ``fpr_at_tpr`` on the same scores. The two conventions give different numbers on the same
scores (issue #20: 0.7893 vs 0.8322 on the anchors' scores); AUROC and AUPR-In/Out do not depend on it."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from calibscope.diagnostics.ood import detection_metrics, ood_report, roc_curve
from calibscope.errors import InputError
from tests.reference_libs import _namespace, _root

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def sklearn_fpr_at_tpr(y: np.ndarray, s: np.ndarray, level: float = 0.95) -> float:
    fpr, tpr, _ = sklearn_metrics.roc_curve(y, s, drop_intermediate=False)
    return float(fpr[np.flatnonzero(tpr >= level)[0]])


def pytorch_ood_functional():
    root = _root("pytorch_ood")
    _namespace("pytorch_ood", root)
    _namespace("pytorch_ood.utils", f"{root}/utils")
    _namespace("pytorch_ood.metrics", f"{root}/metrics")
    return importlib.import_module("pytorch_ood.metrics.functional")


CASES = {
    "overlapping": lambda g: (g.normal(1.0, 1.0, 700), g.normal(0.0, 1.5, 400)),
    "ties": lambda g: (g.integers(0, 6, 900).astype(float), g.integers(0, 4, 1300).astype(float)),
    "saturated": lambda g: (np.r_[np.ones(500), g.uniform(0.3, 1, 200)], np.r_[np.ones(40), g.uniform(0.1, 1, 300)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_conventions_equal_sklearn_roc_curve(case):
    s_in, s_out = CASES[case](np.random.default_rng(0))
    s = np.r_[s_in, s_out]
    is_in = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    ood = detection_metrics(torch.from_numpy(s_in), torch.from_numpy(s_out))
    ind = detection_metrics(torch.from_numpy(s_in), torch.from_numpy(s_out), positive="in")
    assert ood.positive == "ood" and ind.positive == "in"
    assert ood.fpr_at_tpr == pytest.approx(sklearn_fpr_at_tpr(1 - is_in, -s), abs=1e-15)
    assert ind.fpr_at_tpr == pytest.approx(sklearn_fpr_at_tpr(is_in, s), abs=1e-15)
    assert (ood.auroc, ood.aupr_in, ood.aupr_out) == (ind.auroc, ind.aupr_in, ind.aupr_out)
    # the threshold: OOD positive flags score <= t and catches >= 95 % of the OOD inputs
    assert np.mean(s_out <= ood.threshold_at_tpr) == pytest.approx(ood.tpr_at_threshold)
    assert ood.tpr_at_threshold >= 0.95
    assert np.mean(s_in <= ood.threshold_at_tpr) == pytest.approx(ood.fpr_at_tpr)
    fpr, tpr, thr = sklearn_metrics.roc_curve(1 - is_in, -s)
    curve = roc_curve(torch.from_numpy(s_in), torch.from_numpy(s_out))
    np.testing.assert_allclose(curve.fpr, fpr, atol=1e-15)
    np.testing.assert_allclose(curve.tpr, tpr, atol=1e-15)
    np.testing.assert_array_equal(curve.thresholds, -thr)


def test_conventions_differ_on_the_same_scores_and_ood_positive_equals_pytorch_ood():
    functional = pytorch_ood_functional()
    g = np.random.default_rng(3)
    s_in, s_out = g.normal(0.6, 1.0, 2000), g.normal(0.0, 1.3, 1500)  # overlapping, unequal spreads
    ood = detection_metrics(torch.from_numpy(s_in), torch.from_numpy(s_out))
    ind = detection_metrics(torch.from_numpy(s_in), torch.from_numpy(s_out), positive="in")
    outlier = -torch.from_numpy(np.r_[s_in, s_out])  # pytorch-ood: higher = OOD, labels < 0 = OOD
    labels = torch.from_numpy(np.r_[np.zeros(len(s_in)), -np.ones(len(s_out))]).long()
    assert ood.fpr_at_tpr == pytest.approx(float(functional.fpr_at_tpr(outlier, labels)), abs=1e-15)
    assert ood.auroc == pytest.approx(float(functional.auroc(outlier, labels)), abs=1e-12)
    # in-positive is pytorch-ood on the negated problem (ID as the positive class)
    flipped = torch.from_numpy(np.r_[s_in, s_out])
    assert ind.fpr_at_tpr == pytest.approx(float(functional.fpr_at_tpr(flipped, -1 - labels)), abs=1e-15)
    assert abs(ood.fpr_at_tpr - ind.fpr_at_tpr) > 0.05  # 0.9360 (OOD positive) vs 0.7613 (in positive)


def test_report_states_the_convention_and_refuses_unknown():
    g = torch.Generator().manual_seed(0)
    r = ood_report(4 * torch.randn(300, 5, generator=g), torch.randn(200, 5, generator=g), positive="in")
    assert r.definition["positive"] == "in-distribution" and r.results[0].metrics.positive == "in"
    assert ood_report(torch.randn(30, 5), torch.randn(20, 5)).definition["positive"] == "ood"
    with pytest.raises(InputError, match="positive"):
        detection_metrics(torch.rand(5), torch.rand(5), positive="both")
