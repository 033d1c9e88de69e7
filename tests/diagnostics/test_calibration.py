"""calibscope.diagnostics.calibration against independent references: a float64 numpy implementation written
here (loop over bins, scipy softmax), torchmetrics, and torch's cross-entropy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import softmax

from calibscope.diagnostics import (
    CalibrationStats,
    calibration_report,
    calibration_stats,
    confidence_bins,
    expected_calibration_error,
    summarize,
)
from calibscope.errors import InputError

M = 15


# --------------------------------------------------------------------------------------------------------
# the reference: Guo et al. 2017, right-closed bins, written as plainly as possible in float64 numpy
# --------------------------------------------------------------------------------------------------------


def numpy_bins(conf: np.ndarray, correct: np.ndarray, n_bins: int = M) -> dict[str, np.ndarray]:
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    count, mean_conf, acc = np.zeros(n_bins), np.full(n_bins, np.nan), np.full(n_bins, np.nan)
    for m in range(1, n_bins + 1):
        lo, hi = (m - 1) / n_bins, m / n_bins
        mask = (conf > lo) & (conf <= hi)
        if m == 1:
            mask |= conf == 0
        count[m - 1] = mask.sum()
        if mask.any():
            mean_conf[m - 1] = conf[mask].mean()
            acc[m - 1] = correct[mask].mean()
    n = len(conf)
    full = count > 0
    gap = np.abs(acc[full] - mean_conf[full])
    return {
        "count": count,
        "mean_confidence": mean_conf,
        "accuracy": acc,
        "l1": float(np.sum(count[full] / n * gap)),
        "l2": float(np.sqrt(np.sum(count[full] / n * gap**2))),
        "max": float(np.max(gap)),
    }


def numpy_reference(logits: np.ndarray, labels: np.ndarray, n_bins: int = M) -> dict:
    p = softmax(np.asarray(logits, dtype=np.float64), axis=1)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    correct = pred == labels
    out = numpy_bins(conf, correct, n_bins)
    onehot = np.eye(p.shape[1])[labels]
    out["accuracy_all"] = float(correct.mean())
    out["mean_confidence_all"] = float(conf.mean())
    out["brier"] = float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    out["nll"] = float(np.mean(-np.log(p[np.arange(len(labels)), labels])))
    return out


def random_case(seed: int, n: int, k: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, k, generator=g, dtype=torch.float64)
    # labels agree with the argmax about 70 % of the time, so bins hold a mix of right and wrong
    labels = torch.where(torch.rand(n, generator=g) < 0.7, logits.argmax(1), torch.randint(0, k, (n,), generator=g))
    return logits, labels


CASES = [
    (seed, k, scale)
    for seed in (0, 1, 2)
    for k in (2, 10, 100)
    for scale in (1.0, 8.0)  # 8x: temperature-sharpened, many confidences near 1
]


def assert_close_nan(actual, expected, tol=1e-12):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual[~np.isnan(actual)], expected[~np.isnan(expected)], rtol=0, atol=tol)


# --------------------------------------------------------------------------------------------------------
# (a) random logits vs numpy
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "k", "scale"), CASES)
def test_matches_numpy_reference(seed, k, scale):
    logits, labels = random_case(seed, 3000, k, scale)
    ref = numpy_reference(logits.numpy(), labels.numpy())
    for dtype in (torch.float64, torch.float32):
        z = logits.to(dtype)
        if dtype == torch.float32:  # same inputs for both sides: compare against float32-rounded logits
            ref = numpy_reference(z.numpy(), labels.numpy())
        report = calibration_report(z, labels, n_bins=M)
        assert report.ece == pytest.approx(ref["l1"], abs=1e-12)
        assert report.mce == pytest.approx(ref["max"], abs=1e-12)
        assert expected_calibration_error(z, labels, norm="l1") == pytest.approx(ref["l1"], abs=1e-12)
        assert expected_calibration_error(z, labels, norm="l2") == pytest.approx(ref["l2"], abs=1e-12)
        assert expected_calibration_error(z, labels, norm="max") == pytest.approx(ref["max"], abs=1e-12)
        np.testing.assert_array_equal(report.bins.count, ref["count"])
        assert_close_nan(report.bins.mean_confidence, ref["mean_confidence"])
        assert_close_nan(report.bins.accuracy, ref["accuracy"])
        assert_close_nan(report.bins.gap, ref["mean_confidence"] - ref["accuracy"])
        assert report.accuracy == pytest.approx(ref["accuracy_all"], abs=1e-12)
        assert report.mean_confidence == pytest.approx(ref["mean_confidence_all"], abs=1e-12)
        assert report.n == 3000 and report.num_classes == k and report.n_bins == M


def test_cache_sized_blocks_equal_numpy_with_ties(monkeypatch):
    """The CPU path works block by block in a reused float64 buffer: many short blocks (the last one short),
    rows with tied maxima (the first argmax wins, as in numpy) and -inf entries give the numpy values."""
    from calibscope.diagnostics import _top_label

    logits, labels = random_case(5, 1001, 10, 4.0)
    z = logits.to(torch.float32)
    z[::7, 3] = z[::7].max(1).values  # ties: the first maximum decides the prediction
    z[::11, 5] = -math.inf
    labels[::7] = 3
    monkeypatch.setattr(_top_label, "_CPU_BLOCK_ELEMENTS", 13 * 10)
    monkeypatch.setattr(_top_label, "_CPU_THREADED_BLOCK_ELEMENTS", 13 * 10)
    ref = numpy_reference(z.numpy(), labels.numpy())
    for norm in ("l1", "l2", "max"):
        assert expected_calibration_error(z, labels, norm=norm) == pytest.approx(ref[norm], abs=1e-12)


def test_sharpened_logits_fill_the_top_bin():
    logits, labels = random_case(3, 2000, 10, 30.0)
    report = calibration_report(logits, labels)
    assert report.bins.count[-1] > 1500  # the regime the reference comparison must also cover
    ref = numpy_reference(logits.numpy(), labels.numpy())
    assert report.ece == pytest.approx(ref["l1"], abs=1e-12)


def test_other_bin_counts_and_edges():
    logits, labels = random_case(5, 1000, 10, 2.0)
    for n_bins in (1, 2, 7, 10, 100):
        ref = numpy_reference(logits.numpy(), labels.numpy(), n_bins)
        report = calibration_report(logits, labels, n_bins=n_bins)
        assert report.ece == pytest.approx(ref["l1"], abs=1e-12)
        assert report.bins.lower[0] == 0.0 and report.bins.upper[-1] == 1.0
        assert report.bins.upper == tuple(m / n_bins for m in range(1, n_bins + 1))
        assert report.definition["n_bins"] == n_bins


def test_definition_describes_the_binning():
    report = calibration_report(*random_case(0, 100, 3, 1.0))
    d = report.definition
    assert d["binning"] == "equal-width" and d["norm"] == "l1" and d["debiased"] is False
    assert d["calibration"] == "top-label" and "right-closed" in d["edges"]


# --------------------------------------------------------------------------------------------------------
# (b) confidences exactly on the edges, 0 and 1
# --------------------------------------------------------------------------------------------------------


def test_edges_zero_and_one_exact():
    edges = [k / 15 for k in range(16)]  # k/15 in float64, 0.0 and 1.0 included
    rng = np.random.default_rng(0)
    conf = np.array(edges * 4 + [1.0] * 5 + [0.0] * 3, dtype=np.float64)
    correct = rng.random(conf.shape[0]) < 0.6
    ref = numpy_bins(conf, correct)
    bins = confidence_bins(torch.from_numpy(conf), torch.from_numpy(correct), n_bins=15)
    np.testing.assert_array_equal(bins.count.numpy(), ref["count"])
    assert_close_nan(bins.mean_confidence.numpy(), ref["mean_confidence"])
    assert_close_nan(bins.accuracy.numpy(), ref["accuracy"])
    for norm in ("l1", "l2", "max"):
        assert bins.calibration_error(norm) == pytest.approx(ref[norm], abs=1e-12)
    # right-closed: m/15 sits in bin m (index m-1); 0 joins the first bin; 1.0 is in the last bin
    assert bins.count[0].item() == 4 * 2 + 3  # 0.0 and 1/15, four times each, plus three extra zeros
    assert bins.count[-1].item() == 4 + 5
    assert bins.count.sum().item() == conf.shape[0]


def test_confidence_bins_accepts_01_integers_and_empty_bins_are_nan():
    bins = confidence_bins(torch.tensor([0.95, 0.97], dtype=torch.float64), torch.tensor([1, 0]), n_bins=10)
    assert bins.count.tolist() == [0] * 9 + [2]
    assert math.isnan(bins.accuracy[0].item())
    assert bins.accuracy[-1].item() == 0.5


# --------------------------------------------------------------------------------------------------------
# (c) torchmetrics, away from the edges
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "k", "scale"), [(0, 2, 1.0), (1, 10, 3.0), (2, 100, 8.0), (3, 10, 1.0)])
@pytest.mark.parametrize("norm", ["l1", "max"])
def test_matches_torchmetrics_away_from_edges(seed, k, scale, norm):
    mc = pytest.importorskip("torchmetrics.functional.classification")
    logits, labels = random_case(seed, 4000, k, scale)
    probs = torch.softmax(logits, dim=1)
    conf = probs.max(1).values
    distance = (conf[:, None] - torch.arange(16, dtype=torch.float64) / 15).abs().min(1).values
    keep = distance > 1e-5  # torchmetrics works in float32 and bins left-closed: stay off the edges
    logits, labels, probs = logits[keep], labels[keep], probs[keep]
    assert keep.sum() > 3500
    expected = mc.multiclass_calibration_error(probs, labels, num_classes=k, n_bins=15, norm=norm).item()
    assert expected_calibration_error(logits, labels, n_bins=15, norm=norm) == pytest.approx(expected, abs=1e-6)


def test_differs_from_torchmetrics_on_an_edge():
    """The documented difference: torchmetrics puts conf == m/M in the bin above (left-closed) and gives 1.0 a
    bin of its own; calibscope, like Guo's code, puts m/M in the bin below and 1.0 in the last bin."""
    mc = pytest.importorskip("torchmetrics.functional.classification")
    # conf 12/15 = 0.8 (wrong) and 0.85 (right): separate bins here, the same bin in torchmetrics
    ours = confidence_bins(torch.tensor([12 / 15, 0.85], dtype=torch.float64), torch.tensor([0, 1]), n_bins=15)
    assert ours.count[11].item() == 1 and ours.count[12].item() == 1
    assert ours.calibration_error("l1") == pytest.approx(0.5 * 0.8 + 0.5 * 0.15, abs=1e-12)
    probs = torch.tensor([[0.8, 0.2], [0.85, 0.15]], dtype=torch.float64)
    theirs = mc.multiclass_calibration_error(probs, torch.tensor([1, 0]), num_classes=2, n_bins=15).item()
    assert theirs == pytest.approx(abs(0.5 - 0.825), abs=1e-6)
    # conf 0.95 (right) and 1.0 (wrong): one bin here, two bins in torchmetrics
    logits = torch.tensor([[math.log(19.0), 0.0], [50.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    assert expected_calibration_error(logits, labels) == pytest.approx(abs(0.5 - 0.975), abs=1e-12)
    theirs = mc.multiclass_calibration_error(torch.softmax(logits, 1), labels, num_classes=2, n_bins=15).item()
    assert theirs == pytest.approx(0.5 * 0.05 + 0.5 * 1.0, abs=1e-6)


# --------------------------------------------------------------------------------------------------------
# (d) NLL and Brier
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "k", "scale"), [(0, 2, 1.0), (1, 10, 8.0), (2, 100, 3.0)])
def test_nll_and_brier(seed, k, scale):
    logits, labels = random_case(seed, 2000, k, scale)
    report = calibration_report(logits.float(), labels)
    nll = torch.nn.functional.cross_entropy(logits.float().double(), labels).item()
    assert report.nll == pytest.approx(nll, abs=1e-12)
    ref = numpy_reference(logits.float().numpy(), labels.numpy())
    assert report.brier == pytest.approx(ref["brier"], abs=1e-12)
    assert report.nll == pytest.approx(ref["nll"], abs=1e-12)


def test_neg_inf_logits_are_log_of_zero_probability():
    logits = torch.tensor([[0.0, -math.inf, 1.0], [2.0, 0.0, -math.inf]])
    report = calibration_report(logits, torch.tensor([2, 0]))
    ref = numpy_reference(logits.numpy(), np.array([2, 0]))
    assert report.nll == pytest.approx(ref["nll"], abs=1e-12)
    assert report.brier == pytest.approx(ref["brier"], abs=1e-12)
    assert math.isinf(calibration_report(logits, torch.tensor([1, 0])).nll)


# --------------------------------------------------------------------------------------------------------
# (e) streaming / distributed merge
# --------------------------------------------------------------------------------------------------------


def test_merged_batches_equal_one_shot():
    logits, labels = random_case(7, 5003, 10, 4.0)
    cuts = [0, 1, 17, 400, 401, 2000, 3999, 5003]  # 7 uneven batches, one of size 1
    parts = [calibration_stats(logits[a:b], labels[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    merged = sum(parts)
    one_shot = calibration_stats(logits, labels)
    for name in ("count", "sum_confidence", "sum_correct", "n", "n_correct", "sum_nll", "sum_brier"):
        torch.testing.assert_close(getattr(merged, name), getattr(one_shot, name), rtol=1e-12, atol=1e-12)
    a, b = summarize(merged), calibration_report(logits, labels)
    for field in ("n", "accuracy", "mean_confidence", "ece", "mce", "nll", "brier"):
        assert getattr(a, field) == pytest.approx(getattr(b, field), abs=1e-12)
    assert a.bins.count == b.bins.count
    # merge(), +, and an empty identity agree
    also = parts[0].merge(parts[1]) + CalibrationStats.empty(n_bins=15, num_classes=10)
    torch.testing.assert_close(also.to_tensor(), (parts[0] + parts[1]).to_tensor(), rtol=0, atol=0)
    # an empty batch (e.g. an empty rank shard) is the identity too
    empty = calibration_stats(logits[:0], labels[:0])
    torch.testing.assert_close((empty + one_shot).to_tensor(), one_shot.to_tensor(), rtol=0, atol=0)


def test_to_tensor_round_trip():
    stats = calibration_stats(*random_case(8, 300, 5, 2.0), n_bins=12)
    vector = stats.to_tensor()
    assert vector.dtype == torch.float64 and vector.shape == (3 * 12 + 4,)
    back = CalibrationStats.from_tensor(vector, num_classes=5)
    assert back.n_bins == 12 and back.num_classes == 5
    torch.testing.assert_close(back.to_tensor(), vector, rtol=0, atol=0)
    # all_reduce(SUM) of two ranks == merge
    torch.testing.assert_close(
        CalibrationStats.from_tensor(vector + vector, num_classes=5).to_tensor(), (stats + stats).to_tensor()
    )
    with pytest.raises(InputError, match="3 \\* n_bins \\+ 4"):
        CalibrationStats.from_tensor(vector[:-1], num_classes=5)


def test_merge_refuses_mismatched_statistics():
    a = calibration_stats(*random_case(0, 10, 3, 1.0), n_bins=15)
    with pytest.raises(InputError, match="same `n_bins`"):
        a + calibration_stats(*random_case(0, 10, 3, 1.0), n_bins=10)
    with pytest.raises(InputError, match="num_classes"):
        a + calibration_stats(*random_case(0, 10, 4, 1.0), n_bins=15)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    logits, labels = random_case(9, 20000, 100, 5.0)
    cpu = calibration_report(logits.float(), labels)
    stats = calibration_stats(logits.float().cuda(), labels.cuda())
    assert stats.count.device.type == "cuda"
    gpu = summarize(stats)
    for field in ("accuracy", "ece", "mce", "nll", "brier"):
        assert getattr(gpu, field) == pytest.approx(getattr(cpu, field), abs=1e-12)
    assert gpu.bins.count == cpu.bins.count


# --------------------------------------------------------------------------------------------------------
# (f) validation
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_bins", [0, -3, 1.5, "15", True, None])
def test_bad_n_bins(n_bins):
    logits, labels = random_case(0, 10, 3, 1.0)
    with pytest.raises(InputError, match="Expected argument `n_bins` to be an integer larger than 0, but got"):
        expected_calibration_error(logits, labels, n_bins=n_bins)


def test_n_bins_message_is_torchmetrics_style():
    with pytest.raises(InputError) as info:
        calibration_stats(*random_case(0, 10, 3, 1.0), n_bins=0)
    assert str(info.value) == "Expected argument `n_bins` to be an integer larger than 0, but got 0"


def test_numpy_integer_n_bins_is_fine():
    logits, labels = random_case(0, 10, 3, 1.0)
    assert calibration_report(logits, labels, n_bins=np.int64(10)).n_bins == 10


@pytest.mark.parametrize(
    ("logits", "labels", "match"),
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), r"shape \[N, K\]"),
        (torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), "at least 2 classes"),
        (torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long), "floating point"),
        ([[0.0, 1.0]], torch.zeros(1, dtype=torch.long), "torch.Tensor"),
        (torch.zeros(4, 3), torch.zeros(4), "integer tensor"),
        (torch.zeros(4, 3), torch.zeros(4, dtype=torch.bool), "integer tensor"),
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), "4 entries"),
        (torch.zeros(4, 3), torch.zeros(4, 1, dtype=torch.long), r"shape \[N\]"),
        (torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]), r"in \[0, 3\)"),
        (torch.zeros(4, 3), torch.tensor([0, -1, 2, 1]), r"in \[0, 3\)"),
        (torch.tensor([[0.0, float("nan")]]), torch.tensor([0]), "NaN"),
        (torch.tensor([[0.0, math.inf]]), torch.tensor([0]), r"\+inf"),
        (torch.tensor([[-math.inf, -math.inf]]), torch.tensor([0]), "all -inf"),
    ],
)
def test_bad_logits_or_labels(logits, labels, match):
    with pytest.raises(InputError, match=match):
        calibration_stats(logits, labels)


def test_bad_norm_and_empty_input():
    logits, labels = random_case(0, 10, 3, 1.0)
    with pytest.raises(InputError, match="Expected argument `norm` to be one of"):
        expected_calibration_error(logits, labels, norm="l3")
    with pytest.raises(InputError, match="at least one example"):
        expected_calibration_error(logits[:0], labels[:0])
    with pytest.raises(InputError, match="at least one example"):
        summarize(calibration_stats(logits[:0], labels[:0]))


def test_bad_confidences():
    with pytest.raises(InputError, match=r"lie in \[0, 1\]"):
        confidence_bins(torch.tensor([0.5, 1.5]), torch.tensor([1, 0]), n_bins=15)
    with pytest.raises(InputError, match=r"lie in \[0, 1\]"):
        confidence_bins(torch.tensor([0.5, float("nan")]), torch.tensor([1, 0]), n_bins=15)
    with pytest.raises(InputError, match="0/1"):
        confidence_bins(torch.tensor([0.5, 0.7]), torch.tensor([2, 0]), n_bins=15)
    with pytest.raises(InputError, match=r"shape \[2\]"):
        confidence_bins(torch.tensor([0.5, 0.7]), torch.tensor([1]), n_bins=15)
    with pytest.raises(InputError, match="n_bins"):
        confidence_bins(torch.tensor([0.5]), torch.tensor([1]), n_bins=0)


def test_input_error_is_a_value_error():
    with pytest.raises(ValueError):
        expected_calibration_error(torch.zeros(2, 3), torch.tensor([0, 5]))
