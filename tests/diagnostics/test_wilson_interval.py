"""Wilson score interval: against the closed form (Wilson 1927) and its edge cases."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from calibscope.diagnostics.intervals import wilson_interval


def _wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    centre = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(n) / (n + z * z) * math.sqrt(p * (1 - p) + z * z / (4 * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@pytest.mark.parametrize("n", [1, 5, 13, 15, 19, 20, 33, 34, 100])
def test_all_right_and_all_wrong_counts_reach_the_ends_exactly(n):
    # before the fix, k = n = 13 gave an upper bound of 0.9999999999999999 < p = 1, and the reliability
    # diagram's error bar (p - bound) went negative: matplotlib refused it (`temperature --out` exit 3)
    lo, hi = wilson_interval([float(n), 0.0], [n, n])
    assert hi[0] == 1.0 and lo[1] == 0.0
    assert lo[0] == pytest.approx(_wilson(n, n)[0], abs=1e-12)
    assert hi[1] == pytest.approx(_wilson(0, n)[1], abs=1e-12)


def test_interval_holds_the_estimate_and_equals_the_closed_form():
    for n in range(1, 60):
        for k in range(n + 1):
            (lo,), (hi,) = wilson_interval([float(k)], [n])
            ref = _wilson(k, n)
            assert lo <= k / n <= hi
            assert lo == pytest.approx(ref[0], abs=1e-12) and hi == pytest.approx(ref[1], abs=1e-12)
