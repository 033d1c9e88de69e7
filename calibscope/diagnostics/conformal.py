r"""Split conformal prediction sets for classifiers: LAC/THR, APS (randomised or not) and RAPS.

A held-out calibration set (``--val``) gives n non-conformity scores :math:`s_i = s(x_i, y_i)`; the
finite-sample quantile

.. math::
    \hat q = s_{(\lceil (n+1)(1-\alpha) \rceil)} \quad (\text{the } \lceil (n+1)(1-\alpha)\rceil\text{-th smallest};
    +\infty \text{ when that exceeds } n)

makes :math:`\mathcal C(x) = \{y : s(x, y) \le \hat q\}` cover a new exchangeable example with probability
at least :math:`1 - \alpha` (Vovk et al. 2005; Angelopoulos & Bates 2021, *A Gentle Introduction*, §1).
Scores, with :math:`p = \operatorname{softmax}(z/T)`, :math:`p_{(1)} \ge p_{(2)} \ge \dots` and
:math:`r(y)` the 1-based rank of class :math:`y`, :math:`u \sim U(0, 1)` one draw per example:

* **LAC / THR** (Sadinle, Lei & Wasserman 2019): :math:`s(x, y) = 1 - p_y`.
* **APS** (Romano, Sesia & Candès, NeurIPS 2020): :math:`s(x, y) = \sum_{j < r(y)} p_{(j)} + u\, p_{(r(y))}`;
  without randomisation :math:`u = 1` (the cumulative mass up to and including :math:`y`).
* **RAPS** (Angelopoulos, Bates, Jordan & Malik, ICLR 2021): the APS score plus
  :math:`\lambda\,(r(y) - k_\mathrm{reg})_+`. When :math:`k_\mathrm{reg}` or :math:`\lambda` is not given,
  a fraction of the calibration set (default 30 %, as the paper's code) is split off to choose them
  (§2.3): :math:`k_\mathrm{reg}` is the empirical :math:`1-\alpha` quantile of the true class's rank, and
  :math:`\lambda` the value of the grid {0.001, 0.01, 0.1, 0.2, 0.5} with the smallest mean set size on that
  split; :math:`\hat q` is then computed on the rest only, so coverage stays exact.

A randomised score makes the set a prefix of the ranked classes (one u per example). By default a set is
never empty: the top class joins an empty set (``allow_empty=False``, as torch-uncertainty and the RAPS code
do); this can only raise coverage. All functions are pure (tensors in, frozen dataclasses out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from calibscope.errors import InputError

__all__ = [
    "CONFORMAL_METHODS",
    "DEFAULT_ALPHA",
    "DEFAULT_ALPHA_GRID",
    "DEFAULT_LAMBDA_GRID",
    "DEFAULT_TUNE_FRACTION",
    "ConformalCalibration",
    "ConformalCurvePoint",
    "ConformalReport",
    "conformal_calibrate",
    "conformal_curve",
    "conformal_quantile",
    "conformal_report",
    "conformal_scores",
    "prediction_sets",
]

Method = Literal["lac", "aps", "raps"]
CONFORMAL_METHODS: tuple[str, ...] = ("lac", "aps", "raps")
DEFAULT_ALPHA = 0.1
DEFAULT_TUNE_FRACTION = 0.3  # Angelopoulos et al.'s pct_paramtune
DEFAULT_LAMBDA_GRID: tuple[float, ...] = (0.001, 0.01, 0.1, 0.2, 0.5)  # their size criterion grid
DEFAULT_ALPHA_GRID: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
_F64 = torch.float64


# --------------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------------


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 < float(alpha) < 1.0:
        raise InputError(f"Expected argument `alpha` to be a number in (0, 1), but got {alpha!r}")
    return float(alpha)


def _check_method(method: Any) -> str:
    if method not in CONFORMAL_METHODS:
        raise InputError(f"Expected argument `method` to be one of {', '.join(CONFORMAL_METHODS)}, but got {method!r}")
    return method


def _check_logits(logits: Any, labels: Any | None = None, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        raise InputError(f"Expected argument `{name}` to be a 2-D floating point tensor [N, K]")
    if logits.shape[0] < 1 or logits.shape[1] < 2:
        raise InputError(f"Expected `{name}` with at least one row and two classes, but got shape "
                         f"{tuple(logits.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise InputError(f"`{name}` contains NaN or infinite values")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
            raise InputError(f"Expected labels of shape [{logits.shape[0]}] for `{name}`")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
            raise InputError(f"labels for `{name}` must lie in [0, {logits.shape[1] - 1}]")


def _check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not (
            math.isfinite(float(temperature)) and float(temperature) > 0):
        raise InputError(f"Expected argument `temperature` to be a positive finite number, but got {temperature!r}")
    return float(temperature)


# --------------------------------------------------------------------------------------------------------
# scores, quantile, sets
# --------------------------------------------------------------------------------------------------------


def _uniforms(n: int, seed: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=gen, dtype=_F64).to(device)


def _penalty(k: int, k_reg: int, lam: float, device) -> torch.Tensor:
    """λ·(r − k_reg)_+ for the 1-based ranks r = 1..K."""
    ranks = torch.arange(1, k + 1, dtype=_F64, device=device)
    return lam * (ranks - k_reg).clamp(min=0)


def conformal_scores(
    logits: torch.Tensor,
    *,
    method: Method = "lac",
    randomized: bool = True,
    k_reg: int = 1,
    lam: float = 0.0,
    temperature: float = 1.0,
    seed: int = 0,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Non-conformity scores s(x, y) of every class, float64 [N, K] (formulas in the module docstring).

    ``uniforms`` [N] (one :math:`u` per row) overrides the draw from ``seed``; it is ignored for LAC and for
    ``randomized=False``. RAPS uses ``k_reg`` (≥ 1) and ``lam`` (≥ 0); APS is RAPS with λ = 0.
    """
    _check_logits(logits)
    method = _check_method(method)
    temperature = _check_temperature(temperature)
    probs = torch.softmax(logits.to(_F64) / temperature, dim=1)
    if method == "lac":
        return 1.0 - probs
    if isinstance(k_reg, bool) or not isinstance(k_reg, int) or k_reg < 1:
        raise InputError(f"Expected argument `k_reg` to be a positive integer, but got {k_reg!r}")
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not (math.isfinite(lam) and lam >= 0):
        raise InputError(f"Expected argument `lam` to be a finite number ≥ 0, but got {lam!r}")
    n, k = probs.shape
    # stable sort: equal probabilities keep class order, so ranks are well defined
    ordered, order = torch.sort(probs, dim=1, descending=True, stable=True)
    cumulative = torch.cumsum(ordered, dim=1)
    if randomized:
        u = _uniforms(n, seed, probs.device) if uniforms is None else uniforms.to(probs.device, _F64)
        if u.shape != (n,):
            raise InputError(f"Expected `uniforms` of shape [{n}], but got {tuple(u.shape)}")
        ranked = cumulative - ordered + u[:, None] * ordered
    else:
        ranked = cumulative
    if method == "raps":
        ranked = ranked + _penalty(k, k_reg, float(lam), probs.device)
    return torch.empty_like(ranked).scatter_(1, order, ranked)


def conformal_quantile(scores: torch.Tensor, *, alpha: float = DEFAULT_ALPHA) -> float:
    r"""The :math:`\lceil (n+1)(1-\alpha)\rceil`-th smallest of the n calibration scores (``+inf`` when that
    rank exceeds n, i.e. α < 1/(n+1): only the full set of classes is then guaranteed)."""
    alpha = _check_alpha(alpha)
    if not isinstance(scores, torch.Tensor) or scores.ndim != 1 or scores.numel() == 0:
        raise InputError("Expected argument `scores` to be a non-empty 1-D tensor")
    n = int(scores.numel())
    rank = math.ceil((n + 1) * (1.0 - alpha) - 1e-12)  # the 1e-12 absorbs (n+1)(1−α) rounding up past an integer
    if rank > n:
        return math.inf
    return float(torch.sort(scores.to(_F64)).values[rank - 1])


def prediction_sets(scores: torch.Tensor, q_hat: float, *, allow_empty: bool = False) -> torch.Tensor:
    """Boolean [N, K]: class y is in the set of row i when s(x_i, y) ≤ q̂; an empty row gets its
    lowest-score class (the top class) unless ``allow_empty``."""
    sets = scores <= q_hat
    if not allow_empty:
        empty = ~sets.any(dim=1)
        if bool(empty.any()):
            sets[empty, scores[empty].argmin(dim=1)] = True
    return sets


# --------------------------------------------------------------------------------------------------------
# calibration (with the RAPS parameter split)
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConformalCalibration:
    """Everything needed to form sets on new data: the method, its parameters and q̂ from n_calibration rows."""

    method: str
    alpha: float
    q_hat: float
    n_calibration: int
    randomized: bool
    allow_empty: bool
    temperature: float
    k_reg: int | None = None
    lam: float | None = None
    n_tune: int = 0
    seed: int = 0

    def scores(self, logits: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        return conformal_scores(logits, method=self.method, randomized=self.randomized, k_reg=self.k_reg or 1,
                                lam=self.lam or 0.0, temperature=self.temperature,
                                seed=self.seed + 1 if seed is None else seed)

    def sets(self, logits: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        return prediction_sets(self.scores(logits, seed=seed), self.q_hat, allow_empty=self.allow_empty)


def _true_scores(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return scores.gather(1, labels.to(scores.device, torch.int64)[:, None])[:, 0]


def _true_ranks(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    order = torch.sort(logits.to(_F64), dim=1, descending=True, stable=True).indices
    return (order == labels.to(order.device)[:, None]).to(torch.int64).argmax(dim=1) + 1


def _calibrate(logits, labels, *, method, alpha, randomized, allow_empty, temperature, k_reg, lam, seed,
               n_tune=0) -> ConformalCalibration:
    scores = conformal_scores(logits, method=method, randomized=randomized, k_reg=k_reg or 1, lam=lam or 0.0,
                              temperature=temperature, seed=seed)
    return ConformalCalibration(method=method, alpha=alpha, q_hat=conformal_quantile(_true_scores(scores, labels),
                                alpha=alpha), n_calibration=int(labels.shape[0]), randomized=randomized,
                                allow_empty=allow_empty, temperature=temperature,
                                k_reg=k_reg if method == "raps" else None, lam=lam if method == "raps" else None,
                                n_tune=n_tune, seed=seed)


def conformal_calibrate(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: Method = "lac",
    alpha: float = DEFAULT_ALPHA,
    randomized: bool = True,
    allow_empty: bool = False,
    temperature: float = 1.0,
    k_reg: int | None = None,
    lam: float | None = None,
    tune_fraction: float = DEFAULT_TUNE_FRACTION,
    lambda_grid: Sequence[float] = DEFAULT_LAMBDA_GRID,
    seed: int = 0,
) -> ConformalCalibration:
    """q̂ from calibration logits [N, K] and labels [N]; for RAPS without ``k_reg``/``lam``, first choose them
    on a random ``tune_fraction`` of the rows (``torch.Generator().manual_seed(seed)``) and calibrate on the rest.
    """
    _check_logits(logits, labels)
    method, alpha, temperature = _check_method(method), _check_alpha(alpha), _check_temperature(temperature)
    if method != "raps" or (k_reg is not None and lam is not None):
        return _calibrate(logits, labels, method=method, alpha=alpha, randomized=randomized,
                          allow_empty=allow_empty, temperature=temperature, k_reg=k_reg or 1, lam=lam or 0.0,
                          seed=seed)
    tune, rest = _tune_split(int(labels.shape[0]), tune_fraction, seed, labels.device)
    tune_logits, tune_labels = logits[tune], labels[tune]
    if k_reg is None:  # the (1−α) empirical quantile ("higher") of the true class's rank, as their pick_kreg
        ranks = torch.sort(_true_ranks(tune_logits, tune_labels)).values
        k_reg = int(ranks[math.ceil((ranks.numel() - 1) * (1.0 - alpha) - 1e-12)])
    if lam is None:
        best = None
        for candidate in lambda_grid:
            cal = _calibrate(tune_logits, tune_labels, method="raps", alpha=alpha, randomized=randomized,
                             allow_empty=allow_empty, temperature=temperature, k_reg=k_reg, lam=float(candidate),
                             seed=seed)
            size = float(cal.sets(tune_logits, seed=seed + 1).sum(dim=1).to(_F64).mean())
            if best is None or size < best[0]:
                best = (size, float(candidate))
        lam = best[1]
    return _calibrate(logits[rest], labels[rest], method="raps", alpha=alpha, randomized=randomized,
                      allow_empty=allow_empty, temperature=temperature, k_reg=k_reg, lam=float(lam), seed=seed,
                      n_tune=int(tune.numel()))


def _tune_split(n: int, tune_fraction: float, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The RAPS parameter-tuning rows and the calibration rows: a seeded random split of range(n)."""
    if isinstance(tune_fraction, bool) or not isinstance(tune_fraction, int | float) or not 0 < tune_fraction < 1:
        raise InputError(f"Expected argument `tune_fraction` to be in (0, 1), but got {tune_fraction!r}")
    n_tune = math.ceil(tune_fraction * n)
    if n_tune < 2 or n - n_tune < 2:
        raise InputError(f"RAPS needs a calibration set large enough to split off {tune_fraction:.0%} for "
                         f"choosing k_reg and λ; got {n} examples (pass k_reg and lam to skip the split)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
    return perm[:n_tune], perm[n_tune:]


# --------------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConformalCurvePoint:
    alpha: float
    q_hat: float
    coverage: float
    mean_size: float


@dataclass(frozen=True)
class ConformalReport:
    """Coverage and set sizes of one calibrated method on test data.

    ``coverage_by_size[s]`` = (number of test sets of size s, their coverage); ``coverage_by_class[k]`` =
    (test examples of class k, coverage among them) — conditional coverage, which split conformal does not
    guarantee. ``curve``: the same method recalibrated at each α of the grid.
    """

    calibration: ConformalCalibration
    n_test: int
    coverage: float
    mean_size: float
    median_size: float
    empty_fraction: float
    singleton_fraction: float
    size_histogram: tuple[int, ...]  # count of sets of size 0..K
    coverage_by_size: tuple[tuple[int, int, float], ...]  # (size, count, coverage), non-empty sizes only
    coverage_by_class: tuple[tuple[int, int, float], ...]  # (class, count, coverage), classes present only
    worst_class_coverage: float
    curve: tuple[ConformalCurvePoint, ...]

    @property
    def target(self) -> float:
        return 1.0 - self.calibration.alpha


def _coverage(sets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return sets.gather(1, labels.to(sets.device, torch.int64)[:, None])[:, 0]


def conformal_curve(cal_logits, cal_labels, test_logits, test_labels, *, alphas: Sequence[float] = DEFAULT_ALPHA_GRID,
                    **options) -> tuple[ConformalCurvePoint, ...]:
    """Coverage and mean set size on the test data with the method recalibrated at each α."""
    points = []
    for a in alphas:
        cal = conformal_calibrate(cal_logits, cal_labels, alpha=a, **options)
        sets = cal.sets(test_logits)
        points.append(ConformalCurvePoint(alpha=float(a), q_hat=cal.q_hat,
                                          coverage=float(_coverage(sets, test_labels).to(_F64).mean()),
                                          mean_size=float(sets.sum(dim=1).to(_F64).mean())))
    return tuple(points)


def conformal_report(
    cal_logits: torch.Tensor,
    cal_labels: torch.Tensor,
    test_logits: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    method: Method = "lac",
    alpha: float = DEFAULT_ALPHA,
    alphas: Sequence[float] = DEFAULT_ALPHA_GRID,
    **options,
) -> ConformalReport:
    """Calibrate on (cal_logits, cal_labels), then measure coverage and sizes on the test data.

    ``options`` are those of :func:`conformal_calibrate` (randomized, allow_empty, temperature, k_reg, lam,
    tune_fraction, lambda_grid, seed).
    """
    _check_logits(test_logits, test_labels, "test logits")
    if test_logits.shape[1] != cal_logits.shape[1]:
        raise InputError(f"calibration logits have {cal_logits.shape[1]} classes but test logits "
                         f"{test_logits.shape[1]}")
    cal = conformal_calibrate(cal_logits, cal_labels, method=method, alpha=alpha, **options)
    sets = cal.sets(test_logits)
    covered = _coverage(sets, test_labels).to(_F64)
    sizes = sets.sum(dim=1)
    k = test_logits.shape[1]
    hist = torch.bincount(sizes.cpu(), minlength=k + 1)
    by_size = []
    for s in torch.nonzero(hist).flatten().tolist():
        mask = sizes == s
        by_size.append((int(s), int(hist[s]), float(covered[mask].mean())))
    labels = test_labels.to(sizes.device, torch.int64)
    per_class_n = torch.bincount(labels, minlength=k).cpu()
    per_class_hit = torch.bincount(labels, weights=covered, minlength=k).cpu()
    by_class = [(c, int(per_class_n[c]), float(per_class_hit[c] / per_class_n[c]))
                for c in range(k) if per_class_n[c] > 0]
    curve_options, curve_logits, curve_labels = dict(options), cal_logits, cal_labels
    if cal.n_tune:  # RAPS tuned at α: the curve keeps k_reg, λ and calibrates on the same held-in rows
        _, rest = _tune_split(int(cal_labels.shape[0]), options.get("tune_fraction", DEFAULT_TUNE_FRACTION),
                              cal.seed, cal_labels.device)
        curve_options.update(k_reg=cal.k_reg, lam=cal.lam)
        curve_logits, curve_labels = cal_logits[rest], cal_labels[rest]
    curve = conformal_curve(curve_logits, curve_labels, test_logits, test_labels, alphas=alphas, method=method,
                            **curve_options)
    return ConformalReport(
        calibration=cal, n_test=int(test_labels.shape[0]), coverage=float(covered.mean()),
        mean_size=float(sizes.to(_F64).mean()), median_size=float(sizes.to(_F64).median()),
        empty_fraction=float((sizes == 0).to(_F64).mean()), singleton_fraction=float((sizes == 1).to(_F64).mean()),
        size_histogram=tuple(int(v) for v in hist.tolist()), coverage_by_size=tuple(by_size),
        coverage_by_class=tuple(by_class), worst_class_coverage=min(c for _, _, c in by_class), curve=curve)
