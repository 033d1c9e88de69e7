"""AUGRC (Traub et al. 2024) against a direct numpy computation of the reference code's integration (distinct
thresholds + (0, 0), trapezoid), brute force over the orders of tied examples, the closed-form extremes, and
torch-uncertainty 0.13's ``AUGRC`` (whose end points differ; the conversion is exact)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from calibscope.diagnostics.selective import area_under_generalized_risk_coverage, risk_coverage
from tests.reference_libs import torch_uncertainty_risk_coverage


def numpy_augrc_fd_shifts(conf: np.ndarray, correct: np.ndarray) -> float:
    """Generalized risk (errors kept / n) at each distinct threshold, from coverage 1 down, then (0, 0);
    the area by the trapezoid rule (the integration of Traub et al.'s fd-shifts code)."""
    n = len(conf)
    order = np.argsort(conf, kind="stable")  # ascending: reject from the least confident
    residuals = (1 - correct[order]).astype(np.float64)
    c = conf[order]
    coverages, risks = [1.0], [residuals.sum() / n]
    kept, error_sum = n, residuals.sum()
    for i in range(n - 1):
        kept -= 1
        error_sum -= residuals[i]
        if c[i] != c[i + 1]:
            coverages.append(kept / n)
            risks.append(error_sum / n)
    coverages.append(0.0)
    risks.append(0.0)
    x, y = np.array(coverages[::-1]), np.array(risks[::-1])
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def numpy_augrc_one_order(correct_in_order: np.ndarray) -> float:
    errors = np.concatenate([[0.0], np.cumsum(1 - np.asarray(correct_in_order, dtype=np.float64))])
    n = len(correct_in_order)
    return float(np.sum((errors[1:] + errors[:-1]) / 2) / n / n)


@pytest.mark.parametrize("seed", [0, 1])
def test_augrc_equals_the_reference_integration(seed):
    g = np.random.default_rng(seed)
    conf = np.round(g.random(3000), 2 if seed else 12)  # seed 1: many ties
    correct = g.random(3000) < 0.2 + 0.75 * conf
    got = area_under_generalized_risk_coverage(torch.from_numpy(conf), torch.from_numpy(correct))
    assert got == pytest.approx(numpy_augrc_fd_shifts(conf, correct.astype(int)), abs=1e-14)


def test_augrc_with_ties_equals_average_over_all_tie_orders():
    conf = np.array([0.9, 0.7, 0.7, 0.7, 0.5, 0.5, 0.2, 0.2])
    correct = np.array([1, 0, 1, 1, 0, 1, 0, 1])
    groups = [np.flatnonzero(conf == v) for v in sorted(set(conf), reverse=True)]
    brute = [numpy_augrc_one_order(correct[np.concatenate(o)])
             for o in itertools.product(*(itertools.permutations(x) for x in groups))]
    got = area_under_generalized_risk_coverage(torch.from_numpy(conf), torch.from_numpy(correct))
    assert got == pytest.approx(np.mean(brute), abs=1e-15)


def test_augrc_extremes_and_report_fields():
    correct = np.array([1] * 70 + [0] * 30)
    best = np.linspace(1, 0, 100)  # every error last
    r = risk_coverage(torch.from_numpy(best), torch.from_numpy(correct))
    assert r.augrc == pytest.approx(0.3 ** 2 / 2, abs=1e-15) and r.augrc_optimal == pytest.approx(0.045, abs=1e-15)
    worst = risk_coverage(torch.from_numpy(best[::-1].copy()), torch.from_numpy(correct))
    assert worst.augrc == pytest.approx(0.3 - 0.3 ** 2 / 2, abs=1e-15)


def test_augrc_relates_exactly_to_torch_uncertainty():
    """torch-uncertainty integrates from coverage 1/n and divides by 1 − 1/n: theirs = (n·ours − E₁/(2n))/(n − 1)."""
    rc = torch_uncertainty_risk_coverage()
    g = torch.Generator().manual_seed(0)
    logits = 2.5 * torch.randn(2000, 10, generator=g, dtype=torch.float64)
    labels = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    probs = logits.softmax(1)
    metric = rc.AUGRC()
    metric.update(probs, labels)
    theirs = float(metric.compute())
    conf, correct = probs.max(1).values, probs.argmax(1) == labels
    assert conf.unique().numel() == conf.numel()  # no ties: their sort order is then well defined
    ours = area_under_generalized_risk_coverage(conf, correct)
    n = conf.numel()
    first_error = float(~correct[conf.argmax()])
    assert theirs == pytest.approx((n * ours - first_error / (2 * n)) / (n - 1), rel=1e-6)
    assert abs(theirs - ours) < 1e-3  # the two conventions differ by O(1/n)
