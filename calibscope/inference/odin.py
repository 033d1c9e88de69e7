"""The gradient half of ODIN (Liang, Li & Srikant, ICLR 2018): sign ∇ₓ CE(f(x)/T, ŷ) with ŷ = argmax f(x).

The perturbation and the score are pure math in :mod:`calibscope.diagnostics.ood_detectors`; this module is
the only part that runs the model with gradients (inputs on the raw, unnormalised scale; the model sees
``(x − mean)/std`` as everywhere in calibscope). The model stays in eval mode; parameters collect no gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["odin_gradient_sign"]


def odin_gradient_sign(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    temperature: float,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """sign of ∂ CE(f((x − mean)/std)/T, ŷ)/∂x for float inputs [N, ...] in their raw scale; same shape, on CPU.

    The cross-entropy is summed over each batch: its sign per element equals that of the batch mean's.
    """
    device = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    out = []
    with torch.inference_mode(False), torch.enable_grad():
        for start in range(0, inputs.shape[0], batch_size):
            x = inputs[start:start + batch_size].to(device, torch.float32).clone().requires_grad_(True)
            shape = (1, -1, *([1] * (x.ndim - 2)))
            xn = x
            if mean is not None:
                xn = xn - torch.as_tensor(list(mean), dtype=x.dtype, device=device).view(shape)
            if std is not None:
                xn = xn / torch.as_tensor(list(std), dtype=x.dtype, device=device).view(shape)
            logits = model(xn) / temperature
            loss = F.cross_entropy(logits, logits.argmax(dim=1), reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            out.append(grad.sign().cpu())
    return torch.cat(out)
