r"""Selective classification: the risk–coverage curve, AURC and excess-AURC, accuracy at fixed coverage.

A classifier that may abstain keeps its most confident inputs and rejects the rest. Sort the n examples by a
confidence score :math:`\kappa` (descending; any score of :mod:`calibscope.diagnostics.ood`, max softmax
probability by default) and keep the top k: the coverage is :math:`k/n` and the selective risk is the error
rate among the kept examples,

.. math::

    \operatorname{risk}(k) = \frac{1}{k} \sum_{i=1}^{k} [\hat y_{(i)} \ne y_{(i)}], \qquad
    \mathrm{AURC} = \frac{1}{n} \sum_{k=1}^{n} \operatorname{risk}(k),

    \mathrm{AURC}^* = \frac{1}{n} \sum_{k=n_c+1}^{n} \frac{k - n_c}{k}, \qquad
    \text{E-AURC} = \mathrm{AURC} - \mathrm{AURC}^*,

following Geifman, Uziel & El-Yaniv, *Bias-Reduced Uncertainty Estimation for Deep Neural Classifiers*,
ICLR 2019, §3 (AURC as the mean risk over the n coverage levels; E-AURC subtracts the AURC of the optimal
ranking, all :math:`n_c` correct examples first). :math:`\mathrm{AURC}^*` is computed exactly from the sum;
Geifman et al.'s closed form :math:`\hat r + (1 - \hat r)\ln(1 - \hat r)` is its continuous approximation.
A perfectly ranked model has E-AURC exactly 0. Risk–coverage curves go back to El-Yaniv & Wiener, JMLR 2010.

**AUGRC** (Traub et al., *Overcoming Common Flaws in the Evaluation of Selective Classification Systems*,
NeurIPS 2024, §3): the *generalized* risk at coverage k/n is the joint probability of an error and of
acceptance, :math:`\operatorname{GR}(k) = \frac1n \sum_{i \le k} [\hat y_{(i)} \ne y_{(i)}]` (errors kept over
*all* n, not over the k kept), and

.. math::

    \mathrm{AUGRC} = \int_0^1 \operatorname{GR}\,\mathrm{d}c
        = \sum_{g=1}^{G} \frac{K_g - K_{g-1}}{n} \cdot \frac{E_g + E_{g-1}}{2n}

— the trapezoid through (0, 0) and the points :math:`(K_g/n, E_g/n)` at the G distinct confidence values
(:math:`K_g` kept, :math:`E_g` errors among them), as the authors' reference code (fd-shifts) integrates it.
Within a tie run the line between two thresholds is exactly the expected generalized risk over the orders of
the ties, so this is the same tie rule as AURC's. Without ties it is
:math:`\frac{1}{n}\sum_{k=1}^{n} \frac{E_{k-1} + E_k}{2n}`. torch-uncertainty 0.13's ``AUGRC`` differs by
its end points: it integrates from coverage 1/n (not 0) and divides by 1 − 1/n, i.e.
:math:`\frac{1}{n-1}\sum_{k=1}^{n-1}\frac{E_k + E_{k+1}}{2n}` (and breaks ties by sort order).

**Ties.** Examples with equal confidence have no order. Within a run of m tied examples holding e errors,
the first j of them are counted with their *expected* errors :math:`j e / m` — the average over every
order of the ties — so AURC and the accuracy at a fixed coverage do not depend on how a sort breaks ties
(with no ties this is the plain definition above). The risk–coverage curve, the thresholds and the
coverage reachable at a target risk are taken at distinct confidence values only, where a threshold
``score >= t`` exists.

The functions are pure: no I/O, no printing; they run on the device of the tensors (float64 counts).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from calibscope.diagnostics.ood import ClassGaussians, Score, confidence_score, parse_scores
from calibscope.errors import InputError

__all__ = [
    "DEFAULT_COVERAGES",
    "CoverageResult",
    "RiskCoverageCurve",
    "RiskTargetResult",
    "SelectiveReport",
    "area_under_generalized_risk_coverage",
    "area_under_risk_coverage",
    "risk_coverage",
    "selective_report",
]

from calibscope.diagnostics.defaults import DEFAULT_COVERAGES  # noqa: E402 - torch-free, for --help

_F64 = torch.float64


# --------------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------------


def _validate(confidences: Any, correct: Any) -> None:
    for value, name in ((confidences, "confidences"), (correct, "correct")):
        if not isinstance(value, torch.Tensor):
            raise InputError(f"Expected argument `{name}` to be a torch.Tensor, but got {type(value).__name__}")
    if confidences.ndim != 1 or not confidences.is_floating_point():
        raise InputError(f"Expected argument `confidences` to be a 1-D floating point tensor, but got shape "
                         f"{tuple(confidences.shape)} and dtype {confidences.dtype}")
    n = int(confidences.shape[0])
    if n == 0:
        raise InputError("Expected at least one example, but got 0 confidences")
    if correct.ndim != 1 or correct.shape[0] != n:
        raise InputError(f"Expected argument `correct` to have shape [{n}] like `confidences`, but got shape "
                         f"{tuple(correct.shape)}")
    if correct.device != confidences.device:
        raise InputError(f"Expected `confidences` and `correct` on the same device, but got {confidences.device} "
                         f"and {correct.device}")
    if bool(torch.isnan(confidences).any()):
        raise InputError("Expected argument `confidences` to contain no NaN, but found some")
    if not bool(((correct == 0) | (correct == 1)).all()):
        raise InputError("Expected argument `correct` to hold only 0/1 (or False/True) values")


def _validate_coverages(coverages: Any) -> tuple[float, ...]:
    if isinstance(coverages, (numbers.Real, str)):
        coverages = (coverages,)
    out = []
    for c in coverages:
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not 0 < c <= 1:
            raise InputError(f"Expected every coverage to be a number in (0, 1], but got {c!r}")
        out.append(float(c))
    return tuple(out)


def _validate_target_risk(target_risk: Any) -> float | None:
    if target_risk is None:
        return None
    if isinstance(target_risk, bool) or not isinstance(target_risk, numbers.Real) or not 0 <= target_risk <= 1:
        raise InputError(f"Expected argument `target_risk` to be a number in [0, 1], but got {target_risk!r}")
    return float(target_risk)


# --------------------------------------------------------------------------------------------------------
# the core: sorted confidences, tie runs, expected cumulative errors
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Ranked:
    sorted_scores: torch.Tensor  # [n] descending
    group_scores: torch.Tensor  # [G] the distinct values, descending
    group_kept: torch.Tensor  # [G] int64: examples with score >= value (K)
    group_errors: torch.Tensor  # [G] int64: errors among them (E)
    expected_errors: torch.Tensor  # [n] float64: expected errors among the top k, k = 1..n (ties averaged)


def _rank(confidences: torch.Tensor, correct: torch.Tensor) -> _Ranked:
    s, order = torch.sort(confidences.to(_F64), descending=True, stable=True)
    errors = 1 - correct.to(torch.int64)[order]
    n = int(s.shape[0])
    last = torch.nonzero(s[1:] != s[:-1]).flatten()
    ends = torch.cat([last, torch.tensor([n - 1], device=s.device)])
    kept = ends + 1
    cum_errors = torch.cumsum(errors, 0)[ends]
    # per tie run g: K_{g-1} examples and E_{g-1} errors before it, m_g examples and e_g errors in it
    kept_before = torch.cat([kept.new_zeros(1), kept[:-1]])
    errors_before = torch.cat([cum_errors.new_zeros(1), cum_errors[:-1]])
    size = kept - kept_before
    errors_in = cum_errors - errors_before
    group = torch.repeat_interleave(torch.arange(kept.shape[0], device=s.device), size)
    j = torch.arange(1, n + 1, device=s.device) - kept_before[group]  # position inside the run, 1..m_g
    # E_{g-1} + j e_g / m_g; the integer product j e_g first, so the run's end gives E_g exactly
    expected = errors_before[group].to(_F64) + (j * errors_in[group]).to(_F64) / size[group].to(_F64)
    return _Ranked(s, s[ends], kept, cum_errors, expected)


def _aurc(expected_errors: torch.Tensor) -> float:
    k = torch.arange(1, expected_errors.shape[0] + 1, dtype=_F64, device=expected_errors.device)
    return float((expected_errors / k).mean())


def _optimal_errors(n: int, n_errors: int, device: torch.device) -> torch.Tensor:
    """Cumulative errors of the optimal ranking (all correct first): max(0, k - n_c), k = 1..n."""
    k = torch.arange(1, n + 1, dtype=torch.int64, device=device)
    return (k - (n - n_errors)).clamp_min(0).to(_F64)


def area_under_risk_coverage(confidences: torch.Tensor, correct: torch.Tensor) -> float:
    r"""AURC (Geifman et al. 2019, §3): the mean selective risk over the coverages 1/n, 2/n, …, 1.

    .. math:: \mathrm{AURC} = \frac{1}{n} \sum_{k=1}^{n} \frac{1}{k} \sum_{i=1}^{k} [\hat y_{(i)} \ne y_{(i)}]

    with examples sorted by decreasing confidence; tied confidences count their expected errors (module
    docstring). Lower is better; it mixes the error rate and the ranking quality (see E-AURC in
    :func:`risk_coverage`).

    Args:
        confidences: ``[N]`` floating tensor, higher = more confident; no NaN.
        correct: ``[N]`` bool or 0/1 tensor, whether each prediction was right, same device.

    Example:
        >>> area_under_risk_coverage(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([True, False, True]))
        0.27777777777777773
    """
    _validate(confidences, correct)
    return _aurc(_rank(confidences, correct).expected_errors)


def _augrc(ranked: _Ranked) -> float:
    kept = ranked.group_kept.to(_F64)
    errors = ranked.group_errors.to(_F64)
    n = float(kept[-1])
    width = torch.diff(kept, prepend=kept.new_zeros(1))
    height = errors + torch.cat([errors.new_zeros(1), errors[:-1]])
    return float((width * height).sum() / (2 * n * n))


def area_under_generalized_risk_coverage(confidences: torch.Tensor, correct: torch.Tensor) -> float:
    r"""AUGRC (Traub et al. 2024, §3): the area under the generalized risk–coverage curve.

    .. math::

        \mathrm{AUGRC} = \sum_{g=1}^{G} \frac{K_g - K_{g-1}}{n} \cdot \frac{E_g + E_{g-1}}{2n},
        \qquad K_0 = E_0 = 0,

    over the G distinct confidence values (keep ``score >= t``: :math:`K_g` examples, :math:`E_g` errors) —
    the trapezoid through (0, 0) as the reference code integrates it; ties as in the module docstring.
    Lower is better. With r the error rate at full coverage it lies in :math:`[r^2/2,\; r - r^2/2]`: the
    optimal ranking (every error last) gives exactly r²/2, every error first gives r − r²/2.

    Args:
        confidences: ``[N]`` floating tensor, higher = more confident; no NaN.
        correct: ``[N]`` bool or 0/1 tensor, same device.

    Example:
        >>> area_under_generalized_risk_coverage(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([True, False, True]))
        0.16666666666666666
    """
    _validate(confidences, correct)
    return _augrc(_rank(confidences, correct))


# --------------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RiskCoverageCurve:
    """Points (``coverage``, ``risk``) in order of increasing coverage.

    For the model's curve there is one point per distinct confidence value t (keep ``score >= t``), with
    ``thresholds`` holding t; for the optimal ranking's curve ``thresholds`` is None.
    """

    coverage: tuple[float, ...]
    risk: tuple[float, ...]
    thresholds: tuple[float, ...] | None


@dataclass(frozen=True)
class CoverageResult:
    """Keep the ``n_kept = ⌈target·n⌉`` most confident examples: ``coverage`` = n_kept/n, their ``risk``
    (error rate; ties at the cut counted by expectation) and ``accuracy`` = 1 − risk, and ``threshold``, the
    confidence of the last kept example."""

    target_coverage: float
    n_kept: int
    coverage: float
    risk: float
    accuracy: float
    threshold: float


@dataclass(frozen=True)
class RiskTargetResult:
    """The largest coverage whose selective risk is ≤ ``target_risk``, over the thresholds ``score >= t``.

    ``reachable`` is False when even the single most confident group errs too often; then ``coverage`` and
    ``n_kept`` are 0 and ``risk`` and ``threshold`` are None.
    """

    target_risk: float
    reachable: bool
    coverage: float
    n_kept: int
    risk: float | None
    threshold: float | None


@dataclass(frozen=True)
class SelectiveReport:
    """Selective classification of one model under one confidence score (Geifman et al. 2019).

    ``score``: the confidence score's name; ``temperature``: T of msp/energy (None when confidences were
    given directly); ``n``, ``n_errors``, ``accuracy``: at full coverage; ``aurc``, ``aurc_optimal``,
    ``excess_aurc``: AURC, the optimal ranking's AURC*, and E-AURC = AURC − AURC*; ``augrc``: the area under
    the generalized risk–coverage curve (Traub et al. 2024) and ``augrc_optimal`` = r²/2 of the optimal
    ranking; ``curve`` and
    ``optimal_curve``: :class:`RiskCoverageCurve`; ``at_coverage``: one :class:`CoverageResult` per target
    coverage; ``at_risk``: :class:`RiskTargetResult` or None; ``definition``: conventions.
    """

    score: str
    temperature: float | None
    n: int
    n_errors: int
    accuracy: float
    aurc: float
    aurc_optimal: float
    excess_aurc: float
    augrc: float
    augrc_optimal: float
    curve: RiskCoverageCurve
    optimal_curve: RiskCoverageCurve
    at_coverage: tuple[CoverageResult, ...]
    at_risk: RiskTargetResult | None
    definition: dict[str, Any] = field(default_factory=dict)


def selective_definition() -> dict[str, Any]:
    return {
        "order": "decreasing confidence; keep the top k, coverage k/n",
        "risk": "error rate (1 - accuracy) among the kept examples",
        "aurc": "(1/n) sum_{k=1..n} risk(k)",
        "aurc_optimal": "(1/n) sum_{k=n_c+1..n} (k - n_c)/k, exact (all correct examples first)",
        "excess_aurc": "aurc - aurc_optimal",
        "augrc": "trapezoid through (0, 0) and (K_g/n, E_g/n) at the distinct confidence values: "
                 "sum_g (K_g - K_{g-1})/n * (E_g + E_{g-1})/(2n); generalized risk = errors kept / n "
                 "(Traub et al. 2024)",
        "augrc_optimal": "r^2/2 (every error last), r = error rate at full coverage",
        "ties": "within a run of m tied examples with e errors, the first j count j*e/m errors (average over "
                "tie orders); curve, thresholds and target-risk coverage only at distinct confidence values",
        "fixed_coverage": "n_kept = ceil(target * n)",
        "reference": "Geifman, Uziel & El-Yaniv 2019, Bias-Reduced Uncertainty Estimation for Deep Neural "
                     "Classifiers, Section 3",
    }


def _n_kept(target: float, n: int) -> int:
    # round first, so that 0.9 * 1000 = 900.0000000000001 does not become 901
    return min(n, max(1, math.ceil(round(target * n, 9))))


def risk_coverage(
    confidences: torch.Tensor,
    correct: torch.Tensor,
    *,
    coverages: Sequence[float] = DEFAULT_COVERAGES,
    target_risk: float | None = None,
    score_name: str = "confidence",
    temperature: float | None = None,
) -> SelectiveReport:
    r"""Risk–coverage curve, AURC, E-AURC, risk at fixed coverages and the coverage at a target risk.

    .. math::

        \operatorname{risk}(k) = \frac{1}{k}\sum_{i \le k} [\hat y_{(i)} \ne y_{(i)}], \quad
        \mathrm{AURC} = \frac1n \sum_{k=1}^n \operatorname{risk}(k), \quad
        \text{E-AURC} = \mathrm{AURC} - \frac1n \sum_{k=n_c+1}^{n} \frac{k-n_c}{k}

    (Geifman et al. 2019, §3; ties as in the module docstring).

    Args:
        confidences: ``[N]`` floating tensor, higher = more confident; no NaN.
        correct: ``[N]`` bool or 0/1 tensor, same device.
        coverages: target coverages in (0, 1] for :attr:`SelectiveReport.at_coverage`.
        target_risk: a risk in [0, 1] for :attr:`SelectiveReport.at_risk` (None: skip).
        score_name, temperature: recorded in the report.

    Example:
        >>> r = risk_coverage(torch.tensor([0.9, 0.8, 0.8, 0.6]), torch.tensor([1, 1, 0, 0]),
        ...                   coverages=[0.5], target_risk=0.4)
        >>> round(r.aurc, 6), round(r.excess_aurc, 6), r.at_coverage[0].risk, r.at_risk.coverage
        (0.270833, 0.0625, 0.25, 0.75)
    """
    _validate(confidences, correct)
    targets = _validate_coverages(coverages)
    risk_target = _validate_target_risk(target_risk)
    ranked = _rank(confidences, correct)
    n = int(confidences.shape[0])
    n_errors = int(ranked.group_errors[-1])
    aurc = _aurc(ranked.expected_errors)
    aurc_optimal = _aurc(_optimal_errors(n, n_errors, confidences.device))

    kept = ranked.group_kept.to(_F64)
    group_risk = ranked.group_errors.to(_F64) / kept
    curve = RiskCoverageCurve(coverage=tuple((kept / n).tolist()), risk=tuple(group_risk.tolist()),
                              thresholds=tuple(ranked.group_scores.tolist()))
    n_correct = n - n_errors
    opt_k = list(range(max(n_correct, 1), n + 1))
    optimal_curve = RiskCoverageCurve(
        coverage=tuple(k / n for k in opt_k), risk=tuple(max(0, k - n_correct) / k for k in opt_k), thresholds=None)
    if n_correct > 1:  # the optimal risk is 0 from the first example on
        optimal_curve = RiskCoverageCurve((1 / n, *optimal_curve.coverage), (0.0, *optimal_curve.risk), None)

    at_coverage = []
    expected = ranked.expected_errors.cpu()
    sorted_scores = ranked.sorted_scores.cpu()
    for target in targets:
        k = _n_kept(target, n)
        risk = float(expected[k - 1]) / k
        at_coverage.append(CoverageResult(target_coverage=target, n_kept=k, coverage=k / n, risk=risk,
                                          accuracy=1.0 - risk, threshold=float(sorted_scores[k - 1])))

    at_risk = None
    if risk_target is not None:
        ok = torch.nonzero(group_risk <= risk_target).flatten()
        if ok.numel() == 0:
            at_risk = RiskTargetResult(risk_target, False, 0.0, 0, None, None)
        else:
            g = int(ok[-1])  # coverage grows with g: the last admissible threshold covers most
            k = int(ranked.group_kept[g])
            at_risk = RiskTargetResult(risk_target, True, k / n, k, float(group_risk[g]),
                                       float(ranked.group_scores[g]))

    return SelectiveReport(
        score=score_name, temperature=temperature, n=n, n_errors=n_errors, accuracy=n_correct / n, aurc=aurc,
        aurc_optimal=aurc_optimal, excess_aurc=aurc - aurc_optimal, augrc=_augrc(ranked),
        augrc_optimal=(n_errors / n) ** 2 / 2, curve=curve, optimal_curve=optimal_curve,
        at_coverage=tuple(at_coverage), at_risk=at_risk, definition=selective_definition(),
    )


def selective_report(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    score: Score = "msp",
    temperature: float = 1.0,
    features: torch.Tensor | None = None,
    gaussians: ClassGaussians | None = None,
    coverages: Sequence[float] = DEFAULT_COVERAGES,
    target_risk: float | None = None,
    member_logits: torch.Tensor | None = None,
    confidences: torch.Tensor | None = None,
) -> SelectiveReport:
    """:func:`risk_coverage` of a classifier's outputs: prediction = argmax of the logits, confidence = ``score``.

    Args:
        logits: ``[N, K]`` floating tensor, finite.
        labels: ``[N]`` integer class indices in ``[0, K)``, same device.
        score: a name from :data:`calibscope.diagnostics.ood.SCORES` (max softmax probability by default).
        temperature: T for msp and energy (the prediction does not depend on it).
        features, gaussians: for ``score="mahalanobis"`` (see :func:`~calibscope.diagnostics.ood.confidence_score`).
        coverages, target_risk: as in :func:`risk_coverage`.
        member_logits: ``[S, N, K]`` logits of ensemble members / MC-dropout passes, for the epistemic scores.
        confidences: ``[N]`` scores of ``score`` computed elsewhere (the post-hoc detectors of
            :mod:`calibscope.workflows.ood_scores`); the prediction is still the argmax of ``logits``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> logits = 3 * torch.randn(1000, 10, generator=g)
        >>> labels = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
        >>> r = selective_report(logits, labels)
        >>> round(r.accuracy, 3), round(r.aurc, 4), round(r.excess_aurc, 4), round(r.at_coverage[0].accuracy, 3)
        (0.671, 0.1458, 0.0844, 0.744)
    """
    from calibscope.diagnostics.calibration import _validate_logits_labels

    _validate_logits_labels(logits, labels)
    if logits.shape[0] == 0:
        raise InputError("Expected at least one example, but got N = 0")
    (name,) = parse_scores([score])
    if confidences is None:
        confidences = confidence_score(logits, score=name, temperature=temperature, features=features,
                                       gaussians=gaussians, member_logits=member_logits)
    elif not isinstance(confidences, torch.Tensor) or confidences.shape != (logits.shape[0],):
        raise InputError(f"Expected `confidences` of shape [{logits.shape[0]}] (one per row of `logits`)")
    correct = logits.argmax(dim=1) == labels.to(torch.int64)
    return risk_coverage(confidences, correct, coverages=coverages, target_risk=target_risk, score_name=name,
                         temperature=float(temperature) if name in ("msp", "energy") else None)
