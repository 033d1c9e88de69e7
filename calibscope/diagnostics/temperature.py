r"""Temperature scaling: the exact NLL-optimal temperature, an ECE-optimal temperature, and sweeps.

Temperature scaling (Guo et al. 2017, §4.2; Hinton, Vinyals & Dean 2015, softmax(z/T)) divides every logit
by one scalar T > 0. Accuracy does not change (the argmax is the same); confidences sharpen (T < 1) or soften
(T > 1). With :math:`\beta = 1/T` the mean negative log-likelihood

.. math::

    \mathrm{NLL}(\beta) = \frac{1}{n} \sum_i \Bigl[\log \sum_k e^{\beta z_{ik}} - \beta z_{i y_i}\Bigr]

is convex in β, with

.. math::

    g(\beta) = \mathrm{NLL}'(\beta) = \frac{1}{n} \sum_i \bigl(\mathbb{E}_{p_\beta}[z_i] - z_{i y_i}\bigr),
    \qquad
    h(\beta) = \mathrm{NLL}''(\beta) = \frac{1}{n} \sum_i \operatorname{Var}_{p_\beta}(z_i) \ge 0,

where :math:`p_\beta = \operatorname{softmax}(\beta z_i)`. :func:`fit_temperature` finds the root of g by a
safeguarded Newton iteration on β (a bracket [lo, hi] with g(lo) < 0 < g(hi) is kept, and a Newton step
that leaves it is replaced by bisection) until :math:`|g| \le 10^{-10} \cdot s`, where s is the logits' own
scale (the mean over rows of max_k z_ik − mean_k z_ik). Each evaluation of (NLL, g, h) is one pass over
the logits, in float64; a handful of passes reach the exact optimum. The common recipe (``torch.optim.LBFGS``,
lr 0.01, 50 iterations, T₀ = 1.5, on T) often stops visibly short of it on large sets.

The ECE-optimal temperature has no such structure (ECE is piecewise smooth and jumps when a confidence
crosses a bin edge): :func:`fit_temperature` with ``objective="ece"`` evaluates ECE on a log grid of T and
refines the best grid point by golden-section search between its neighbours.

Degenerate inputs raise :class:`~calibscope.errors.InputError` with a message that says why no finite
positive temperature minimises the NLL: every prediction right (the NLL keeps falling as T → 0), logits no
better than uniform (as T → ∞), logits constant within every row (NLL does not depend on T).

Across processes (``torchrun``), each process passes its own rows and a ``reduce`` that sums a tensor over
the processes (e.g. an ``all_reduce``): every pass sums its per-row quantities locally and ``reduce`` adds
them up — the preparatory totals, (Σ log S0, Σ E[z] − z_y, Σ Var) per Newton pass (24 bytes), the ECE bins —
so every process takes the same Newton steps and returns the one-process temperature.

Everything is a pure function of tensors, on the tensors' device.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from calibscope.diagnostics.calibration import (
    _calibration_errors,
    _confidence_bins,
    _validate_logits_labels,
    _validate_n_bins,
)
from calibscope.errors import InputError

__all__ = [
    "TemperatureFit",
    "TemperatureSweep",
    "apply_temperature",
    "fit_temperature",
    "sweep_temperatures",
    "temperature_sweep",
]

Objective = Literal["nll", "ece"]
_F64 = torch.float64
_NEG_SENTINEL = -1e150  # stands for a -inf logit after the row max is subtracted: exp(beta * it) == 0
DEFAULT_SWEEP_RANGE = (0.05, 20.0)
DEFAULT_SWEEP_POINTS = 121
_BETA_SCALE_MAX = 1e8  # give up (T -> 0) when beta * scale exceeds this


# --------------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------------


def _validate_temperature(temperature: Any, name: str = "temperature") -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise InputError(f"Expected argument `{name}` to be a number, but got {type(temperature).__name__}")
    value = float(temperature)
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"Expected argument `{name}` to be a finite number larger than 0, but got {value!r}")
    return value


def _validate_objective(objective: Any) -> None:
    if objective not in ("nll", "ece"):
        raise InputError(f"Expected argument `objective` to be one of ('nll', 'ece'), but got {objective!r}")


def _validate_grid(temperatures: Any) -> tuple[float, ...]:
    values = tuple(_validate_temperature(t, "temperatures") for t in temperatures)
    if not values:
        raise InputError("Expected argument `temperatures` to hold at least one temperature, but got none")
    return values


# --------------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemperatureFit:
    r"""A fitted temperature (Guo et al. 2017, §4.2).

    ``temperature``: T* (divide the logits by it); ``beta``: 1/T*; ``objective``: ``"nll"`` (exact minimiser
    of the mean NLL) or ``"ece"`` (grid + golden-section search); ``value``: the objective at T*;
    ``gradient``: dNLL/dβ at β* (nats per
    unit of β; NLL objective only, else NaN); ``scale``: s, the logits' scale that the tolerance is relative
    to; ``n_passes``: passes over the logits (one preparatory pass plus one per evaluation);
    ``converged``: the stopping rule was met; ``stop_reason``: ``"gradient"`` (:math:`|g| \le` tol·s),
    ``"bracket"`` (the bracket on β shrank to float64 resolution), ``"search"`` (ECE search finished),
    ``"bound"`` (ECE minimum at the end of the searched range) or ``"max_passes"``;
    ``warm_start_rows`` / ``warm_start_passes``: for large N (≥ 262,144 rows) the Newton iteration starts
    from the optimum of a strided subsample of that many rows, found in that many (cheap) passes over it;
    ``trace``: (T, objective, gradient) of every evaluation, in order; ``definition``: how it was computed.
    """

    temperature: float
    beta: float
    objective: str
    value: float
    gradient: float
    scale: float
    n_passes: int
    converged: bool
    stop_reason: str
    n: int
    num_classes: int
    warm_start_rows: int = 0
    warm_start_passes: int = 0
    trace: tuple[tuple[float, float, float], ...] = ()
    definition: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TemperatureSweep:
    """NLL and ECE of ``softmax(z / T)`` over a grid of temperatures (Müller et al. 2019, Figs. 3–5).

    ``temperatures``, ``nll``, ``ece``: one entry per grid point; ``accuracy`` is the same for every T;
    ``n_bins``: M of the ECE.
    """

    temperatures: tuple[float, ...]
    nll: tuple[float, ...]
    ece: tuple[float, ...]
    accuracy: float
    n: int
    n_bins: int


# --------------------------------------------------------------------------------------------------------
# the passes
# --------------------------------------------------------------------------------------------------------


def _shifted_moments(zc: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Σ_i log S0_i, Σ_i S1_i/S0_i, Σ_i Var_i for one chunk of z' = z − max_k z (float64), with
    e = exp(βz'), S0 = Σ_k e, S1 = Σ_k e z', Var = Σ_k e z'² / S0 − (S1/S0)²."""
    e = torch.exp(zc * beta)
    s0 = e.sum(1)
    ez = e.mul_(zc)
    mean = ez.sum(1) / s0
    second = ez.mul_(zc).sum(1) / s0
    return torch.stack([s0.log().sum(), mean.sum(), (second - mean * mean).clamp_min(0).sum()])


def _moments(z: torch.Tensor, zmax: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """:func:`_shifted_moments` of raw logits (shifted in float64 here, -inf → -1e150): the fused kernel."""
    zc = (z - zmax[:, None]).clamp_min(_NEG_SENTINEL)
    e = torch.exp(zc * beta)
    s0 = e.sum(1)
    mean = (e * zc).sum(1) / s0
    second = (e * zc * zc).sum(1) / s0
    return torch.stack([s0.log().sum(), mean.sum(), (second - mean * mean).clamp_min(0).sum()])


_COMPILED: dict[str, Any] = {}


def _compiled_moments():
    """:func:`_moments` fused by ``torch.compile`` (one read of the logits per pass), opt-in on CUDA with
    ``CALIBSCOPE_COMPILE=1``; None otherwise or after a compiler failure."""
    import os

    if os.environ.get("CALIBSCOPE_COMPILE", "0") != "1" or _COMPILED.get("failed"):
        return None
    if "moments" not in _COMPILED:
        _COMPILED["moments"] = torch.compile(_moments, dynamic=True)
    return _COMPILED["moments"]


class _Shifted:
    """The logits, shifted by their row maxima, served chunk by chunk in float64, plus per-row constants.

    Building it is the one preparatory pass: row max, the true class's logit, the finite mean of each row,
    which rows the model gets right (first argmax). Shifting makes every exponent ≤ 0 (no overflow at any β). When they
    fit in ``cache_bytes`` the shifted float64 logits are kept, so later passes do not convert again.

    ``rows`` are the logits held here; ``n`` the examples over all processes (``reduce`` sums every pass's
    totals over them; None: one process, ``n == rows``).
    """

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int | None,
                 cache_bytes: int | None = None, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None):
        n, k = logits.shape
        self.logits, self.rows, self.k = logits, int(n), int(k)
        self.reduce = reduce
        cuda = logits.device.type == "cuda"
        if chunk_rows is None:
            chunk_rows = max(1, ((1 << 25) if cuda else (1 << 18)) // max(k, 1))
        self.chunk_rows = int(chunk_rows)
        if cache_bytes is None:
            cache_bytes = (4 << 30) if cuda else (1 << 30)
        self.kernel = _compiled_moments() if cuda else None
        keep = self.kernel is None and self.rows * self.k * 8 <= cache_bytes
        self.cache: list[torch.Tensor] | None = [] if keep else None
        labels = labels.to(device=logits.device, dtype=torch.int64)
        zmax, c, row_spread, correct = [], [], [], []
        for a in range(0, self.rows, self.chunk_rows):
            z = logits[a : a + self.chunk_rows].to(_F64, copy=True)  # may be shifted in place below
            y = labels[a : a + self.chunk_rows, None]
            top, prediction = z.max(dim=1)  # the first maximal index, like calibration's argmax of p
            z_y = z.gather(1, y).squeeze(1)
            finite = torch.isfinite(z)
            mean_finite = torch.where(finite, z, 0.0).sum(1) / finite.sum(1)
            zmax.append(top)
            c.append(top - z_y)  # >= 0; +inf if the true class has a -inf logit
            row_spread.append(top - mean_finite)  # >= 0; 0 only for a row of equal (finite) logits
            correct.append(prediction == y.squeeze(1))
            if self.cache is not None:
                self.cache.append(z.sub_(top[:, None]).clamp_min_(_NEG_SENTINEL))
        empty = torch.zeros(0, dtype=_F64, device=logits.device)
        self.zmax = torch.cat(zmax) if zmax else empty
        self.c = torch.cat(c) if c else empty
        spread = torch.cat(row_spread) if row_spread else empty
        self.correct = torch.cat(correct) if correct else empty.bool()
        totals = self._sum(torch.stack([self.c.sum(), spread.sum(), self.correct.sum().to(_F64),
                                        torch.tensor(float(self.rows), dtype=_F64, device=logits.device)]))
        totals = totals.tolist()
        self.n = int(round(totals[3]))
        self.mean_c, self.scale = totals[0] / max(self.n, 1), totals[1] / max(self.n, 1)
        self.n_correct = int(round(totals[2]))

    def _sum(self, local: torch.Tensor) -> torch.Tensor:
        """Per-process sums → sums over all processes."""
        return local if self.reduce is None else self.reduce(local)

    def chunks(self):
        """(first row, z' = z − max_k z in float64 with -inf → -1e150) chunk by chunk."""
        for i, a in enumerate(range(0, self.rows, self.chunk_rows)):
            if self.cache is not None:
                yield a, self.cache[i]
            else:
                z = self.logits[a : a + self.chunk_rows]
                yield a, (z - self.zmax[a : a + self.chunk_rows, None]).clamp_min_(_NEG_SENTINEL)

    def nll_pass(self, beta: float) -> tuple[float, float, float]:
        """(NLL, g, h) at β, one pass: with z' = z − max_k z and e = exp(βz'), per row
        S0 = Σe, S1 = Σe z', S2 = Σe z'², logsumexp(βz) − βz_y = log S0 + βc, E[z] − z_y = S1/S0 + c,
        Var = S2/S0 − (S1/S0)²."""
        device = self.logits.device
        sums = torch.zeros(3, dtype=_F64, device=device)
        b = torch.tensor(beta, dtype=_F64, device=device)
        if self.kernel is not None:
            try:
                for a in range(0, self.rows, self.chunk_rows):
                    sums += self.kernel(self.logits[a : a + self.chunk_rows], self.zmax[a : a + self.chunk_rows], b)
            except Exception:  # noqa: BLE001 - any compiler failure: eager from now on
                _COMPILED["failed"] = True
                self.kernel = None
                sums.zero_()
        if self.kernel is None:
            for _, zc in self.chunks():
                sums += _shifted_moments(zc, b)
        log_s0, mean, var = (self._sum(sums) / self.n).tolist()
        return log_s0 + beta * self.mean_c, mean + self.mean_c, var

    def nll_and_ece(self, beta: float, n_bins: int) -> tuple[float, float]:
        """Mean NLL and top-label ECE (M equal-width right-closed bins) of softmax(βz), one pass."""
        device = self.logits.device
        count = torch.zeros(n_bins, dtype=_F64, device=device)
        sum_conf, sum_right, sum_log_s0 = count.clone(), count.clone(), torch.zeros((), dtype=_F64, device=device)
        for a, zc in self.chunks():
            s0 = torch.exp(zc * beta).sum(1)
            bins = _confidence_bins(s0.reciprocal(), self.correct[a : a + self.chunk_rows], n_bins)
            count += bins.count
            sum_conf += bins.sum_confidence
            sum_right += bins.sum_correct
            sum_log_s0 += s0.log().sum()
        if self.reduce is not None:
            count, sum_conf, sum_right, sum_log_s0 = self._sum(
                torch.cat([count, sum_conf, sum_right, sum_log_s0[None]])).split([n_bins, n_bins, n_bins, 1])
            sum_log_s0 = sum_log_s0[0]
        ece = _calibration_errors(count, sum_conf, sum_right)["l1"]
        log_s0, ece = torch.stack([sum_log_s0 / self.n, ece]).tolist()
        return log_s0 + beta * self.mean_c, ece


def _prepare(logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int | None,
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> _Shifted:
    _validate_logits_labels(logits, labels)
    if logits.shape[0] == 0 and reduce is None:
        raise InputError("Expected at least one example to fit a temperature on, but got N = 0")
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise InputError(f"Expected argument `chunk_rows` to be an integer larger than 0, but got {chunk_rows!r}")
    data = _Shifted(logits, labels, chunk_rows, reduce=reduce)
    if data.n == 0:
        raise InputError("Expected at least one example to fit a temperature on, but got N = 0")
    return data


def _check_nll_has_a_minimum(data: _Shifted) -> None:
    """Raise a teaching InputError when no finite T > 0 minimises the NLL."""
    if math.isinf(data.mean_c):
        raise InputError("Some example has a -inf logit (probability 0) for its true class: the NLL is infinite "
                         "at every temperature, so there is nothing to minimise")
    if data.scale == 0.0:
        raise InputError("The logits are equal within every row: the NLL is log K at every temperature and no "
                         "temperature is better than another")
    if data.mean_c == 0.0:  # lim_{β→∞} g(β) = mean_i (max_k z_ik − z_iy) = 0: g < 0 for every β
        raise InputError(f"The true class has the largest logit in every one of the {data.n} examples (ties "
                         "included), so the NLL keeps decreasing as T → 0 and has no minimum; fit the "
                         "temperature on held-out data that the model gets some of wrong")
    g0 = data.mean_c - data.scale  # g(0+): softmax is uniform over the finite logits
    if g0 >= 0:
        raise InputError("The true classes' logits are on average no higher than the mean logit "
                         f"(dNLL/dβ at β = 0 is {g0:.3g} ≥ 0): the NLL keeps decreasing as T → ∞ and no finite "
                         "temperature minimises it; are these the right labels for these logits?")


# --------------------------------------------------------------------------------------------------------
# fitting
# --------------------------------------------------------------------------------------------------------


def _newton_iterations(data: _Shifted, beta: float, target: float, max_passes: int):
    """Safeguarded Newton on β for g(β) = 0 (g increasing, g(0+) < 0), from ``beta``.

    Returns (beta, nll, g, passes, stop_reason, trace) at the evaluated point with the smallest |g|.
    """
    lo, hi = 0.0, math.inf  # g(lo) < 0 (lo = 0: from the preparatory pass), g(hi) > 0
    passes, slow, previous_abs_g = 0, 0, math.inf
    trace: list[tuple[float, float, float]] = []
    best = None  # (|g|, beta, f, g)
    stop = "max_passes"
    beta_max = _BETA_SCALE_MAX / data.scale
    while passes < max_passes:
        f, g, h = data.nll_pass(beta)
        passes += 1
        trace.append((1.0 / beta, f, g))
        if best is None or abs(g) < best[0]:
            best = (abs(g), beta, f, g)
        if abs(g) <= target:
            stop = "gradient"
            break
        if g < 0:
            lo = beta
        else:
            hi = beta
        if math.isfinite(hi) and hi - lo <= 4 * math.ulp(hi):
            stop = "bracket"
            break
        slow = slow + 1 if abs(g) > 0.5 * previous_abs_g else 0
        previous_abs_g = abs(g)
        step = beta - g / h if h > 0 else math.nan
        if math.isinf(hi):  # no upper end yet: g < 0 here, go right (Newton, at most ×16)
            nxt = min(step, 16 * beta) if math.isfinite(step) and step > beta else 4 * beta
            if nxt > beta_max:
                raise InputError(
                    f"The NLL keeps decreasing down to T = {1 / beta_max:.3g} (β·scale = {_BETA_SCALE_MAX:.0e}): "
                    "its minimum, if any, is at a temperature too small to be meaningful")
        elif math.isfinite(step) and lo < step < hi and slow < 2:
            nxt = step
        elif lo == 0 and g > 0 and h > 0 and slow < 2:
            # the Newton step would cross β = 0: take it in u = log β instead (dNLL/du = βg,
            # d²NLL/du² = βg + β²h), which shrinks β by at most a factor e
            nxt = beta * math.exp(-g / (g + beta * h))
        else:  # bisection: geometric in β when the lower end is positive
            nxt = math.sqrt(lo * hi) if lo > 0 else 0.5 * hi
            slow = 0
        beta = nxt
    assert best is not None
    _, beta, f, g = best
    return beta, f, g, passes, stop, trace


_WARM_START_ROWS = 1 << 15


def _newton(data: _Shifted, tol: float, max_passes: int, labels: torch.Tensor, first_row: int = 0) -> TemperatureFit:
    """Warm start on a strided subsample (large N only), then safeguarded Newton on all rows.

    The subsample is every ``stride``-th row of all N (``first_row``: the index of this process's first row
    among them), so that every process layout starts from the same point."""
    beta0, sub_rows, sub_passes = 1.0, 0, 0
    if data.n >= 8 * _WARM_START_ROWS:
        stride = data.n // _WARM_START_ROWS
        offset = (-first_row) % stride
        sub = _Shifted(data.logits[offset::stride], labels[offset::stride], data.chunk_rows, cache_bytes=0,
                       reduce=data.reduce)
        try:
            _check_nll_has_a_minimum(sub)
            beta0, _, _, sub_passes, _, _ = _newton_iterations(sub, 1.0, 1e-6 * sub.scale, max_passes)
            sub_rows = sub.n
            sub_passes += 1  # its preparatory pass
        except InputError:  # a degenerate subsample: start from T = 1
            beta0 = 1.0
    beta, f, g, passes, stop, trace = _newton_iterations(data, beta0, tol * data.scale, max_passes - 1)
    return TemperatureFit(
        temperature=1.0 / beta, beta=beta, objective="nll", value=f, gradient=g,
        scale=data.scale, n_passes=passes + 1, converged=stop in ("gradient", "bracket"), stop_reason=stop,
        n=data.n, num_classes=data.k, warm_start_rows=sub_rows, warm_start_passes=sub_passes, trace=tuple(trace),
        definition={
            "objective": "mean negative log-likelihood of softmax(z / T), nats",
            "method": "safeguarded Newton on beta = 1/T (bracket + bisection fallback), float64"
                      + (f", started from the optimum of a strided subsample of {sub_rows} rows" if sub_rows else ""),
            "tolerance": f"|dNLL/dbeta| <= {tol:g} * scale",
            "scale": "mean over rows of (max_k z_ik - mean_k z_ik)",
            "reference": "Guo et al. 2017, On Calibration of Modern Neural Networks, Section 4.2",
        },
    )


def _golden(fun, a: float, b: float, iterations: int) -> tuple[float, float, int]:
    """Golden-section minimisation of ``fun`` on [a, b]; returns (x, f(x), evaluations)."""
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = fun(c), fun(d)
    evaluations = 2
    for _ in range(iterations):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = fun(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = fun(d)
        evaluations += 1
    return (c, fc, evaluations) if fc <= fd else (d, fd, evaluations)


def _ece_search(data: _Shifted, n_bins: int, bounds: tuple[float, float], grid_points: int) -> TemperatureFit:
    lo, hi = bounds
    log_grid = torch.linspace(math.log(lo), math.log(hi), grid_points, dtype=_F64).tolist()
    trace: list[tuple[float, float, float]] = []

    def ece_at_log_t(log_t: float) -> float:
        _, ece = data.nll_and_ece(math.exp(-log_t), n_bins)
        trace.append((math.exp(log_t), ece, math.nan))
        return ece

    values = [ece_at_log_t(x) for x in log_grid]
    j = min(range(grid_points), key=values.__getitem__)
    a, b = log_grid[max(j - 1, 0)], log_grid[min(j + 1, grid_points - 1)]
    x, fx, evaluations = _golden(ece_at_log_t, a, b, 40)
    if values[j] < fx:
        x, fx = log_grid[j], values[j]
    at_bound = x <= log_grid[0] + (log_grid[1] - log_grid[0]) or x >= log_grid[-1] - (log_grid[1] - log_grid[0])
    return TemperatureFit(
        temperature=math.exp(x), beta=math.exp(-x), objective="ece", value=fx,
        gradient=math.nan, scale=data.scale, n_passes=1 + grid_points + evaluations, converged=not at_bound,
        stop_reason="bound" if at_bound else "search", n=data.n, num_classes=data.k, trace=tuple(trace),
        definition={
            "objective": f"top-label ECE, {n_bins} equal-width right-closed bins, l1",
            "method": f"log-spaced grid of {grid_points} temperatures on [{lo:g}, {hi:g}], then golden-section "
                      "search between the best point's neighbours (a local minimum of a piecewise-smooth function)",
            "reference": "Guo et al. 2017, Section 4.2; Mueller et al. 2019, Section 3 (temperature vs ECE)",
        },
    )


def fit_temperature(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    objective: Objective = "nll",
    n_bins: int = 15,
    tol: float = 1e-10,
    max_passes: int = 100,
    bounds: tuple[float, float] = DEFAULT_SWEEP_RANGE,
    grid_points: int = DEFAULT_SWEEP_POINTS,
    chunk_rows: int | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    first_row: int = 0,
) -> TemperatureFit:
    r"""The temperature T that minimises the NLL (exactly) or the ECE (by search) of ``softmax(logits / T)``.

    ``objective="nll"`` (Guo et al. 2017, §4.2): safeguarded Newton on :math:`\beta = 1/T` for

    .. math::

        g(\beta) = \frac{1}{n} \sum_i \bigl(\mathbb{E}_{\operatorname{softmax}(\beta z_i)}[z_i] - z_{i y_i}\bigr)
        = 0, \qquad
        h(\beta) = \frac{1}{n} \sum_i \operatorname{Var}_{\operatorname{softmax}(\beta z_i)}(z_i),

    stopping when :math:`|g| \le \mathrm{tol} \cdot s` (s = mean_i(max_k z_ik − mean_k z_ik)), or when the
    bracket on β has shrunk to float64 resolution. ``objective="ece"``: the top-label ECE (``n_bins``
    equal-width right-closed bins) on ``grid_points`` log-spaced temperatures in ``bounds``, refined by
    golden-section search between the best point's neighbours.

    Args:
        logits: ``[N, K]`` floating tensor, K ≥ 2, N ≥ 1 (any device; computed in float64 there).
        labels: ``[N]`` integer tensor in ``[0, K)``.
        objective: ``"nll"`` or ``"ece"``.
        n_bins: M for the ECE objective.
        tol: relative gradient tolerance of the NLL fit.
        max_passes: most passes over the logits for the NLL fit.
        bounds, grid_points: the ECE search range and grid.
        chunk_rows: rows per chunk (bounds the float64 working memory); default by device.
        reduce, first_row: across processes, the function that sums a tensor over them and the index of this
            process's first row among all N (``logits`` are rows ``first_row…``; see the module docstring).

    Returns:
        :class:`TemperatureFit`.

    Raises:
        InputError: bad arguments, or no finite T > 0 minimises the NLL (every prediction right with a
            margin; logits no better than uniform; logits constant within rows; a -inf true-class logit).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> logits = 2 * torch.randn(10_000, 10, generator=g, dtype=torch.float64)
        >>> labels = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
        >>> fit = fit_temperature(3 * logits, labels)   # over-confident by a factor 3
        >>> round(fit.temperature, 4), fit.n_passes, fit.converged
        (2.9848, 8, True)
    """
    _validate_objective(objective)
    n_bins = _validate_n_bins(n_bins)
    if not (isinstance(tol, numbers.Real) and tol > 0):
        raise InputError(f"Expected argument `tol` to be a number larger than 0, but got {tol!r}")
    if isinstance(max_passes, bool) or not isinstance(max_passes, int) or max_passes < 2:
        raise InputError(f"Expected argument `max_passes` to be an integer of at least 2, but got {max_passes!r}")
    data = _prepare(logits, labels, chunk_rows, reduce)
    if objective == "nll":
        _check_nll_has_a_minimum(data)
        return _newton(data, float(tol), max_passes, labels, int(first_row))
    lo, hi = (_validate_temperature(t, "bounds") for t in bounds)
    if not lo < hi:
        raise InputError(f"Expected argument `bounds` to be (low, high) with low < high, but got {bounds!r}")
    if isinstance(grid_points, bool) or not isinstance(grid_points, int) or grid_points < 3:
        raise InputError(f"Expected argument `grid_points` to be an integer of at least 3, but got {grid_points!r}")
    return _ece_search(data, n_bins, (lo, hi), grid_points)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""``logits / T``: softmax of the result is the temperature-scaled distribution (Hinton et al. 2015).

    Same shape, dtype and device as ``logits``. Raises :class:`~calibscope.errors.InputError` unless T is a
    finite number larger than 0.

    Example:
        >>> apply_temperature(torch.tensor([[2.0, 0.0]]), 2.0)
        tensor([[1., 0.]])
    """
    t = _validate_temperature(temperature)
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise InputError("Expected argument `logits` to be a floating point torch.Tensor")
    scaled = logits / t
    overflow = torch.isinf(scaled) & torch.isfinite(logits)
    if bool(overflow.any()):
        largest = float(logits[torch.isfinite(logits)].abs().max())
        limit = largest / torch.finfo(scaled.dtype).max
        raise InputError(f"the temperature {temperature!r} is too small for these logits: logits / T overflow "
                         f"{str(scaled.dtype).replace('torch.', '')} (largest |logit| {largest:.4g}); "
                         f"use a temperature of at least {limit:.3g}")
    return scaled


def sweep_temperatures(
    low: float = DEFAULT_SWEEP_RANGE[0], high: float = DEFAULT_SWEEP_RANGE[1], points: int = DEFAULT_SWEEP_POINTS
) -> tuple[float, ...]:
    """``points`` log-spaced temperatures from ``low`` to ``high`` (both included)."""
    lo, hi = _validate_temperature(low, "low"), _validate_temperature(high, "high")
    if not lo < hi or isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise InputError(f"Expected low < high and at least 2 points, but got {low!r}, {high!r}, {points!r}")
    return tuple(torch.logspace(math.log10(lo), math.log10(hi), points, dtype=_F64).tolist())


def temperature_sweep(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperatures: tuple[float, ...] | list[float] | None = None,
    n_bins: int = 15,
    chunk_rows: int | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TemperatureSweep:
    r"""NLL and top-label ECE of ``softmax(logits / T)`` for each T (default: 121 log-spaced T in [0.05, 20]).

    .. math::

        \mathrm{NLL}(T) = \frac{1}{n}\sum_i \Bigl[\log\sum_k e^{z_{ik}/T} - z_{iy_i}/T\Bigr], \qquad
        \mathrm{ECE}(T) = \sum_m \frac{|B_m|}{n}\,|\operatorname{acc}(B_m) - \operatorname{conf}_T(B_m)|,

    with the bins of :func:`~calibscope.diagnostics.calibration.expected_calibration_error`. Accuracy does not
    depend on T. One pass over the logits per temperature (Müller et al. 2019, §3, Figs. 3–5). ``reduce``: across
    processes, as for :func:`fit_temperature`.
    """
    n_bins = _validate_n_bins(n_bins)
    grid = sweep_temperatures() if temperatures is None else _validate_grid(temperatures)
    data = _prepare(logits, labels, chunk_rows, reduce)
    nll, ece = [], []
    for t in grid:
        f, e = data.nll_and_ece(1.0 / t, n_bins)
        nll.append(f)
        ece.append(e)
    return TemperatureSweep(temperatures=grid, nll=tuple(nll), ece=tuple(ece), accuracy=data.n_correct / data.n,
                            n=data.n, n_bins=n_bins)
