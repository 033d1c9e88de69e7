r"""Confidence intervals for a binomial proportion (per-bin accuracy of a reliability diagram).

**Wilson score interval (Wilson 1927).** For k successes in n trials, :math:`\hat p = k/n` and the normal
quantile :math:`z = \Phi^{-1}(1 - \alpha/2)`,

.. math::

    \frac{\hat p + \frac{z^2}{2n} \pm z \sqrt{\frac{\hat p (1 - \hat p)}{n} + \frac{z^2}{4n^2}}}{1 + \frac{z^2}{n}}.

Unlike the normal ("Wald") interval it stays inside [0, 1] and does not collapse to a point when
:math:`\hat p \in \{0, 1\}` — which is what a reliability diagram's high-confidence bins usually show.
Equals ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

from calibscope.errors import InputError

__all__ = ["DEFAULT_CONFIDENCE_LEVEL", "wilson_interval"]

DEFAULT_CONFIDENCE_LEVEL = 0.95


def wilson_interval(
    successes: Sequence[float],
    trials: Sequence[int],
    *,
    confidence: float = DEFAULT_CONFIDENCE_LEVEL,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(lower, upper) Wilson score bounds for each ``successes[i]`` out of ``trials[i]``; NaN where n = 0.

    Example::

        >>> lo, hi = wilson_interval([9], [10])
        >>> round(lo[0], 4), round(hi[0], 4)
        (0.5958, 0.9821)
    """
    if not 0 < confidence < 1:
        raise InputError(f"Expected argument `confidence` to be in (0, 1), but got {confidence!r}")
    if len(successes) != len(trials):
        raise InputError("Expected `successes` and `trials` of the same length")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    lower, upper = [], []
    for k, n in zip(successes, trials, strict=True):
        if n <= 0:
            lower.append(math.nan)
            upper.append(math.nan)
            continue
        p = min(max(float(k) / n, 0.0), 1.0)
        denom = 1 + z * z / n
        center = (p + z * z / (2 * n)) / denom
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        # the interval always holds p (its score statistic is 0 there); rounding could put a bound of an
        # all-right or all-wrong count one ulp inside p, so clamp: k = n gives upper 1, k = 0 lower 0 exactly
        lower.append(min(max(0.0, center - half), p))
        upper.append(max(min(1.0, center + half), p))
    return tuple(lower), tuple(upper)
