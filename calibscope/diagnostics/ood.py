r"""Out-of-distribution (OOD) detection: confidence scores and threshold-free detection metrics.

A detector scores every input; **higher means "more in-distribution"** for every score here. In-distribution
examples are the *positives*, as in Hendrycks & Gimpel 2017 (AUROC, AUPR-In) and Liu et al. 2020 (FPR at
95 % TPR); AUPR-Out swaps the roles (OOD positive, scores negated).

Scores, with logits :math:`z \in \mathbb{R}^K` and temperature :math:`T > 0`:

.. math::

    \text{msp}(x) = \max_k \operatorname{softmax}(z / T)_k
        \quad\text{(maximum softmax probability; Hendrycks \& Gimpel, ICLR 2017)}

    \text{max-logit}(x) = \max_k z_k
        \quad\text{(Hendrycks et al., ICML 2022, "Scaling OOD detection")}

    \text{energy}(x) = -E(x) = T \log \sum_k e^{z_k / T}
        \quad\text{(Liu, Wang, Owens \& Li, NeurIPS 2020, Eq. 1)}

    \text{mahalanobis}(x) = -\min_c\, (f(x) - \hat\mu_c)^\top \hat\Sigma^{-1} (f(x) - \hat\mu_c)
        \quad\text{(Lee, Lee, Lee \& Shin, NeurIPS 2018, Eq. 2)}

where :math:`f(x)` are the penultimate features (the input of the final linear layer), :math:`\hat\mu_c` the
class means of the *training* features and :math:`\hat\Sigma` their shared ("tied") covariance, shrunk
towards a scaled identity (:func:`fit_class_gaussians`). Lee et al.'s input pre-processing and multi-layer
feature ensemble are not applied: this is the plain last-layer score.

Metrics (:func:`detection_metrics`) are computed exactly from the sorted scores. Tied scores form one
threshold, so they are handled as scikit-learn does: AUROC equals ``sklearn.metrics.roc_auc_score`` (the
trapezoid over the ROC's distinct thresholds = the Mann–Whitney statistic with ties counted ½), AUPR equals
``average_precision_score`` (step-wise, no interpolation), and the ROC curve equals ``roc_curve``.

The functions are pure: no I/O, no printing, and they run on the device the tensors are on (sorting and
cumulative sums only; float64 throughout).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from calibscope.diagnostics.ensemble import EPISTEMIC_SCORES  # need ensemble members / MC-dropout passes
from calibscope.errors import InputError

__all__ = [
    "DEFAULT_POSITIVE",
    "EPISTEMIC_SCORES",
    "DETECTOR_SCORES",
    "SCORE_NEEDS",
    "LOGIT_SCORES",
    "POSITIVES",
    "SCORES",
    "ClassGaussians",
    "DetectionMetrics",
    "OodReport",
    "OodScoreResult",
    "RocCurve",
    "ScoreHistogram",
    "check_positive",
    "confidence_score",
    "detection_metrics",
    "energy_score",
    "fit_class_gaussians",
    "mahalanobis_score",
    "max_logit_score",
    "max_softmax_score",
    "ood_report",
    "parse_scores",
    "roc_curve",
    "score_histogram",
]

Score = str  # a name of SCORES
LOGIT_SCORES: tuple[str, ...] = ("msp", "max-logit", "energy")  # need only the logits
# Post-hoc detectors computed by calibscope.workflows.ood_scores (they need features + the classifier layer,
# in-distribution fit data, the model's input gradients or several layers: see SCORE_NEEDS).
DETECTOR_SCORES: tuple[str, ...] = ("odin", "knn", "vim", "react", "ash", "gradnorm", "gram")
SCORES: tuple[str, ...] = LOGIT_SCORES + ("mahalanobis",) + EPISTEMIC_SCORES + DETECTOR_SCORES
# What each score needs besides the logits: "features" (penultimate features and the final layer's W, b),
# "train" (labelled in-distribution fit data), "model" (the model itself: input gradients or hooked layers),
# "members" (the logits of ensemble members / MC-dropout passes: calibscope.diagnostics.ensemble).
# To add a score: its name in SCORES, an entry here and in _FORMULAS/_REFERENCES, and its computation in
# calibscope.workflows.ood_scores.DetectorScorer.score (or a branch of confidence_score when it needs only
# the logits).
SCORE_NEEDS: dict[str, frozenset[str]] = {
    "msp": frozenset(), "max-logit": frozenset(), "energy": frozenset(),
    "mahalanobis": frozenset({"features", "train"}), "odin": frozenset({"model"}),
    "knn": frozenset({"features", "train"}), "vim": frozenset({"features", "train"}),
    "react": frozenset({"features", "train"}), "ash": frozenset({"features"}), "gradnorm": frozenset({"features"}),
    "gram": frozenset({"model", "train"}),
    "mutual-information": frozenset({"members"}), "disagreement": frozenset({"members"}),
}
_ALIASES = {"max_logit": "max-logit", "maxlogit": "max-logit", "max-softmax": "msp", "max_softmax": "msp",
            "maha": "mahalanobis", "mi": "mutual-information", "mutual_information": "mutual-information",
            "bald": "mutual-information",
            "gram-matrix": "gram", "grad-norm": "gradnorm"}
_F64 = torch.float64
_REFERENCES = {
    "msp": "Hendrycks & Gimpel 2017, A Baseline for Detecting Misclassified and Out-of-Distribution Examples",
    "max-logit": "Hendrycks et al. 2022, Scaling Out-of-Distribution Detection for Real-World Settings",
    "energy": "Liu et al. 2020, Energy-based Out-of-distribution Detection, Eq. 1",
    "mahalanobis": "Lee et al. 2018, A Simple Unified Framework for Detecting Out-of-Distribution Samples "
                   "and Adversarial Attacks, Eq. 2 (last layer, no input pre-processing)",
    "mutual-information": "Houlsby et al. 2011, Bayesian Active Learning for Classification and Preference "
                          "Learning, Eq. 2 (BALD); Gal 2016, Uncertainty in Deep Learning, §3.3.1",
    "disagreement": "variance of the members' probability of the predicted class (the MC-dropout sample "
                    "spread of Kendall et al. 2017, Bayesian SegNet, at the predicted class)",
    "odin": "Liang, Li & Srikant 2018, Enhancing the Reliability of Out-of-distribution Image Detection in Neural "
            "Networks (ICLR)",
    "knn": "Sun, Ming, Zhu & Li 2022, Out-of-Distribution Detection with Deep Nearest Neighbors (ICML)",
    "vim": "Wang, Li, Zhang & Tan 2022, ViM: Out-Of-Distribution with Virtual-logit Matching (CVPR)",
    "react": "Sun, Guo & Li 2021, ReAct: Out-of-distribution Detection With Rectified Activations (NeurIPS)",
    "ash": "Djurisic, Bozanic, Ashok & Liu 2023, Extremely Simple Activation Shaping for Out-of-Distribution "
           "Detection (ICLR)",
    "gradnorm": "Huang, Geng & Li 2021, On the Importance of Gradients for Detecting Distributional Shifts in the "
                "Wild (NeurIPS)",
    "gram": "Sastry & Oore 2020, Detecting Out-of-Distribution Examples with In-distribution Examples and Gram "
            "Matrices (ICML)",
}
_FORMULAS = {
    "msp": "max_k softmax(z/T)_k",
    "max-logit": "max_k z_k",
    "energy": "T * logsumexp(z/T)  (= -E(x))",
    "mahalanobis": "-min_c (f(x) - mu_c)^T Sigma^-1 (f(x) - mu_c)",
    "mutual-information": "-(H(p_bar) - (1/S) sum_s H(p_s)),  p_bar = (1/S) sum_s softmax(z_s)",
    "disagreement": "-(1/S) sum_s (p_s(y_hat) - p_bar(y_hat))^2,  y_hat = argmax p_bar",
    "odin": "max_k softmax(f(x~)/T)_k, x~ = x - eps sign(grad_x CE(f(x)/T, argmax f(x)))",
    "knn": "-|| f^(x) - f^_(k) ||_2, f^ = f/||f||, k-th nearest normalised training feature",
    "vim": "logsumexp(z) - alpha ||R^T (f - u)||, u = -W^+ b, R = residual principal subspace",
    "react": "logsumexp(W min(f, c) + b), c = percentile of the training activations",
    "ash": "logsumexp(W ash(f) + b), ash = keep the top (1 - percentile) activations (-p: as is, -b: binarised "
           "to the mean mass, -s: scaled by exp(sum f / sum kept))",
    "gradnorm": "(1/T) ||softmax(z/T) - 1/K||_1 ||f||_1  (= ||dCE(uniform)/dW||_1)",
    "gram": "-sum_l delta_l(x) / E_val[delta_l], delta_l = deviation of the row-summed p-th order Gram matrices "
            "of layer l from the class-wise [min, max] of the fit data (predicted class), p = 1..P",
}


# --------------------------------------------------------------------------------------------------------
# validation (once, at the edge)
# --------------------------------------------------------------------------------------------------------


def _validate_tensor(value: Any, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise InputError(f"Expected argument `{name}` to be a torch.Tensor, but got {type(value).__name__}")


def _validate_matrix(value: Any, name: str, what: str = "[N, K]") -> None:
    _validate_tensor(value, name)
    if value.ndim != 2:
        raise InputError(f"Expected argument `{name}` to have shape {what}, but got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise InputError(f"Expected argument `{name}` to be a floating point tensor, but got dtype {value.dtype}")
    if value.numel() and not bool(torch.isfinite(value).all()):
        raise InputError(f"Expected argument `{name}` to hold only finite values, but found NaN or infinity")


def _validate_logits(logits: Any, name: str = "logits") -> None:
    _validate_matrix(logits, name)
    if logits.shape[1] < 2:
        raise InputError(f"Expected argument `{name}` to have at least 2 classes (shape [N, K], K >= 2), "
                         f"but got K = {logits.shape[1]}")


def _validate_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise InputError(f"Expected argument `temperature` to be a positive number, but got {temperature!r}")
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise InputError(f"Expected argument `temperature` to be a positive finite number, but got {temperature!r}")
    return t


def _validate_scores(scores: Any, name: str, *, what: str) -> None:
    _validate_tensor(scores, name)
    if scores.ndim != 1 or not scores.is_floating_point():
        raise InputError(f"Expected argument `{name}` to be a 1-D floating point tensor, but got shape "
                         f"{tuple(scores.shape)} and dtype {scores.dtype}")
    if scores.shape[0] == 0:
        raise InputError(f"Expected at least one {what} score in `{name}`, but got 0")
    if bool(torch.isnan(scores).any()):
        raise InputError(f"Expected argument `{name}` to contain no NaN, but found {int(torch.isnan(scores).sum())}")


def _validate_pair(in_scores: Any, out_scores: Any) -> None:
    _validate_scores(in_scores, "in_scores", what="in-distribution")
    _validate_scores(out_scores, "out_scores", what="out-of-distribution")
    if in_scores.device != out_scores.device:
        raise InputError(f"Expected `in_scores` and `out_scores` on the same device, but got {in_scores.device} "
                         f"and {out_scores.device}")


def parse_scores(scores: str | Sequence[str]) -> tuple[str, ...]:
    """Canonical score names from ``"msp,energy"`` or a sequence; aliases ``max_logit``, ``maxlogit`` accepted.

    Example:
        >>> parse_scores("MSP, max_logit,energy")
        ('msp', 'max-logit', 'energy')
    """
    items = scores.split(",") if isinstance(scores, str) else list(scores)
    names: list[str] = []
    for item in items:
        key = str(item).strip().lower()
        if not key:
            continue
        key = _ALIASES.get(key, key)
        if key not in SCORES:
            raise InputError(f"Expected every score to be one of {', '.join(SCORES)}, but got {str(item).strip()!r}")
        if key not in names:
            names.append(key)
    if not names:
        raise InputError(f"Expected at least one score (one of {', '.join(SCORES)}), but got none")
    return tuple(names)


# --------------------------------------------------------------------------------------------------------
# scores from logits
# --------------------------------------------------------------------------------------------------------


def max_softmax_score(logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    r"""Maximum softmax probability (Hendrycks & Gimpel 2017), optionally at a temperature (Guo et al. 2017).

    .. math::

        s(x) = \max_k \operatorname{softmax}(z/T)_k = \exp\bigl(\max_k z_k/T - \log\textstyle\sum_k e^{z_k/T}\bigr)

    Args:
        logits: ``[N, K]`` floating tensor, finite.
        temperature: T > 0 (1 = the model's own probabilities; a fitted T changes the ranking across inputs).

    Returns:
        float64 ``[N]`` in (0, 1], on the logits' device. Saturated rows give exactly 1.0 (ties).

    Example:
        >>> max_softmax_score(torch.tensor([[2.0, 0.0], [0.0, 0.0]])).tolist()
        [0.8807970779778823, 0.5]
    """
    _validate_logits(logits)
    t = _validate_temperature(temperature)
    z = logits.to(_F64) / t
    return (z.max(dim=1).values - torch.logsumexp(z, dim=1)).exp()


def max_logit_score(logits: torch.Tensor) -> torch.Tensor:
    r"""Maximum logit :math:`s(x) = \max_k z_k` (Hendrycks et al. 2022); float64 ``[N]``.

    Invariant to temperature up to scale, so its ranking (and every metric here) does not depend on T.

    Example:
        >>> max_logit_score(torch.tensor([[2.0, 0.0], [0.0, -1.0]])).tolist()
        [2.0, 0.0]
    """
    _validate_logits(logits)
    return logits.to(_F64).max(dim=1).values


def energy_score(logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    r"""Negative free energy (Liu et al. 2020, Eq. 1 and §2): higher = more in-distribution.

    .. math:: E(x; f) = -T \log \sum_{k=1}^{K} e^{f_k(x)/T}, \qquad s(x) = -E(x; f) = T \operatorname{logsumexp}(z/T)

    Args:
        logits: ``[N, K]`` floating tensor, finite.
        temperature: T > 0 (Liu et al. use T = 1).

    Returns:
        float64 ``[N]`` on the logits' device.

    Example:
        >>> energy_score(torch.tensor([[0.0, 0.0]])).tolist()  # log 2
        [0.6931471805599453]
    """
    _validate_logits(logits)
    t = _validate_temperature(temperature)
    return t * torch.logsumexp(logits.to(_F64) / t, dim=1)


# --------------------------------------------------------------------------------------------------------
# Mahalanobis (Lee et al. 2018): class-conditional Gaussians with a shared covariance
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ClassGaussians:
    """Class means and a shared (tied) covariance of training features: the result of :func:`fit_class_gaussians`.

    ``classes``: the class indices that had training examples (``[C]`` long tensor, sorted); ``means``:
    float64 ``[C, D]``, row c the mean of class ``classes[c]``; ``covariance``: the shrunk shared covariance
    float64 ``[D, D]``; ``precision``: its inverse; ``shrinkage``: the δ used (0 = none, 1 = the scaled
    identity); ``shrinkage_method``: ``"ledoit-wolf"`` or ``"fixed"``; ``class_counts``: training examples per
    class of ``classes``; ``n``: training examples; ``eigenvalue_range``: the smallest and largest eigenvalue
    of ``covariance`` (its conditioning).
    """

    classes: torch.Tensor
    means: torch.Tensor
    covariance: torch.Tensor
    precision: torch.Tensor
    shrinkage: float
    shrinkage_method: str
    class_counts: tuple[int, ...]
    n: int
    eigenvalue_range: tuple[float, float]

    @property
    def feature_dim(self) -> int:
        return int(self.means.shape[1])

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no tensors) for results and reports."""
        return {
            "n_train": self.n,
            "feature_dim": self.feature_dim,
            "classes": self.classes.tolist(),
            "class_counts": list(self.class_counts),
            "shrinkage": self.shrinkage,
            "shrinkage_method": self.shrinkage_method,
            "covariance_eigenvalue_range": list(self.eigenvalue_range),
            "covariance": "shared (tied) across classes, (1/N) sum_i (f_i - mu_{y_i})(f_i - mu_{y_i})^T, "
                          "shrunk: (1 - delta) S + delta (tr S / D) I",
        }


def _ledoit_wolf_shrinkage(x: torch.Tensor, s: torch.Tensor) -> float:
    r"""Ledoit & Wolf (2004) optimal δ for centred rows ``x`` ``[N, D]`` with ``s = xᵀx / N``.

    :math:`\mu = \operatorname{tr} S / D`, :math:`d^2 = \|S - \mu I\|_F^2 / D`,
    :math:`b^2 = \min\bigl(d^2, \tfrac{1}{D N^2} \sum_i \|x_i x_i^\top - S\|_F^2\bigr)`, δ = b²/d² — the
    formula of ``sklearn.covariance.ledoit_wolf_shrinkage(x, assume_centered=True)``.
    """
    n, d = x.shape
    mu = torch.trace(s) / d
    s2 = (s * s).sum()  # ||S||_F^2
    delta = (s2 - 2 * mu * torch.trace(s) + d * mu * mu) / d  # ||S - mu I||_F^2 / D
    row_sq = (x * x).sum(dim=1)
    # (1 / N^2) sum_i ||x_i x_i^T - S||_F^2 = (1/N) (mean_i ||x_i||^4 - ||S||_F^2)
    beta = ((row_sq * row_sq).sum() / n - s2) / (n * d)
    beta = torch.minimum(beta, delta)
    return 0.0 if float(beta) <= 0 or float(delta) <= 0 else float(beta / delta)


def fit_class_gaussians(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    shrinkage: float | Literal["ledoit-wolf"] = "ledoit-wolf",
) -> ClassGaussians:
    r"""Class means and one shared covariance of training features (Lee et al. 2018, §2, Eq. 1), shrunk.

    .. math::

        \hat\mu_c = \frac{1}{N_c} \sum_{i: y_i = c} f_i, \qquad
        S = \frac{1}{N} \sum_{c} \sum_{i: y_i = c} (f_i - \hat\mu_c)(f_i - \hat\mu_c)^\top, \qquad
        \hat\Sigma = (1 - \delta)\, S + \delta\, \frac{\operatorname{tr} S}{D}\, I.

    Penultimate ReLU features often have dead units and fewer examples than dimensions, so S is routinely
    singular; Lee et al. take a pseudo-inverse. We shrink instead: ``shrinkage="ledoit-wolf"`` (default)
    picks δ by Ledoit & Wolf, *A well-conditioned estimator for large-dimensional covariance matrices*,
    J. Multivariate Anal. 2004 (the formula of ``sklearn.covariance.ledoit_wolf`` on the class-centred
    features with ``assume_centered=True``); a number in [0, 1] fixes δ (0 = Lee et al.'s plain estimate).

    Args:
        features: ``[N, D]`` floating tensor of training features, finite.
        labels: ``[N]`` integer class indices ≥ 0 on the same device. Classes without examples are left out.
        shrinkage: ``"ledoit-wolf"`` or δ in [0, 1].

    Returns:
        :class:`ClassGaussians` (float64, on the features' device).

    Raises:
        InputError: bad arguments, or :math:`\hat\Sigma` numerically singular (smallest eigenvalue ≤
            ``D · eps · largest``, numpy's ``matrix_rank`` tolerance) — e.g. ``shrinkage=0`` with fewer
            examples than dimensions, or features with no variance at all.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> f = torch.randn(200, 3, generator=g, dtype=torch.float64); y = torch.arange(200) % 2
        >>> fit = fit_class_gaussians(f, y, shrinkage=0.1)
        >>> fit.means.shape, fit.shrinkage, fit.class_counts
        (torch.Size([2, 3]), 0.1, (100, 100))
    """
    _validate_matrix(features, "features", "[N, D]")
    _validate_tensor(labels, "labels")
    n = int(features.shape[0])
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InputError(f"Expected argument `labels` to have shape [{n}] (one per row of `features`), but got "
                         f"shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise InputError(f"Expected argument `labels` to be an integer tensor, but got dtype {labels.dtype}")
    if labels.device != features.device:
        raise InputError(f"Expected `features` and `labels` on the same device, but got {features.device} and "
                         f"{labels.device}")
    if n < 2:
        raise InputError(f"Expected at least 2 training examples to fit class Gaussians, but got {n}")
    if int(labels.min()) < 0:
        raise InputError(f"Expected every label to be >= 0, but got {int(labels.min())}")
    if isinstance(shrinkage, str):
        if shrinkage != "ledoit-wolf":
            raise InputError(f"Expected argument `shrinkage` to be 'ledoit-wolf' or a number in [0, 1], but got "
                             f"{shrinkage!r}")
    elif isinstance(shrinkage, bool) or not isinstance(shrinkage, numbers.Real) or not 0 <= shrinkage <= 1:
        raise InputError(f"Expected argument `shrinkage` to be 'ledoit-wolf' or a number in [0, 1], but got "
                         f"{shrinkage!r}")

    x = features.to(_F64)
    y = labels.to(torch.int64)
    classes, index, counts = torch.unique(y, sorted=True, return_inverse=True, return_counts=True)
    c, d = int(classes.shape[0]), int(x.shape[1])
    sums = torch.zeros(c, d, dtype=_F64, device=x.device).index_add_(0, index, x)
    means = sums / counts[:, None].to(_F64)
    centred = x - means[index]
    s = centred.T @ centred / n
    s = (s + s.T) / 2  # exactly symmetric
    if shrinkage == "ledoit-wolf":
        delta, method = _ledoit_wolf_shrinkage(centred, s), "ledoit-wolf"
    else:
        delta, method = float(shrinkage), "fixed"
    mu = torch.trace(s) / d
    cov = (1 - delta) * s + delta * mu * torch.eye(d, dtype=_F64, device=x.device)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    low, high = float(eigenvalues[0]), float(eigenvalues[-1])
    tolerance = high * d * torch.finfo(_F64).eps
    if not high > 0 or low <= tolerance:
        hint = ("the features have no variance within classes" if not high > 0 else
                f"shrinkage {delta:.3g} ({method}) leaves it singular; use shrinkage 'ledoit-wolf' or a larger δ, "
                f"or more training examples ({n} for {d} feature dimensions)")
        raise InputError(f"the shared covariance of the training features is singular (eigenvalues in "
                         f"[{low:.3g}, {high:.3g}], {d} dimensions): {hint}")
    precision = (eigenvectors / eigenvalues) @ eigenvectors.T
    precision = (precision + precision.T) / 2
    return ClassGaussians(classes=classes, means=means, covariance=cov, precision=precision, shrinkage=delta,
                          shrinkage_method=method, class_counts=tuple(int(k) for k in counts.tolist()), n=n,
                          eigenvalue_range=(low, high))


def mahalanobis_score(features: torch.Tensor, gaussians: ClassGaussians) -> torch.Tensor:
    r"""Negative squared Mahalanobis distance to the closest class mean (Lee et al. 2018, Eq. 2).

    .. math:: M(x) = \max_c \; -(f(x) - \hat\mu_c)^\top \hat\Sigma^{-1} (f(x) - \hat\mu_c)

    Computed as :math:`\|L^\top f - L^\top \hat\mu_c\|^2` with the Cholesky factor :math:`\hat\Sigma^{-1} = L L^\top`
    (matrix products in float64; the squared distance is clamped at 0 against rounding).

    Args:
        features: ``[N, D]`` floating tensor (penultimate features of the inputs to score), finite.
        gaussians: from :func:`fit_class_gaussians` on training features of the same layer, same device.

    Returns:
        float64 ``[N]`` ≤ 0 on the features' device.
    """
    _validate_matrix(features, "features", "[N, D]")
    if not isinstance(gaussians, ClassGaussians):
        raise InputError(f"Expected argument `gaussians` to be ClassGaussians (fit_class_gaussians), but got "
                         f"{type(gaussians).__name__}")
    if features.shape[1] != gaussians.feature_dim:
        raise InputError(f"Expected features with {gaussians.feature_dim} dimensions (as the training features), "
                         f"but got {features.shape[1]}")
    if features.device != gaussians.means.device:
        raise InputError(f"Expected `features` on {gaussians.means.device} like the fitted Gaussians, but got "
                         f"{features.device}")
    w = torch.linalg.cholesky(gaussians.precision)  # precision = W W^T
    u = features.to(_F64) @ w  # [N, D]
    m = gaussians.means @ w  # [C, D]
    d2 = (u * u).sum(1, keepdim=True) - 2 * (u @ m.T) + (m * m).sum(1)[None, :]
    return -d2.clamp_min(0).min(dim=1).values


def confidence_score(
    logits: torch.Tensor,
    *,
    score: Score = "msp",
    temperature: float = 1.0,
    features: torch.Tensor | None = None,
    gaussians: ClassGaussians | None = None,
    member_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """One of :data:`SCORES` by name (higher = more confident / more in-distribution); float64 ``[N]``.

    ``features`` and ``gaussians`` are needed only for ``"mahalanobis"``; ``temperature`` applies to ``"msp"``
    and ``"energy"``; ``member_logits`` ``[S, N, K]`` (the members of an ensemble or the MC-dropout passes) only
    for the epistemic scores ``"mutual-information"`` and ``"disagreement"``, which enter negated
    (:func:`calibscope.diagnostics.ensemble.epistemic_confidence`).
    """
    (name,) = parse_scores([score]) if isinstance(score, str) else (None,)
    if name is None:
        raise InputError(f"Expected argument `score` to be one of {', '.join(SCORES)}, but got {score!r}")
    if name in EPISTEMIC_SCORES:
        from calibscope.diagnostics.ensemble import epistemic_confidence, member_log_probs

        if member_logits is None or member_logits.ndim != 3 or member_logits.shape[0] < 2:
            raise InputError(f"the '{name}' score measures how much several predictive distributions disagree: "
                             "it needs the members of an ensemble or MC-dropout passes (--ensemble with several "
                             "checkpoints, or --mc-dropout N with N ≥ 2)")
        if member_logits.shape[1:] != logits.shape:
            raise InputError(f"Expected `member_logits` of shape [S, {logits.shape[0]}, {logits.shape[1]}], but got "
                             f"{tuple(member_logits.shape)}")
        return epistemic_confidence(member_log_probs(member_logits), score=name)
    if name == "msp":
        return max_softmax_score(logits, temperature=temperature)
    if name == "max-logit":
        return max_logit_score(logits)
    if name == "energy":
        return energy_score(logits, temperature=temperature)
    if name in DETECTOR_SCORES:
        raise InputError(f"the {name!r} detector needs more than logits and is computed by "
                         "calibscope.workflows.ood_scores (calibscope ood / selective --score)")
    if gaussians is None:
        raise InputError("the 'mahalanobis' score needs class Gaussians fitted on training features "
                         "(fit_class_gaussians; --train TRAIN on the command line)")
    if features is None:
        raise InputError("the 'mahalanobis' score needs penultimate features of the inputs it scores; a logits "
                         "file has none — pass a model checkpoint (.pt2, safetensors, state_dict)")
    if features.shape[0] != logits.shape[0]:
        raise InputError(f"Expected one row of `features` per row of `logits`, but got {features.shape[0]} and "
                         f"{logits.shape[0]}")
    return mahalanobis_score(features, gaussians)


# --------------------------------------------------------------------------------------------------------
# metrics from sorted scores
# --------------------------------------------------------------------------------------------------------


def _ranked_counts(positive: torch.Tensor, negative: torch.Tensor):
    """Distinct thresholds (descending) and the cumulative positives / negatives scoring ≥ each one.

    Returns ``thresholds`` float64 ``[T]``, ``tp`` and ``fp`` int64 ``[T]``: a threshold is a distinct score
    value, and all tied examples enter together (scikit-learn's ``_binary_clf_curve``).
    """
    scores = torch.cat([positive.to(_F64), negative.to(_F64)])
    is_pos = torch.cat([torch.ones(positive.shape[0], dtype=torch.int64, device=scores.device),
                        torch.zeros(negative.shape[0], dtype=torch.int64, device=scores.device)])
    s, order = torch.sort(scores, descending=True, stable=True)
    y = is_pos[order]
    last = torch.nonzero(s[1:] != s[:-1]).flatten()  # last index of each run of equal scores, but the final one
    ends = torch.cat([last, torch.tensor([s.shape[0] - 1], device=s.device)])
    tp = torch.cumsum(y, 0)[ends]
    fp = ends + 1 - tp
    return s[ends], tp, fp


Positive = Literal["in", "ood"]
POSITIVES: tuple[str, ...] = ("ood", "in")
DEFAULT_POSITIVE: Positive = "ood"  # pytorch-ood, torch-uncertainty, OpenOOD: OOD is the class to detect


def check_positive(positive: Any) -> Positive:
    """``"in"`` or ``"ood"`` (aliases ``id``, ``in-distribution``, ``out``)."""
    key = {"id": "in", "in-distribution": "in", "out": "ood", "ood": "ood", "in": "in"}.get(
        str(positive).strip().lower()) if isinstance(positive, str) else None
    if key is None:
        raise InputError(f"Expected argument `positive` to be 'in' or 'ood', but got {positive!r}")
    return key  # type: ignore[return-value]


@dataclass(frozen=True)
class DetectionMetrics:
    r"""Threshold-free OOD detection metrics of one score.

    ``auroc``: area under the ROC, :math:`P(s_\text{in} > s_\text{out}) + \tfrac12 P(s_\text{in} = s_\text{out})`
    (the same whichever class is positive); ``aupr_in``: average precision with in-distribution positive;
    ``aupr_out``: average precision with OOD positive and scores negated (both always reported, named by
    their positive class); ``fpr_at_tpr``: with ``positive="ood"`` (default) the fraction of
    *in-distribution* inputs flagged as OOD at the threshold that detects at least ``tpr_level`` of the OOD
    inputs; with ``positive="in"`` the fraction of OOD inputs accepted at the threshold that accepts at least
    ``tpr_level`` of the in-distribution inputs. ``threshold_at_tpr``: that threshold on the score (OOD
    positive: flag ``score <= threshold``; in positive: accept ``score >= threshold``);
    ``tpr_at_threshold``: the TPR there (≥ ``tpr_level``, more when ties straddle it); ``positive``: the
    class of the FPR metric; ``n_in``, ``n_out``: examples on each side.
    """

    auroc: float
    aupr_in: float
    aupr_out: float
    fpr_at_tpr: float
    threshold_at_tpr: float
    tpr_at_threshold: float
    tpr_level: float
    n_in: int
    n_out: int
    positive: str = DEFAULT_POSITIVE


def _average_precision(tp: torch.Tensor, fp: torch.Tensor) -> float:
    """Σ_k (R_k − R_{k−1}) P_k over distinct thresholds (scikit-learn's ``average_precision_score``)."""
    tp_f, fp_f = tp.to(_F64), fp.to(_F64)
    gained = torch.diff(tp_f, prepend=tp_f.new_zeros(1))
    precision = tp_f / (tp_f + fp_f)  # every threshold holds ≥ 1 example: no 0/0
    return float((gained * precision).sum() / tp_f[-1])


def _oriented(in_scores: torch.Tensor, out_scores: torch.Tensor, positive: str
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(positive scores, negative scores, sign): the positive class scored higher = more positive."""
    if positive == "in":
        return in_scores.to(_F64), out_scores.to(_F64), 1.0
    return -out_scores.to(_F64), -in_scores.to(_F64), -1.0


def detection_metrics(
    in_scores: torch.Tensor, out_scores: torch.Tensor, *, tpr_level: float = 0.95,
    positive: Positive = DEFAULT_POSITIVE,
) -> DetectionMetrics:
    r"""AUROC, AUPR-In, AUPR-Out and FPR at ``tpr_level`` TPR, exactly, from sorted scores.

    With the positive class's scores oriented so that higher = more positive (OOD positive: the negated
    scores), thresholds :math:`t_1 > \dots > t_T` the distinct values, :math:`TP_k = \#\{\text{positives} \ge
    t_k\}`, :math:`FP_k = \#\{\text{negatives} \ge t_k\}`, P and N the class sizes, :math:`TP_0 = FP_0 = 0`:

    .. math::

        \mathrm{AUROC} = \frac{1}{2PN} \sum_{k=1}^{T} (FP_k - FP_{k-1})(TP_k + TP_{k-1}), \qquad
        \mathrm{AUPR} = \sum_{k=1}^{T} \frac{TP_k - TP_{k-1}}{P} \cdot \frac{TP_k}{TP_k + FP_k},

        \mathrm{FPR@TPR}_{q} = \frac{FP_{k^*}}{N}, \quad k^* = \min\{k : TP_k / P \ge q\}.

    AUROC does not depend on which class is positive; AUPR-In takes in-distribution as positive, AUPR-Out
    OOD; ``positive`` chooses the FPR metric's classes. ``positive="ood"`` (default) is the convention of
    pytorch-ood, torch-uncertainty and OpenOOD (FPR = in-distribution inputs flagged while 95 % of OOD inputs
    are caught); ``positive="in"`` is Liu et al. 2020's wording (OOD inputs accepted while 95 % of the
    in-distribution inputs are kept). The two differ on the same scores. The AUROC numerator is summed in
    int64, so it is exact. These equal ``sklearn.metrics.roc_auc_score``, ``average_precision_score`` and
    ``roc_curve`` (ties included) to rounding; references: Hendrycks & Gimpel 2017 §3 (AUROC, AUPR-In/Out),
    Liu et al. 2020 §4 (FPR95).

    Args:
        in_scores: ``[N_in]`` floating scores of in-distribution inputs (higher = more in-distribution); no NaN.
        out_scores: ``[N_out]`` scores of OOD inputs, same device.
        tpr_level: q in (0, 1].
        positive: ``"ood"`` or ``"in"``, the positive class of the FPR metric.

    Example:
        >>> m = detection_metrics(torch.tensor([0.9, 0.8, 0.8, 0.3]), torch.tensor([0.8, 0.2]), positive="in")
        >>> m.auroc, round(m.aupr_in, 6), m.fpr_at_tpr
        (0.75, 0.825, 0.5)
        >>> detection_metrics(torch.tensor([0.9, 0.8, 0.8, 0.3]), torch.tensor([0.8, 0.2])).fpr_at_tpr
        0.75
    """
    _validate_pair(in_scores, out_scores)
    if isinstance(tpr_level, bool) or not isinstance(tpr_level, numbers.Real) or not 0 < tpr_level <= 1:
        raise InputError(f"Expected argument `tpr_level` to be a number in (0, 1], but got {tpr_level!r}")
    side = check_positive(positive)
    thresholds, tp, fp = _ranked_counts(in_scores, out_scores)
    p, n = int(in_scores.shape[0]), int(out_scores.shape[0])
    tp0 = torch.cat([tp.new_zeros(1), tp])
    fp0 = torch.cat([fp.new_zeros(1), fp])
    twice_area = int(((fp0[1:] - fp0[:-1]) * (tp0[1:] + tp0[:-1])).sum())
    auroc = twice_area / (2 * p * n)
    aupr_in = _average_precision(tp, fp)
    _, tp_out, fp_out = _ranked_counts(-out_scores.to(_F64), -in_scores.to(_F64))
    aupr_out = _average_precision(tp_out, fp_out)
    pos, neg, sign = _oriented(in_scores, out_scores, side)
    t_pos, tp_pos, fp_pos = _ranked_counts(pos, neg)
    n_pos, n_neg = int(pos.shape[0]), int(neg.shape[0])
    tpr = tp_pos.to(_F64) / n_pos
    k = int(torch.nonzero(tpr >= float(tpr_level))[0])  # exists: tpr[-1] == 1
    return DetectionMetrics(
        auroc=auroc, aupr_in=aupr_in, aupr_out=aupr_out, fpr_at_tpr=int(fp_pos[k]) / n_neg,
        threshold_at_tpr=sign * float(t_pos[k]), tpr_at_threshold=float(tpr[k]), tpr_level=float(tpr_level),
        n_in=p, n_out=n, positive=side,
    )


@dataclass(frozen=True)
class RocCurve:
    """ROC points from (0, 0) to (1, 1): ``fpr``, ``tpr`` and the ``thresholds`` on the score (the first is
    ±inf), as ``sklearn.metrics.roc_curve`` returns them for the positive class ``positive`` (OOD positive:
    flag ``score <= t``, thresholds increasing; in positive: accept ``score >= t``, thresholds decreasing)."""

    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    thresholds: tuple[float, ...]
    positive: str = DEFAULT_POSITIVE


def roc_curve(in_scores: torch.Tensor, out_scores: torch.Tensor, *, drop_intermediate: bool = True,
              positive: Positive = DEFAULT_POSITIVE) -> RocCurve:
    """The ROC curve of a detector, equal to ``sklearn.metrics.roc_curve`` with ``positive`` as class 1.

    One point per distinct threshold, preceded by (0, 0). ``drop_intermediate`` drops points on straight
    horizontal/vertical runs (a zero second difference of both FP and TP counts), as scikit-learn does; the
    curve's shape and area do not change. The two conventions give mirror-image curves of equal area.
    """
    _validate_pair(in_scores, out_scores)
    side = check_positive(positive)
    pos, neg, sign = _oriented(in_scores, out_scores, side)
    thresholds, tp, fp = _ranked_counts(pos, neg)
    if drop_intermediate and tp.shape[0] > 2:
        inner = (torch.diff(fp, n=2) != 0) | (torch.diff(tp, n=2) != 0)
        true = inner.new_ones(1)
        keep = torch.cat([true, inner, true])
        thresholds, tp, fp = thresholds[keep], tp[keep], fp[keep]
    p, n = int(pos.shape[0]), int(neg.shape[0])
    fpr = (fp.to(_F64) / n).tolist()
    tpr = (tp.to(_F64) / p).tolist()
    return RocCurve(fpr=(0.0, *fpr), tpr=(0.0, *tpr),
                    thresholds=(sign * math.inf, *(sign * thresholds).tolist()), positive=side)


@dataclass(frozen=True)
class ScoreHistogram:
    """Counts of in-distribution and OOD scores in ``len(edges) - 1`` shared bins.

    Bins are ``[edges[m], edges[m+1])``, the last one closed (``numpy.histogram``'s convention). ``scale`` says
    how the edges are spaced: ``"linear"`` (equal width) or ``"symlog"`` (equal width on a symmetric-log axis
    with linear range ``±linthresh``, matplotlib's ``symlog`` scale with base 10 and linscale 1).
    """

    edges: tuple[float, ...]
    in_counts: tuple[int, ...]
    out_counts: tuple[int, ...]
    scale: str = "linear"
    linthresh: float | None = None


_SYMLOG_ADJ = 1.0 / (1.0 - 1.0 / 10.0)  # matplotlib's linscale / (1 - 1/base) for linscale 1, base 10


def _symlog(x: torch.Tensor, c: float) -> torch.Tensor:
    a = x.abs()
    return torch.where(a <= c, x * _SYMLOG_ADJ, torch.sign(x) * c * (_SYMLOG_ADJ + torch.log10(a.clamp_min(c) / c)))


def _symlog_inverse(y: torch.Tensor, c: float) -> torch.Tensor:
    a = y.abs()
    return torch.where(a <= c * _SYMLOG_ADJ, y / _SYMLOG_ADJ, torch.sign(y) * c * 10.0 ** (a / c - _SYMLOG_ADJ))


def score_histogram(in_scores: torch.Tensor, out_scores: torch.Tensor, *, n_bins: int = 50,
                    heavy: float = 20.0) -> ScoreHistogram:
    """Histograms of both score sets on common bins spanning all scores (as ``numpy.histogram``).

    The bins have equal width, unless the scores are heavy-tailed: when the full range is more than ``heavy``
    times the range of the central 98 % of the in-distribution scores (their 1st–99th percentile order
    statistics; e.g. Gram deviations, where OOD inputs deviate by thousands and every in-distribution score
    would fall into one bin), the bins have equal width on a symmetric-log axis whose linear part is that
    central range (``scale="symlog"``). If every score is equal the range is ``[s - 0.5, s + 0.5]`` (numpy's
    rule).
    """
    _validate_pair(in_scores, out_scores)
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
        raise InputError(f"Expected argument `n_bins` to be an integer larger than 0, but got {n_bins!r}")
    both = torch.cat([in_scores.to(_F64), out_scores.to(_F64)])
    if not bool(torch.isfinite(both).all()):
        raise InputError("Expected finite scores to draw a histogram, but found infinity")
    lo, hi = float(both.min()), float(both.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    ordered = in_scores.to(_F64).sort().values
    last = ordered.numel() - 1
    central = float(ordered[math.ceil(0.99 * last)] - ordered[math.floor(0.01 * last)]) if last >= 0 else 0.0
    steps = torch.arange(n_bins + 1, dtype=_F64, device=both.device) / n_bins
    scale, linthresh = "linear", None
    if central > 0 and hi - lo > heavy * central:
        scale, linthresh = "symlog", central
        y_lo, y_hi = (float(_symlog(torch.tensor(v, dtype=_F64), central)) for v in (lo, hi))
        edges = _symlog_inverse(y_lo + (y_hi - y_lo) * steps, central)
        edges[0] = lo
    else:
        edges = lo + (hi - lo) * steps
    edges[-1] = hi

    def counts(s: torch.Tensor) -> tuple[int, ...]:
        index = torch.bucketize(s.to(_F64), edges[1:-1], right=True)  # [e_m, e_{m+1}); max → last bin
        return tuple(int(c) for c in torch.bincount(index, minlength=int(n_bins)).tolist())

    return ScoreHistogram(edges=tuple(edges.tolist()), in_counts=counts(in_scores), out_counts=counts(out_scores),
                          scale=scale, linthresh=linthresh)


# --------------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OodScoreResult:
    """Everything measured for one score: ``metrics``, the ROC ``roc``, the score ``histogram``, the mean score
    of each side, and how the score was computed (``definition``)."""

    score: str
    metrics: DetectionMetrics
    roc: RocCurve
    histogram: ScoreHistogram
    mean_in: float
    mean_out: float
    definition: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OodReport:
    """OOD detection of one model: one :class:`OodScoreResult` per score, in the order asked for.

    ``n_in``, ``n_out``: examples; ``num_classes``: K; ``temperature``: T used by msp and energy;
    ``mahalanobis``: :meth:`ClassGaussians.summary` of the fit, or None; ``definition``: conventions.
    """

    n_in: int
    n_out: int
    num_classes: int
    temperature: float
    results: tuple[OodScoreResult, ...]
    mahalanobis: dict[str, Any] | None = None
    definition: dict[str, Any] = field(default_factory=dict)

    def result(self, score: str) -> OodScoreResult:
        """The result of one score by name (aliases accepted)."""
        (name,) = parse_scores([score])
        for r in self.results:
            if r.score == name:
                return r
        raise KeyError(f"score {name!r} is not in this report ({', '.join(r.score for r in self.results)})")


def ood_definition(tpr_level: float, positive: str = DEFAULT_POSITIVE) -> dict[str, Any]:
    side = check_positive(positive)
    fpr = (f"in-distribution inputs flagged as OOD at the first threshold that flags >= {tpr_level} of the OOD "
           "inputs (OOD positive: pytorch-ood, torch-uncertainty, OpenOOD)" if side == "ood" else
           f"OOD inputs accepted at the first threshold that accepts >= {tpr_level} of the in-distribution "
           "inputs (in-distribution positive: Liu et al. 2020's wording)")
    return {
        "positive": "ood" if side == "ood" else "in-distribution",
        "orientation": "higher score = more in-distribution, for every score",
        "ties": "tied scores form one threshold (as scikit-learn)",
        "auroc": "trapezoid over distinct thresholds = P(s_in > s_out) + 0.5 P(s_in = s_out)",
        "aupr_in": "average precision, in-distribution positive (sklearn.metrics.average_precision_score)",
        "aupr_out": "average precision, OOD positive, scores negated",
        "fpr_at_tpr": fpr,
        "reference": "Hendrycks & Gimpel 2017 (AUROC, AUPR-In/Out); Liu et al. 2020 (FPR at 95% TPR)",
    }


def ood_report(
    in_logits: torch.Tensor,
    out_logits: torch.Tensor,
    *,
    scores: str | Sequence[str] | None = None,
    temperature: float = 1.0,
    in_features: torch.Tensor | None = None,
    out_features: torch.Tensor | None = None,
    gaussians: ClassGaussians | None = None,
    tpr_level: float = 0.95,
    n_bins: int = 50,
    positive: Positive = DEFAULT_POSITIVE,
    precomputed: Mapping[str, tuple[torch.Tensor, torch.Tensor, dict[str, Any]]] | None = None,
    in_member_logits: torch.Tensor | None = None,
    out_member_logits: torch.Tensor | None = None,
) -> OodReport:
    r"""Score in-distribution and OOD inputs with each detector and measure how well each separates them.

    Args:
        in_logits: ``[N_in, K]`` logits of in-distribution (test) inputs.
        out_logits: ``[N_out, K]`` logits of the same model on OOD inputs, same K and device.
        scores: names from :data:`SCORES` (or ``"msp,energy"``); default: msp, max-logit, energy, and
            mahalanobis when ``gaussians`` is given.
        temperature: T for msp and energy (e.g. a temperature fitted on validation data, Guo et al. 2017).
        in_features, out_features: ``[N, D]`` penultimate features, for mahalanobis.
        gaussians: :func:`fit_class_gaussians` on training features, for mahalanobis.
        in_member_logits, out_member_logits: ``[S, N, K]`` logits of the S members of an ensemble / MC-dropout
            passes (``in_logits`` being the log of their mean softmax), for mutual-information and disagreement.
        tpr_level: the TPR of the FPR metric (0.95: FPR at 95 % TPR).
        n_bins: bins of the score histograms.
        positive: the positive class of the FPR metric and the ROC curves, ``"ood"`` (default) or ``"in"``.
        precomputed: ``{name: (in_scores, out_scores, definition)}`` for detectors computed elsewhere (those
            that need the model, fit data or several layers: :mod:`calibscope.diagnostics.ood_detectors`,
            :mod:`calibscope.diagnostics.gram`); in-distribution scores, higher = more in-distribution.

    Returns:
        :class:`OodReport`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> r = ood_report(4 * torch.randn(500, 10, generator=g), torch.randn(500, 10, generator=g))
        >>> [(x.score, round(x.metrics.auroc, 3)) for x in r.results]
        [('msp', 0.962), ('max-logit', 0.985), ('energy', 0.977)]
    """
    _validate_logits(in_logits, "in_logits")
    _validate_logits(out_logits, "out_logits")
    if in_logits.shape[1] != out_logits.shape[1]:
        raise InputError(f"Expected in-distribution and OOD logits with the same number of classes, but got "
                         f"{in_logits.shape[1]} and {out_logits.shape[1]}")
    if in_logits.shape[0] == 0 or out_logits.shape[0] == 0:
        side = "in-distribution" if in_logits.shape[0] == 0 else "out-of-distribution"
        raise InputError(f"Expected at least one {side} example, but got 0")
    t = _validate_temperature(temperature)
    names = parse_scores(scores) if scores is not None else (
        LOGIT_SCORES + (("mahalanobis",) if gaussians is not None else ()))
    side = check_positive(positive)
    given = dict(precomputed or {})
    results = []
    for name in names:
        if name in given:
            s_in, s_out, definition = given[name]
        else:
            s_in = confidence_score(in_logits, score=name, temperature=t, features=in_features, gaussians=gaussians,
                                    member_logits=in_member_logits)
            s_out = confidence_score(out_logits, score=name, temperature=t, features=out_features,
                                     gaussians=gaussians, member_logits=out_member_logits)
            definition = {"formula": _FORMULAS[name], "reference": _REFERENCES[name]}
            if name in ("msp", "energy"):
                definition["temperature"] = t
        results.append(OodScoreResult(
            score=name,
            metrics=detection_metrics(s_in, s_out, tpr_level=tpr_level, positive=side),
            roc=roc_curve(s_in, s_out, positive=side),
            histogram=score_histogram(s_in, s_out, n_bins=n_bins),
            mean_in=float(s_in.mean()),
            mean_out=float(s_out.mean()),
            definition=definition,
        ))
    return OodReport(
        n_in=int(in_logits.shape[0]), n_out=int(out_logits.shape[0]), num_classes=int(in_logits.shape[1]),
        temperature=t, results=tuple(results),
        mahalanobis=gaussians.summary() if gaussians is not None and "mahalanobis" in names else None,
        definition=ood_definition(float(tpr_level), side),
    )
