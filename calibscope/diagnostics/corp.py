r"""CORP reliability: the isotonic (PAV) recalibration of correctness on confidence, with consistency bands,
and the score decomposition into miscalibration, discrimination and uncertainty.

Dimitriadis, Gneiting & Jordan, *Stable reliability diagrams for probabilistic classifiers*, PNAS 118 (2021)
("CORP": consistent, optimally binned, reproducible, PAV-based). For the top-label event (is the prediction
right?) with confidences :math:`x_i = \max_k p_{ik}` and outcomes :math:`y_i = [\hat y_i = y_i]`:

* the CORP curve :math:`\hat c = \operatorname{PAV}(y \mid x)`: the non-decreasing function of x closest to
  y in least squares (ties in x pooled first, so equal confidences get one value; no bins to choose);
* for a proper score S (Brier :math:`(x - y)^2`, log :math:`-y \log x - (1-y)\log(1-x)`) and
  :math:`\bar S(f) = \frac1n \sum_i S(f_i, y_i)`:

  .. math::

      \bar S(x) = \underbrace{\bar S(x) - \bar S(\hat c)}_{\mathrm{MCB}}
      - \underbrace{(\bar S(\bar y) - \bar S(\hat c))}_{\mathrm{DSC}} + \underbrace{\bar S(\bar y)}_{\mathrm{UNC}},

  MCB ≥ 0 (miscalibration), DSC ≥ 0 (discrimination), UNC the score of the base rate ȳ. For the log score the
  confidences are clipped to [ε, 1 − ε] with ε = :data:`LOG_SCORE_EPS`;
* consistency bands: ``resamples`` times draw :math:`y^*_i \sim \mathrm{Bernoulli}(x_i)` (what a calibrated
  model would see), refit PAV, and take at each distinct confidence the (1 ∓ level)/2 quantiles of
  :math:`\hat c^*` — where the CORP curve leaves the band, the miscalibration is more than chance.
  ``numpy.random.default_rng(seed)``: reproducible.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch

from calibscope.diagnostics.calibration import _validate_logits_labels
from calibscope.diagnostics.defaults import DEFAULT_BAND_LEVEL, DEFAULT_BAND_RESAMPLES
from calibscope.errors import InputError

__all__ = ["DEFAULT_BAND_LEVEL", "DEFAULT_BAND_RESAMPLES", "CorpReliability", "ScoreDecomposition",
           "band_excursions", "corp_from_logits", "corp_reliability"]

LOG_SCORE_EPS = 1e-12
REFERENCE = ("Dimitriadis, Gneiting & Jordan 2021, Stable reliability diagrams for probabilistic classifiers, "
             "PNAS 118(8) e2016191118")


@dataclass(frozen=True)
class ScoreDecomposition:
    """``score`` = ``miscalibration`` − ``discrimination`` + ``uncertainty`` for one proper score."""

    score_name: str
    score: float
    miscalibration: float
    discrimination: float
    uncertainty: float


@dataclass(frozen=True)
class CorpReliability:
    """The CORP reliability diagram and score decompositions of top-label correctness.

    ``x``: the distinct confidences (increasing); ``recalibrated``: the PAV fit at each; ``count``: examples at
    each; ``band_low``/``band_high``: the consistency band at each (empty without resamples); ``brier``,
    ``log``: :class:`ScoreDecomposition`; ``outside_band``: examples at confidences where the curve lies
    outside the band (:func:`band_excursions`; 0 without resamples).
    """

    n: int
    x: tuple[float, ...]
    recalibrated: tuple[float, ...]
    count: tuple[int, ...]
    band_low: tuple[float, ...]
    band_high: tuple[float, ...]
    band_level: float
    band_resamples: int
    seed: int
    brier: ScoreDecomposition
    log: ScoreDecomposition
    outside_band: int = 0
    definition: dict[str, Any] = field(default_factory=dict)


def _pav(y_sum, count):
    from scipy.optimize import isotonic_regression

    return isotonic_regression(y_sum / count, weights=count, increasing=True).x


def _brier(f, y):
    return float(((f - y) ** 2).mean())


def _log_score(f, y):
    import numpy as np

    f = np.clip(f, LOG_SCORE_EPS, 1 - LOG_SCORE_EPS)
    return float(-(y * np.log(f) + (1 - y) * np.log1p(-f)).mean())


def _decompose(name, score, x, c, y) -> ScoreDecomposition:
    import numpy as np

    base = np.full_like(x, y.mean())
    s_x, s_c, s_base = score(x, y), score(c, y), score(base, y)
    return ScoreDecomposition(name, s_x, s_x - s_c, s_base - s_c, s_base)


def corp_reliability(
    confidences: torch.Tensor,
    correct: torch.Tensor,
    *,
    resamples: int = DEFAULT_BAND_RESAMPLES,
    level: float = DEFAULT_BAND_LEVEL,
    seed: int = 0,
) -> CorpReliability:
    """CORP curve, consistency bands (``resamples`` ≥ 0; 0 = none) and Brier/log decompositions of binary
    outcomes ``correct`` [N] (0/1) forecast with probabilities ``confidences`` [N] in [0, 1].

    Example:
        >>> x = torch.tensor([0.6, 0.6, 0.9, 0.9], dtype=torch.float64)
        >>> r = corp_reliability(x, torch.tensor([1, 0, 1, 1]), resamples=0)
        >>> r.recalibrated, round(r.brier.miscalibration, 4)
        ((0.5, 1.0), 0.01)
    """
    import numpy as np

    from calibscope.diagnostics.calibration import _validate_confidences

    _validate_confidences(confidences, correct)
    n = int(confidences.shape[0])
    if n == 0:
        raise InputError("Expected at least one example, but got N = 0")
    if isinstance(resamples, bool) or not isinstance(resamples, numbers.Integral) or not 0 <= resamples <= 100_000:
        raise InputError(f"Expected argument `resamples` to be an integer in [0, 100000], but got {resamples!r}")
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise InputError(f"Expected argument `level` to be a number in (0, 1), but got {level!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"Expected argument `seed` to be an integer of at least 0, but got {seed!r}")
    x = confidences.detach().to("cpu", torch.float64).numpy()
    y = correct.detach().to("cpu", torch.float64).numpy()
    xu, inverse, count = np.unique(x, return_inverse=True, return_counts=True)
    count_f = count.astype(np.float64)
    fitted = _pav(np.bincount(inverse, weights=y, minlength=len(xu)), count_f)
    c = fitted[inverse]
    low, high = (), ()
    if resamples:
        rng = np.random.default_rng(int(seed))
        draws = np.empty((int(resamples), len(xu)))
        for r in range(int(resamples)):
            y_star = (rng.random(n) < x).astype(np.float64)
            draws[r] = _pav(np.bincount(inverse, weights=y_star, minlength=len(xu)), count_f)
        low = tuple(np.quantile(draws, (1 - level) / 2, axis=0).tolist())
        high = tuple(np.quantile(draws, (1 + level) / 2, axis=0).tolist())
    result = CorpReliability(
        n=n, x=tuple(xu.tolist()), recalibrated=tuple(fitted.tolist()), count=tuple(int(v) for v in count),
        band_low=low, band_high=high, band_level=float(level), band_resamples=int(resamples), seed=int(seed),
        brier=_decompose("brier", _brier, x, c, y), log=_decompose("log", _log_score, x, c, y),
        definition={
            "curve": "PAV (isotonic least squares) of correctness on top-label confidence, ties pooled",
            "decomposition": "S(x) = MCB - DSC + UNC; MCB = S(x) - S(PAV), DSC = S(base rate) - S(PAV), "
                             "UNC = S(base rate)",
            "brier": "mean (x - y)^2 of the binary top-label event (not the multiclass Brier score)",
            "log": f"mean -y log x - (1-y) log(1-x), x clipped to [{LOG_SCORE_EPS:g}, 1 - {LOG_SCORE_EPS:g}]",
            "bands": f"{level:.0%} consistency bands from {resamples} resamples y* ~ Bernoulli(x), "
                     f"numpy default_rng({seed})" if resamples else "none",
            "reference": REFERENCE,
        },
    )
    return dataclasses.replace(result, outside_band=band_excursions(result))


def corp_from_logits(logits: torch.Tensor, labels: torch.Tensor, **options: Any) -> CorpReliability:
    """:func:`corp_reliability` of the top-label confidence ``max softmax`` (float64) and correctness."""
    _validate_logits_labels(logits, labels)
    p = torch.softmax(logits.to(torch.float64), 1)
    confidence, prediction = p.max(1)
    return corp_reliability(confidence, (prediction == labels.to(prediction.device)).to(torch.int64), **options)


def band_excursions(result: CorpReliability) -> int:
    """Examples at confidences where the CORP curve lies outside the consistency band."""
    if not result.band_low:
        return 0
    return sum(c for r, lo, hi, c in zip(result.recalibrated, result.band_low, result.band_high, result.count,
                                         strict=True) if r < lo - 1e-12 or r > hi + 1e-12)

