r"""Post-hoc OOD detectors from penultimate features and the classifier layer (beside MSP / max-logit / energy /
Mahalanobis in :mod:`calibscope.diagnostics.ood`).

Notation: :math:`x \in \mathbb R^D` the penultimate features of an input, :math:`W \in \mathbb R^{K\times D}`,
:math:`b` the last linear layer, :math:`z = Wx + b`, :math:`E(z) = \log\sum_k e^{z_k}` (the energy score).
Every score here is an *in-distribution* score: higher = more in-distribution (the negation of pytorch-ood's
outlier scores, which the tests compare against to 1e-5).

* **KNN** (Sun, Ming, Zhu & Li, ICML 2022): :math:`-\lVert \hat x - \hat x_{(k)}\rVert_2`, the distance from the
  normalised features :math:`\hat x = x/\lVert x\rVert` to their k-th nearest normalised training feature.
* **ViM** (Wang, Li, Zhang & Tan, CVPR 2022): origin :math:`u = -W^{+} b`; :math:`R` the eigenvectors of the
  training covariance of :math:`x - u` beyond the top ``dim`` (the residual space); virtual logit
  :math:`\alpha \lVert R^\top (x - u)\rVert` with
  :math:`\alpha = \overline{\max_k z_k} / \overline{\lVert R^\top(x-u)\rVert}` on the training set;
  score :math:`E(z) - \alpha\lVert R^\top(x-u)\rVert`.
* **ReAct** (Sun, Guo & Li, NeurIPS 2021): clip features at the ``percentile`` of the training activations,
  :math:`E(W\min(x, c) + b)`.
* **ASH** (Djurisic et al., ICLR 2023): keep the top ``1 − percentile`` activations of x (ASH-P), set them to the
  mean mass (ASH-B) or rescale them by :math:`\exp(\sum x / \sum x_\text{kept})` (ASH-S); score :math:`E` of the
  shaped features through the last layer.
* **GradNorm** (Huang, Geng & Li, NeurIPS 2021): the L1 norm of the gradient of the cross-entropy to the uniform
  distribution, :math:`L = -\frac1K\sum_k \log\operatorname{softmax}(z/T)_k`, with respect to :math:`W`. Since
  :math:`\partial L/\partial W = \frac1T (p - \frac1K\mathbf 1)\, x^\top`, it is exactly
  :math:`\frac1T \lVert p - \frac1K\rVert_1 \lVert x\rVert_1` — no backward pass needed.
* **ODIN** (Liang, Li & Srikant, ICLR 2018): :func:`odin_inputs` is the perturbation
  :math:`\hat x = x - \varepsilon\,\operatorname{sign}(\nabla_x \mathrm{CE}(f(x)/T, \hat y)) / \sigma_c`; the input
  gradient comes from :mod:`calibscope.inference.odin`, and the score is MSP at temperature T of :math:`f(\hat x)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from calibscope.errors import InputError

__all__ = [
    "DEFAULT_ASH_PERCENTILE",
    "DEFAULT_KNN_K",
    "DEFAULT_ODIN_EPSILON",
    "DEFAULT_ODIN_TEMPERATURE",
    "DEFAULT_REACT_PERCENTILE",
    "ViMFit",
    "ash_score",
    "default_vim_dim",
    "fit_vim",
    "gradnorm_score",
    "knn_score",
    "odin_inputs",
    "react_score",
    "react_threshold",
    "vim_score",
]

from calibscope.diagnostics.defaults import (  # noqa: E402 - torch-free, shown in --help
    DEFAULT_ASH_PERCENTILE,
    DEFAULT_KNN_K,
    DEFAULT_ODIN_EPSILON,
    DEFAULT_ODIN_TEMPERATURE,
    DEFAULT_REACT_PERCENTILE,
)

_F64 = torch.float64
_CHUNK = 1024  # rows of the distance matrix formed at once in knn_score


def _matrix(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim != 2 or not value.is_floating_point():
        raise InputError(f"Expected argument `{name}` to be a 2-D floating point tensor, but got "
                         f"{type(value).__name__ if not isinstance(value, torch.Tensor) else tuple(value.shape)}")
    if value.shape[0] == 0:
        raise InputError(f"Expected argument `{name}` to have at least one row")
    if not bool(torch.isfinite(value).all()):
        raise InputError(f"`{name}` contains NaN or infinite values")
    return value


def _head(weight, bias, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    weight = _matrix(weight, "weight")
    if weight.shape[1] != dim:
        raise InputError(f"the classifier weight is {tuple(weight.shape)} but the features have {dim} columns")
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    if not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],):
        raise InputError(f"Expected argument `bias` of shape [{weight.shape[0]}]")
    return weight, bias


def _fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) < 1.0:
        raise InputError(f"Expected argument `{name}` to be a number in [0, 1), but got {value!r}")
    return float(value)


def _energy(z: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(z.to(_F64), dim=1)


# ---------------------------------------------------------------------------------------------------- KNN


def knn_score(features: torch.Tensor, train_features: torch.Tensor, *, k: int = DEFAULT_KNN_K,
              normalize: bool = True) -> torch.Tensor:
    """Minus the Euclidean distance to the k-th nearest training feature (normalised rows), float64 [N].

    Exact (no approximate index): distances are formed in float64 in blocks of rows.
    """
    x, bank = _matrix(features, "features").to(_F64), _matrix(train_features, "train_features").to(_F64)
    if x.shape[1] != bank.shape[1]:
        raise InputError(f"features have {x.shape[1]} columns but training features {bank.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= bank.shape[0]:
        raise InputError(f"Expected argument `k` to be an integer in [1, {bank.shape[0]}] (the training "
                         f"features), but got {k!r}")
    if normalize:
        x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
        bank = bank / bank.norm(dim=1, keepdim=True).clamp(min=1e-12)
    bank = bank.to(x.device)
    out = []
    for start in range(0, x.shape[0], _CHUNK):
        d = torch.cdist(x[start:start + _CHUNK], bank, compute_mode="donot_use_mm_for_euclid_dist")
        out.append(torch.topk(d, k, dim=1, largest=False).values[:, -1])
    return -torch.cat(out)


# ---------------------------------------------------------------------------------------------------- ViM


def default_vim_dim(dim: int) -> int:
    """The principal dimension ViM's paper uses: 1000 for D ≥ 2048, 512 for D ≥ 768, else D/2."""
    return 1000 if dim >= 2048 else 512 if dim >= 768 else max(1, dim // 2)


@dataclass(frozen=True)
class ViMFit:
    origin: torch.Tensor  # u = −W⁺b, [D]
    residual_basis: torch.Tensor  # R, [D, D − dim]
    alpha: float
    dim: int


def fit_vim(train_features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
            dim: int | None = None) -> ViMFit:
    """ViM's origin, residual space and α from training features (float64)."""
    x = _matrix(train_features, "train_features").to(_F64)
    weight, bias = _head(weight, bias, x.shape[1])
    w, b = weight.to(x.device, _F64), bias.to(x.device, _F64)
    d = default_vim_dim(x.shape[1]) if dim is None else dim
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d < x.shape[1]:
        raise InputError(f"Expected argument `dim` to be an integer in [1, {x.shape[1] - 1}], but got {d!r}")
    u = -(torch.linalg.pinv(w) @ b)
    centred = x - u
    _, vecs = torch.linalg.eigh(centred.T @ centred / x.shape[0])  # ascending eigenvalues
    residual = vecs[:, : x.shape[1] - d].contiguous()
    virtual = (centred @ residual).norm(dim=1)
    alpha = float((x @ w.T + b).max(dim=1).values.mean() / virtual.mean())
    return ViMFit(origin=u, residual_basis=residual, alpha=alpha, dim=d)


def vim_score(features: torch.Tensor, fit: ViMFit, weight: torch.Tensor, bias: torch.Tensor | None = None
              ) -> torch.Tensor:
    """E(z) − α‖Rᵀ(x − u)‖, float64 [N]."""
    x = _matrix(features, "features").to(_F64)
    weight, bias = _head(weight, bias, x.shape[1])
    z = x @ weight.to(x.device, _F64).T + bias.to(x.device, _F64)
    virtual = ((x - fit.origin.to(x.device)) @ fit.residual_basis.to(x.device)).norm(dim=1)
    return _energy(z) - fit.alpha * virtual


# ---------------------------------------------------------------------------------------------------- ReAct, ASH


def react_threshold(train_features: torch.Tensor, *, percentile: float = DEFAULT_REACT_PERCENTILE) -> float:
    """The ``percentile`` quantile (linear interpolation, as numpy) of all training activations."""
    x = _matrix(train_features, "train_features")
    q = _fraction(percentile, "percentile")
    import numpy as np  # torch.quantile refuses more than 2**24 elements

    return float(np.percentile(x.detach().flatten().cpu().numpy(), q * 100))


def react_score(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                threshold: float) -> torch.Tensor:
    """E(W min(x, c) + b), float64 [N]."""
    x = _matrix(features, "features").to(_F64)
    weight, bias = _head(weight, bias, x.shape[1])
    if not math.isfinite(float(threshold)):
        raise InputError(f"Expected a finite ReAct threshold, but got {threshold!r}")
    z = x.clamp(max=float(threshold)) @ weight.to(x.device, _F64).T + bias.to(x.device, _F64)
    return _energy(z)


def _ash(x: torch.Tensor, percentile: float, variant: str) -> torch.Tensor:
    n = x.shape[1]
    keep = n - int(round(n * percentile))
    if keep < 1:
        raise InputError(f"ASH percentile {percentile} keeps no activation of {n}")
    values, index = torch.topk(x, keep, dim=1)
    if variant == "ash-b":
        values = (x.sum(dim=1) / keep)[:, None].expand_as(values)
    shaped = torch.zeros_like(x).scatter_(1, index, values)
    if variant == "ash-s":
        shaped = shaped * torch.exp(x.sum(dim=1) / shaped.sum(dim=1))[:, None]
    return shaped


def ash_score(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
              variant: Literal["ash-p", "ash-b", "ash-s"] = "ash-s",
              percentile: float = DEFAULT_ASH_PERCENTILE) -> torch.Tensor:
    """E of the last layer on ASH-shaped features, float64 [N]."""
    x = _matrix(features, "features").to(_F64)
    weight, bias = _head(weight, bias, x.shape[1])
    if variant not in ("ash-p", "ash-b", "ash-s"):
        raise InputError(f"Expected argument `variant` to be ash-p, ash-b or ash-s, but got {variant!r}")
    shaped = _ash(x, _fraction(percentile, "percentile"), variant)
    return _energy(shaped @ weight.to(x.device, _F64).T + bias.to(x.device, _F64))


# ---------------------------------------------------------------------------------------------------- GradNorm


def gradnorm_score(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                   temperature: float = 1.0) -> torch.Tensor:
    """‖∂L/∂W‖₁ = (1/T)‖softmax(z/T) − 1/K‖₁ ‖x‖₁, float64 [N] (higher = more in-distribution)."""
    x = _matrix(features, "features").to(_F64)
    weight, bias = _head(weight, bias, x.shape[1])
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise InputError(f"Expected argument `temperature` to be a positive number, but got {temperature!r}")
    z = x @ weight.to(x.device, _F64).T + bias.to(x.device, _F64)
    p = torch.softmax(z / temperature, dim=1)
    return (p - 1.0 / z.shape[1]).abs().sum(dim=1) * x.abs().sum(dim=1) / temperature


# ---------------------------------------------------------------------------------------------------- ODIN


def odin_inputs(inputs: torch.Tensor, gradient_sign: torch.Tensor, *, epsilon: float = DEFAULT_ODIN_EPSILON,
                std: Sequence[float] | None = None) -> torch.Tensor:
    """x − ε·sign(∇ₓ CE)/σ_c (σ per channel, dimension 1; ε on the unnormalised input scale)."""
    if not isinstance(inputs, torch.Tensor) or not isinstance(gradient_sign, torch.Tensor) or \
            inputs.shape != gradient_sign.shape:
        raise InputError("Expected `inputs` and `gradient_sign` tensors of the same shape")
    if not (isinstance(epsilon, int | float) and math.isfinite(epsilon) and epsilon >= 0):
        raise InputError(f"Expected argument `epsilon` to be a number ≥ 0, but got {epsilon!r}")
    step = gradient_sign.to(inputs.dtype)
    if std:
        s = torch.as_tensor(list(std), dtype=inputs.dtype, device=inputs.device)
        if inputs.ndim < 2 or s.numel() not in (1, inputs.shape[1]):
            raise InputError(f"Expected {inputs.shape[1] if inputs.ndim > 1 else 1} std values, got {s.numel()}")
        step = step / s.view(1, -1, *([1] * (inputs.ndim - 2)))
    return inputs - epsilon * step
