r"""Logit-gap mutual information (Müller, Kornblith & Hinton 2019, §4 and App. A.2).

How much does a logit tell about *which training example* produced it? Müller et al. measure it for two
classes a, b as the mutual information between the example index X (uniform over N examples) and the logit
gap :math:`Y = z_a - z_b` under data augmentation. With hard targets it grows towards :math:`\log N` over
training (every example keeps its own gap); label smoothing squeezes the examples of a class together and it
falls towards :math:`\log 2` (only the class is left) — the reason label-smoothed teachers distil worse.

**Estimator.** For each of the N examples x, L augmented draws give gaps :math:`y_{x1}, \dots, y_{xL}`.
:math:`p(y \mid x)` is modelled as a Gaussian :math:`\mathcal N(\mu_x, \sigma^2)` with

.. math::

    \mu_x = \frac{1}{L} \sum_{l=1}^{L} y_{xl}, \qquad
    \sigma^2 = \frac{1}{N (L - 1)} \sum_{x=1}^{N} \sum_{l=1}^{L} (y_{xl} - \mu_x)^2
    \quad \text{(pooled within-example variance)},

    \hat I(X; Y) = \frac{1}{N L} \sum_{x, l} \Bigl[ -\frac{(y_{xl} - \mu_x)^2}{2 \sigma^2}
        - \log \frac{1}{N} \sum_{x'=1}^{N} \exp\Bigl(-\frac{(y_{xl} - \mu_{x'})^2}{2 \sigma^2}\Bigr) \Bigr]
    \quad \text{nats}.

Each bracket is :math:`\log p(y \mid x) - \log p(y)` with :math:`p(y) = \frac1N \sum_{x'} p(y \mid x')`;
the inner sum is a log-sum-exp over all N means, evaluated in float64 in chunks of rows (memory
:math:`O(\text{chunk} \cdot N)`, never :math:`N L \times N` at once for large N). Every bracket is at most
:math:`\log N` (the own term is one of the N in the sum), so :math:`\hat I \le \log N`.

**Bias with few draws.** :math:`\mu_x` is the mean of the same L draws it is compared with, so each draw lies
closer to its own mean than a fresh draw would: with L = 5 the estimate is biased *upwards* by about
:math:`\tfrac{1}{2L}` — about +0.1 nats (≈ 0.108 for large N: :math:`\tfrac12\log(1 + \tfrac1L) +
\tfrac{L}{2(L+1)} - \tfrac{L-1}{2L}`) when the examples are indistinguishable (true value 0) and likewise
above :math:`\log 2` for two well separated clusters. Compare checkpoints measured with the same L and N;
the bias does not change the direction of a comparison.

**Spread.** Given several independent repetitions of the L draws (``gaps`` of shape ``[R, N, L]``), the
estimate is the mean of the R per-repetition estimates and ``spread_nats`` is their sample standard deviation
(the variability due to the random augmentations). With one repetition there is no spread (``None``).

**Premise.** Müller et al.'s d(·) is an augmentation the network was *trained* with: the L draws of an example
are still that example to the network. An augmentation that changes the training predictions (a shift + flip
on a network trained without them) adds within-example variance that has nothing to do with the network's
memory of the example, and Î then measures the augmentation. :func:`augmentation_check` reports, on the same
examples, the accuracy without and under the augmentation and the fraction of draws whose prediction equals
the unaugmented one; below :data:`DEFAULT_MIN_AGREEMENT` (90 %) the premise is taken not to hold.

The functions are pure: no I/O, no printing, and they run on the device the tensors are on (float64; MPS,
which has no float64, computes on the CPU).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from calibscope.errors import InputError

__all__ = [
    "DEFAULT_MIN_AGREEMENT",
    "AugmentationCheck",
    "LogitGapMutualInformation",
    "augmentation_check",
    "class_pair_examples",
    "logit_gap_mutual_information",
    "logit_gaps",
]

DEFAULT_MIN_AGREEMENT = 0.9  # below this prediction agreement the augmentation changes what the model says
_F64 = torch.float64
_LN2 = math.log(2.0)
# elements of one [chunk, N] block of the log-sum-exp (float64: 32 MiB)
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class LogitGapMutualInformation:
    """Estimated mutual information between example index and logit gap (Müller et al. 2019 App. A.2).

    ``nats`` / ``bits``: :math:`\\hat I(X; Y)` (mean over the R repetitions). ``ceiling_nats``: its upper
    bound :math:`\\log N`. ``sigma2``: the pooled within-example variance of the gap (mean over repetitions).
    ``spread_nats``: sample standard deviation of the per-repetition estimates (None when R = 1).
    ``per_repetition_nats``: the R estimates. ``n_examples`` N, ``n_draws`` L, ``n_repetitions`` R.
    """

    nats: float
    bits: float
    ceiling_nats: float
    sigma2: float
    spread_nats: float | None
    per_repetition_nats: tuple[float, ...]
    n_examples: int
    n_draws: int
    n_repetitions: int

    @property
    def ceiling_bits(self) -> float:
        return self.ceiling_nats / _LN2

    @property
    def spread_bits(self) -> float | None:
        return None if self.spread_nats is None else self.spread_nats / _LN2


# --------------------------------------------------------------------------------------------------------
# validation (once, at the edge)
# --------------------------------------------------------------------------------------------------------


def _validate_gaps(gaps: Any) -> torch.Tensor:
    if not isinstance(gaps, torch.Tensor):
        try:
            gaps = torch.as_tensor(gaps)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"Expected argument `gaps` to be a tensor or array of shape [N, L] or [R, N, L], "
                             f"but got {type(gaps).__name__}") from None
    if gaps.ndim not in (2, 3):
        raise InputError(f"Expected argument `gaps` to have shape [N, L] (examples × augmented draws) or "
                         f"[R, N, L] (R repetitions), but got shape {list(gaps.shape)}")
    if not (gaps.is_floating_point() or gaps.dtype in (torch.int32, torch.int64)):
        raise InputError(f"Expected argument `gaps` to hold real numbers, but got dtype {gaps.dtype}")
    n, draws = int(gaps.shape[-2]), int(gaps.shape[-1])
    if gaps.ndim == 3 and gaps.shape[0] < 1:
        raise InputError("Expected at least one repetition in `gaps` [R, N, L], but got R = 0")
    if n < 2:
        raise InputError(f"Expected at least 2 examples (X is the example index; with one example there is "
                         f"nothing to tell apart), but got N = {n}")
    if draws < 2:
        raise InputError(f"Expected at least 2 augmented draws per example to estimate the within-example "
                         f"variance σ², but got L = {draws}")
    if not bool(torch.isfinite(gaps).all()):
        raise InputError("Expected argument `gaps` to contain only finite values, but found NaN or inf")
    return gaps


def _validate_chunk_size(chunk_size: Any) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise InputError(f"Expected argument `chunk_size` to be an integer larger than 0, but got {chunk_size!r}")
    return int(chunk_size)


# --------------------------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------------------------


def logit_gap_mutual_information(gaps: Any, *, chunk_size: int | None = None) -> LogitGapMutualInformation:
    r"""Mutual information :math:`\hat I(X; Y)` between example index and logit gap (Müller et al. §4, App. A.2).

    Args:
        gaps: ``[N, L]`` logit gaps :math:`y_{xl} = z_a - z_b` of N examples under L augmented draws each,
            or ``[R, N, L]`` for R independent repetitions of the draws (gives ``spread_nats``). A tensor or
            anything :func:`torch.as_tensor` accepts; computed in float64 where the tensor is.
        chunk_size: rows (draws) per block of the log-sum-exp; default: as many as fit in 2²² float64
            elements (32 MiB), so N in the tens of thousands works in bounded memory.

    Returns:
        :class:`LogitGapMutualInformation` (nats and bits, the ceiling :math:`\log N`, σ², spread).

    Raises:
        InputError: fewer than 2 examples or 2 draws, non-finite gaps, or zero within-example variance
            (the augmentation never changed the gap — the Gaussian model is undefined).

    The formula (see the module docstring) with :math:`\mu_x` the mean of example x's L draws and
    :math:`\sigma^2` their pooled within-example variance:

    .. math::

        \hat I = \frac{1}{NL} \sum_{x,l} \Bigl[ -\frac{(y_{xl} - \mu_x)^2}{2\sigma^2}
            - \log \frac1N \sum_{x'} e^{-(y_{xl} - \mu_{x'})^2 / 2\sigma^2} \Bigr] \le \log N.

    With L = 5 it is biased upwards by about 0.1 nats (see the module docstring).

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> means = torch.cat([torch.zeros(300), torch.full((300,), 50.0)])   # two far-apart groups
        >>> gaps = means[:, None] + torch.randn(600, 5, generator=g, dtype=torch.float64)
        >>> r = logit_gap_mutual_information(gaps)
        >>> round(r.nats, 3), round(math.log(2), 3), round(r.ceiling_nats, 3)
        (0.796, 0.693, 6.397)
    """
    gaps = _validate_gaps(gaps)
    chunk_size = _validate_chunk_size(chunk_size)
    if gaps.device.type == "mps":  # no float64 on MPS
        gaps = gaps.cpu()
    y = gaps.to(_F64)
    if y.ndim == 2:
        y = y.unsqueeze(0)
    r, n, draws = (int(s) for s in y.shape)
    rows = chunk_size if chunk_size is not None else max(1, _BLOCK_ELEMENTS // n)
    estimates, variances = [], []
    for rep in range(r):
        value, sigma2 = _estimate(y[rep], rows, repetition=rep if r > 1 else None)
        estimates.append(value)
        variances.append(sigma2)
    mean = sum(estimates) / r
    spread = None
    if r > 1:
        spread = math.sqrt(sum((e - mean) ** 2 for e in estimates) / (r - 1))
    return LogitGapMutualInformation(
        nats=mean,
        bits=mean / _LN2,
        ceiling_nats=math.log(n),
        sigma2=sum(variances) / r,
        spread_nats=spread,
        per_repetition_nats=tuple(estimates),
        n_examples=n,
        n_draws=draws,
        n_repetitions=r,
    )


def _estimate(y: torch.Tensor, rows: int, *, repetition: int | None) -> tuple[float, float]:
    """(Î in nats, σ²) for one ``[N, L]`` float64 block of gaps."""
    n, draws = y.shape
    mu = y.mean(dim=1)  # μ_x, [N]
    residual = y - mu[:, None]
    sigma2 = float(residual.square().sum()) / (n * (draws - 1))
    scale = float(y.abs().max())
    if not sigma2 > (torch.finfo(_F64).eps * max(scale, 1e-300)) ** 2:
        where = "" if repetition is None else f" (repetition {repetition})"
        raise InputError(
            f"the within-example variance σ² of the logit gap is 0{where}: every augmented draw of each "
            f"example gave the same gap, so the Gaussian estimator is undefined (Î would be log N = "
            f"{math.log(n):.4f} for distinct examples); the augmentation does not change the model's output — "
            f"use a stronger one (a larger --shift, flips, or --augment noise:σ)")
    inv_two_var = 1.0 / (2.0 * sigma2)
    flat = y.reshape(-1)  # draws of example x are rows x·L … x·L + L − 1
    own = residual.reshape(-1).square().mul_(-inv_two_var)  # log p(y|x) up to the shared constant
    total = torch.zeros((), dtype=_F64, device=y.device)
    for start in range(0, flat.numel(), rows):
        stop = min(flat.numel(), start + rows)
        block = (flat[start:stop, None] - mu[None, :]).square_().mul_(-inv_two_var)  # [rows, N]
        total += (own[start:stop] - torch.logsumexp(block, dim=1)).sum()
    value = float(total) / flat.numel() + math.log(n)  # + log N: the 1/N inside the log
    return value, sigma2


# --------------------------------------------------------------------------------------------------------
# helpers: choosing the examples, gaps from logits
# --------------------------------------------------------------------------------------------------------


def class_pair_examples(
    labels: torch.Tensor,
    classes: Sequence[int],
    *,
    per_class: int = 300,
    seed: int = 0,
) -> torch.Tensor:
    """Indices of up to ``per_class`` examples of each of two classes, chosen at random (seeded).

    Müller et al. use 300 + 300 training examples. Returns int64 indices ``[n_a + n_b]``: the chosen examples
    of ``classes[0]`` in increasing order, then those of ``classes[1]``. A class with fewer examples than
    ``per_class`` contributes all of its examples (compare ``len(result)`` with ``2 * per_class``).
    The choice depends only on ``labels``, ``classes``, ``per_class`` and ``seed`` (a CPU generator).

    Raises:
        InputError: not exactly two distinct classes, a class with no examples, ``per_class`` < 1.
    """
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.is_floating_point():
        raise InputError("Expected argument `labels` to be an integer tensor of shape [N]")
    classes = tuple(classes)
    if len(classes) != 2 or any(isinstance(c, bool) or not isinstance(c, numbers.Integral) for c in classes):
        raise InputError(f"Expected exactly two class indices (a, b), but got {list(classes)}")
    a, b = (int(c) for c in classes)
    if a == b:
        raise InputError(f"Expected two different classes, but got class {a} twice: the logit gap z_a − z_b "
                         "of a class with itself is always 0")
    if isinstance(per_class, bool) or not isinstance(per_class, numbers.Integral) or per_class < 1:
        raise InputError(f"Expected argument `per_class` to be an integer larger than 0, but got {per_class!r}")
    labels = labels.cpu()
    generator = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c in (a, b):
        members = torch.nonzero(labels == c).flatten()
        if members.numel() == 0:
            present = sorted(set(labels.tolist()))
            raise InputError(f"class {c} has no examples in the data (present: {present[:20]}); the mutual "
                             f"information needs examples of both classes")
        order = torch.randperm(members.numel(), generator=generator)[:per_class]
        chosen.append(members[order].sort().values)
    return torch.cat(chosen)


def logit_gaps(logits: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """:math:`z_a - z_b` over the last dimension: ``[..., K]`` logits → ``[...]`` gaps (same dtype)."""
    if not isinstance(logits, torch.Tensor) or logits.ndim < 1:
        raise InputError("Expected argument `logits` to be a tensor of shape [..., K]")
    a, b = (int(c) for c in classes)
    k = int(logits.shape[-1])
    for c in (a, b):
        if not 0 <= c < k:
            raise InputError(f"class {c} is out of range: the logits have {k} classes (0 … {k - 1})")
    return logits[..., a] - logits[..., b]


# --------------------------------------------------------------------------------------------------------
# the premise: does the augmentation keep the model's predictions?
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentationCheck:
    """Does the augmentation keep the model's predictions on the chosen (training) examples?

    ``accuracy``: without augmentation. ``augmented_accuracy``: over all augmented draws. ``agreement``: the
    fraction of draws whose top class equals the example's unaugmented top class. ``premise_holds``:
    ``agreement ≥ min_agreement``.
    """

    accuracy: float
    augmented_accuracy: float
    agreement: float
    min_agreement: float
    n_examples: int
    n_draws: int

    @property
    def premise_holds(self) -> bool:
        return self.agreement >= self.min_agreement


def augmentation_check(
    clean_logits: torch.Tensor,
    augmented_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> AugmentationCheck:
    r"""Accuracy and prediction agreement under the augmentation (the premise of Müller et al.'s estimator).

    Args:
        clean_logits: ``[N, K]`` logits of the N examples without augmentation.
        augmented_logits: ``[N, L, K]`` or ``[R, N, L, K]`` logits of their augmented draws.
        labels: ``[N]`` true classes.
        min_agreement: the fraction of draws that must keep the unaugmented prediction (default 0.9).

    .. math::

        \text{agreement} = \frac{1}{R N L} \sum_{r, x, l}
            [\arg\max_k z^{(r)}_{xlk} = \arg\max_k z_{xk}]
    """
    if not isinstance(clean_logits, torch.Tensor) or clean_logits.ndim != 2:
        raise InputError("Expected argument `clean_logits` to be a tensor of shape [N, K]")
    aug = augmented_logits
    if not isinstance(aug, torch.Tensor) or aug.ndim not in (3, 4):
        raise InputError("Expected argument `augmented_logits` to be a tensor of shape [N, L, K] or [R, N, L, K]")
    if aug.ndim == 3:
        aug = aug.unsqueeze(0)
    n, k = (int(s) for s in clean_logits.shape)
    if int(aug.shape[1]) != n or int(aug.shape[3]) != k:
        raise InputError(f"the augmented logits {list(aug.shape)} do not match the clean ones {[n, k]}")
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
        raise InputError(f"Expected argument `labels` to have shape [{n}]")
    if isinstance(min_agreement, bool) or not isinstance(min_agreement, numbers.Real) or not 0 <= min_agreement <= 1:
        raise InputError(f"Expected argument `min_agreement` to be a number in [0, 1], but got {min_agreement!r}")
    clean_pred = clean_logits.argmax(dim=1).cpu()
    aug_pred = aug.argmax(dim=3).cpu()  # [R, N, L]
    y = labels.cpu().to(torch.int64)
    return AugmentationCheck(
        accuracy=float((clean_pred == y).double().mean()),
        augmented_accuracy=float((aug_pred == y[None, :, None]).double().mean()),
        agreement=float((aug_pred == clean_pred[None, :, None]).double().mean()),
        min_agreement=float(min_agreement),
        n_examples=n,
        n_draws=int(aug.shape[0] * aug.shape[2]),
    )
