"""`calibscope ece --corp` on the shipped test logits: the CORP curve equals scikit-learn's IsotonicRegression of
correctness on confidence, each score term equals a direct numpy computation and S = MCB − DSC + UNC holds to
1e-10, the band follows the stated numpy resampling with --seed, the figure draws those numbers, and bad option
combinations are exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from calibscope.cli import app

runner = CliRunner()
LOGITS = Path(__file__).resolve().parents[2] / "sample_checkpoints" / "digits_hard_test_logits.npz"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _top_label(temperature: float = 1.0):
    data = np.load(LOGITS)
    z = data["logits"].astype(np.float64) / temperature
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return p.max(1), (p.argmax(1) == data["labels"]).astype(np.float64)


def _brier(f, y):
    return ((f - y) ** 2).mean()


def _log(f, y):
    f = np.clip(f, 1e-12, 1 - 1e-12)
    return -(y * np.log(f) + (1 - y) * np.log(1 - f)).mean()


@pytest.fixture(scope="module")
def corp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("corp")
    result = invoke("ece", LOGITS, "--corp", "--corp-resamples", "40", "--seed", "5", "--json", "--out", out)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["results"][0]["corp"], out


def test_corp_curve_equals_scikit_learn_isotonic_regression(corp_run):
    from sklearn.isotonic import IsotonicRegression

    corp, _ = corp_run
    x, right = _top_label()
    xu = np.unique(x)
    np.testing.assert_allclose(corp["x"], xu, rtol=0, atol=1e-14)  # softmax in torch vs numpy: last-bit rounding
    np.testing.assert_allclose(corp["recalibrated"], IsotonicRegression().fit(x, right).predict(xu), atol=1e-12)
    assert corp["count"] == [int((x == v).sum()) for v in xu] and corp["n"] == len(x)


def test_decompositions_equal_numpy_and_add_up(corp_run):
    from sklearn.isotonic import IsotonicRegression

    corp, _ = corp_run
    x, right = _top_label()
    c = IsotonicRegression().fit(x, right).predict(x)
    base = np.full_like(x, right.mean())
    for key, score in (("brier", _brier), ("log", _log)):
        d = corp[key]
        assert d["score"] == pytest.approx(score(x, right), abs=1e-12)
        assert d["miscalibration"] == pytest.approx(score(x, right) - score(c, right), abs=1e-10)
        assert d["discrimination"] == pytest.approx(score(base, right) - score(c, right), abs=1e-10)
        assert d["uncertainty"] == pytest.approx(score(base, right), abs=1e-12)
        assert abs(d["miscalibration"] - d["discrimination"] + d["uncertainty"] - d["score"]) <= 1e-10


def test_band_follows_the_stated_resampling_with_the_seed(corp_run):
    from sklearn.isotonic import IsotonicRegression

    corp, _ = corp_run
    x, right = _top_label()
    xu = np.unique(x)
    rng = np.random.default_rng(5)
    draws = np.stack([IsotonicRegression().fit(x, (rng.random(len(x)) < x).astype(float)).predict(xu)
                      for _ in range(40)])
    low, high = np.quantile(draws, 0.05, axis=0), np.quantile(draws, 0.95, axis=0)
    np.testing.assert_allclose(corp["band_low"], low, atol=1e-12)
    np.testing.assert_allclose(corp["band_high"], high, atol=1e-12)
    fitted = np.array(corp["recalibrated"])
    outside = (fitted < low - 1e-12) | (fitted > high + 1e-12)
    assert corp["outside_band"] == int(np.array(corp["count"])[outside].sum())
    assert corp["band_resamples"] == 40 and corp["seed"] == 5 and corp["band_level"] == 0.9


def test_figure_is_written_and_draws_the_curve(corp_run):
    from calibscope.diagnostics.corp import corp_from_logits
    from calibscope.render.corp_view import CURVE_LABEL, corp_figure

    corp, out = corp_run
    assert (out / "corp_digits_hard_test_logits.npz.png").stat().st_size > 0
    data = np.load(LOGITS)
    import torch

    r = corp_from_logits(torch.from_numpy(data["logits"]), torch.from_numpy(data["labels"]), resamples=0)
    line = next(li for li in corp_figure(r).axes[0].lines if li.get_label() == CURVE_LABEL)
    np.testing.assert_allclose(line.get_xdata(), corp["x"], rtol=0, atol=0)
    np.testing.assert_allclose(line.get_ydata(), corp["recalibrated"], atol=0)


def test_corp_follows_the_temperature_and_shows_in_the_table_and_markdown():
    from sklearn.isotonic import IsotonicRegression

    result = invoke("ece", LOGITS, "--corp", "--corp-resamples", "0", "--temperature", "2", "--json")
    assert result.exit_code == 0, result.output
    corp = json.loads(result.stdout)["results"][0]["corp"]
    x, right = _top_label(2.0)
    np.testing.assert_allclose(corp["recalibrated"], IsotonicRegression().fit(x, right).predict(np.unique(x)),
                               atol=1e-12)
    assert corp["band_low"] == [] and corp["outside_band"] == 0
    table = invoke("ece", LOGITS, "--corp")
    assert table.exit_code == 0 and "Brier MCB (miscalibration)" in table.output and "log DSC" in table.output
    md = invoke("ece", LOGITS, "--corp", "--format", "markdown")
    assert md.exit_code == 0 and "| outside band |" in md.output
    plain = invoke("ece", LOGITS, "--json")
    assert "corp" not in json.loads(plain.stdout)["results"][0]


@pytest.mark.parametrize("args", [
    ("--corp-resamples", "50"),  # a band option without --corp
    ("--corp-level", "0.8"),
    ("--corp", "--corp-resamples", "-1"),
    ("--corp", "--corp-resamples", "100001"),
    ("--corp", "--corp-level", "1.5"),
    ("--corp", "--corp-level", "0"),
])
def test_bad_corp_options_are_exit_2(args, tmp_path):
    result = invoke("ece", LOGITS, *args, "--out", tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()
