"""Each calibrator against an independent reference: scikit-learn (multinomial and binary logistic regression,
IsotonicRegression), betacal (beta calibration), scipy's optimum of a numpy re-implementation of the objective
(vector scaling, ODIR), and numpy bin means (histogram binning)."""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
import torch

from calibscope.diagnostics.calibrators import (
    PROBABILITY_FLOOR,
    apply_calibrator,
    calibrator_from_dict,
    calibrator_to_dict,
    fit_calibrator,
)
from calibscope.errors import InputError


def _need(module: str):
    """The module; a skip only where it is absent and CI is unset (CI installs the test extras)."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


@pytest.fixture(scope="module")
def data():
    """Over-confident 4-class logits with a class-dependent bias: fit and held-out halves."""
    g = torch.Generator().manual_seed(0)
    z = 1.5 * torch.randn(1200, 4, generator=g, dtype=torch.float64)
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    z = 3 * z + torch.tensor([0.5, 0.0, -0.5, 0.2], dtype=torch.float64)
    return z[:800], y[:800], z[800:], y[800:]


_FITTED: dict = {}


def _fitted(data, method):
    """One default fit per method for the tests that only use it."""
    if method not in _FITTED:
        _FITTED[method] = fit_calibrator(data[0], data[1], method=method)
    return _FITTED[method]


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _nll(z, y):
    z = z - z.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))


def _probs(cal, z):
    return apply_calibrator(cal, z).softmax(1).numpy()


def test_temperature_is_the_scipy_optimum(data):
    from scipy.optimize import minimize_scalar

    z, y, _, _ = data
    cal = fit_calibrator(z, y, method="temperature")
    ref = minimize_scalar(lambda t: _nll(z.numpy() / t, y.numpy()), bounds=(0.1, 20), method="bounded",
                          options={"xatol": 1e-10})
    assert float(cal.parameters["temperature"]) == pytest.approx(ref.x, rel=1e-6)
    assert cal.fit["nll_after"] == pytest.approx(ref.fun, abs=1e-12)


def test_vector_scaling_is_the_scipy_optimum_of_a_numpy_objective(data):
    from scipy.optimize import minimize

    z, y, _, _ = data
    zn, yn = z.numpy(), y.numpy()
    cal = fit_calibrator(z, y, method="vector")
    ref = minimize(lambda t: _nll(zn * t[:4] + t[4:], yn), np.r_[np.ones(4), np.zeros(4)], method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 40000, "maxfev": 40000})
    assert cal.fit["converged"]
    assert cal.fit["nll_after"] <= ref.fun + 1e-10
    # the NLL is invariant to b + c: compare the identifiable part
    w = cal.parameters["w"].numpy()
    b = cal.parameters["b"].numpy()
    np.testing.assert_allclose(w, ref.x[:4], atol=1e-4)
    np.testing.assert_allclose(b - b.mean(), ref.x[4:] - ref.x[4:].mean(), atol=1e-4)


@pytest.mark.parametrize("method", ["matrix", "dirichlet"])
def test_unregularised_matrix_and_dirichlet_are_multinomial_logistic_regression(data, method):
    linear_model = _need("sklearn.linear_model")
    z, y, zt, _ = data
    cal = fit_calibrator(z, y, method=method, odir_lambda=0.0, odir_mu=0.0, tol=1e-10)

    def features(x):
        return x.numpy() if method == "matrix" else torch.log_softmax(x, 1).numpy()

    lr = linear_model.LogisticRegression(C=np.inf, tol=1e-12, max_iter=100_000).fit(features(z), y.numpy())
    np.testing.assert_allclose(_probs(cal, zt), lr.predict_proba(features(zt)), atol=2e-6)


@pytest.mark.parametrize("method", ["matrix", "dirichlet"])
def test_odir_is_the_scipy_optimum_of_a_numpy_objective(data, method):
    from scipy.optimize import minimize

    z, y, zt, _ = data
    lam, mu, k = 0.3, 0.1, 4
    x = z.numpy() if method == "matrix" else torch.log_softmax(z, 1).numpy()
    off = 1 - np.eye(k)

    def objective(t):
        w, b = t[: k * k].reshape(k, k), t[k * k:]
        return _nll(x @ w.T + b, y.numpy()) + lam / (k * (k - 1)) * ((w * off) ** 2).sum() + mu / k * (b**2).sum()

    ref = minimize(objective, np.r_[np.eye(k).ravel(), np.zeros(k)], method="BFGS", options={"gtol": 1e-10})
    cal = fit_calibrator(z, y, method=method, odir_lambda=lam, odir_mu=mu)
    params = np.r_[cal.parameters["W"].numpy().ravel(), cal.parameters["b"].numpy()]
    assert objective(params) == pytest.approx(ref.fun, abs=1e-10)
    np.testing.assert_allclose(params, ref.x, atol=1e-4)  # strictly convex with mu > 0 and lambda > 0


def test_histogram_binning_equals_numpy_bin_means(data):
    z, y, zt, _ = data
    m = 7
    cal = fit_calibrator(z, y, method="histogram", n_bins=m)
    p, pt = _softmax(z.numpy()), _softmax(zt.numpy())
    expected = np.empty_like(pt)
    for k in range(4):
        bins = np.clip(np.ceil(p[:, k] * m).astype(int) - 1, 0, m - 1)
        bins_t = np.clip(np.ceil(pt[:, k] * m).astype(int) - 1, 0, m - 1)
        for j in range(m):
            inside = bins == j
            value = (y.numpy()[inside] == k).mean() if inside.any() else (j + 0.5) / m
            expected[bins_t == j, k] = value
    expected = np.maximum(expected, PROBABILITY_FLOOR)
    np.testing.assert_allclose(_probs(cal, zt), expected / expected.sum(1, keepdims=True), atol=1e-12)


def test_isotonic_equals_scikit_learn_one_vs_rest(data):
    isotonic = _need("sklearn.isotonic")
    z, y, zt, _ = data
    cal = fit_calibrator(z, y, method="isotonic")
    p, pt = _softmax(z.numpy()), _softmax(zt.numpy())
    expected = np.stack([isotonic.IsotonicRegression(out_of_bounds="clip").fit(p[:, k], y.numpy() == k)
                         .predict(pt[:, k]) for k in range(4)], 1)
    expected = np.maximum(expected, PROBABILITY_FLOOR)
    np.testing.assert_allclose(_probs(cal, zt), expected / expected.sum(1, keepdims=True), atol=1e-12)


@pytest.fixture(scope="module")
def binary(data):
    z, y, zt, yt = data
    return z[:, :2], (y >= 2).long(), zt[:, :2], (yt >= 2).long()


def test_platt_equals_scikit_learn_logistic_regression(binary):
    linear_model = _need("sklearn.linear_model")
    z, y, zt, _ = binary
    cal = fit_calibrator(z, y, method="platt")
    s = (z[:, 1] - z[:, 0]).numpy()[:, None]
    lr = linear_model.LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(s, y.numpy())
    assert float(cal.parameters["a"]) == pytest.approx(lr.coef_[0, 0], abs=1e-6)
    assert float(cal.parameters["b"]) == pytest.approx(lr.intercept_[0], abs=1e-6)
    st = (zt[:, 1] - zt[:, 0]).numpy()[:, None]
    np.testing.assert_allclose(_probs(cal, zt)[:, 1], lr.predict_proba(st)[:, 1], atol=1e-7)


def test_beta_equals_betacal(binary):
    betacal = _need("betacal")
    z, y, zt, _ = binary
    cal = fit_calibrator(z, y, method="beta")
    ref = betacal.BetaCalibration(parameters="abm").fit(torch.softmax(z, 1)[:, 1].numpy(), y.numpy())
    expected = ref.predict(torch.softmax(zt, 1)[:, 1].numpy())
    # betacal fits with scikit-learn's default tolerance (1e-4) and C = 1e11: close, and never a lower NLL
    np.testing.assert_allclose(_probs(cal, zt)[:, 1], expected, atol=1e-4)
    fitted = np.clip(ref.predict(torch.softmax(z, 1)[:, 1].numpy()), 1e-300, 1 - 1e-16)
    yn = y.numpy()
    reference_nll = -np.mean(yn * np.log(fitted) + (1 - yn) * np.log1p(-fitted))
    assert cal.fit["nll_after"] <= reference_nll + 1e-12


def test_binary_methods_refuse_more_classes(data):
    z, y, _, _ = data
    with pytest.raises(InputError, match="two classes"):
        fit_calibrator(z, y, method="platt")


@pytest.mark.parametrize("method", ["temperature", "vector", "matrix", "dirichlet", "histogram", "isotonic"])
def test_json_round_trip_is_exact(data, method):
    import json

    zt = data[2]
    cal = _fitted(data, method)
    back = calibrator_from_dict(json.loads(json.dumps(calibrator_to_dict(cal))))
    assert torch.equal(apply_calibrator(back, zt), apply_calibrator(cal, zt))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="other"), "not a calibscope calibrator"),
    (lambda d: d.update(method="magic"), "unknown method"),
    (lambda d: d["parameters"].update(w=[1.0, 2.0]), "shape"),
    (lambda d: d["parameters"].update(b=[1.0, float("nan"), 0.0, 0.0]), "finite"),
    (lambda d: d["parameters"].pop("b"), "needs the parameters"),
])
def test_bad_calibrator_files_are_refused(data, change, message):
    doc = calibrator_to_dict(_fitted(data, "vector"))
    change(doc)
    with pytest.raises(InputError, match=message):
        calibrator_from_dict(doc)


def test_temperature_keeps_accuracy_and_float32_in_float32_out(data):
    zt = data[2]
    assert torch.equal(apply_calibrator(_fitted(data, "temperature"), zt).argmax(1), zt.argmax(1))
    float32 = apply_calibrator(_fitted(data, "dirichlet"), zt.float())
    assert float32.dtype == torch.float32
    torch.testing.assert_close(float32, apply_calibrator(_fitted(data, "dirichlet"), zt).float())


@pytest.mark.parametrize("method", ["matrix", "dirichlet"])
def test_closed_form_hessian_equals_autograd(data, method):
    """The Newton step of matrix / Dirichlet scaling uses the closed-form Hessian of multinomial logistic
    regression: equal to torch.autograd's Hessian of the same mean NLL at a random point."""
    from calibscope.diagnostics.calibrators import _forward, _linear_nll_hessian, _mean_nll

    z, y = data[0].to(torch.float64), data[1]
    k = z.shape[1]
    g = torch.Generator().manual_seed(4)
    params = {"W": torch.eye(k, dtype=torch.float64) + 0.3 * torch.randn(k, k, generator=g, dtype=torch.float64),
              "b": 0.5 * torch.randn(k, generator=g, dtype=torch.float64)}

    def loss(theta):
        return _mean_nll(_forward(method, {"W": theta[: k * k].reshape(k, k), "b": theta[k * k:]}, z, {}), y)

    theta = torch.cat([params["W"].reshape(-1), params["b"]])
    expected = torch.autograd.functional.hessian(loss, theta)
    torch.testing.assert_close(_linear_nll_hessian(method, params, z), expected, rtol=0, atol=1e-12)
