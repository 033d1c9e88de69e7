r"""Loss-surface slices: along filter-normalised random directions (Li et al. 2018) and between two checkpoints.

**Filter-normalised directions (Li, Xu, Taylor, Studer & Goldstein 2018, §4).** A random direction d with
Gaussian entries is rescaled filter by filter to the norm of the weights it perturbs,

.. math::

    d_{i,j} \leftarrow \frac{d_{i,j}}{\lVert d_{i,j} \rVert} \lVert w_{i,j} \rVert,

where :math:`w_{i,j}` is filter j (slice j along the output dimension 0) of layer i's weight. Parameters with
one dimension (biases, BatchNorm scales) get :math:`d = 0` (Li et al.'s choice of not perturbing them). The
normalisation removes the scale ambiguity of ReLU networks, so slices of different models are comparable.
The 1-D slice is :math:`f(\alpha) = L(w + \alpha d)`, the 2-D slice :math:`f(\alpha, \beta) =
L(w + \alpha d_1 + \beta d_2)` with two independent directions; the directions are drawn on the CPU from
``seed`` (the same directions on every device, for models with the same parameter shapes).

**Linear interpolation (Goodfellow, Vinyals & Saxe 2015).** :math:`f(t) = L((1 - t)\, w_A + t\, w_B)` between
two checkpoints of the same architecture; floating-point buffers (BatchNorm running statistics) are
interpolated with the same t, so t = 0 is model A exactly and t = 1 is model B up to float rounding.

L is the mean cross-entropy over a fixed seeded subset of training examples, the model in eval mode; the
accuracy on the same examples is recorded beside it. Pure: no I/O; parameters restored bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from calibscope.diagnostics.defaults import DEFAULT_LINE_POINTS, DEFAULT_SPAN, DEFAULT_SURFACE_POINTS
from calibscope.diagnostics.sharpness import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EXAMPLES,
    LossOnData,
    chosen_parameters,
    evaluation_mode,
    seeded_subset,
)
from calibscope.errors import InputError

__all__ = [
    "DEFAULT_LINE_POINTS",
    "DEFAULT_SPAN",
    "DEFAULT_SURFACE_POINTS",
    "LossLine",
    "LossSurface",
    "filter_normalised_direction",
    "loss_along_line",
    "loss_surface",
]



@dataclass(frozen=True)
class LossSurface:
    """``loss[i]`` (1-D) or ``loss[i][j]`` (2-D, i along α, j along β) and the accuracy on the same examples.

    ``center_loss``: L(w) (α = β = 0). ``dimensions``: 1 or 2. ``seed``: of the directions and the subset.
    """

    alphas: tuple[float, ...]
    betas: tuple[float, ...] | None
    loss: tuple
    accuracy: tuple
    center_loss: float
    dimensions: int
    n_examples: int
    n_params: int
    seed: int
    normalisation: str = "filter"


@dataclass(frozen=True)
class LossLine:
    """L((1 − t) w_A + t w_B) and the accuracy at each ``t``."""

    ts: tuple[float, ...]
    loss: tuple[float, ...]
    accuracy: tuple[float, ...]
    distance: float  # ‖w_B − w_A‖₂ over the parameters
    n_examples: int
    n_params: int
    seed: int

    @property
    def barrier(self) -> float:
        """The loss barrier :math:`\\max_t [L(t) - ((1 - t) L(t_0) + t L(t_1))]` over the grid, relative to the
        chord between the first and last point (Frankle, Dziugaite, Roy & Carbin 2020, "linear mode
        connectivity"); ≤ 0 when no point of the line rises above the chord."""
        t0, t1 = self.ts[0], self.ts[-1]
        if t1 == t0:
            return 0.0
        l0, l1 = self.loss[0], self.loss[-1]
        return max(v - (l0 + (t - t0) / (t1 - t0) * (l1 - l0)) for t, v in zip(self.ts, self.loss, strict=True))


def filter_normalised_direction(params: Sequence[torch.Tensor], *, generator: torch.Generator) -> list[torch.Tensor]:
    """A Gaussian direction, each filter rescaled to its weights' norm; 1-D parameters get 0 (Li et al. 2018).

    Drawn in float32 on the CPU from ``generator`` (device-independent), returned on each parameter's device.
    """
    out = []
    for p in params:
        d = torch.randn(p.shape, generator=generator, dtype=torch.float32)
        if p.ndim <= 1:
            out.append(torch.zeros_like(p))
            continue
        w = p.detach().to("cpu", torch.float32)
        d_norm = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        w_norm = w.flatten(1).norm(dim=1)
        d = d * (w_norm / d_norm).reshape((-1,) + (1,) * (p.ndim - 1))
        out.append(d.to(p.device, p.dtype))
    return out


def _grid(span: float, points: int) -> tuple[float, ...]:
    """``points`` equally spaced values from −span to span, exactly symmetric, with an exact 0 when ``points``
    is odd (linspace gives −5.6e-17 in the middle of 11 points)."""
    if points == 1:
        return (0.0,)
    return tuple(span * (2 * i - (points - 1)) / (points - 1) for i in range(points))


def _validate(points: int, span: float, examples: int, seed: int) -> None:
    for name, value, least in (("points", points, 1), ("examples", examples, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(f"Expected argument `{name}` to be an integer of at least {least}, but got {value!r}")
    if isinstance(span, bool) or not isinstance(span, (int, float)) or not 0 < span < float("inf"):
        raise InputError(f"Expected argument `span` to be a finite number > 0, but got {span!r}")


def _objective(model, inputs, labels, params, *, examples, seed, batch_size, mean, std) -> LossOnData:
    if labels is None or labels.ndim != 1 or labels.shape[0] != inputs.shape[0]:
        raise InputError("the loss surface needs labelled examples: labels [N] for inputs [N, ...]")
    index = seeded_subset(int(inputs.shape[0]), examples, seed)
    return LossOnData(model, inputs[index.to(inputs.device)], labels[index.to(labels.device)], params=params,
                      batch_size=batch_size, mean=mean, std=std)


def loss_surface(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    dimensions: int = 1,
    span: float = DEFAULT_SPAN,
    points: int = DEFAULT_SURFACE_POINTS,
    examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> LossSurface:
    """:math:`L(w + \\alpha d_1 [+ \\beta d_2])` on a ``points`` (× ``points``) grid over ``[−span, span]``.

    ``dimensions`` 1 or 2; directions filter-normalised (:func:`filter_normalised_direction`), seeded.
    ``on_progress(done, total)`` after each grid point.
    """
    _validate(points, span, examples, seed)
    if dimensions not in (1, 2):
        raise InputError(f"Expected argument `dimensions` to be 1 or 2, but got {dimensions!r}")
    params = chosen_parameters(model)
    generator = torch.Generator().manual_seed(int(seed))
    d1 = filter_normalised_direction(params, generator=generator)
    d2 = filter_normalised_direction(params, generator=generator) if dimensions == 2 else None
    alphas = _grid(float(span), points)
    betas = alphas if dimensions == 2 else None
    total = points ** dimensions
    done = 0
    with evaluation_mode(model):
        objective = _objective(model, inputs, labels, params, examples=examples, seed=seed,
                               batch_size=batch_size, mean=mean, std=std)
        center = objective.loss()

        def at(a: float, b: float) -> tuple[float, float]:
            nonlocal done
            shift = [a * u for u in d1] if d2 is None else [a * u + b * v for u, v in zip(d1, d2, strict=True)]
            with objective.shifted(shift):
                value = objective.evaluate()
            done += 1
            if on_progress is not None:
                on_progress(done, total)
            return value

        if d2 is None:
            rows = [at(a, 0.0) for a in alphas]
            loss, acc = tuple(r[0] for r in rows), tuple(r[1] for r in rows)
        else:
            grid = [[at(a, b) for b in betas] for a in alphas]
            loss = tuple(tuple(c[0] for c in row) for row in grid)
            acc = tuple(tuple(c[1] for c in row) for row in grid)
    return LossSurface(alphas=alphas, betas=betas, loss=loss, accuracy=acc, center_loss=center,
                       dimensions=dimensions, n_examples=objective.n, n_params=sum(p.numel() for p in params),
                       seed=int(seed))


def _float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if v.is_floating_point()}


def loss_along_line(
    model_a: nn.Module,
    model_b: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    points: int = DEFAULT_LINE_POINTS,
    start: float = 0.0,
    stop: float = 1.0,
    examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> LossLine:
    """L((1 − t) w_A + t w_B) for ``points`` values of t from ``start`` to ``stop`` (default 0 … 1).

    Both models must have the same floating-point parameters and buffers (names and shapes); the computation
    runs on ``model_a`` (its state is restored afterwards), B's tensors are only read.
    """
    _validate(points, 1.0, examples, seed)
    if not (isinstance(start, (int, float)) and isinstance(stop, (int, float)) and start < stop):
        raise InputError(f"Expected `start` < `stop`, but got {start!r} and {stop!r}")
    state_a, state_b = _float_state(model_a), _float_state(model_b)
    if state_a.keys() != state_b.keys():
        only = sorted(set(state_a) ^ set(state_b))[:4]
        raise InputError(f"the two checkpoints do not have the same parameters (e.g. {', '.join(only)}): the "
                         "line between them needs one architecture")
    for k, v in state_a.items():
        if v.shape != state_b[k].shape:
            raise InputError(f"the two checkpoints differ in the shape of '{k}': {tuple(v.shape)} vs "
                             f"{tuple(state_b[k].shape)}")
    names = list(state_a)
    tensors = [state_a[k] for k in names]
    deltas = [(state_b[k].detach().to(v.device, v.dtype) - v.detach()) for k, v in zip(names, tensors, strict=True)]
    params_only = {id(p) for p in model_a.parameters()}
    distance = sum(float(d.double().square().sum()) for v, d in zip(tensors, deltas, strict=True)
                   if id(v) in params_only) ** 0.5
    ts = tuple(float(v) for v in torch.linspace(float(start), float(stop), points, dtype=torch.float64))
    with evaluation_mode(model_a):
        objective = _objective(model_a, inputs, labels, chosen_parameters(model_a), examples=examples,
                               seed=seed, batch_size=batch_size, mean=mean, std=std)
        objective.params = tensors  # every floating tensor of the state moves along the line
        rows = []
        for i, t in enumerate(ts, start=1):
            with objective.shifted([t * d for d in deltas]):
                rows.append(objective.evaluate())
            if on_progress is not None:
                on_progress(i, len(ts))
    return LossLine(ts=ts, loss=tuple(r[0] for r in rows), accuracy=tuple(r[1] for r in rows),
                    distance=distance, n_examples=objective.n,
                    n_params=sum(p.numel() for p in model_a.parameters() if p.is_floating_point()), seed=int(seed))
