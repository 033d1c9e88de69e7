"""The family of calibration errors against independent references: numpy written from each paper's formula
(ACE, classwise SCE, Kumar's debiased ℓ2, smooth ECE by brute-force kernel sums), torchmetrics (ℓ1/ℓ2/max),
relplot's smECE where installed, and numpy's quantile for the bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.special import softmax

from calibscope.diagnostics.calibration import (
    ALL_METRICS,
    CalibrationSums,
    adaptive_calibration_error,
    calibration_metrics,
    calibration_sums,
    classwise_calibration_error,
    debiased_calibration_error,
    expected_calibration_error,
    smooth_calibration_error,
)
from calibscope.errors import InputError

M = 15


def random_case(seed: int, n: int, k: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, k, generator=g, dtype=torch.float64)
    labels = torch.where(torch.rand(n, generator=g) < 0.7, logits.argmax(1), torch.randint(0, k, (n,), generator=g))
    return logits, labels


def top_label(logits: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    p = softmax(logits.double().numpy(), axis=1)
    return p.max(1), (p.argmax(1) == labels.numpy()).astype(np.float64)


def in_bin(values: np.ndarray, m: int, n_bins: int) -> np.ndarray:
    sel = (values > (m - 1) / n_bins) & (values <= m / n_bins)
    return sel | (values == 0) if m == 1 else sel


# --------------------------------------------------------------------------------------------------------
# numpy references, each from its paper's formula
# --------------------------------------------------------------------------------------------------------


def numpy_ace(conf: np.ndarray, correct: np.ndarray, n_bins: int = M) -> float:
    """Equal-mass bins: numpy.array_split of the (stable) sorted order."""
    ece = 0.0
    for group in np.array_split(np.argsort(conf, kind="stable"), n_bins):
        if len(group):
            ece += len(group) / len(conf) * abs(correct[group].mean() - conf[group].mean())
    return ece


def numpy_sce(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = M) -> float:
    """Nixon et al. 2019: (1/K) Σ_k Σ_m |B_km|/n |acc_k − conf_k|."""
    p = softmax(logits.double().numpy(), axis=1)
    y = labels.numpy()
    n, k = p.shape
    total = 0.0
    for c in range(k):
        for m in range(1, n_bins + 1):
            sel = in_bin(p[:, c], m, n_bins)
            if sel.any():
                total += sel.sum() / n * abs((y[sel] == c).mean() - p[sel, c].mean())
    return total / k


def numpy_debiased(conf: np.ndarray, correct: np.ndarray, n_bins: int = M) -> float:
    """Kumar et al. 2019 (their `unbiased_l2_ce`): bins with < 2 examples contribute 0."""
    total = 0.0
    for m in range(1, n_bins + 1):
        sel = in_bin(conf, m, n_bins)
        size = sel.sum()
        if size >= 2:
            acc = correct[sel].mean()
            total += size / len(conf) * ((conf[sel].mean() - acc) ** 2 - acc * (1 - acc) / (size - 1))
    return math.sqrt(max(total, 0.0))


def numpy_smooth_ece_at(conf: np.ndarray, correct: np.ndarray, sigma: float, points: int = 4001) -> float:
    """∫_0^1 |(1/n) Σ_i K_σ(t, f_i) r_i| dt, K the Gaussian reflected at 0 and 1, by brute force."""
    t = np.linspace(0.0, 1.0, points)[:, None]
    f, r = conf[None, :], (conf - correct)[None, :]
    kernel = np.zeros((t.shape[0], f.shape[1]))
    for m in range(-2, 3):
        kernel += np.exp(-0.5 * ((t - f - 2 * m) / sigma) ** 2) + np.exp(-0.5 * ((t + f - 2 * m) / sigma) ** 2)
    kernel /= sigma * math.sqrt(2 * math.pi)
    return float(np.trapezoid(np.abs((kernel * r).mean(1)), t[:, 0]))


def numpy_smooth_ece(conf: np.ndarray, correct: np.ndarray) -> tuple[float, float]:
    sigma = brentq(lambda s: numpy_smooth_ece_at(conf, correct, s) - s, 1e-3, 1.0, xtol=1e-12)
    return numpy_smooth_ece_at(conf, correct, sigma), sigma


CASES = [(0, 10, 1.0), (1, 2, 2.0), (2, 100, 5.0), (3, 10, 8.0)]


@pytest.mark.parametrize(("seed", "k", "scale"), CASES)
def test_binned_family_matches_numpy(seed, k, scale):
    logits, labels = random_case(seed, 3000, k, scale)
    conf, correct = top_label(logits, labels)
    metrics = calibration_metrics(logits.float(), labels)
    conf32, correct32 = top_label(logits.float(), labels)  # same inputs for both sides
    assert metrics.value("ace") == pytest.approx(numpy_ace(conf32, correct32), abs=1e-12)
    assert metrics.value("sce") == pytest.approx(numpy_sce(logits.float(), labels), abs=1e-12)
    assert metrics.value("ece_l2_debiased") == pytest.approx(numpy_debiased(conf32, correct32), abs=1e-12)
    assert metrics.value("signed_ce") == pytest.approx(conf32.mean() - correct32.mean(), abs=1e-12)
    assert metrics.value("accuracy") == pytest.approx(correct32.mean(), abs=1e-15)
    # the one-metric functions are the same numbers
    assert adaptive_calibration_error(logits, labels) == pytest.approx(numpy_ace(conf, correct), abs=1e-12)
    assert classwise_calibration_error(logits, labels) == pytest.approx(numpy_sce(logits, labels), abs=1e-12)
    assert debiased_calibration_error(logits, labels) == pytest.approx(numpy_debiased(conf, correct), abs=1e-12)
    for norm, name in (("l1", "ece"), ("l2", "ece_l2"), ("max", "mce")):
        assert metrics.value(name) == pytest.approx(expected_calibration_error(logits.float(), labels, norm=norm),
                                                    abs=1e-12)


def test_inputs_are_not_modified():
    logits, labels = random_case(18, 300, 4, 2.0)
    before = logits.clone()
    for norm in ("l1", "l2", "max"):
        expected_calibration_error(logits, labels, norm=norm)
    calibration_metrics(logits, labels)
    assert torch.equal(logits, before)


def test_ace_with_fewer_examples_than_bins_and_uneven_split():
    logits, labels = random_case(4, 7, 3, 1.0)
    conf, correct = top_label(logits, labels)
    assert adaptive_calibration_error(logits, labels) == pytest.approx(numpy_ace(conf, correct), abs=1e-12)
    logits, labels = random_case(5, 1003, 3, 1.0)  # 1003 = 15 · 66 + 13: groups of 67 then 66
    conf, correct = top_label(logits, labels)
    assert adaptive_calibration_error(logits, labels, n_bins=15) == pytest.approx(numpy_ace(conf, correct), abs=1e-12)


@pytest.mark.parametrize(("seed", "k", "scale"), [(6, 10, 1.0), (7, 4, 3.0)])
def test_smooth_ece_matches_brute_force_kernel_sums(seed, k, scale):
    logits, labels = random_case(seed, 400, k, scale)
    conf, correct = top_label(logits, labels)
    value, sigma = smooth_calibration_error(logits, labels)
    ref_value, ref_sigma = numpy_smooth_ece(conf, correct)
    assert sigma == pytest.approx(ref_sigma, rel=2e-4)
    assert value == pytest.approx(ref_value, rel=2e-4)
    assert value == pytest.approx(sigma, rel=1e-9)  # the fixed point smECE_σ* = σ*
    assert calibration_metrics(logits, labels).value("smooth_ece") == pytest.approx(value, abs=1e-15)


def test_smooth_ece_matches_relplot():
    relplot = pytest.importorskip("relplot")
    for seed, scale in ((8, 1.0), (9, 0.7)):  # confidences spread over (0, 1), away from relplot's edge handling
        g = torch.Generator().manual_seed(seed)
        logits = 2 * scale * torch.randn(5000, 10, generator=g, dtype=torch.float64)
        labels = torch.multinomial(torch.softmax(logits / scale, 1), 1, generator=g).squeeze(1)
        f, y = relplot.multiclass_logits_to_confidences(logits.numpy(), labels.numpy())
        value, _ = smooth_calibration_error(logits, labels)
        # relplot finds the bandwidth by 10 bisection steps (resolution 1/1024) and integrates on 200 points
        assert value == pytest.approx(float(relplot.smECE(f, y)), abs=2e-3)
        from calibscope.diagnostics.calibration import _residual_spectrum, _smooth_ece_at, _splat

        conf, correct = torch.from_numpy(f), torch.from_numpy(y)
        spectrum = _residual_spectrum(_splat(conf, conf - correct, 4096)[None])
        for sigma in (0.02, 0.05, 0.1):
            ours = float(_smooth_ece_at(spectrum, float(len(f)), sigma, 4096))
            assert ours == pytest.approx(float(relplot.smECE_sigma(f, y, sigma)), rel=3e-3)


@pytest.mark.parametrize(("seed", "k", "scale"), [(10, 2, 1.0), (11, 10, 3.0), (12, 100, 6.0)])
def test_l1_l2_max_match_torchmetrics_away_from_edges(seed, k, scale):
    mc = pytest.importorskip("torchmetrics.functional.classification")
    logits, labels = random_case(seed, 4000, k, scale)
    probs = torch.softmax(logits, dim=1)
    distance = (probs.max(1).values[:, None] - torch.arange(M + 1, dtype=torch.float64) / M).abs().min(1).values
    keep = distance > 1e-5  # torchmetrics bins are left-closed and in float32: stay off the edges
    logits, labels, probs = logits[keep], labels[keep], probs[keep]
    metrics = calibration_metrics(logits, labels)
    for norm, name in (("l1", "ece"), ("l2", "ece_l2"), ("max", "mce")):
        theirs = mc.multiclass_calibration_error(probs, labels, num_classes=k, n_bins=M, norm=norm).item()
        assert metrics.value(name) == pytest.approx(theirs, abs=1e-6)


# --------------------------------------------------------------------------------------------------------
# mergeable statistics
# --------------------------------------------------------------------------------------------------------


def test_sums_of_batches_equal_one_shot():
    logits, labels = random_case(13, 2501, 7, 3.0)
    cuts = [0, 1, 400, 401, 1700, 2501]
    parts = [calibration_sums(logits[a:b], labels[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    merged, one = sum(parts), calibration_sums(logits, labels)
    assert isinstance(merged, CalibrationSums)
    for name in ("classwise_count", "classwise_sum_probability", "classwise_sum_label", "smooth_residual"):
        torch.testing.assert_close(getattr(merged, name), getattr(one, name), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.top.to_tensor(), one.top.to_tensor(), rtol=1e-12, atol=1e-12)
    assert merged.classwise_count.sum().item() == 2501 * 7


def test_chunked_computation_equals_one_chunk(monkeypatch):
    import calibscope.diagnostics.calibration as calibration

    logits, labels = random_case(19, 1200, 9, 3.0)
    whole = calibration_metrics(logits, labels)
    monkeypatch.setattr(calibration, "_SUMS_CHUNK_ELEMENTS", 9 * 97)  # 13 chunks, the last one short
    chunked = calibration_metrics(logits, labels)
    for name in ALL_METRICS:
        assert chunked.value(name) == pytest.approx(whole.value(name), abs=1e-13), name


# --------------------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------------------


def test_bootstrap_is_seeded_and_equals_numpy_quantiles_of_resampled_metrics():
    logits, labels = random_case(14, 600, 5, 2.0)
    a = calibration_metrics(logits, labels, bootstrap=200, seed=3, smooth_grid=512)  # coarse grid: quick
    # redo the resampling by hand from the same seed (so the interval is a function of the seed alone), with
    # the metrics from the one-metric functions
    g = torch.Generator().manual_seed(3)
    eces, accs = [], []
    for _ in range(200):
        index = torch.randint(0, 600, (600,), generator=g)
        eces.append(expected_calibration_error(logits[index], labels[index]))
        accs.append(float((logits[index].argmax(1) == labels[index]).double().mean()))
    interval = a["ece"].interval
    assert (interval.low, interval.high) == pytest.approx(tuple(np.quantile(eces, [0.025, 0.975])), abs=1e-12)
    assert interval.level == 0.95 and interval.replicates == 200 and interval.seed == 3
    acc = a["accuracy"]
    assert (acc.interval.low, acc.interval.high) == pytest.approx(tuple(np.quantile(accs, [0.025, 0.975])),
                                                                  abs=1e-12)
    # the binomial standard error: the percentile interval has about the normal width
    p = acc.value
    assert acc.interval.high - acc.interval.low == pytest.approx(2 * 1.96 * math.sqrt(p * (1 - p) / 600), rel=0.3)
    assert set(a.metrics) == set(ALL_METRICS) and all(m.interval is not None for m in a.metrics.values())


def test_each_bootstrap_replicate_is_the_metrics_of_its_resample(monkeypatch):
    """The batched replicates (blocks of several resamples at once) equal calibration_metrics of each
    resample, for every metric."""
    import calibscope.diagnostics.calibration as calibration

    logits, labels = random_case(20, 250, 6, 2.5)
    monkeypatch.setattr(calibration, "_BOOTSTRAP_BLOCK_ELEMENTS", 250 * 6 * 3)  # blocks of 3 replicates
    replicates = calibration._bootstrap_replicates(logits, labels, 15, 4096, 7, seed=5)
    g = torch.Generator().manual_seed(5)
    for b in range(7):
        index = torch.randint(0, 250, (250,), generator=g)
        expected = calibration_metrics(logits[index], labels[index])
        for name in ALL_METRICS:
            assert replicates[name][b].item() == pytest.approx(expected.value(name), rel=1e-10, abs=1e-13), (b, name)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"bootstrap": 50}, "at least 200"),
    ({"bootstrap": -1}, "at least 200"),
    ({"confidence_level": 1.0}, "confidence_level"),
    ({"seed": -2}, "seed"),
    ({"n_bins": 0}, "n_bins"),
    ({"smooth_grid": 4}, "smooth_grid"),
])
def test_bad_arguments(kwargs, match):
    logits, labels = random_case(0, 20, 3, 1.0)
    with pytest.raises(InputError, match=match):
        calibration_metrics(logits, labels, **kwargs)


def test_bad_values_through_the_fast_path():
    with pytest.raises(InputError, match="NaN"):
        expected_calibration_error(torch.tensor([[0.0, math.nan]]), torch.tensor([0]))
    with pytest.raises(InputError, match="NaN or \\+inf"):
        expected_calibration_error(torch.tensor([[0.0, math.inf]]), torch.tensor([0]))
    with pytest.raises(InputError, match="all -inf"):
        expected_calibration_error(torch.tensor([[-math.inf, -math.inf], [0.0, 1.0]]), torch.tensor([0, 0]))
    # -inf entries (log of probability 0) are fine: the same number as the full path (tested against numpy)
    from calibscope.diagnostics.calibration import calibration_report

    logits = torch.tensor([[0.0, -math.inf, 2.0], [1.0, 0.5, -math.inf], [0.0, 0.1, 0.2]])
    labels = torch.tensor([2, 1, 0])
    assert expected_calibration_error(logits, labels) == pytest.approx(calibration_report(logits, labels).ece,
                                                                       abs=1e-15)


# --------------------------------------------------------------------------------------------------------
# definitions and warnings
# --------------------------------------------------------------------------------------------------------


def test_every_metric_carries_its_definition():
    logits, labels = random_case(15, 500, 4, 2.0)
    metrics = calibration_metrics(logits, labels, n_bins=10)
    for name in ALL_METRICS:
        d = metrics[name].definition
        assert d["n"] == 500 and "calibration" in d or name in ("nll", "brier", "accuracy"), (name, d)
        assert "formula" in d, name
    assert metrics["ece"].definition["norm"] == "l1" and metrics["ece_l2"].definition["norm"] == "l2"
    assert metrics["mce"].definition["norm"] == "max"
    assert metrics["ece_l2_debiased"].definition["debiased"] is True and "Kumar" in \
        metrics["ece_l2_debiased"].definition["reference"]
    assert metrics["ece"].definition["debiased"] is False and metrics["ece"].definition["n_bins"] == 10
    assert metrics["ace"].definition["binning"] == "equal-mass"
    assert metrics["sce"].definition["calibration"] == "classwise" and metrics["sce"].definition["num_classes"] == 4
    assert metrics["smooth_ece"].definition["bandwidth_value"] == pytest.approx(metrics.value("smooth_ece"))
    assert "right-closed" in metrics["ece"].definition["edges"]


def test_small_bins_warn():
    logits, labels = random_case(16, 300, 10, 1.0)
    metrics = calibration_metrics(logits, labels)
    assert metrics.warnings and "fewer than 20 examples" in metrics.warnings[0]
    assert not calibration_metrics(logits, labels, n_bins=1).warnings


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    logits, labels = random_case(17, 20000, 100, 5.0)
    cpu = calibration_metrics(logits.float(), labels, bootstrap=200)
    gpu = calibration_metrics(logits.float().cuda(), labels.cuda(), bootstrap=200)
    for name in ALL_METRICS:
        assert gpu.value(name) == pytest.approx(cpu.value(name), abs=1e-10), name
