"""Split conformal sets against independent references.

* the quantile and LAC sets: direct numpy (``np.quantile(..., method="inverted_cdf")`` at level ⌈(n+1)(1−α)⌉/n);
* APS / RAPS scores and sets: torch-uncertainty 0.13 (``ConformalClsTHR/APS/RAPS``, with its noise made ours
  by patching ``torch.rand``) and a numpy re-statement of the algorithm in Angelopoulos et al.'s reference code
  (``gcq``: base size then one uniform per example deciding the boundary class; ``giq``/``get_tau``);
* coverage over 200 random calibration/test splits of the shipped digits_hard test logits.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from calibscope.diagnostics.conformal import (
    DEFAULT_LAMBDA_GRID,
    conformal_calibrate,
    conformal_quantile,
    conformal_report,
    conformal_scores,
    prediction_sets,
)
from calibscope.errors import InputError
from tests.reference_libs import torch_uncertainty_conformal

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"


@pytest.fixture(scope="module")
def digits():
    d = np.load(SAMPLES / "digits_hard_test_logits.npz")
    return torch.from_numpy(d["logits"]), torch.from_numpy(d["labels"])


def _softmax(z):
    """torch's float64 softmax, so that the references see the very same probabilities (the rules, not the
    last bit of exp, are what is compared)."""
    return torch.softmax(torch.from_numpy(z), dim=1).numpy()


# ---- numpy references ------------------------------------------------------------------------------------


def _np_quantile(scores, alpha):
    n = len(scores)
    level = math.ceil((n + 1) * (1 - alpha)) / n
    # the empirical-CDF inverse; method="higher" (common in tutorials) can land one order statistic higher
    return math.inf if level > 1 else float(np.quantile(scores, level, method="inverted_cdf"))


def _np_gcq(probs, tau, u, k_reg, lam, allow_zero_sets):
    """Sets by the reference code's rule: sizes_base = #{r : C_r + pen_r ≤ τ} + 1 (capped at K), then the
    boundary class stays when u < V, V = (τ − C_{r−1} − pen_r)/p_r."""
    order = np.argsort(-probs, axis=1, kind="stable")
    ordered = np.take_along_axis(probs, order, axis=1)
    cumsum = np.cumsum(ordered, axis=1)
    k = probs.shape[1]
    pen = np.zeros(k)
    pen[k_reg:] += lam
    pen_cum = np.cumsum(pen)
    base = np.minimum(((cumsum + pen_cum) <= tau).sum(axis=1) + 1, k)
    sets = np.zeros_like(probs, dtype=bool)
    for i in range(len(probs)):
        b = base[i] - 1
        v = (tau - (cumsum[i, b] - ordered[i, b]) - pen_cum[b]) / ordered[i, b]
        size = base[i] - int(u[i] >= v)
        if not allow_zero_sets:
            size = max(size, 1)
        sets[i, order[i, :size]] = True
    return sets


def _np_true_score(probs, labels, u, k_reg, lam):
    """get_tau: the randomised score of the true class."""
    out = np.empty(len(labels))
    for i, y in enumerate(labels):
        order = np.argsort(-probs[i], kind="stable")
        r = int(np.nonzero(order == y)[0][0])
        before = probs[i, order[:r]].sum()
        out[i] = u[i] * probs[i, y] + before + lam * max(0, r + 1 - k_reg)
    return out


# ---- tests -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2, 0.5, 1e-4])
def test_quantile_is_the_finite_sample_order_statistic(digits, alpha):
    logits, labels = digits
    scores = conformal_scores(logits, method="lac").gather(1, labels[:, None])[:, 0]
    q = conformal_quantile(scores, alpha=alpha)
    ref = _np_quantile(scores.numpy(), alpha)
    assert q == ref
    if math.isfinite(q):
        assert (scores <= q).double().mean() >= math.ceil((len(scores) + 1) * (1 - alpha)) / len(scores) - 1e-12


def test_lac_sets_equal_numpy(digits):
    logits, labels = digits
    cal = conformal_calibrate(logits[:600], labels[:600], method="lac", alpha=0.1, allow_empty=True)
    probs = _softmax(logits.double().numpy())
    q = _np_quantile(1 - probs[np.arange(600), labels[:600].numpy()], 0.1)
    assert cal.q_hat == q
    np.testing.assert_array_equal(cal.sets(logits[600:]).numpy(), (1 - probs[600:]) <= q)
    # never-empty default: the top class joins an empty set and nothing else changes
    forced = cal.__class__(**{**cal.__dict__, "allow_empty": False}).sets(logits[600:]).numpy()
    expected = (1 - probs[600:]) <= q
    empty = ~expected.any(axis=1)
    expected[empty, probs[600:][empty].argmax(axis=1)] = True
    np.testing.assert_array_equal(forced, expected)


@pytest.mark.parametrize(("method", "randomized", "k_reg", "lam"),
                         [("aps", False, 1, 0.0), ("aps", True, 1, 0.0), ("raps", True, 2, 0.1),
                          ("raps", False, 3, 0.01), ("raps", True, 1, 0.5)])
def test_aps_raps_equal_the_reference_algorithm(digits, method, randomized, k_reg, lam):
    logits, labels = digits
    probs = _softmax(logits.double().numpy())
    n = len(labels)
    u = np.random.default_rng(3).random(n)
    scores = conformal_scores(logits, method=method, randomized=randomized, k_reg=k_reg, lam=lam,
                              uniforms=torch.from_numpy(u))
    ref_true = _np_true_score(probs, labels.numpy(), u if randomized else np.ones(n), k_reg,
                              lam if method == "raps" else 0.0)
    np.testing.assert_allclose(scores.gather(1, labels[:, None])[:, 0].numpy(), ref_true, rtol=0, atol=1e-12)
    for tau in (0.3, 0.9, float(np.quantile(ref_true, 0.9)), 1.2):
        for allow_empty in (True, False):
            ours = prediction_sets(scores, tau, allow_empty=allow_empty).numpy()
            # non-randomised = the randomised rule at u → 1 (the reference code instead keeps the boundary class)
            ref = _np_gcq(probs, tau, u if randomized else np.ones(n) - 1e-15, k_reg,
                          lam if method == "raps" else 0.0, allow_zero_sets=allow_empty)
            assert (ours != ref).sum() == 0, (tau, allow_empty)


@pytest.mark.parametrize(("method", "randomized"), [("lac", False), ("aps", False), ("aps", True), ("raps", True),
                                                    ("raps", False)])
def test_sets_equal_torch_uncertainty(digits, method, randomized, monkeypatch):
    thr, aps, raps = torch_uncertainty_conformal()
    logits, labels = digits
    n, k = logits.shape
    u = torch.rand(n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    kw = {"k_reg": 2, "lam": 0.05} if method == "raps" else {}
    ours = conformal_scores(logits, method=method, randomized=randomized, uniforms=u, **kw)
    q = conformal_quantile(ours.gather(1, labels[:, None])[:, 0], alpha=0.1)
    if method == "lac":
        ref = thr(alpha=0.1, model=torch.nn.Identity(), enable_ts=False)
    elif method == "aps":
        ref = aps(alpha=0.1, model=torch.nn.Identity(), randomized=randomized, enable_ts=False)
    else:
        ref = raps(alpha=0.1, model=torch.nn.Identity(), randomized=randomized, penalty=0.05,
                   regularization_rank=2, enable_ts=False)
    ref.q_hat = torch.tensor(q, dtype=torch.float64)
    # their noise U enters as cumsum − U·p: U = 1 − u, one per example (they draw [N, K]; broadcast ours)
    noise = (1 - u)[:, None].expand(n, k).contiguous()

    def their_rand(*shape, **_):
        shape = tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else shape
        return noise if shape == (n, k) else 1 - u

    monkeypatch.setattr(torch, "rand", their_rand)
    their_sets = ref.conformal(logits.double()) > 0
    if method != "lac":
        their_scores = ref._calculate_all_labels(torch.softmax(logits.double(), dim=1))
        # their RAPS penalty λ·(r − k_reg)_+ is formed in float32 (an integer arange times a float): 1e-7
        torch.testing.assert_close(their_scores, ours, rtol=0, atol=1e-7)
        their_true = ref._calculate_single_label(torch.softmax(logits.double(), dim=1), labels)
        torch.testing.assert_close(their_true, ours.gather(1, labels[:, None])[:, 0], rtol=0, atol=1e-7)
    mine = prediction_sets(ours, q, allow_empty=False)
    if method == "lac":  # THR always adds the top class; with a non-empty LAC set the top class is in it
        mine[torch.arange(n), logits.argmax(dim=1)] = True
    assert torch.equal(mine, their_sets)


@pytest.mark.parametrize(("method", "alpha"), [("lac", 0.1), ("aps", 0.1), ("raps", 0.05)])
def test_coverage_over_200_random_splits(digits, method, alpha):
    logits, labels = digits
    n = len(labels)
    n_cal = n // 2
    gen = torch.Generator().manual_seed(11)
    kw = {"k_reg": 2, "lam": 0.01} if method == "raps" else {}
    scores = conformal_scores(logits, method=method, seed=1, **kw)  # u i.i.d. per example: split-independent
    true = scores.gather(1, labels[:, None])[:, 0]
    coverages = []
    for _ in range(200):
        perm = torch.randperm(n, generator=gen)
        cal, test = perm[:n_cal], perm[n_cal:]
        sets = prediction_sets(scores[test], conformal_quantile(true[cal], alpha=alpha), allow_empty=True)
        coverages.append(float(sets[torch.arange(len(test)), labels[test]].double().mean()))
    coverages = np.asarray(coverages)
    n_test = n - n_cal
    assert abs(coverages.mean() - (1 - alpha)) <= 0.01
    assert coverages.mean() >= 1 - alpha - 3 / math.sqrt(n_test) / math.sqrt(200)  # not systematically low
    assert (coverages < 1 - alpha - 3 / math.sqrt(n_test)).mean() <= 0.01


def test_raps_parameters_are_chosen_on_a_split_as_the_reference(digits):
    logits, labels = digits
    alpha = 0.1
    cal = conformal_calibrate(logits, labels, method="raps", alpha=alpha, seed=4)
    n = len(labels)
    n_tune = math.ceil(0.3 * n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(4))
    tune, rest = perm[:n_tune].numpy(), perm[n_tune:].numpy()
    probs = _softmax(logits.double().numpy())
    ranks = np.array([int(np.nonzero(np.argsort(-probs[i], kind="stable") == labels[i].item())[0][0])
                      for i in tune])
    k_reg = int(np.quantile(ranks, 1 - alpha, method="higher")) + 1  # pick_kreg
    assert cal.k_reg == k_reg and cal.n_tune == n_tune and cal.n_calibration == n - n_tune
    u_cal = torch.rand(n_tune, generator=torch.Generator().manual_seed(4), dtype=torch.float64).numpy()
    u_eval = torch.rand(n_tune, generator=torch.Generator().manual_seed(5), dtype=torch.float64).numpy()
    sizes = []
    for lam in DEFAULT_LAMBDA_GRID:  # pick_lamda_size: the smallest mean size on the tuning split
        q = _np_quantile(_np_true_score(probs[tune], labels.numpy()[tune], u_cal, k_reg, lam), alpha)
        sizes.append(_np_gcq(probs[tune], q, u_eval, k_reg, lam, allow_zero_sets=False).sum(axis=1).mean())
    assert cal.lam == DEFAULT_LAMBDA_GRID[int(np.argmin(sizes))]
    u_rest = torch.rand(len(rest), generator=torch.Generator().manual_seed(4), dtype=torch.float64).numpy()
    q = _np_quantile(_np_true_score(probs[rest], labels.numpy()[rest], u_rest, k_reg, cal.lam), alpha)
    assert cal.q_hat == pytest.approx(q, abs=1e-12)


def test_report_counts_and_conditional_coverage(digits):
    logits, labels = digits
    rep = conformal_report(logits[:700], labels[:700], logits[700:], labels[700:], method="aps", alpha=0.1)
    sets = rep.calibration.sets(logits[700:])
    covered = sets[torch.arange(len(sets)), labels[700:]].numpy()
    sizes = sets.sum(dim=1).numpy()
    assert rep.coverage == pytest.approx(covered.mean()) and rep.mean_size == pytest.approx(sizes.mean())
    assert sum(rep.size_histogram) == rep.n_test == len(sets)
    for size, count, cov in rep.coverage_by_size:
        assert count == (sizes == size).sum() and cov == pytest.approx(covered[sizes == size].mean())
    for c, count, cov in rep.coverage_by_class:
        mask = labels[700:].numpy() == c
        assert count == mask.sum() and cov == pytest.approx(covered[mask].mean())
    assert rep.worst_class_coverage == min(c for _, _, c in rep.coverage_by_class)
    point = next(p for p in rep.curve if p.alpha == 0.1)
    assert point.coverage == pytest.approx(rep.coverage) and point.mean_size == pytest.approx(rep.mean_size)
    sizes_by_alpha = [p.mean_size for p in rep.curve]
    assert sizes_by_alpha == sorted(sizes_by_alpha, reverse=True)  # smaller α, larger sets


@pytest.mark.parametrize(("kwargs", "match"), [({"alpha": 0.0}, "alpha"), ({"alpha": 1.5}, "alpha"),
                                               ({"method": "thr2"}, "method"), ({"temperature": -1.0}, "temperature"),
                                               ({"method": "raps", "tune_fraction": 1.2}, "tune_fraction")])
def test_bad_arguments_raise_input_errors(digits, kwargs, match):
    logits, labels = digits
    with pytest.raises(InputError, match=match):
        conformal_calibrate(logits, labels, **kwargs)


def test_bad_tensors_raise_input_errors(digits):
    logits, labels = digits
    with pytest.raises(InputError, match="labels"):
        conformal_calibrate(logits, labels + 10)
    bad = logits.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        conformal_calibrate(bad, labels)
    with pytest.raises(InputError, match="large enough"):
        conformal_calibrate(logits[:3], labels[:3], method="raps")
