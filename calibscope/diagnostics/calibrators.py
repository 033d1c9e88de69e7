r"""Post-hoc calibrators: fitted on held-out (validation) outputs, applied as a module after the model.

Every calibrator maps logits :math:`z \in \mathbb{R}^K` to new logits :math:`z'` (softmax of which is the
calibrated distribution), so a calibrated model is ``Sequential(model, CalibratorModule(calibrator))``.
All fits are in float64 on the CPU; the parameters are stored in float64.

=================  ==================================================  =================================================
method             map (p = softmax(z))                                fit; reference
=================  ==================================================  =================================================
``temperature``    z' = z / T                                          exact NLL optimum (Newton on 1/T); Guo 2017
``vector``         z' = w ⊙ z + b                                      NLL, L-BFGS-B; Guo et al. 2017 §4.2
``matrix``         z' = W z + b                                        NLL + ODIR; Guo 2017, Kull et al. 2019 §4
``dirichlet``      z' = W log p + b                                    NLL + ODIR; Kull et al. 2019 §3
``histogram``      p'_k = mean of [y = k] in p_k's bin, renormalised   one-vs-rest, M equal-width bins; Zadrozny &
                                                                       Elkan 2001
``isotonic``       p'_k = g_k(p_k), g_k isotonic, renormalised         one-vs-rest PAV; Zadrozny & Elkan 2002
``platt``          z' = [0, a (z_1 − z_0) + b]   (K = 2)               NLL (logistic regression); Platt 1999
``beta``           z' = [0, a log p_1 − b log(1 − p_1) + c], a, b ≥ 0  NLL, bounds; Kull, Silva Filho & Flach 2017
=================  ==================================================  =================================================

ODIR (off-diagonal and intercept regularisation, Kull et al. 2019 §4) adds

.. math::

    \frac{\lambda}{K(K-1)} \sum_{i \ne j} W_{ij}^2 + \frac{\mu}{K} \sum_j b_j^2

to the mean NLL; the diagonal of W is not penalised. For the one-vs-rest methods the calibrated
probabilities are floored at :data:`PROBABILITY_FLOOR` before they are renormalised, so that no class gets
probability 0 (an infinite NLL for one example would otherwise decide every comparison); the output logits
are :math:`\log p'`.

The smooth methods are convex problems (the NLL of a softmax of a linear function of the parameters), solved
by Newton's method with the exact Hessian (``torch.autograd``) and a backtracking line search — or, for beta
calibration's bounds and for more than 3,000 parameters, ``scipy.optimize.minimize(method="L-BFGS-B")`` —
until the largest gradient entry is at most ``tol`` (:data:`DEFAULT_TOL`); the gradient reached is recorded in
``Calibrator.fit``. No method draws random numbers.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from calibscope.diagnostics.calibration import _validate_logits_labels
from calibscope.errors import InputError

__all__ = [
    "BINARY_METHODS",
    "METHODS",
    "Calibrator",
    "CalibratorModule",
    "apply_calibrator",
    "calibrator_from_dict",
    "calibrator_to_dict",
    "fit_calibrator",
]

METHODS = ("temperature", "vector", "matrix", "dirichlet", "histogram", "isotonic", "platt", "beta")
BINARY_METHODS = ("platt", "beta")
DEFAULT_METHOD = "temperature"
DEFAULT_HISTOGRAM_BINS = 15
DEFAULT_ODIR_LAMBDA = 1e-2  # calibscope's default; Kull et al. 2019 choose lambda, mu by cross-validation
DEFAULT_ODIR_MU = 1e-2
DEFAULT_TOL = 1e-8
DEFAULT_MAX_ITERATIONS = 2_000
PROBABILITY_FLOOR = 1e-6
FORMAT = "calibscope.calibrator"
FORMAT_VERSION = 1
_F64 = torch.float64

REFERENCES = {
    "temperature": "Guo et al. 2017, On Calibration of Modern Neural Networks, Section 4.2",
    "vector": "Guo et al. 2017, Section 4.2 (vector scaling)",
    "matrix": "Guo et al. 2017, Section 4.2 (matrix scaling); ODIR: Kull et al. 2019, Beyond temperature "
              "scaling: Obtaining well-calibrated multiclass probabilities with Dirichlet calibration, Section 4",
    "dirichlet": "Kull et al. 2019, Beyond temperature scaling (NeurIPS), Section 3; ODIR Section 4",
    "histogram": "Zadrozny & Elkan 2001, Obtaining calibrated probability estimates from decision trees and "
                 "naive Bayesian classifiers (ICML); one-vs-rest as in Zadrozny & Elkan 2002",
    "isotonic": "Zadrozny & Elkan 2002, Transforming classifier scores into accurate multiclass probability "
                "estimates (KDD); pool-adjacent-violators (scipy.optimize.isotonic_regression)",
    "platt": "Platt 1999, Probabilistic outputs for support vector machines (maximum likelihood, no target "
             "smoothing)",
    "beta": "Kull, Silva Filho & Flach 2017, Beta calibration (AISTATS)",
}
FORMULAS = {
    "temperature": "z' = z / T",
    "vector": "z' = w * z + b (elementwise)",
    "matrix": "z' = W z + b; loss = NLL + lambda/(K(K-1)) sum_{i!=j} W_ij^2 + mu/K sum_j b_j^2",
    "dirichlet": "z' = W log softmax(z) + b; loss = NLL + lambda/(K(K-1)) sum_{i!=j} W_ij^2 + mu/K sum_j b_j^2",
    "histogram": "p'_k = (mean of [y = k] over fit examples whose p_k is in the same right-closed equal-width bin; "
                 "empty bin: its midpoint), floored, renormalised; z' = log p'",
    "isotonic": "p'_k = g_k(p_k), g_k the isotonic (non-decreasing) least-squares fit of [y = k] on p_k, "
                "linearly interpolated between knots and constant beyond them; floored, renormalised; z' = log p'",
    "platt": "z' = [0, a (z_1 - z_0) + b], i.e. P(y = 1) = sigmoid(a (z_1 - z_0) + b)",
    "beta": "z' = [0, a log p_1 - b log(1 - p_1) + c], a >= 0, b >= 0",
}


@dataclass(frozen=True, eq=False)
class Calibrator:
    """A fitted calibrator.

    ``method``: one of :data:`METHODS`; ``num_classes``: K; ``parameters``: name → float64 CPU tensor
    (``temperature`` []; ``w``/``b`` [K]; ``W`` [K, K]; ``values`` [K, M]; ``knots_x``/``knots_y`` [K, L]
    padded with x = 2; ``a``/``b``/``c`` []); ``settings``: the options it was fitted with; ``fit``: n, NLL
    before and after on the fit data, convergence (``converged``, ``gradient_max``, ``iterations``), and
    ``data`` (a digest of what it was fitted on, filled in by the caller); ``definition``: formula and paper.
    """

    method: str
    num_classes: int
    parameters: dict[str, torch.Tensor]
    settings: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    definition: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------
# the map (one implementation: fitting objectives, apply_calibrator and the exported module all use it)
# --------------------------------------------------------------------------------------------------------


def _interpolate(knots_x: torch.Tensor, knots_y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Row k of ``p.T`` through the piecewise-linear map of knots (x[k], y[k]), constant outside (np.interp)."""
    q = p.t().contiguous()  # [K, N]
    length = knots_x.shape[1]
    i = torch.searchsorted(knots_x, q, right=True)
    lo = (i - 1).clamp(0, length - 2)
    hi = lo + 1
    x0, x1 = knots_x.gather(1, lo), knots_x.gather(1, hi)
    y0, y1 = knots_y.gather(1, lo), knots_y.gather(1, hi)
    gap = x1 - x0
    t = torch.where(gap > 0, (q - x0) / torch.where(gap > 0, gap, 1.0), 0.0).clamp(0.0, 1.0)
    return (y0 + t * (y1 - y0)).t()


def _renormalised_log(p: torch.Tensor, floor: float) -> torch.Tensor:
    p = p.clamp_min(floor)
    return torch.log(p / p.sum(1, keepdim=True))


def _forward(method: str, params: dict[str, torch.Tensor], z: torch.Tensor, settings: dict[str, Any]) -> torch.Tensor:
    """z' for float64 logits ``z`` [N, K] (differentiable in ``params`` for the smooth methods)."""
    if method == "temperature":
        return z / params["temperature"]
    if method == "vector":
        return z * params["w"] + params["b"]
    if method == "matrix":
        return z @ params["W"].t() + params["b"]
    if method == "dirichlet":
        return torch.log_softmax(z, 1) @ params["W"].t() + params["b"]
    if method == "platt":
        s = params["a"] * (z[:, 1] - z[:, 0]) + params["b"]
        return torch.stack([torch.zeros_like(s), s], 1)
    if method == "beta":
        log_p = torch.log_softmax(z, 1)
        s = params["a"] * log_p[:, 1] - params["b"] * log_p[:, 0] + params["c"]
        return torch.stack([torch.zeros_like(s), s], 1)
    floor = float(settings.get("probability_floor", PROBABILITY_FLOOR))
    p = torch.softmax(z, 1)
    if method == "histogram":
        values = params["values"]
        m = values.shape[1]
        inner = torch.arange(1, m, dtype=z.dtype, device=z.device) / m
        index = torch.bucketize(p, inner, right=False)  # edges[i-1] < p <= edges[i]: right-closed bins
        return _renormalised_log(values.gather(1, index.t()).t(), floor)
    if method == "isotonic":
        return _renormalised_log(_interpolate(params["knots_x"], params["knots_y"], p), floor)
    raise InputError(f"Expected a calibration method in {METHODS}, but got {method!r}")


class CalibratorModule(nn.Module):
    """The calibrator as a module: ``forward(logits [N, K]) -> calibrated logits`` (float64 inside, returned
    in the input's dtype). Appended to a model it makes the calibrated model; exportable by ``torch.export``."""

    def __init__(self, calibrator: Calibrator):
        super().__init__()
        self.method = calibrator.method
        self.num_classes = calibrator.num_classes
        self.settings = {"probability_floor": float(calibrator.settings.get("probability_floor", PROBABILITY_FLOOR))}
        self._names = tuple(sorted(calibrator.parameters))
        for name in self._names:
            self.register_buffer(f"p_{name}", calibrator.parameters[name].detach().to(_F64).clone())

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        params = {name: getattr(self, f"p_{name}") for name in self._names}
        return _forward(self.method, params, logits.to(_F64), self.settings).to(logits.dtype)


def apply_calibrator(calibrator: Calibrator, logits: torch.Tensor) -> torch.Tensor:
    """Calibrated logits (same shape, dtype and device as ``logits``); ``softmax`` of them is the calibrated
    distribution. Raises :class:`~calibscope.errors.InputError` when the width is not the calibrator's K."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        raise InputError("Expected argument `logits` to be a floating point torch.Tensor of shape [N, K]")
    if logits.shape[1] != calibrator.num_classes:
        raise InputError(f"The calibrator ({calibrator.method}) was fitted for {calibrator.num_classes} classes, "
                         f"but the logits have {logits.shape[1]}")
    module = CalibratorModule(calibrator).to(logits.device)
    with torch.no_grad():
        return module(logits)


# --------------------------------------------------------------------------------------------------------
# fitting
# --------------------------------------------------------------------------------------------------------


def _mean_nll(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(z, y)


_NEWTON_MAX_PARAMETERS = 3_000  # exact Hessians up to this many parameters (24 MB in float64 at 1,000)
_LINEAR_METHODS = ("matrix", "dirichlet")  # z' = W f + b: multinomial logistic regression on features f


def _linear_nll_hessian(method: str, params: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    r"""The exact Hessian of the mean NLL of z' = W f + b (f = z for matrix, log softmax(z) for Dirichlet) in
    the flattened order (W row-major, then b), in closed form — the Hessian of multinomial logistic regression:

    .. math::

        H_{(k,a),(l,c)} = \frac1n \sum_i (p_{ik} \delta_{kl} - p_{ik} p_{il})\, g_{ia} g_{ic},
        \quad g_i = [f_i; 1],\ p_i = \operatorname{softmax}(W f_i + b).

    Equal to ``torch.autograd.functional.hessian`` of the same loss (tests), at a fraction of its cost."""
    f = z if method == "matrix" else torch.log_softmax(z, 1)
    n, k = f.shape
    g = torch.cat([f, torch.ones(n, 1, dtype=f.dtype, device=f.device)], 1)  # [n, K+1]
    p = torch.softmax(f @ params["W"].t() + params["b"], 1)  # [n, K]
    gg = g[:, :, None] * g[:, None, :]  # [n, K+1, K+1]
    diagonal = torch.einsum("ik,iac->kac", p, gg) / n  # [K, K+1, K+1]
    cross = torch.einsum("ik,il,iac->kalc", p, p, gg) / n  # [K, K+1, K, K+1]
    h = -cross
    index = torch.arange(k)
    h[index, :, index, :] += diagonal
    h = h.reshape(k * (k + 1), k * (k + 1))
    # (k, a) with a < K is W[k, a] at k*K + a; (k, K) is b[k] at K*K + k
    order = torch.tensor([kk * (k + 1) + a for kk in range(k) for a in range(k)] + [kk * (k + 1) + k
                                                                                     for kk in range(k)])
    return h[order][:, order]


def _minimise(method: str, z: torch.Tensor, y: torch.Tensor, init: dict[str, torch.Tensor],
              penalty, bounds: dict[str, tuple[float | None, float | None]], tol: float, max_iterations: int):
    """Minimise the mean NLL of ``_forward`` + ``penalty(params)`` over the flattened parameters: Newton with
    an exact Hessian and backtracking (Armijo) line search when there are no bounds and at most
    :data:`_NEWTON_MAX_PARAMETERS` parameters, else L-BFGS-B; stop when max |gradient| ≤ ``tol``."""
    import numpy as np

    names = list(init)
    shapes = [init[k].shape for k in names]
    sizes = [int(init[k].numel()) for k in names]

    def unpack(theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: part.reshape(s) for k, part, s in zip(names, torch.split(theta, sizes), shapes, strict=True)}

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        params = unpack(theta)
        return _mean_nll(_forward(method, params, z, {}), y) + penalty(params)

    def value_and_grad(theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        theta = theta.detach().requires_grad_(True)
        loss = loss_of(theta)
        (grad,) = torch.autograd.grad(loss, theta)
        return float(loss.detach()), grad

    x0 = torch.cat([init[k].reshape(-1) for k in names])
    if not bounds and x0.numel() <= _NEWTON_MAX_PARAMETERS:
        theta, iterations, message = x0.clone(), 0, "max_iterations"
        linear, penalty_hessian = method in _LINEAR_METHODS and names == ["W", "b"], None
        f, g = value_and_grad(theta)
        while iterations < max_iterations:
            if float(g.abs().max()) <= tol:
                message = "gradient tolerance reached"
                break
            if linear:  # closed form + the penalty's (quadratic: a constant Hessian, computed once)
                if penalty_hessian is None:
                    penalty_hessian = torch.autograd.functional.hessian(
                        lambda t: penalty(unpack(t)) + 0 * t.sum(), theta.detach(), vectorize=True)
                h = _linear_nll_hessian(method, unpack(theta.detach()), z) + penalty_hessian
            else:
                h = torch.autograd.functional.hessian(loss_of, theta.detach(), vectorize=True)
            ridge = 1e-12 * float(h.diagonal().abs().max().clamp_min(1.0))
            try:
                d = -torch.linalg.solve(h + ridge * torch.eye(len(theta), dtype=_F64), g)
            except RuntimeError:
                d = -g
            slope = float(g @ d)
            if not slope < 0:
                d, slope = -g, -float(g @ g)
            t = 1.0
            while True:
                f_new, g_new = value_and_grad(theta + t * d)
                if f_new <= f + 1e-4 * t * slope or t < 1e-12:
                    break
                t *= 0.5
            iterations += 1
            if t < 1e-12 and f_new >= f:
                message = "line search stalled (at the float64 resolution of the loss)"
                break
            theta, f, g = (theta + t * d).detach(), f_new, g_new
        gmax = float(g.abs().max())
        optimizer = "Newton with exact Hessian (torch.autograd) and Armijo backtracking, float64"
    else:
        from scipy.optimize import minimize

        def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
            f, g = value_and_grad(torch.from_numpy(x))
            return f, g.numpy().astype(np.float64)

        box = [bounds.get(k, (None, None)) for k, n in zip(names, sizes, strict=True) for _ in range(n)]
        result = minimize(objective, x0.numpy(), jac=True, method="L-BFGS-B", bounds=box,
                          options={"maxiter": max_iterations, "maxfun": 4 * max_iterations, "gtol": tol,
                                   "ftol": 0.0, "maxcor": 30})
        theta = torch.from_numpy(np.asarray(result.x, dtype=np.float64))
        _, grad = objective(result.x)
        lo = np.array([b[0] if b[0] is not None else -np.inf for b in box])
        hi = np.array([b[1] if b[1] is not None else np.inf for b in box])
        projected = np.where((result.x <= lo) & (grad > 0), 0.0, grad)
        projected = np.where((result.x >= hi) & (projected < 0), 0.0, projected)
        gmax = float(np.abs(projected).max()) if projected.size else 0.0
        iterations, message = int(result.nit), str(result.message)
        optimizer = "scipy.optimize.minimize L-BFGS-B, float64, torch.autograd gradients"
    info = {"optimizer": optimizer, "iterations": iterations, "gradient_max": gmax, "converged": bool(gmax <= tol),
            "tolerance": f"max |dLoss/dtheta| <= {tol:g} (projected on the bounds)", "message": message}
    return {k: v.detach().clone() for k, v in unpack(theta).items()}, info


def _odir(lam: float, mu: float, k: int):
    off = 1.0 - torch.eye(k, dtype=_F64)

    def penalty(params: dict[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), dtype=_F64)
        if lam:
            total = total + lam / (k * (k - 1)) * ((params["W"] * off) ** 2).sum()
        if mu:
            total = total + mu / k * (params["b"] ** 2).sum()
        return total

    return penalty


def _no_penalty(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.zeros((), dtype=_F64)


def _fit_histogram(p: torch.Tensor, y: torch.Tensor, n_bins: int) -> dict[str, torch.Tensor]:
    n, k = p.shape
    inner = torch.arange(1, n_bins, dtype=_F64) / n_bins
    index = torch.bucketize(p, inner, right=False)  # [N, K]
    onehot = torch.nn.functional.one_hot(y, k).to(_F64)
    count = torch.zeros(k, n_bins, dtype=_F64).scatter_add_(1, index.t(), torch.ones(k, n, dtype=_F64))
    hits = torch.zeros(k, n_bins, dtype=_F64).scatter_add_(1, index.t(), onehot.t())
    midpoint = ((torch.arange(n_bins, dtype=_F64) + 0.5) / n_bins).expand(k, n_bins)
    return {"values": torch.where(count > 0, hits / count.clamp_min(1), midpoint).contiguous()}


def _fit_isotonic(p: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per class: weighted PAV on the distinct values of p_k (ties pooled, as scikit-learn does), then only
    the ends of each constant run are kept (the interpolated map is unchanged)."""
    import numpy as np
    from scipy.optimize import isotonic_regression

    k = p.shape[1]
    xs, ys = [], []
    p_np, y_np = p.numpy(), y.numpy()
    for c in range(k):
        x_unique, inverse, counts = np.unique(p_np[:, c], return_inverse=True, return_counts=True)
        mean_y = np.bincount(inverse, weights=(y_np == c).astype(np.float64)) / counts
        fitted = isotonic_regression(mean_y, weights=counts.astype(np.float64), increasing=True).x
        keep = np.ones(len(fitted), dtype=bool)
        if len(fitted) > 2:
            keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
        xs.append(x_unique[keep])
        ys.append(fitted[keep])
    length = max(len(x) for x in xs) + 1  # at least one padding knot at x = 2 (beyond every probability)
    knots_x = np.full((k, length), 2.0)
    knots_y = np.empty((k, length))
    for c in range(k):
        knots_x[c, : len(xs[c])] = xs[c]
        knots_y[c, : len(ys[c])] = ys[c]
        knots_y[c, len(ys[c]):] = ys[c][-1]
    return {"knots_x": torch.from_numpy(knots_x), "knots_y": torch.from_numpy(knots_y)}


def _validate_options(method: Any, k: int, n_bins: Any, odir_lambda: Any, odir_mu: Any, tol: Any,
                      max_iterations: Any) -> None:
    if method not in METHODS:
        raise InputError(f"Expected argument `method` to be one of {METHODS}, but got {method!r}")
    if method in BINARY_METHODS and k != 2:
        raise InputError(f"The {method} calibrator is for two classes, but the logits have K = {k}; use "
                         "temperature, vector, matrix, dirichlet, histogram or isotonic")
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
        raise InputError(f"Expected argument `n_bins` to be an integer larger than 0, but got {n_bins!r}")
    for name, value in (("odir_lambda", odir_lambda), ("odir_mu", odir_mu)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise InputError(f"Expected argument `{name}` to be a finite number of at least 0, but got {value!r}")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol > 0:
        raise InputError(f"Expected argument `tol` to be a number larger than 0, but got {tol!r}")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, numbers.Integral) or max_iterations < 1:
        raise InputError(f"Expected argument `max_iterations` to be an integer larger than 0, but got "
                         f"{max_iterations!r}")


def fit_calibrator(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: str = DEFAULT_METHOD,
    n_bins: int = DEFAULT_HISTOGRAM_BINS,
    odir_lambda: float = DEFAULT_ODIR_LAMBDA,
    odir_mu: float = DEFAULT_ODIR_MU,
    tol: float = DEFAULT_TOL,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> Calibrator:
    r"""Fit one calibrator (see the module docstring for each map) on validation ``logits`` [N, K] and
    ``labels`` [N].

    ``n_bins``: M of ``histogram``; ``odir_lambda`` / ``odir_mu``: λ and μ of ODIR for ``matrix`` and
    ``dirichlet`` (0 and 0: plain maximum likelihood, i.e. multinomial logistic regression on z or log p);
    ``tol``, ``max_iterations``: the L-BFGS-B stopping rule of the smooth methods.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = 2 * torch.randn(2000, 3, generator=g, dtype=torch.float64)
        >>> y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
        >>> cal = fit_calibrator(3 * z, y, method="vector")   # over-confident by a factor 3
        >>> [round(v, 2) for v in cal.parameters["w"].tolist()]
        [0.33, 0.32, 0.32]
    """
    _validate_logits_labels(logits, labels)
    n, k = (int(s) for s in logits.shape)
    _validate_options(method, k, n_bins, odir_lambda, odir_mu, tol, max_iterations)
    if n == 0:
        raise InputError("Expected at least one example to fit a calibrator on, but got N = 0")
    z = logits.detach().to("cpu", _F64)
    if bool(torch.isneginf(z).any()) and method in ("vector", "matrix", "platt"):
        raise InputError(f"The {method} calibrator needs finite logits, but some are -inf")
    y = labels.detach().to("cpu", torch.int64)
    settings: dict[str, Any] = {}
    info: dict[str, Any] = {}
    if method == "temperature":
        from calibscope.diagnostics.temperature import fit_temperature

        t = fit_temperature(z, y)
        params = {"temperature": torch.tensor(t.temperature, dtype=_F64)}
        info = {"optimizer": t.definition["method"], "iterations": t.n_passes, "gradient_max": abs(t.gradient),
                "converged": t.converged, "tolerance": t.definition["tolerance"]}
    elif method in ("vector", "matrix", "dirichlet", "platt", "beta"):
        init = {
            "vector": lambda: {"w": torch.ones(k, dtype=_F64), "b": torch.zeros(k, dtype=_F64)},
            "matrix": lambda: {"W": torch.eye(k, dtype=_F64), "b": torch.zeros(k, dtype=_F64)},
            "dirichlet": lambda: {"W": torch.eye(k, dtype=_F64), "b": torch.zeros(k, dtype=_F64)},
            "platt": lambda: {"a": torch.tensor(1.0, dtype=_F64), "b": torch.tensor(0.0, dtype=_F64)},
            "beta": lambda: {"a": torch.tensor(1.0, dtype=_F64), "b": torch.tensor(1.0, dtype=_F64),
                             "c": torch.tensor(0.0, dtype=_F64)},
        }[method]()
        penalty = _no_penalty
        if method in ("matrix", "dirichlet"):
            settings = {"odir_lambda": float(odir_lambda), "odir_mu": float(odir_mu)}
            penalty = _odir(float(odir_lambda), float(odir_mu), k)
        bounds = {"a": (0.0, None), "b": (0.0, None)} if method == "beta" else {}
        params, info = _minimise(method, z, y, init, penalty, bounds, float(tol), int(max_iterations))
    elif method == "histogram":
        settings = {"n_bins": int(n_bins), "probability_floor": PROBABILITY_FLOOR}
        params = _fit_histogram(torch.softmax(z, 1), y, int(n_bins))
        info = {"optimizer": "closed form (bin means)", "converged": True}
    else:
        settings = {"probability_floor": PROBABILITY_FLOOR}
        params = _fit_isotonic(torch.softmax(z, 1), y)
        info = {"optimizer": "pool-adjacent-violators, scipy.optimize.isotonic_regression", "converged": True}
    calibrator = Calibrator(method, k, params, settings, {}, {"formula": FORMULAS[method],
                                                             "reference": REFERENCES[method]})
    after = float(_mean_nll(apply_calibrator(calibrator, z), y))
    fit = {"n": n, "nll_before": float(_mean_nll(z, y)), "nll_after": after, **info}
    return Calibrator(method, k, params, settings, fit, calibrator.definition)


# --------------------------------------------------------------------------------------------------------
# (de)serialisation: a JSON-ready dict, floats written with repr (float64 round-trips exactly)
# --------------------------------------------------------------------------------------------------------

_SHAPES = {
    "temperature": {"temperature": ()},
    "vector": {"w": ("K",), "b": ("K",)},
    "matrix": {"W": ("K", "K"), "b": ("K",)},
    "dirichlet": {"W": ("K", "K"), "b": ("K",)},
    "histogram": {"values": ("K", "M")},
    "isotonic": {"knots_x": ("K", "L"), "knots_y": ("K", "L")},
    "platt": {"a": (), "b": ()},
    "beta": {"a": (), "b": (), "c": ()},
}


def calibrator_to_dict(calibrator: Calibrator) -> dict[str, Any]:
    """The calibrator as a JSON-ready dict (``format``, ``version``, method, K, parameters as nested lists,
    settings, fit record, definition)."""
    return {"format": FORMAT, "version": FORMAT_VERSION, "method": calibrator.method,
            "num_classes": calibrator.num_classes,
            "parameters": {k: v.tolist() for k, v in sorted(calibrator.parameters.items())},
            "settings": dict(calibrator.settings), "fit": dict(calibrator.fit),
            "definition": dict(calibrator.definition)}


def calibrator_from_dict(doc: Any, *, where: str = "calibrator") -> Calibrator:
    """Validate a dict written by :func:`calibrator_to_dict` and rebuild the calibrator; every problem is an
    :class:`~calibscope.errors.InputError` naming ``where``."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{where} is not a calibscope calibrator (expected a JSON object with "
                         f"\"format\": \"{FORMAT}\", written by `calibscope calibrate`)")
    if doc.get("version") != FORMAT_VERSION:
        raise InputError(f"{where}: calibrator format version {doc.get('version')!r} is not supported "
                         f"(this calibscope reads version {FORMAT_VERSION})")
    method, k = doc.get("method"), doc.get("num_classes")
    if method not in METHODS:
        raise InputError(f"{where}: unknown method {method!r} (expected one of {METHODS})")
    if isinstance(k, bool) or not isinstance(k, int) or k < 2 or (method in BINARY_METHODS and k != 2):
        raise InputError(f"{where}: num_classes must be an integer of at least 2 (2 for {method}), got {k!r}")
    raw = doc.get("parameters")
    if not isinstance(raw, dict) or set(raw) != set(_SHAPES[method]):
        raise InputError(f"{where}: a {method} calibrator needs the parameters {sorted(_SHAPES[method])}")
    params: dict[str, torch.Tensor] = {}
    sizes: dict[str, int] = {"K": k}
    for name, dims in _SHAPES[method].items():
        try:
            value = torch.tensor(raw[name], dtype=_F64)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"{where}: parameter {name!r} is not a (nested) list of numbers") from None
        if value.ndim != len(dims) or not bool(torch.isfinite(value).all()):
            raise InputError(f"{where}: parameter {name!r} must be a finite array of shape {dims}")
        for d, size in zip(dims, value.shape, strict=True):
            if sizes.setdefault(d, int(size)) != int(size):
                raise InputError(f"{where}: parameter {name!r} has shape {tuple(value.shape)}, expected {dims} "
                                 f"with K = {k}")
        params[name] = value
    _check_values(method, params, where)
    settings = doc.get("settings") if isinstance(doc.get("settings"), dict) else {}
    floor = settings.get("probability_floor", PROBABILITY_FLOOR)
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 < floor < 1 / k:
        raise InputError(f"{where}: settings.probability_floor must be in (0, 1/K), got {floor!r}")
    fit = doc.get("fit") if isinstance(doc.get("fit"), dict) else {}
    definition = doc.get("definition") if isinstance(doc.get("definition"), dict) else {}
    return Calibrator(method, k, params, dict(settings), dict(fit), dict(definition))


def _check_values(method: str, params: dict[str, torch.Tensor], where: str) -> None:
    if method == "temperature" and not float(params["temperature"]) > 0:
        raise InputError(f"{where}: the temperature must be larger than 0, got {float(params['temperature'])}")
    if method == "beta" and (float(params["a"]) < 0 or float(params["b"]) < 0):
        raise InputError(f"{where}: beta calibration needs a >= 0 and b >= 0")
    if method == "histogram" and not bool(((params["values"] >= 0) & (params["values"] <= 1)).all()):
        raise InputError(f"{where}: histogram values must lie in [0, 1]")
    if method == "isotonic":
        x, y = params["knots_x"], params["knots_y"]
        if x.shape[1] < 2 or not bool((x[:, 1:] >= x[:, :-1]).all()) or not bool((y[:, 1:] >= y[:, :-1]).all()):
            raise InputError(f"{where}: isotonic knots must be non-decreasing in x and y, with at least 2 per class")
        if not bool(((y >= 0) & (y <= 1)).all()) or not bool((x[:, -1] > 1).all()):
            raise InputError(f"{where}: isotonic values must lie in [0, 1] and each class end with a knot beyond 1")
