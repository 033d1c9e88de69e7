"""CORP against a direct computation: scikit-learn's IsotonicRegression for the curve, numpy for the score
decompositions and for the consistency bands' resampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibscope.diagnostics.corp import band_excursions, corp_from_logits, corp_reliability


@pytest.fixture(scope="module")
def outputs():
    g = torch.Generator().manual_seed(3)
    z = 2 * torch.randn(600, 5, generator=g, dtype=torch.float64)
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    return 2.5 * z, y  # over-confident


def test_corp_curve_and_decomposition_equal_a_direct_isotonic_computation(outputs):
    from sklearn.isotonic import IsotonicRegression

    z, y = outputs
    r = corp_from_logits(z, y, resamples=0)
    p = z.softmax(1).numpy()
    x, right = p.max(1), (p.argmax(1) == y.numpy()).astype(float)
    c = IsotonicRegression().fit(x, right).predict(x)
    xu = np.unique(x)
    np.testing.assert_allclose(r.recalibrated, IsotonicRegression().fit(x, right).predict(xu), atol=1e-12)
    np.testing.assert_array_equal(r.x, xu)
    base = right.mean()
    brier = lambda f: ((f - right) ** 2).mean()  # noqa: E731

    def log(f):
        f = np.clip(f, 1e-12, 1 - 1e-12)
        return -(right * np.log(f) + (1 - right) * np.log(1 - f)).mean()

    for d, s in ((r.brier, brier), (r.log, log)):
        assert d.score == pytest.approx(s(x), abs=1e-12)
        assert d.miscalibration == pytest.approx(s(x) - s(c), abs=1e-10)
        assert d.discrimination == pytest.approx(s(np.full_like(x, base)) - s(c), abs=1e-10)
        assert d.uncertainty == pytest.approx(s(np.full_like(x, base)), abs=1e-12)
        assert d.miscalibration - d.discrimination + d.uncertainty == pytest.approx(d.score, abs=1e-12)
        assert d.miscalibration > 0 and d.discrimination > 0


def test_consistency_bands_follow_the_stated_resampling(outputs):
    from sklearn.isotonic import IsotonicRegression

    z, y = outputs
    r = corp_from_logits(z, y, resamples=50, level=0.9, seed=7)
    p = z.softmax(1).numpy()
    x = p.max(1)
    xu = np.unique(x)
    rng = np.random.default_rng(7)
    draws = np.stack([IsotonicRegression().fit(x, (rng.random(len(x)) < x).astype(float)).predict(xu)
                      for _ in range(50)])
    np.testing.assert_allclose(r.band_low, np.quantile(draws, 0.05, axis=0), atol=1e-12)
    np.testing.assert_allclose(r.band_high, np.quantile(draws, 0.95, axis=0), atol=1e-12)
    assert band_excursions(r) > 0  # 2.5x sharpened: over-confident beyond chance


def test_ties_are_pooled():
    x = torch.tensor([0.6, 0.6, 0.9, 0.9], dtype=torch.float64)
    r = corp_reliability(x, torch.tensor([1, 0, 1, 1]), resamples=0)
    assert r.x == (0.6, 0.9) and r.recalibrated == (0.5, 1.0) and r.count == (2, 2)


def test_shipped_models_numbers_quoted_in_the_readme(samples):
    """The README's `ece --corp` table, measured on the shipped digits models (test split), not tuned: equal
    discrimination, the label-smoothed model's larger miscalibration, and the band excursions."""
    from calibscope.inference.pipeline import compute_outputs
    from calibscope.loading.checkpoint import load_checkpoint
    from calibscope.loading.dataset import load_dataset

    data = load_dataset(samples / "digits_test.npz")
    found = {}
    for name in ("hard", "ls"):
        outputs = compute_outputs(load_checkpoint(samples / f"digits_{name}.pt2"), data, use_cache=False)
        found[name] = corp_from_logits(outputs.logits, outputs.labels)
    quoted = {"hard": (0.0401, 0.0055, 0.0180, 0.0526, 0.1481, 0.0335, 0.1003, 0.2149, 605),
              "ls": (0.0670, 0.0387, 0.0176, 0.0459, 0.2576, 0.1667, 0.1024, 0.1933, 1271)}
    for name, r in found.items():
        b, g = r.brier, r.log
        got = (b.score, b.miscalibration, b.discrimination, b.uncertainty, g.score, g.miscalibration,
               g.discrimination, g.uncertainty)
        np.testing.assert_allclose(got, quoted[name][:8], atol=6e-5)
        assert r.outside_band == quoted[name][8]
    assert found["ls"].brier.miscalibration > found["hard"].brier.miscalibration
