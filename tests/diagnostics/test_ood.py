"""calibscope.diagnostics.ood against independent references: scikit-learn's roc_auc_score,
average_precision_score, roc_curve and ledoit_wolf, scipy's logsumexp/softmax, numpy.histogram, and direct
numpy computations of FPR at 95 % TPR and of Mahalanobis distances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax

from calibscope.diagnostics.ood import (
    ClassGaussians,
    confidence_score,
    detection_metrics,
    energy_score,
    fit_class_gaussians,
    mahalanobis_score,
    max_logit_score,
    max_softmax_score,
    ood_report,
    parse_scores,
    roc_curve,
    score_histogram,
)
from calibscope.errors import InputError

sklearn_metrics = pytest.importorskip("sklearn.metrics")
sklearn_covariance = pytest.importorskip("sklearn.covariance")


def numpy_fpr_at_tpr(s_in: np.ndarray, s_out: np.ndarray, level: float = 0.95) -> float:
    """Directly: try every distinct threshold t (accept s >= t), keep those with TPR >= level, take the least FPR."""
    best = np.inf
    for t in np.unique(np.concatenate([s_in, s_out])):
        tpr = np.sum(s_in >= t) / len(s_in)
        if tpr >= level:
            best = min(best, np.sum(s_out >= t) / len(s_out))
    return float(best)


def sklearn_reference(s_in: np.ndarray, s_out: np.ndarray) -> dict[str, float]:
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    s = np.r_[s_in, s_out]
    return {
        "auroc": sklearn_metrics.roc_auc_score(y, s),
        "aupr_in": sklearn_metrics.average_precision_score(y, s),
        "aupr_out": sklearn_metrics.average_precision_score(1 - y, -s),
    }


CASES = {
    "continuous": lambda g: (g.normal(1.0, 1.0, 700), g.normal(0.0, 1.5, 400)),
    "many_ties": lambda g: (g.integers(0, 6, 900).astype(float), g.integers(0, 4, 1300).astype(float)),
    "all_tied": lambda g: (np.full(50, 0.5), np.full(30, 0.5)),
    "separable": lambda g: (g.uniform(2, 3, 100), g.uniform(0, 1, 100)),
    "reversed": lambda g: (g.uniform(0, 1, 100), g.uniform(2, 3, 100)),
    "saturated_msp": lambda g: (np.r_[np.ones(500), g.uniform(0.3, 1, 200)],
                                np.r_[np.ones(40), g.uniform(0.1, 1, 300)]),
    "one_each": lambda g: (np.array([0.2]), np.array([0.1])),
    "tiny_with_tie": lambda g: (np.array([0.9, 0.8, 0.8, 0.3]), np.array([0.8, 0.2])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_metrics_equal_sklearn_and_direct_fpr(case):
    s_in, s_out = CASES[case](np.random.default_rng(0))
    m = detection_metrics(torch.from_numpy(s_in), torch.from_numpy(s_out), positive="in")
    ref = sklearn_reference(s_in, s_out)
    assert m.auroc == pytest.approx(ref["auroc"], abs=1e-9)
    assert m.aupr_in == pytest.approx(ref["aupr_in"], abs=1e-9)
    assert m.aupr_out == pytest.approx(ref["aupr_out"], abs=1e-9)
    assert m.fpr_at_tpr == pytest.approx(numpy_fpr_at_tpr(s_in, s_out), abs=1e-12)
    assert m.tpr_at_threshold >= 0.95 and m.n_in == len(s_in) and m.n_out == len(s_out)
    assert np.mean(s_in >= m.threshold_at_tpr) == pytest.approx(m.tpr_at_threshold)


def test_float32_scores_and_other_tpr_level():
    g = np.random.default_rng(1)
    s_in = np.round(g.normal(1, 1, 333), 2).astype(np.float32)
    s_out = np.round(g.normal(0, 1, 222), 2).astype(np.float32)
    m = detection_metrics(torch.from_numpy(s_in), torch.from_numpy(s_out), tpr_level=0.8, positive="in")
    ref = sklearn_reference(s_in.astype(np.float64), s_out.astype(np.float64))
    assert m.auroc == pytest.approx(ref["auroc"], abs=1e-9)
    assert m.aupr_in == pytest.approx(ref["aupr_in"], abs=1e-9)
    assert m.fpr_at_tpr == pytest.approx(numpy_fpr_at_tpr(s_in, s_out, 0.8), abs=1e-12)


@pytest.mark.parametrize("case", ["continuous", "many_ties", "all_tied", "saturated_msp"])
def test_roc_curve_equals_sklearn(case):
    s_in, s_out = CASES[case](np.random.default_rng(2))
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    for drop in (True, False):
        fpr, tpr, thr = sklearn_metrics.roc_curve(y, np.r_[s_in, s_out], drop_intermediate=drop)
        curve = roc_curve(torch.from_numpy(s_in), torch.from_numpy(s_out), drop_intermediate=drop, positive="in")
        np.testing.assert_allclose(curve.fpr, fpr, atol=1e-15)
        np.testing.assert_allclose(curve.tpr, tpr, atol=1e-15)
        np.testing.assert_array_equal(curve.thresholds, thr)


def test_histogram_equals_numpy():
    g = np.random.default_rng(3)
    s_in, s_out = g.normal(1, 1, 500), np.r_[g.normal(0, 2, 300), 7.0]
    h = score_histogram(torch.from_numpy(s_in), torch.from_numpy(s_out), n_bins=17)
    edges = np.asarray(h.edges)
    assert edges[0] == min(s_in.min(), s_out.min()) and edges[-1] == max(s_in.max(), s_out.max())
    np.testing.assert_array_equal(h.in_counts, np.histogram(s_in, bins=edges)[0])
    np.testing.assert_array_equal(h.out_counts, np.histogram(s_out, bins=edges)[0])
    flat = score_histogram(torch.ones(3), torch.ones(2), n_bins=4)
    assert flat.edges[0] == 0.5 and flat.edges[-1] == 1.5 and sum(flat.in_counts) == 3
    assert h.scale == "linear"  # light tails: equal-width bins


def test_heavy_tailed_histogram_has_symlog_bins():
    import matplotlib.scale

    g = np.random.default_rng(4)  # Gram-like: in-distribution deviations near 0, OOD ones up to thousands
    s_in = -np.abs(g.normal(0, 1, 900))
    s_out = np.r_[-np.abs(g.normal(0, 3, 300)), -g.uniform(20, 2500, 200)]
    h = score_histogram(torch.from_numpy(s_in), torch.from_numpy(s_out), n_bins=30)
    srt = np.sort(s_in)
    central = srt[int(np.ceil(0.99 * (len(srt) - 1)))] - srt[int(np.floor(0.01 * (len(srt) - 1)))]
    assert h.scale == "symlog" and h.linthresh == pytest.approx(central, rel=1e-12)
    edges = np.asarray(h.edges)
    lo, hi = min(s_in.min(), s_out.min()), max(s_in.max(), s_out.max())
    assert edges[0] == lo and edges[-1] == hi and np.all(np.diff(edges) > 0)
    # equal width on matplotlib's symlog axis with the same linthresh
    transform = matplotlib.scale.SymmetricalLogScale(None, base=10, linthresh=h.linthresh, linscale=1).get_transform()
    widths = np.diff(transform.transform(edges))
    np.testing.assert_allclose(widths, widths.mean(), rtol=1e-9)
    np.testing.assert_array_equal(h.in_counts, np.histogram(s_in, bins=edges)[0])
    np.testing.assert_array_equal(h.out_counts, np.histogram(s_out, bins=edges)[0])


# --------------------------------------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------------------------------------


def test_logit_scores_equal_scipy():
    g = np.random.default_rng(4)
    z = g.normal(0, 4, (200, 7)).astype(np.float32)
    z64 = z.astype(np.float64)
    t = torch.from_numpy(z)
    for temperature in (1.0, 2.5):
        np.testing.assert_allclose(max_softmax_score(t, temperature=temperature).numpy(),
                                   softmax(z64 / temperature, axis=1).max(axis=1), rtol=1e-12)
        np.testing.assert_allclose(energy_score(t, temperature=temperature).numpy(),
                                   temperature * logsumexp(z64 / temperature, axis=1), rtol=1e-12)
    np.testing.assert_array_equal(max_logit_score(t).numpy(), z64.max(axis=1))
    assert max_softmax_score(t).dtype == torch.float64


def test_saturated_softmax_gives_ties_of_one():
    s = max_softmax_score(torch.tensor([[100.0, 0.0], [200.0, 0.0], [1.0, 0.0]]))
    assert s[0] == 1.0 and s[1] == 1.0 and s[2] < 1.0


def test_parse_scores():
    assert parse_scores("msp, MAX_LOGIT,energy,msp") == ("msp", "max-logit", "energy")
    assert parse_scores(["mahalanobis"]) == ("mahalanobis",)
    assert parse_scores("odin,KNN,gram-matrix") == ("odin", "knn", "gram")
    with pytest.raises(InputError, match="one of msp, max-logit, energy, mahalanobis, mutual-information"):
        parse_scores("msp,dice")
    with pytest.raises(InputError, match="at least one score"):
        parse_scores(" , ")


# --------------------------------------------------------------------------------------------------------
# Mahalanobis
# --------------------------------------------------------------------------------------------------------


def _blobs(seed: int = 5, n: int = 300, d: int = 6, k: int = 3):
    g = np.random.default_rng(seed)
    y = g.integers(0, k, n)
    centres = g.normal(0, 3, (k, d))
    mix = g.normal(0, 1, (d, d))
    x = centres[y] + g.normal(0, 1, (n, d)) @ mix
    return x, y


def test_ledoit_wolf_fit_equals_sklearn():
    x, y = _blobs()
    fit = fit_class_gaussians(torch.from_numpy(x), torch.from_numpy(y))
    means = np.stack([x[y == c].mean(axis=0) for c in range(3)])
    residual = x - means[y]
    cov, shrinkage = sklearn_covariance.ledoit_wolf(residual, assume_centered=True)
    assert fit.shrinkage_method == "ledoit-wolf"
    assert fit.shrinkage == pytest.approx(shrinkage, rel=1e-9)
    np.testing.assert_allclose(fit.means.numpy(), means, rtol=1e-12)
    np.testing.assert_allclose(fit.covariance.numpy(), cov, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fit.precision.numpy() @ cov, np.eye(6), atol=1e-9)
    assert fit.class_counts == tuple(np.bincount(y)) and fit.n == 300


def test_mahalanobis_score_equals_direct_numpy():
    x, y = _blobs(seed=6)
    fit = fit_class_gaussians(torch.from_numpy(x), torch.from_numpy(y), shrinkage=0.0)
    means = np.stack([x[y == c].mean(axis=0) for c in range(3)])
    residual = x - means[y]
    precision = np.linalg.inv(residual.T @ residual / len(x))  # Lee et al. 2018, no shrinkage
    test = np.random.default_rng(7).normal(0, 4, (50, 6))
    direct = np.array([-min((v - mu) @ precision @ (v - mu) for mu in means) for v in test])
    got = mahalanobis_score(torch.from_numpy(test), fit).numpy()
    np.testing.assert_allclose(got, direct, rtol=1e-9)
    assert fit.shrinkage == 0.0 and fit.shrinkage_method == "fixed"


def test_fixed_shrinkage_and_missing_class():
    x, y = _blobs(seed=8)
    y = np.where(y == 1, 2, y)  # class 1 has no examples
    fit = fit_class_gaussians(torch.from_numpy(x), torch.from_numpy(y), shrinkage=0.3)
    assert fit.classes.tolist() == [0, 2] and fit.means.shape == (2, 6)
    means = np.stack([x[y == c].mean(axis=0) for c in (0, 2)])
    residual = x - np.where((y == 0)[:, None], means[0], means[1])
    s = residual.T @ residual / len(x)
    np.testing.assert_allclose(fit.covariance.numpy(), 0.7 * s + 0.3 * np.trace(s) / 6 * np.eye(6), rtol=1e-10)


def test_singular_covariance_is_an_input_error_and_shrinkage_fixes_it():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 20, generator=g, dtype=torch.float64)  # 8 examples in 20 dimensions: rank < 20
    y = torch.arange(8) % 2
    with pytest.raises(InputError, match="singular"):
        fit_class_gaussians(x, y, shrinkage=0.0)
    fit = fit_class_gaussians(x, y)  # Ledoit–Wolf makes it invertible
    assert 0 < fit.shrinkage <= 1 and fit.eigenvalue_range[0] > 0
    with pytest.raises(InputError, match="no variance"):
        fit_class_gaussians(torch.ones(10, 4), torch.arange(10) % 2)


def test_mahalanobis_needs_gaussians_and_features():
    logits = torch.randn(4, 3)
    with pytest.raises(InputError, match="--train"):
        confidence_score(logits, score="mahalanobis")
    x, y = _blobs()
    fit = fit_class_gaussians(torch.from_numpy(x), torch.from_numpy(y))
    with pytest.raises(InputError, match="features"):
        confidence_score(logits, score="mahalanobis", gaussians=fit)
    with pytest.raises(InputError, match="6 dimensions"):
        mahalanobis_score(torch.randn(4, 5, dtype=torch.float64), fit)
    assert isinstance(fit, ClassGaussians)


# --------------------------------------------------------------------------------------------------------
# the report, and bad input
# --------------------------------------------------------------------------------------------------------


def test_report_runs_every_score_and_matches_metrics():
    x, y = _blobs(seed=9, n=400)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 3, generator=g, dtype=torch.float64)
    f_in, f_out = torch.from_numpy(x[:200]), torch.from_numpy(x[200:] * 3 + 5)
    fit = fit_class_gaussians(torch.from_numpy(x[:200]), torch.from_numpy(y[:200]))
    r = ood_report(f_in @ w, f_out @ w, in_features=f_in, out_features=f_out, gaussians=fit, temperature=2.0)
    assert [x.score for x in r.results] == ["msp", "max-logit", "energy", "mahalanobis"]
    assert r.n_in == 200 and r.n_out == 200 and r.mahalanobis["shrinkage_method"] == "ledoit-wolf"
    energy = r.result("energy")
    expected = detection_metrics(energy_score(f_in @ w, temperature=2.0), energy_score(f_out @ w, temperature=2.0))
    assert energy.metrics == expected and energy.definition["temperature"] == 2.0
    assert r.result("mahalanobis").metrics.auroc > 0.95
    only = ood_report(f_in @ w, f_out @ w, scores="energy")
    assert [x.score for x in only.results] == ["energy"] and only.mahalanobis is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: detection_metrics(torch.rand(5), torch.rand(0)), "at least one out-of-distribution"),
        (lambda: detection_metrics(torch.tensor([0.1, float("nan")]), torch.rand(3)), "NaN"),
        (lambda: detection_metrics(torch.rand(5), torch.rand(5), tpr_level=0), "tpr_level"),
        (lambda: ood_report(torch.randn(4, 3), torch.randn(4, 5)), "same number of classes"),
        (lambda: ood_report(torch.randn(4, 3), torch.randn(0, 3)), "at least one out-of-distribution"),
        (lambda: max_softmax_score(torch.randn(4, 3), temperature=0), "temperature"),
        (lambda: energy_score(torch.tensor([[1.0, float("inf")]])), "finite"),
        (lambda: fit_class_gaussians(torch.randn(6, 2), torch.arange(6) % 2, shrinkage=1.5), "shrinkage"),
        (lambda: fit_class_gaussians(torch.randn(6, 2), torch.arange(5)), "shape"),
        (lambda: ood_report(torch.randn(4, 3), torch.randn(4, 3), scores="mahalanobis"), "--train"),
    ],
)
def test_bad_input_raises_input_error(call, message):
    with pytest.raises(InputError, match=message):
        call()
