"""calibscope.diagnostics.selective against direct numpy computations of the definitions (Geifman et al. 2019),
brute force over every order of tied examples, and hand-worked cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from calibscope.diagnostics.ood import energy_score
from calibscope.diagnostics.selective import area_under_risk_coverage, risk_coverage, selective_report
from calibscope.errors import InputError


def numpy_aurc_one_order(order_correct: np.ndarray) -> float:
    """The definition for examples already in decreasing-confidence order: mean over k of errors(top k) / k."""
    errors = 1 - np.asarray(order_correct, dtype=np.float64)
    k = np.arange(1, len(errors) + 1)
    return float(np.mean(np.cumsum(errors) / k))


def numpy_aurc_tie_average(conf: np.ndarray, correct: np.ndarray) -> float:
    """Average of the definition over every order of the tied examples, group by group (exact expectation)."""
    n, total, before_k, before_e = len(conf), 0.0, 0, 0
    for value in sorted(set(conf.tolist()), reverse=True):
        members = correct[conf == value]
        m, e = len(members), int(np.sum(1 - members))
        for j in range(1, m + 1):  # E[errors among j of m drawn without replacement] = j e / m
            total += (before_e + j * e / m) / (before_k + j)
        before_k, before_e = before_k + m, before_e + e
    return total / n


def numpy_aurc_optimal(correct: np.ndarray) -> float:
    ordered = np.sort(np.asarray(correct))[::-1]  # all correct first
    return numpy_aurc_one_order(ordered)


def test_aurc_without_ties_equals_definition():
    g = np.random.default_rng(0)
    conf = g.permutation(2000) / 2000.0  # distinct
    correct = g.random(2000) < 0.2 + 0.7 * conf
    got = area_under_risk_coverage(torch.from_numpy(conf), torch.from_numpy(correct))
    assert got == pytest.approx(numpy_aurc_one_order(correct[np.argsort(-conf)]), abs=1e-12)


def test_aurc_with_ties_equals_average_over_all_tie_orders():
    conf = np.array([0.9, 0.7, 0.7, 0.7, 0.5, 0.5, 0.2])
    correct = np.array([1, 0, 1, 1, 0, 1, 0])
    brute = []
    groups = [np.flatnonzero(conf == v) for v in sorted(set(conf), reverse=True)]
    for orders in itertools.product(*(itertools.permutations(g) for g in groups)):
        brute.append(numpy_aurc_one_order(correct[np.concatenate(orders)]))
    got = area_under_risk_coverage(torch.from_numpy(conf), torch.from_numpy(correct))
    assert got == pytest.approx(np.mean(brute), abs=1e-14)


def test_aurc_many_ties_equals_numpy_and_does_not_depend_on_input_order():
    g = np.random.default_rng(1)
    conf = g.integers(0, 12, 3000) / 11.0
    correct = g.random(3000) < 0.3 + 0.6 * conf
    got = area_under_risk_coverage(torch.from_numpy(conf), torch.from_numpy(correct))
    assert got == pytest.approx(numpy_aurc_tie_average(conf, correct.astype(int)), abs=1e-12)
    perm = g.permutation(3000)
    again = area_under_risk_coverage(torch.from_numpy(conf[perm]), torch.from_numpy(correct[perm]))
    assert again == pytest.approx(got, abs=1e-14)


def test_report_numbers_equal_numpy():
    g = np.random.default_rng(2)
    conf = np.round(g.random(1000), 2)
    correct = g.random(1000) < conf
    r = risk_coverage(torch.from_numpy(conf), torch.from_numpy(correct), coverages=(0.5, 0.9, 1.0), target_risk=0.1)
    assert r.n == 1000 and r.n_errors == int((~correct).sum()) and r.accuracy == correct.mean()
    assert r.aurc == pytest.approx(numpy_aurc_tie_average(conf, correct.astype(int)), abs=1e-12)
    assert r.aurc_optimal == pytest.approx(numpy_aurc_optimal(correct), abs=1e-12)
    assert r.excess_aurc == pytest.approx(r.aurc - r.aurc_optimal, abs=1e-15)
    # Geifman's closed form is the continuous approximation of the exact optimum
    risk = 1 - correct.mean()
    assert r.aurc_optimal == pytest.approx(risk + (1 - risk) * math.log(1 - risk), abs=2e-3)

    # curve: one point per distinct confidence, risk among score >= t
    values = np.unique(conf)[::-1]
    np.testing.assert_array_equal(r.curve.thresholds, values)
    np.testing.assert_allclose(r.curve.coverage, [np.mean(conf >= t) for t in values], atol=1e-15)
    np.testing.assert_allclose(r.curve.risk, [1 - correct[conf >= t].mean() for t in values], atol=1e-15)

    # fixed coverage: the top ceil(c n), ties at the cut by expectation
    order_conf = np.sort(conf)[::-1]
    for point, target in zip(r.at_coverage, (0.5, 0.9, 1.0), strict=True):
        k = math.ceil(target * 1000)
        t = order_conf[k - 1]
        above = conf > t
        need = k - above.sum()
        tied = conf == t
        errors = (~correct[above]).sum() + need * (~correct[tied]).sum() / tied.sum()
        assert point.n_kept == k and point.coverage == k / 1000 and point.threshold == t
        assert point.risk == pytest.approx(errors / k, abs=1e-14)
        assert point.accuracy == pytest.approx(1 - errors / k, abs=1e-14)

    # target risk: the lowest threshold whose risk is <= 0.1
    admissible = [t for t in values if 1 - correct[conf >= t].mean() <= 0.1]
    best = min(admissible)
    assert r.at_risk.reachable and r.at_risk.threshold == best
    assert r.at_risk.coverage == np.mean(conf >= best) and r.at_risk.risk <= 0.1


def test_perfect_ranking_has_zero_excess_aurc():
    g = np.random.default_rng(3)
    correct = g.random(777) < 0.8
    conf = np.where(correct, 0.5 + 0.5 * g.random(777), 0.5 * g.random(777))
    conf[:50] = np.where(correct[:50], 0.9, 0.1)  # ties inside each side do not matter
    r = risk_coverage(torch.from_numpy(conf), torch.from_numpy(correct))
    assert r.excess_aurc == 0.0
    assert r.aurc == pytest.approx(numpy_aurc_optimal(correct), abs=1e-12)


def test_all_correct_and_all_wrong():
    conf = torch.rand(20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    good = risk_coverage(conf, torch.ones(20, dtype=torch.bool), target_risk=0.0)
    assert good.aurc == 0 and good.excess_aurc == 0 and good.at_risk.coverage == 1.0
    bad = risk_coverage(conf, torch.zeros(20, dtype=torch.bool), target_risk=0.5)
    assert bad.aurc == 1 and bad.excess_aurc == 0 and not bad.at_risk.reachable
    assert bad.at_risk.coverage == 0 and bad.at_risk.threshold is None


def test_selective_report_from_logits_matches_confidences():
    g = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(600, 5, generator=g)
    labels = torch.randint(0, 5, (600,), generator=g)
    labels[:400] = logits[:400].argmax(1)
    correct = logits.argmax(1) == labels
    r = selective_report(logits, labels, score="energy", temperature=2.0, target_risk=0.05)
    direct = risk_coverage(energy_score(logits, temperature=2.0), correct, target_risk=0.05)
    assert r.aurc == direct.aurc and r.curve == direct.curve and r.at_risk == direct.at_risk
    assert r.score == "energy" and r.temperature == 2.0
    assert selective_report(logits, labels, score="max_logit").temperature is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: risk_coverage(torch.rand(0), torch.ones(0)), "at least one example"),
        (lambda: risk_coverage(torch.rand(3), torch.ones(4)), "shape"),
        (lambda: risk_coverage(torch.rand(3), torch.tensor([0, 2, 1])), "0/1"),
        (lambda: risk_coverage(torch.rand(3), torch.ones(3), coverages=[0.0]), "coverage"),
        (lambda: risk_coverage(torch.rand(3), torch.ones(3), target_risk=1.5), "target_risk"),
        (lambda: selective_report(torch.randn(3, 4), torch.tensor([0, 1, 9])), "labels"),
        (lambda: selective_report(torch.randn(3, 4), torch.tensor([0, 1, 2]), score="mahalanobis"), "--train"),
    ],
)
def test_bad_input_raises_input_error(call, message):
    with pytest.raises(InputError, match=message):
        call()
