"""calibscope.diagnostics.temperature against independent references: scipy's bounded scalar minimisation of a
numpy NLL over log T, a numpy gradient from the formula, a numpy ECE on a fine grid; degenerate inputs; and
the shipped sample checkpoints (fit on the validation split, apply to the test split)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp, softmax

from calibscope.diagnostics.temperature import (
    _moments,
    _shifted_moments,
    apply_temperature,
    fit_temperature,
    sweep_temperatures,
    temperature_sweep,
)
from calibscope.errors import InputError

# --------------------------------------------------------------------------------------------------------
# references, written from the formulas with numpy / scipy only
# --------------------------------------------------------------------------------------------------------


def numpy_nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    s = np.asarray(z, dtype=np.float64) / t
    return float(np.mean(logsumexp(s, axis=1) - s[np.arange(len(y)), y]))


def numpy_gradient(z: np.ndarray, y: np.ndarray, beta: float) -> float:
    """dNLL/dβ = mean_i (E_softmax(βz_i)[z_i] − z_iy)."""
    z = np.asarray(z, dtype=np.float64)
    p = softmax(beta * z, axis=1)
    return float(np.mean((p * z).sum(1) - z[np.arange(len(y)), y]))


def scipy_temperature(z: np.ndarray, y: np.ndarray) -> float:
    result = minimize_scalar(lambda u: numpy_nll(z, y, math.exp(u)), bounds=(math.log(1e-3), math.log(1e3)),
                             method="bounded", options={"xatol": 1e-12, "maxiter": 500})
    assert result.success
    return math.exp(result.x)


def numpy_ece(z: np.ndarray, y: np.ndarray, t: float, n_bins: int = 15) -> float:
    p = softmax(np.asarray(z, dtype=np.float64) / t, axis=1)
    conf, correct = p.max(1), (p.argmax(1) == y).astype(np.float64)
    ece = 0.0
    for m in range(1, n_bins + 1):
        sel = (conf > (m - 1) / n_bins) & (conf <= m / n_bins)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return ece


def calibrated_case(seed: int, n: int, k: int, spread: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from their own softmax: calibrated at T = 1 in expectation."""
    g = torch.Generator().manual_seed(seed)
    z = spread * torch.randn(n, k, generator=g, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return z, y


CASES = {
    "random": (0, 4000, 10, 1.0),
    "over-confident": (1, 4000, 10, 3.0),  # logits ×3: optimum T ≈ 3
    "under-confident": (2, 4000, 10, 0.3),  # logits ×0.3: optimum T ≈ 0.3 < 1
    "two classes": (3, 4000, 2, 2.0),
    "100 classes": (4, 3000, 100, 5.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_nll_optimum_matches_scipy(case):
    seed, n, k, factor = CASES[case]
    z, y = calibrated_case(seed, n, k)
    z = factor * z
    fit = fit_temperature(z, y)
    reference = scipy_temperature(z.numpy(), y.numpy())
    assert fit.temperature == pytest.approx(reference, rel=1e-6)
    if case == "under-confident":
        assert fit.temperature < 1
    if case == "over-confident":
        assert fit.temperature > 2
    # the exact optimum: the gradient from the formula vanishes there, to the stated tolerance
    assert fit.converged and fit.stop_reason in ("gradient", "bracket")
    assert abs(numpy_gradient(z.numpy(), y.numpy(), 1 / fit.temperature)) <= 1e-9 * fit.scale
    assert fit.value == pytest.approx(numpy_nll(z.numpy(), y.numpy(), fit.temperature), abs=1e-12)
    assert fit.value <= numpy_nll(z.numpy(), y.numpy(), reference) + 1e-13
    assert fit.n_passes <= 12, fit.trace  # a handful of passes
    assert fit.beta == pytest.approx(1 / fit.temperature, rel=1e-15)


def test_inputs_are_not_modified():
    z, y = calibrated_case(13, 500, 5)
    before = z.clone()
    fit_temperature(z, y)
    fit_temperature(z, y, objective="ece")
    temperature_sweep(z, y, temperatures=(0.5, 2.0))
    assert torch.equal(z, before)


def test_float32_and_chunked_give_the_same_optimum():
    z, y = calibrated_case(5, 3000, 10)
    z32 = (2.5 * z).float()
    reference = scipy_temperature(z32.double().numpy(), y.numpy())
    for chunk_rows in (None, 7, 1000):
        fit = fit_temperature(z32, y, chunk_rows=chunk_rows)
        assert fit.temperature == pytest.approx(reference, rel=1e-6)


def test_large_n_uses_a_warm_start_and_stays_exact():
    z, y = calibrated_case(6, 300_000, 3, spread=1.5)
    z = (1.7 * z).float()
    fit = fit_temperature(z, y)
    assert fit.warm_start_rows > 0 and fit.n_passes <= 7
    assert abs(numpy_gradient(z.double().numpy(), y.numpy(), fit.beta)) <= 1e-9 * fit.scale
    assert fit.temperature == pytest.approx(scipy_temperature(z.double().numpy(), y.numpy()), rel=1e-6)


def test_negative_infinite_logits_are_probability_zero():
    z, y = calibrated_case(7, 2000, 5)
    z = 2 * z
    z[::3, 0] = -math.inf
    y = torch.where(y == 0, torch.ones_like(y), y)  # the true class never has probability 0
    fit = fit_temperature(z, y)
    finite = z.clone()
    finite[::3, 0] = -1e4  # probability exp(-1e4 / T) = 0 at every T scipy tries
    assert fit.temperature == pytest.approx(scipy_temperature(finite.numpy(), y.numpy()), rel=1e-6)


def test_fused_and_shifted_moments_agree():
    z, _ = calibrated_case(8, 500, 7)
    zmax = z.max(1).values
    beta = torch.tensor(0.7, dtype=torch.float64)
    torch.testing.assert_close(_moments(z.float(), zmax.float().double(), beta),
                               _shifted_moments(z.float().double() - zmax.float().double()[:, None], beta),
                               rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------------
# degenerate inputs: a clear message, no hang, no NaN
# --------------------------------------------------------------------------------------------------------


def test_all_correct_with_huge_margins():
    y = torch.arange(50) % 4
    z = torch.full((50, 4), -30.0)
    z[torch.arange(50), y] = 30.0
    with pytest.raises(InputError, match="largest logit in every one of the 50 examples.*T → 0"):
        fit_temperature(z, y)


def test_single_class_column():
    with pytest.raises(InputError, match="at least 2 classes"):
        fit_temperature(torch.zeros(10, 1), torch.zeros(10, dtype=torch.int64))


def test_constant_rows():
    with pytest.raises(InputError, match="equal within every row"):
        fit_temperature(torch.ones(20, 3), torch.arange(20) % 3)


def test_labels_against_the_logits():
    z, y = calibrated_case(9, 500, 5)
    worst = z.argmin(1)  # the true class always has the lowest logit
    with pytest.raises(InputError, match="T → ∞"):
        fit_temperature(z, worst)


def test_errors_only_at_ties_do_not_hang():
    z = torch.tensor([[5.0, 0.0], [3.0, 3.0], [0.0, 4.0]])
    y = torch.tensor([0, 1, 1])  # row 1: a tie, which argmax resolves to class 0 (wrong)
    with pytest.raises(InputError, match="ties included.*T → 0"):
        fit_temperature(z, y)


def test_minus_infinity_true_class_and_nan():
    z = torch.tensor([[0.0, -math.inf], [1.0, 0.0]])
    with pytest.raises(InputError, match="infinite at every temperature"):
        fit_temperature(z, torch.tensor([1, 1]))
    with pytest.raises(InputError, match="NaN"):
        fit_temperature(torch.tensor([[0.0, math.nan], [1.0, 0.0]]), torch.tensor([0, 1]))
    with pytest.raises(InputError, match="at least one example"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "2"])
def test_apply_temperature_refuses_bad_t(bad):
    with pytest.raises(InputError, match="temperature"):
        apply_temperature(torch.zeros(2, 3), bad)


def test_apply_temperature_divides():
    z = torch.tensor([[2.0, -1.0]], dtype=torch.float32)
    out = apply_temperature(z, 4.0)
    assert out.dtype == torch.float32 and out.tolist() == [[0.5, -0.25]]


def test_bad_arguments():
    z, y = calibrated_case(0, 10, 3)
    with pytest.raises(InputError, match="objective"):
        fit_temperature(z, y, objective="brier")
    with pytest.raises(InputError, match="tol"):
        fit_temperature(z, y, tol=0)
    with pytest.raises(InputError, match="bounds"):
        fit_temperature(z, y, objective="ece", bounds=(2.0, 1.0))


# --------------------------------------------------------------------------------------------------------
# the ECE objective and the sweep
# --------------------------------------------------------------------------------------------------------


def test_ece_objective_against_a_fine_numpy_grid():
    z, y = calibrated_case(10, 3000, 10)
    z = 2 * z
    fit = fit_temperature(z, y, objective="ece")
    assert fit.objective == "ece" and fit.converged
    assert fit.value == pytest.approx(numpy_ece(z.numpy(), y.numpy(), fit.temperature), abs=1e-12)
    grid = np.exp(np.linspace(math.log(0.05), math.log(20), 1500))
    brute = min(numpy_ece(z.numpy(), y.numpy(), t) for t in grid[(grid > 1) & (grid < 4)])
    assert fit.value <= brute + 2e-3  # a local search on a piecewise-smooth function: close to the best
    coarse = temperature_sweep(z, y)
    assert fit.value <= min(coarse.ece) + 1e-15


def test_sweep_matches_numpy():
    z, y = calibrated_case(11, 800, 6)
    grid = (0.05, 0.5, 1.0, 2.0, 20.0)
    sweep = temperature_sweep(z, y, temperatures=grid, n_bins=10)
    for t, nll, ece in zip(grid, sweep.nll, sweep.ece, strict=True):
        assert nll == pytest.approx(numpy_nll(z.numpy(), y.numpy(), t), abs=1e-12)
        assert ece == pytest.approx(numpy_ece(z.numpy(), y.numpy(), t, 10), abs=1e-12)
    assert sweep.accuracy == pytest.approx(float((z.argmax(1) == y).double().mean()), abs=0)
    default = sweep_temperatures()
    assert len(default) == 121 and default[0] == pytest.approx(0.05) and default[-1] == pytest.approx(20)


# --------------------------------------------------------------------------------------------------------
# the shipped sample checkpoints: fit on validation, apply to test
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_outputs(samples):
    from calibscope.inference.pipeline import compute_outputs
    from calibscope.loading.checkpoint import load_checkpoint
    from calibscope.loading.dataset import load_dataset

    val, test = load_dataset(samples / "digits_val.npz"), load_dataset(samples / "digits_test.npz")
    out = {}
    for name in ("digits_hard", "digits_ls", "digits_sam"):
        ckpt = load_checkpoint(samples / f"{name}.pt2")
        out[name] = (compute_outputs(ckpt, val, use_cache=False), compute_outputs(ckpt, test, use_cache=False))
    return out


@pytest.mark.parametrize("name", ["digits_hard", "digits_ls", "digits_sam"])
def test_samples_temperature_from_validation_lowers_test_ece(sample_outputs, name):
    from calibscope.diagnostics.calibration import expected_calibration_error

    val, test = sample_outputs[name]
    fit = fit_temperature(val.logits, val.labels)
    assert fit.temperature == pytest.approx(scipy_temperature(val.logits.double().numpy(), val.labels.numpy()),
                                            rel=1e-6)
    before = expected_calibration_error(test.logits, test.labels)
    after = expected_calibration_error(apply_temperature(test.logits, fit.temperature), test.labels)
    assert after < before, (name, fit.temperature, before, after)
    if name == "digits_ls":  # label smoothing made this model under-confident on easy data
        assert fit.temperature < 1
    else:
        assert fit.temperature > 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    z, y = calibrated_case(12, 20000, 100)
    cpu = fit_temperature((2 * z).float(), y)
    gpu = fit_temperature((2 * z).float().cuda(), y.cuda())
    assert gpu.temperature == pytest.approx(cpu.temperature, rel=1e-9)
