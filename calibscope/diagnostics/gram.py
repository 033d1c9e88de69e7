r"""Gram-matrix OOD detection (Sastry & Oore, *Detecting Out-of-Distribution Examples with Gram Matrices*,
ICML 2020), as pytorch-ood 0.4's ``pytorch_ood.detector.Gram`` computes it.

For a layer l with feature maps :math:`F_l \in \mathbb R^{C_l \times HW}` of one input and an order (pole)
p, the p-th order Gram matrix is :math:`G_l^p = (F_l^p F_l^{p\top})^{1/p}` (powers elementwise, the root
signed: :math:`\operatorname{sign}(g)|g|^{1/p}`); as in pytorch-ood (and the authors' code) it is summarised
by its row sums, a vector of :math:`C_l` values,

.. math::

    g_{l,p,c}(x) = \operatorname{sign}(s_c)\,|s_c|^{1/p}, \qquad
    s_c = \sum_{c'} \sum_{j} F_{l,cj}^{\,p}\, F_{l,c'j}^{\,p}
        = \sum_j F_{l,cj}^{\,p} \Bigl(\sum_{c'} F_{l,c'j}^{\,p}\Bigr).

**Fit** (:func:`fit_gram`): per class k (the label on the fit data), per layer and order, the minimum and
maximum of every entry over the fit examples of class k. **Deviation** of an input predicted as class
:math:`\hat y` (argmax of its logits):

.. math::

    \delta_l(x) = \sum_p \sum_c
        \frac{\max(0,\ \mathrm{min}_{\hat y,l,p,c} - g_{l,p,c})}{|\mathrm{min}_{\hat y,l,p,c} + 10^{-6}|}
        + \frac{\max(0,\ g_{l,p,c} - \mathrm{max}_{\hat y,l,p,c})}{|\mathrm{max}_{\hat y,l,p,c} + 10^{-6}|},
    \qquad \Delta(x) = \sum_l \frac{\delta_l(x)}{\mathbb E_\text{val}[\delta_l]},

where the expectation is the mean deviation of held-out in-distribution examples (each against the bounds of
its *true* class, as pytorch-ood does; 1 where that mean is 0). The score here is :math:`-\Delta(x)`, higher =
more in-distribution. Without a separate validation set, ``val_fraction`` of each class's fit examples is held
out (``int(fraction · n_k)`` examples, chosen by ``torch.randperm(n_k)`` class by class in class order from the
given generator, as pytorch-ood draws them from the global one) and the bounds use the rest.

Defaults: orders p = 1..10 (the paper; pytorch-ood's default is 1..L, L the number of layers). Everything is
float64. Pure functions of tensors: the feature maps are captured by :mod:`calibscope.inference.layers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from calibscope.diagnostics.defaults import DEFAULT_GRAM_POLES, DEFAULT_GRAM_VAL_FRACTION
from calibscope.errors import InputError

__all__ = ["GramFit", "fit_gram", "gram_deviations", "gram_score", "gram_statistics", "default_poles"]

_F64 = torch.float64
_EPS = 1e-6  # pytorch-ood's guard in |min + 1e-6|, |max + 1e-6|


def default_poles(count: int = DEFAULT_GRAM_POLES) -> tuple[int, ...]:
    """The orders 1..count (Sastry & Oore use 10)."""
    return tuple(range(1, int(count) + 1))


def _check_poles(poles: Sequence[int]) -> tuple[int, ...]:
    out = tuple(poles)
    if not out or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in out):
        raise InputError(f"Expected the Gram orders (poles) to be positive integers, but got {list(out)!r}")
    return out


def gram_statistics(feature_map: torch.Tensor, poles: Sequence[int]) -> torch.Tensor:
    r"""Row sums of the p-th order Gram matrices of a batch of feature maps, float64 ``[N, P, C]``.

    ``feature_map``: ``[N, C, ...]`` (any trailing spatial shape, or none: ``[N, C]`` is one position).
    Entry ``[i, j, c]`` is :math:`\operatorname{sign}(s)|s|^{1/p_j}` with
    :math:`s = \sum_{c'} (F^{p_j} F^{p_j\top})_{cc'}` for input i.
    """
    if not isinstance(feature_map, torch.Tensor) or feature_map.ndim < 2 or not feature_map.is_floating_point():
        raise InputError("Expected a floating point feature map of shape [N, C, ...]")
    orders = _check_poles(poles)
    x = feature_map.detach().to(_F64).reshape(feature_map.shape[0], feature_map.shape[1], -1)
    out = []
    for p in orders:
        t = x**p
        s = (t * t.sum(dim=1, keepdim=True)).sum(dim=2)  # Σ_j t_cj Σ_c' t_c'j = row sums of t tᵀ
        out.append(s.sign() * s.abs() ** (1.0 / p))
    return torch.stack(out, dim=1)


@dataclass(frozen=True, eq=False)
class GramFit:
    """Per-class bounds and the per-layer normalisers of the Gram detector.

    ``mins[l]``, ``maxs[l]``: float64 ``[K, P, C_l]``; ``layer_norms``: float64 ``[L]`` (the mean validation
    deviation of each layer, 1 where it is 0 or there is no validation example); ``poles``; ``n_fit`` and
    ``n_val``: examples used for the bounds and for the normalisers; ``split``: ``"held-out"`` (a fraction of
    the fit data) or ``"separate"`` (a validation set).
    """

    mins: tuple[torch.Tensor, ...]
    maxs: tuple[torch.Tensor, ...]
    layer_norms: torch.Tensor
    poles: tuple[int, ...]
    n_fit: int
    n_val: int
    split: str

    def summary(self) -> dict[str, Any]:
        return {"poles": list(self.poles), "layers": len(self.mins),
                "channels": [int(m.shape[2]) for m in self.mins], "n_fit": self.n_fit, "n_val": self.n_val,
                "split": self.split, "layer_norms": self.layer_norms.tolist()}


def _check_stats(stats: Sequence[torch.Tensor], n: int | None, name: str) -> list[torch.Tensor]:
    if not stats:
        raise InputError(f"Expected Gram statistics of at least one layer in `{name}`")
    out = []
    for s in stats:
        if not isinstance(s, torch.Tensor) or s.ndim != 3:
            raise InputError(f"Expected `{name}` to hold [N, P, C] tensors (gram_statistics)")
        if n is not None and s.shape[0] != n:
            raise InputError(f"Expected {n} rows in every layer of `{name}`, but got {s.shape[0]}")
        out.append(s.to(_F64))
    return out


def gram_deviations(stats: Sequence[torch.Tensor], classes: torch.Tensor, fit: GramFit) -> torch.Tensor:
    """Per-layer deviations δ_l of each input from the bounds of ``classes`` (one per input), float64 ``[N, L]``."""
    layers = _check_stats(stats, int(classes.shape[0]), "stats")
    if len(layers) != len(fit.mins):
        raise InputError(f"Expected statistics of {len(fit.mins)} layers (as fitted), but got {len(layers)}")
    out = []
    for g, lo, hi in zip(layers, fit.mins, fit.maxs, strict=True):
        lo_k, hi_k = lo[classes], hi[classes]
        below = torch.relu(lo_k - g) / (lo_k + _EPS).abs()
        above = torch.relu(g - hi_k) / (hi_k + _EPS).abs()
        out.append((below + above).sum(dim=(1, 2)))
    return torch.stack(out, dim=1)


def fit_gram(
    stats: Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    num_classes: int,
    poles: Sequence[int],
    val_stats: Sequence[torch.Tensor] | None = None,
    val_labels: torch.Tensor | None = None,
    val_fraction: float = DEFAULT_GRAM_VAL_FRACTION,
    generator: torch.Generator | None = None,
) -> GramFit:
    """Class-wise minima and maxima of the Gram statistics of the fit data, and the layer normalisers.

    Args:
        stats: one ``[N, P, C_l]`` tensor per layer (:func:`gram_statistics` of the fit inputs).
        labels: ``[N]`` classes of the fit inputs; every class in ``0..num_classes-1`` must occur.
        num_classes: K.
        poles: the orders the statistics were computed with (recorded).
        val_stats, val_labels: a separate validation set for the normalisers (its labels, or the model's
            predictions where it has none); without it ``val_fraction`` of each class is held out of ``stats``.
        generator: draws the held-out split (``torch.randperm(n_k, generator=...)`` class by class).
    """
    layers = _check_stats(stats, None, "stats")
    n = int(layers[0].shape[0])
    layers = _check_stats(layers, n, "stats")
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
        raise InputError(f"Expected `labels` of shape [{n}] (one per fit example)")
    y = labels.to(torch.int64).cpu()
    orders = _check_poles(poles)
    if not 0 <= float(val_fraction) < 1:
        raise InputError(f"Expected `val_fraction` in [0, 1), but got {val_fraction!r}")
    fit_index, val_index = [], []
    for k in range(num_classes):
        members = torch.nonzero(y == k).flatten()
        if members.numel() == 0:
            raise InputError(f"the Gram detector needs fit examples of every class, but class {k} has none")
        if val_stats is None:
            perm = torch.randperm(members.numel(), generator=generator)
            n_val = int(val_fraction * members.numel())
            fit_index.append(members[perm[n_val:]])
            val_index.append(members[perm[:n_val]])
        else:
            fit_index.append(members)
    mins, maxs = [], []
    for g in layers:
        mins.append(torch.stack([g[i.to(g.device)].min(dim=0).values for i in fit_index]))
        maxs.append(torch.stack([g[i.to(g.device)].max(dim=0).values for i in fit_index]))
    partial = GramFit(tuple(mins), tuple(maxs), torch.ones(len(layers), dtype=_F64), orders, 0, 0, "")
    if val_stats is None:
        index = torch.cat(val_index)
        classes = y[index]
        val_layers = [g[index.to(g.device)] for g in layers]
        split = "held-out"
    else:
        if val_labels is None:
            raise InputError("Expected `val_labels` (or predictions) with `val_stats`")
        val_layers = _check_stats(val_stats, int(val_labels.shape[0]), "val_stats")
        classes = val_labels.to(torch.int64).cpu()
        split = "separate"
    norms = torch.ones(len(layers), dtype=_F64)
    if classes.numel():
        mean = gram_deviations(val_layers, classes.to(val_layers[0].device), partial).mean(dim=0).cpu()
        norms = torch.where(mean > 0, mean, norms)
    return GramFit(tuple(mins), tuple(maxs), norms, orders,
                   n_fit=int(sum(i.numel() for i in fit_index)), n_val=int(classes.numel()), split=split)


def gram_score(stats: Sequence[torch.Tensor], logits: torch.Tensor, fit: GramFit) -> torch.Tensor:
    r""":math:`-\Delta(x) = -\sum_l \delta_l(x) / \mathbb E_\text{val}[\delta_l]` against the bounds of the
    predicted class; float64 ``[N]``, higher = more in-distribution."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise InputError("Expected `logits` of shape [N, K]")
    predicted = logits.argmax(dim=1)
    dev = gram_deviations(stats, predicted.to(fit.mins[0].device), fit)
    return -(dev / fit.layer_norms.to(dev.device)).sum(dim=1)
