r"""Predictive distributions of ensembles and MC-dropout, and their epistemic (disagreement) scores.

A deep ensemble (Lakshminarayanan, Pritzel & Blundell, NeurIPS 2017) or S stochastic forward passes with
dropout left on (MC-dropout; Gal & Ghahramani, ICML 2016) give S predictive distributions
:math:`p_s(\cdot \mid x)` per input. The predictive distribution is their mean, and calibscope's
"logits" of it are its logarithm, so that :math:`\operatorname{softmax}(\bar z) = \bar p` exactly:

.. math::

    \bar p(k \mid x) = \frac1S \sum_{s=1}^{S} p_s(k \mid x), \qquad
    \bar z_k = \log \bar p(k \mid x) = \operatorname{logsumexp}_s \log p_s(k \mid x) - \log S,

computed from the members' log-softmax in float64 (a log-mean-exp: no probability underflows to 0).

Epistemic scores (per input; larger = the members disagree more):

* **mutual information** (BALD; Houlsby, Huszár, Ghahramani & Lengyel 2011, Eq. 2; Gal 2016, PhD thesis
  §3.3.1) between the prediction and the model:
  :math:`I = H(\bar p) - \frac1S \sum_s H(p_s)`, total predictive entropy minus its aleatoric part, in nats,
  :math:`0 \le I \le \log \min(S, K)`. It equals the mean KL divergence of the members to their mean,
  :math:`\frac1S \sum_s \mathrm{KL}(p_s \,\|\, \bar p)` (the generalised Jensen–Shannon divergence), so the
  "mean KL to the mean" disagreement is this same number.
* **disagreement**: the variance across members of the probability of the predicted class
  :math:`\hat y = \arg\max_k \bar p_k`, :math:`V = \frac1S \sum_s \bigl(p_s(\hat y) - \bar p(\hat y)\bigr)^2`
  (population variance, :math:`0 \le V \le 1/4`): the spread of the MC samples' softmax that Kendall,
  Badrinarayanan & Cipolla 2017 (Bayesian SegNet) map as model uncertainty, taken at the predicted class.

As OOD and selective-classification scores (:mod:`calibscope.diagnostics.ood`, higher = more
in-distribution / more confident) they enter negated: :func:`epistemic_confidence`.

Pure functions of tensors: no I/O, no device choice; float64 throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from calibscope.errors import InputError

__all__ = [
    "EPISTEMIC_SCORES",
    "EpistemicSummary",
    "disagreement",
    "entropy",
    "epistemic_confidence",
    "epistemic_summary",
    "mean_log_probs",
    "member_log_probs",
    "mutual_information",
]

EPISTEMIC_SCORES: tuple[str, ...] = ("mutual-information", "disagreement")
_F64 = torch.float64


def _validate_samples(samples: object, name: str = "sample_log_probs") -> torch.Tensor:
    if not isinstance(samples, torch.Tensor):
        raise InputError(f"Expected argument `{name}` to be a torch.Tensor, but got {type(samples).__name__}")
    if samples.ndim != 3 or not samples.is_floating_point():
        raise InputError(f"Expected argument `{name}` to be a floating point tensor of shape [S, N, K] (members, "
                         f"examples, classes), but got shape {tuple(samples.shape)} and dtype {samples.dtype}")
    s, n, k = samples.shape
    if s < 1 or n < 1 or k < 2:
        raise InputError(f"Expected at least 1 member, 1 example and 2 classes in `{name}`, but got shape "
                         f"{tuple(samples.shape)}")
    if bool(torch.isnan(samples).any()) or bool((samples == math.inf).any()):
        raise InputError(f"Expected argument `{name}` to hold log-probabilities (no NaN, no +inf)")
    return samples


def member_log_probs(logits: torch.Tensor) -> torch.Tensor:
    r"""``log_softmax`` of member logits ``[S, N, K]`` (or ``[N, K]``) along the classes, in float64.

    Example:
        >>> member_log_probs(torch.tensor([[[0.0, 0.0]]])).exp().tolist()
        [[[0.5, 0.5]]]
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.ndim not in (2, 3):
        raise InputError("Expected argument `logits` to be a floating point tensor [S, N, K] or [N, K]")
    if not bool(torch.isfinite(logits).all()):
        raise InputError("Expected argument `logits` to hold only finite values, but found NaN or infinity")
    return torch.log_softmax(logits.to(_F64), dim=-1)


def mean_log_probs(sample_log_probs: torch.Tensor) -> torch.Tensor:
    r"""The log of the members' mean probability, :math:`\log \frac1S \sum_s p_s`, float64 ``[N, K]``.

    .. math:: \bar z = \operatorname{logsumexp}_{s} \log p_s - \log S

    ``softmax`` of the result is the mean probability exactly (its rows' logsumexp is 0 up to rounding).

    Args:
        sample_log_probs: ``[S, N, K]`` log-probabilities of S members (e.g. :func:`member_log_probs`).

    Example:
        >>> lp = torch.log(torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]], dtype=torch.float64))
        >>> mean_log_probs(lp).exp().round(decimals=12).tolist()
        [[0.7, 0.3]]
    """
    lp = _validate_samples(sample_log_probs).to(_F64)
    return torch.logsumexp(lp, dim=0) - math.log(lp.shape[0])


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    r"""Shannon entropy :math:`H(p) = -\sum_k p_k \log p_k` (nats, :math:`0 \log 0 = 0`) along the last axis."""
    lp = log_probs.to(_F64)
    p = lp.exp()
    return -torch.where(p > 0, p * lp, torch.zeros((), dtype=_F64, device=lp.device)).sum(dim=-1)


def mutual_information(sample_log_probs: torch.Tensor) -> torch.Tensor:
    r"""BALD mutual information per example, float64 ``[N]`` ≥ 0 (nats).

    .. math:: I(x) = H\bigl(\bar p(\cdot\mid x)\bigr) - \frac1S \sum_{s=1}^{S} H\bigl(p_s(\cdot\mid x)\bigr)
              = \frac1S \sum_s \mathrm{KL}(p_s \,\|\, \bar p)

    Houlsby et al. 2011, Eq. 2; Gal 2016 §3.3.1. Rounding can make the difference a few ulps negative; it
    is clamped at 0 (I ≥ 0 by Jensen's inequality). One member gives exactly 0.

    Example:
        >>> lp = torch.log(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64))
        >>> mutual_information(lp).tolist()  # two certain members that disagree: log 2
        [0.6931471805599453]
    """
    lp = _validate_samples(sample_log_probs).to(_F64)
    if lp.shape[0] == 1:
        return torch.zeros(lp.shape[1], dtype=_F64, device=lp.device)
    total = entropy(mean_log_probs(lp))
    aleatoric = entropy(lp).mean(dim=0)
    return (total - aleatoric).clamp_min(0)


def disagreement(sample_log_probs: torch.Tensor) -> torch.Tensor:
    r"""Variance across members of the predicted class's probability, float64 ``[N]`` in [0, 1/4].

    .. math:: V(x) = \frac1S \sum_s \bigl(p_s(\hat y) - \bar p(\hat y)\bigr)^2, \quad \hat y = \arg\max_k \bar p_k

    Example:
        >>> lp = torch.log(torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]], dtype=torch.float64))
        >>> round(disagreement(lp).item(), 12)  # p(ŷ=0) = 0.9 and 0.5 around 0.7
        0.04
    """
    lp = _validate_samples(sample_log_probs).to(_F64)
    predicted = mean_log_probs(lp).argmax(dim=1)
    p = lp.gather(2, predicted[None, :, None].expand(lp.shape[0], -1, 1)).squeeze(2).exp()  # [S, N]
    return ((p - p.mean(dim=0)) ** 2).mean(dim=0)


def epistemic_confidence(sample_log_probs: torch.Tensor, *, score: str) -> torch.Tensor:
    """``score`` of :data:`EPISTEMIC_SCORES` negated (higher = more in-distribution / more confident), float64
    ``[N]`` — the orientation of every score in :mod:`calibscope.diagnostics.ood`."""
    if score == "mutual-information":
        return -mutual_information(sample_log_probs)
    if score == "disagreement":
        return -disagreement(sample_log_probs)
    raise InputError(f"Expected `score` to be one of {', '.join(EPISTEMIC_SCORES)}, but got {score!r}")


@dataclass(frozen=True)
class EpistemicSummary:
    """Means over the examples of the decomposition :math:`H(\\bar p) = \\overline{H(p_s)} + I` (nats) and of
    the disagreement, for S ``members``; ``definition`` states the formulas."""

    members: int
    n: int
    total_entropy: float
    aleatoric_entropy: float
    mutual_information: float
    disagreement: float
    definition: dict[str, str]


def epistemic_summary(sample_log_probs: torch.Tensor) -> EpistemicSummary:
    r"""Mean total entropy :math:`H(\bar p)`, mean expected entropy :math:`\frac1S\sum_s H(p_s)`, mean mutual
    information and mean disagreement over the examples."""
    lp = _validate_samples(sample_log_probs).to(_F64)
    return EpistemicSummary(
        members=int(lp.shape[0]), n=int(lp.shape[1]),
        total_entropy=float(entropy(mean_log_probs(lp)).mean()),
        aleatoric_entropy=float(entropy(lp).mean()),
        mutual_information=float(mutual_information(lp).mean()),
        disagreement=float(disagreement(lp).mean()),
        definition={
            "predictive": "p_bar = (1/S) sum_s softmax(z_s); logits = log p_bar",
            "mutual_information": "H(p_bar) - (1/S) sum_s H(p_s) = (1/S) sum_s KL(p_s || p_bar) (BALD; Houlsby "
                                  "et al. 2011, Gal 2016)",
            "disagreement": "(1/S) sum_s (p_s(y_hat) - p_bar(y_hat))^2, y_hat = argmax p_bar",
        })
