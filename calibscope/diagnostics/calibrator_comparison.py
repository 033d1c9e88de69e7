r"""Every calibrator fitted on one split and scored on another, side by side, with the best by a criterion.

For each method of :data:`~calibscope.diagnostics.calibrators.METHODS` that applies (Platt and beta only for
K = 2): fit on (``fit_logits``, ``fit_labels``), apply to ``eval_logits``, and compute on ``eval_labels`` the
calibration family of :func:`~calibscope.diagnostics.calibration.calibration_metrics` (ECE, classwise ECE,
NLL, Brier, accuracy…) with percentile bootstrap intervals, and the accuracy change against the uncalibrated
logits. The best method minimises the ``criterion`` (:data:`CRITERIA`) on the evaluation split; whether it
beats the runner-up beyond resampling noise is a *paired* bootstrap: the same resamples of the evaluation
examples score both, and the interval of (runner-up − best) is reported (it excludes 0 when the ranking is
stable under resampling).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import torch

from calibscope.diagnostics.calibration import CalibrationMetrics, _validate_logits_labels, calibration_metrics
from calibscope.diagnostics.calibrators import BINARY_METHODS, METHODS, Calibrator, apply_calibrator, fit_calibrator
from calibscope.errors import InputError

__all__ = ["CRITERIA", "CalibratorComparison", "MethodScore", "applicable_methods", "compare_calibrators"]

CRITERIA = ("nll", "ece", "sce", "brier")
DEFAULT_CRITERION = "nll"
DEFAULT_BOOTSTRAP = 200
UNCALIBRATED = "uncalibrated"


@dataclass(frozen=True, eq=False)
class MethodScore:
    """One method: its ``calibrator`` (None when it could not be fitted: ``skipped`` says why), its metrics on
    the evaluation split, ``accuracy_change`` = accuracy after − before, and ``intervals``: metric of
    :data:`TABLE_METRICS` (and ``accuracy_change``) → (low, high) 95 % paired percentile bootstrap."""

    method: str
    calibrator: Calibrator | None
    metrics: CalibrationMetrics | None
    accuracy_change: float
    skipped: str | None = None
    intervals: dict[str, tuple[float, float]] | None = None


@dataclass(frozen=True, eq=False)
class CalibratorComparison:
    """``scores``: the uncalibrated logits first, then each method; ``best``: the method with the smallest
    ``criterion``; ``runner_up`` and ``margin`` = (criterion(runner-up) − criterion(best), paired bootstrap
    low, high) on the evaluation split."""

    criterion: str
    scores: tuple[MethodScore, ...]
    best: str
    runner_up: str | None
    margin: tuple[float, float, float] | None
    n_fit: int
    n_eval: int
    num_classes: int
    bootstrap: int
    seed: int
    n_bins: int
    definition: dict[str, Any]

    def score(self, method: str) -> MethodScore:
        for s in self.scores:
            if s.method == method:
                return s
        raise KeyError(method)


def _interval(values: torch.Tensor, level: float = 0.95) -> tuple[float, float]:
    q = torch.quantile(values, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=values.dtype))
    return float(q[0]), float(q[1])


def applicable_methods(num_classes: int) -> tuple[str, ...]:
    """Every method that applies to K classes (Platt and beta need K = 2)."""
    return tuple(m for m in METHODS if num_classes == 2 or m not in BINARY_METHODS)


TABLE_METRICS = ("ece", "sce", "nll", "brier", "accuracy")


def _replicate_weights(n: int, bootstrap: int, seed: int) -> torch.Tensor:
    """[B, n] multiplicities of the n examples in B resamples with replacement (torch.Generator(seed))."""
    g = torch.Generator().manual_seed(int(seed))
    index = torch.randint(0, n, (int(bootstrap), n), generator=g)
    return torch.zeros(int(bootstrap), n, dtype=torch.float64).scatter_add_(
        1, index, torch.ones(int(bootstrap), n, dtype=torch.float64))


def _table_replicates(weights: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                      n_bins: int) -> dict[str, torch.Tensor]:
    """ECE, classwise ECE (SCE), NLL, Brier and accuracy of each weighted resample (rows of ``weights``),
    with the definitions of :func:`~calibscope.diagnostics.calibration.calibration_metrics`: the per-bin sums
    of every resample are ``weights @ per-example contributions``."""
    z = logits.to(torch.float64)
    n, k = z.shape
    log_p = torch.log_softmax(z, 1)
    p = log_p.exp()
    onehot = torch.nn.functional.one_hot(labels, k).to(torch.float64)
    conf, pred = p.max(1)
    right = (pred == labels).to(torch.float64)
    inner = torch.arange(1, n_bins, dtype=torch.float64) / n_bins
    top = torch.nn.functional.one_hot(torch.bucketize(conf, inner), n_bins).to(torch.float64)  # [n, M]
    total = weights.sum(1)  # = n
    s_conf, s_right = weights @ (top * conf[:, None]), weights @ (top * right[:, None])
    ece = (s_conf - s_right).abs().sum(1) / total
    cls = torch.nn.functional.one_hot(torch.bucketize(p, inner), n_bins).to(torch.float64)  # [n, K, M]
    c_prob = weights @ (cls * p[..., None]).reshape(n, -1)
    c_label = weights @ (cls * onehot[..., None]).reshape(n, -1)
    sce = (c_prob - c_label).abs().sum(1) / (total * k)
    return {"ece": ece, "sce": sce, "nll": weights @ (-(log_p * onehot).sum(1)) / total,
            "brier": weights @ ((p - onehot) ** 2).sum(1) / total, "accuracy": weights @ right / total}


def compare_calibrators(
    fit_logits: torch.Tensor,
    fit_labels: torch.Tensor,
    eval_logits: torch.Tensor,
    eval_labels: torch.Tensor,
    *,
    methods: tuple[str, ...] | list[str] | None = None,
    criterion: str = DEFAULT_CRITERION,
    n_bins: int = 15,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    **fit_options: Any,
) -> CalibratorComparison:
    """Fit each of ``methods`` (default: every applicable one) on the fit split, score all on the evaluation
    split (see the module docstring). ``fit_options`` go to
    :func:`~calibscope.diagnostics.calibrators.fit_calibrator` (``n_bins`` of histogram binning is
    ``fit_options["histogram_bins"]``)."""
    _validate_logits_labels(fit_logits, fit_labels)
    _validate_logits_labels(eval_logits, eval_labels)
    k = int(fit_logits.shape[1])
    if int(eval_logits.shape[1]) != k:
        raise InputError(f"The fit and evaluation logits have different widths ({k} and {eval_logits.shape[1]})")
    if criterion not in CRITERIA:
        raise InputError(f"Expected argument `criterion` to be one of {CRITERIA}, but got {criterion!r}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, numbers.Integral) or bootstrap < 0:
        raise InputError(f"Expected argument `bootstrap` to be an integer of at least 0, but got {bootstrap!r}")
    chosen = applicable_methods(k) if methods is None else tuple(methods)
    for m in chosen:
        if m not in METHODS:
            raise InputError(f"Unknown calibration method {m!r}; choose from {', '.join(METHODS)} or all")
        if m in BINARY_METHODS and k != 2:
            raise InputError(f"The {m} calibrator is for two classes, but the logits have K = {k}")
    histogram_bins = fit_options.pop("histogram_bins", None)
    if histogram_bins is not None:
        fit_options["n_bins"] = histogram_bins
    y = eval_labels.to(torch.int64).cpu()
    z0 = eval_logits.to("cpu", torch.float64)
    weights = _replicate_weights(int(z0.shape[0]), int(bootstrap), seed) if bootstrap else None
    replicates: dict[str, dict[str, torch.Tensor]] = {}

    def score(method: str, cal: Calibrator | None, z: torch.Tensor) -> MethodScore:
        metrics = calibration_metrics(z, y, n_bins=n_bins)
        change = metrics.value("accuracy") - base_accuracy if cal is not None else 0.0
        intervals = None
        if weights is not None:
            replicates[method] = _table_replicates(weights, z, y, n_bins)
            replicates[method]["accuracy_change"] = (replicates[method]["accuracy"]
                                                     - replicates.get(UNCALIBRATED, replicates[method])["accuracy"])
            intervals = {name: _interval(r) for name, r in replicates[method].items()}
        return MethodScore(method, cal, metrics, change, intervals=intervals)

    base_accuracy = float((z0.argmax(1) == y).to(torch.float64).mean())
    scores = [score(UNCALIBRATED, None, z0)]
    for m in chosen:
        try:
            cal = fit_calibrator(fit_logits, fit_labels, method=m, **fit_options)
        except InputError as exc:
            scores.append(MethodScore(m, None, None, float("nan"), skipped=str(exc)))
            continue
        scores.append(score(m, cal, apply_calibrator(cal, z0)))
    ranked = sorted((s for s in scores if s.metrics is not None), key=lambda s: s.metrics.value(criterion))
    best = ranked[0].method
    runner_up = ranked[1].method if len(ranked) > 1 else None
    margin = None
    if runner_up is not None:
        point = ranked[1].metrics.value(criterion) - ranked[0].metrics.value(criterion)
        low, high = (float("nan"), float("nan")) if weights is None else _interval(
            replicates[runner_up][criterion] - replicates[best][criterion])
        margin = (point, low, high)
    return CalibratorComparison(
        criterion=criterion, scores=tuple(scores), best=best, runner_up=runner_up, margin=margin,
        n_fit=int(fit_logits.shape[0]), n_eval=int(eval_logits.shape[0]), num_classes=k, bootstrap=int(bootstrap),
        seed=int(seed), n_bins=int(n_bins),
        definition={
            "protocol": "each calibrator fitted on the fit split, every metric computed on the evaluation split",
            "best": f"smallest {criterion} on the evaluation split (the uncalibrated logits compete too)",
            "margin": "criterion(runner-up) - criterion(best) with a 95 % paired percentile bootstrap over the "
                      f"evaluation examples ({bootstrap} resamples, torch.Generator seed {seed})",
            "intervals": "95 % percentile bootstrap of ece, sce, nll, brier, accuracy and accuracy change, the same "
                         f"{bootstrap} resamples of the evaluation examples for every method (paired)",
        },
    )
