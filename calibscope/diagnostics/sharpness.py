r"""ρ-sharpness of the training loss (Foret et al. 2021, SAM) and its scale-invariant variant (Kwon et al. 2021, ASAM).

λ1 alone is not "flatness": multiplying a network's logits by c > 1 keeps every prediction and, on a training
set it fits, lowers the loss and λ1 together (the loss surface of a more confident model is flatter *because its
loss is smaller*). Compare sharpness at the training loss it was measured at — every result here carries
``loss`` — and prefer a quantity that does not move under reparametrisations that leave the function unchanged.

**ρ-sharpness (Foret et al. 2021, Eq. 1 and §2).** For the mean cross-entropy :math:`L` over a fixed seeded
set of training examples (model in eval mode, no augmentation),

.. math::

    S_\rho(w) = \max_{\lVert \epsilon \rVert_2 \le \rho} L(w + \epsilon) - L(w).

SAM approximates the maximiser by one first-order step, :math:`\hat\epsilon = \rho\, g / \lVert g \rVert_2`
with :math:`g = \nabla L(w)` (Foret et al. Eq. 2). ``ascent_steps > 1`` continues with projected normalised
ascent, :math:`\epsilon \leftarrow \Pi_\rho(\epsilon + \tfrac{\rho}{4} \hat g_\epsilon)` with
:math:`\hat g_\epsilon = \nabla L(w+\epsilon) / \lVert\nabla L(w+\epsilon)\rVert`, and reports the largest
loss seen, so the estimate never decreases with more steps. The loss is not concave in ε: every estimate is a
lower bound of the true maximum (on the test model SAM's step reaches 76 % of a brute-force maximum, the ascent
a local maximum 10 % below it). ``m`` gives Foret et al.'s m-sharpness (§4.1): the examples are cut into seeded disjoint
batches of m, each batch gets its own maximiser, and the result is the example-weighted mean over the batches
(``per_batch`` holds them).

**Adaptive sharpness (Kwon et al. 2021, ASAM, Definition 3 with the element-wise operator).** With
:math:`T_w = \operatorname{diag}(|w| + \eta)` applied to every chosen parameter,

.. math::

    S^{\mathrm{A}}_\rho(w) = \max_{\lVert T_w^{-1} \epsilon \rVert_2 \le \rho} L(w + \epsilon) - L(w),
    \qquad \hat\epsilon = \rho\, \frac{T_w^2 g}{\lVert T_w g \rVert_2} \quad \text{(first step)}.

The ascent runs in :math:`u = T_w^{-1}\epsilon` (gradient :math:`T_w g`, the same projected steps). Invariance,
as tested: with :math:`\eta = 0`, any element-wise positive rescaling :math:`w \mapsto a \odot w` that leaves the
network's function unchanged — e.g. a ReLU layer multiplied by c and the next layer by 1/c (Dinh et al. 2017) —
leaves :math:`S^{\mathrm{A}}` unchanged exactly (the problem in u is the same), while λ1 and :math:`S_\rho` move.
With η > 0 (default 0.01, as Kwon et al.) the invariance is approximate. Neither quantity is invariant to
*logit* rescaling — that changes the probabilities and the loss itself — which is why the training loss is
reported beside every number. ρ for the adaptive variant is relative, so its default is larger (0.5, Kwon et
al.'s CIFAR-10 value).

Second order, for intuition: at a point with gradient g and Hessian H,
:math:`S_\rho \approx \rho \lVert g \rVert + \tfrac{\rho^2}{2} \hat g^\top H \hat g`; at a minimum
(g = 0) it is :math:`\tfrac{\rho^2}{2}\lambda_1`.

Pure: no I/O, no printing; computes where the model's parameters are. The parameters are perturbed in place
and restored bit for bit from a copy; the model's mode is restored.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from calibscope.conventions import as_logits, input_normaliser
from calibscope.diagnostics.hessian import parameters_requiring_grad
from calibscope.errors import InputError

__all__ = [
    "DEFAULT_ADAPTIVE_RHO",
    "DEFAULT_ASCENT_STEPS",
    "DEFAULT_ETA",
    "DEFAULT_EXAMPLES",
    "DEFAULT_RHO",
    "LossOnData",
    "RhoSharpness",
    "rho_sharpness",
]

DEFAULT_RHO = 0.05  # Foret et al. 2021: the value their grid search settles on most often
DEFAULT_ADAPTIVE_RHO = 0.5  # Kwon et al. 2021: ASAM's ρ for CIFAR-10 (relative to |w|)
DEFAULT_ETA = 0.01  # Kwon et al. 2021
DEFAULT_ASCENT_STEPS = 1  # SAM's single first-order step
DEFAULT_EXAMPLES = 4096
DEFAULT_BATCH_SIZE = 256
_LATER_STEP = 0.25  # steps after the first move by ρ/4, then project (a smaller step than SAM's settles on the sphere)


@dataclass(frozen=True)
class RhoSharpness:
    """``sharpness`` = ``perturbed_loss`` − ``loss`` (m-sharpness: the example-weighted mean over batches).

    ``loss``: L(w), the training loss it was measured at. ``first_order``: the sharpness after SAM's single step
    (equal to ``sharpness`` when ``ascent_steps`` = 1). ``per_batch``: one sharpness per batch of m (empty
    without m). ``epsilon_norm``: ‖ε‖₂ of the maximiser (of the first batch with m). ``weight_norm``: ‖w‖₂ of
    the chosen parameters. ``n_gradients``: gradient evaluations used.
    """

    sharpness: float
    loss: float
    perturbed_loss: float
    first_order: float
    rho: float
    adaptive: bool
    eta: float
    ascent_steps: int
    m: int | None
    per_batch: tuple[float, ...]
    epsilon_norm: float
    weight_norm: float
    n_examples: int
    n_params: int
    n_gradients: int
    seed: int

    @property
    def spread(self) -> float | None:
        """Sample standard deviation of the per-batch sharpness (m-sharpness), else None."""
        k = len(self.per_batch)
        if k < 2:
            return None
        mean = sum(self.per_batch) / k
        return math.sqrt(sum((v - mean) ** 2 for v in self.per_batch) / (k - 1))


# --------------------------------------------------------------------------------------------------------
# the loss on a fixed set of examples, with in-place perturbations
# --------------------------------------------------------------------------------------------------------


class LossOnData:
    """Mean cross-entropy (and accuracy) of ``model`` on ``inputs``/``labels`` as a function of ``params``.

    Inputs travel to the parameters' device batch by batch (uint8 images become x/255, then (x − mean)/std,
    the engine's convention). :meth:`shifted` adds a perturbation to the parameters in place and restores
    them exactly afterwards. The model must already be in the wanted mode (see :func:`evaluation_mode`).
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *,
                 params: Sequence[torch.Tensor], batch_size: int = DEFAULT_BATCH_SIZE,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        if labels is None or labels.ndim != 1 or labels.shape[0] != inputs.shape[0] or inputs.shape[0] < 1:
            raise InputError("Expected labels [N] for inputs [N, ...] with N ≥ 1: the loss needs labelled examples")
        self.model, self.inputs, self.labels = model, inputs, labels
        self.params = list(params)
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        self.batch_size = int(batch_size)
        self.n = int(inputs.shape[0])
        self.n_gradients = 0
        self._convert = input_normaliser(inputs, mean, std, self.device)

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.n, self.batch_size):
            stop = min(self.n, start + self.batch_size)
            x = self._convert(self.inputs[start:stop].to(self.device)).to(self.dtype)
            yield x, self.labels[start:stop].to(self.device, torch.int64)

    def evaluate(self) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) at the current parameters; sums in float64."""
        loss = correct = 0.0
        with torch.no_grad():
            for x, y in self._batches():
                logits = as_logits(self.model(x), int(y.shape[0])).to(self.dtype)
                loss += float(F.cross_entropy(logits, y, reduction="sum").double())
                correct += float((logits.argmax(dim=1) == y).sum())
        if not math.isfinite(loss):
            raise InputError("the training loss is not finite (NaN/Inf): is the input normalisation right?")
        return loss / self.n, correct / self.n

    def loss(self) -> float:
        return self.evaluate()[0]

    def gradient(self) -> list[torch.Tensor]:
        """∇L at the current parameters, one tensor per parameter (zeros for unused ones)."""
        grads = [torch.zeros_like(p) for p in self.params]
        with parameters_requiring_grad(self.params), torch.enable_grad():
            for x, y in self._batches():
                logits = as_logits(self.model(x), int(y.shape[0])).to(self.dtype)
                part = F.cross_entropy(logits, y, reduction="sum") / self.n
                for acc, g in zip(grads, torch.autograd.grad(part, self.params, allow_unused=True), strict=True):
                    if g is not None:
                        acc += g
        self.n_gradients += 1
        return grads

    @contextlib.contextmanager
    def shifted(self, deltas: Sequence[torch.Tensor]) -> Iterator[None]:
        """Parameters w + δ inside the block; w restored bit for bit afterwards."""
        saved = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for p, d in zip(self.params, deltas, strict=True):
                    p.add_(d.to(p.dtype))
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved, strict=True):
                    p.copy_(s)


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm on running statistics, no dropout), the previous mode restored afterwards."""
    was_training = model.training
    with contextlib.suppress(NotImplementedError):  # torch.export programs: mode fixed at export time
        model.eval()
    try:
        yield
    finally:
        if was_training:
            with contextlib.suppress(NotImplementedError):
                model.train()


def chosen_parameters(model: nn.Module) -> list[torch.Tensor]:
    """The model's floating-point parameters (all of them, one dtype)."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    if not params:
        raise InputError("the model has no floating-point parameters: there is no loss surface to measure")
    if len({p.dtype for p in params}) != 1:
        raise InputError(f"the parameters mix dtypes {sorted({str(p.dtype) for p in params})}")
    return params


def seeded_subset(n: int, examples: int, seed: int) -> torch.Tensor:
    """The first ``min(examples, n)`` indices of one seeded permutation of ``range(n)``, sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[:min(int(examples), n)].sort().values


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"Expected argument `{name}` to be an integer of at least {minimum}, but got {value!r}")


def _check_positive(name: str, value, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise InputError(f"Expected argument `{name}` to be a finite number {bound}, but got {value!r}")


# --------------------------------------------------------------------------------------------------------
# ρ-sharpness
# --------------------------------------------------------------------------------------------------------


def _norm(parts: Sequence[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in parts))


def _maximise(objective: LossOnData, *, rho: float, scales: list[torch.Tensor] | None,
              steps: int) -> tuple[float, float, float, float]:
    """(L(w), best L(w+ε), L(w+ε̂) after the first step, ‖ε‖₂ of the best) on ``objective``'s examples.

    ``scales``: the diagonal of T_w (adaptive) or None (identity). The ascent runs in u = T⁻¹ε.
    """
    base = objective.loss()
    u = [torch.zeros_like(p) for p in objective.params]
    best, first, best_norm = base, base, 0.0
    for step in range(steps):
        eps = u if scales is None else [t * v for t, v in zip(scales, u, strict=True)]
        if step == 0:
            grad = objective.gradient()
        else:
            with objective.shifted(eps):
                grad = objective.gradient()
        if scales is not None:  # ∂L/∂u = T g
            grad = [t * g for t, g in zip(scales, grad, strict=True)]
        size = _norm(grad)
        if not size > 0:
            break  # a stationary point of the ascent: nothing more to gain along the gradient
        step_size = rho if step == 0 else rho * _LATER_STEP
        u = [v + (step_size / size) * g for v, g in zip(u, grad, strict=True)]
        length = _norm(u)
        if length > rho:  # project onto the ball ‖u‖ ≤ ρ
            u = [v * (rho / length) for v in u]
        eps = u if scales is None else [t * v for t, v in zip(scales, u, strict=True)]
        with objective.shifted(eps):
            value = objective.loss()
        if step == 0:
            first = value
        if value > best:
            best, best_norm = value, _norm(eps)
    return base, best, first, best_norm


def rho_sharpness(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    rho: float | None = None,
    adaptive: bool = False,
    eta: float = DEFAULT_ETA,
    ascent_steps: int = DEFAULT_ASCENT_STEPS,
    m: int | None = None,
    examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RhoSharpness:
    r"""SAM's ρ-sharpness :math:`\max_{\lVert\epsilon\rVert_2\le\rho} L(w+\epsilon) - L(w)` (or ASAM's adaptive one).

    Args:
        model: the classifier (eval mode during the computation; its mode and parameters are restored).
        inputs, labels: training examples ``[N, ...]`` and ``[N]``; a seeded subset of ``examples`` is used.
        rho: radius; default 0.05 (:data:`DEFAULT_RHO`), or 0.5 (:data:`DEFAULT_ADAPTIVE_RHO`) when adaptive.
        adaptive: ASAM's adaptive sharpness with :math:`T_w = \operatorname{diag}(|w| + \eta)`.
        eta: ASAM's η (≥ 0; 0 gives exact invariance under function-preserving element-wise rescaling).
        ascent_steps: 1 = SAM's first-order step; more = projected normalised ascent, best loss kept.
        m: m-sharpness: maximise separately on seeded disjoint batches of m examples and average.
        mean, std: input normalisation after uint8 → [0, 1], as in inference.
        on_progress: called with (done, total) after each batch of m (or once).

    Returns:
        :class:`RhoSharpness` (with ``loss``, the training loss it was measured at).

    Example (a linear model on two points; sharpness grows with ρ)::

        >>> model = torch.nn.Linear(2, 2)
        >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
        >>> rho_sharpness(model, x, y, rho=0.01).sharpness < rho_sharpness(model, x, y, rho=0.1).sharpness
        True
    """
    rho = (DEFAULT_ADAPTIVE_RHO if adaptive else DEFAULT_RHO) if rho is None else rho
    _check_positive("rho", rho)
    _check_positive("eta", eta, allow_zero=True)
    _check_int("ascent_steps", ascent_steps, 1)
    _check_int("examples", examples, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0)
    if m is not None:
        _check_int("m", m, 1)
    if not isinstance(inputs, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise InputError("Expected `inputs` and `labels` to be tensors")
    if labels.ndim != 1 or labels.shape[0] != inputs.shape[0] or inputs.shape[0] < 1:
        raise InputError(f"Expected labels of shape [{inputs.shape[0]}], but got {tuple(labels.shape)}")
    params = chosen_parameters(model)
    index = seeded_subset(int(inputs.shape[0]), examples, seed)
    sub_x, sub_y = inputs[index.to(inputs.device)], labels[index.to(labels.device)]
    if m is None:
        groups = [torch.arange(index.numel())]
    else:  # seeded disjoint batches of m (the last one may be short)
        order = torch.randperm(index.numel(), generator=torch.Generator().manual_seed(int(seed) + 1))
        groups = [order[i:i + m] for i in range(0, index.numel(), m)]
    weight_norm = _norm([p.detach() for p in params])
    with evaluation_mode(model):
        scales = [p.detach().abs() + eta for p in params] if adaptive else None
        results, gradients = [], 0
        for done, group in enumerate(groups, start=1):
            g = group.to(sub_x.device)
            objective = LossOnData(model, sub_x[g], sub_y[group.to(sub_y.device)], params=params,
                                   batch_size=batch_size, mean=mean, std=std)
            results.append((len(group), *_maximise(objective, rho=rho, scales=scales, steps=ascent_steps)))
            gradients += objective.n_gradients
            if on_progress is not None:
                on_progress(done, len(groups))
    total = sum(r[0] for r in results)
    base = sum(r[0] * r[1] for r in results) / total
    best = sum(r[0] * r[2] for r in results) / total
    first = sum(r[0] * r[3] for r in results) / total
    return RhoSharpness(
        sharpness=best - base, loss=base, perturbed_loss=best, first_order=first - base, rho=float(rho),
        adaptive=bool(adaptive), eta=float(eta) if adaptive else 0.0, ascent_steps=int(ascent_steps), m=m,
        per_batch=tuple(r[2] - r[1] for r in results) if m is not None else (), epsilon_norm=results[0][4],
        weight_norm=weight_norm, n_examples=total, n_params=sum(p.numel() for p in params),
        n_gradients=gradients, seed=int(seed))
