"""Intermediate feature maps of an eager model, reduced batch by batch (for the Gram-matrix detector).

Forward hooks on named modules hand each module's output to a ``reduce`` callable as soon as it is produced
(so no layer's full maps are kept), together with the logits of the same forward pass. Inputs follow the
rule of every command: uint8 → [0, 1], then ``(x − mean)/std`` per channel. Only eager ``nn.Module`` models
have named submodules with hooks: TorchScript, ``torch.export`` programs, ONNX and AOTInductor packages are
refused with a message that says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from calibscope.errors import InputError

__all__ = ["ACTIVATIONS", "default_feature_layers", "layer_statistics"]

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Mish, nn.Hardswish, nn.Tanh)


def _check_eager(model) -> None:
    if isinstance(model, torch.jit.ScriptModule) or isinstance(model, torch.fx.GraphModule) \
            or not isinstance(model, nn.Module):
        raise InputError("the gram detector hooks intermediate layers, which needs an eager PyTorch model "
                         "(state_dict or safetensors + arch); TorchScript, .pt2 programs and ONNX have none")


def default_feature_layers(model: nn.Module) -> tuple[str, ...]:
    """Names of the activation modules (ReLU, GELU, …) in registration order: the post-activation feature maps.

    A module object used twice (one ``nn.ReLU`` shared by several layers) is listed once; its every call
    would feed the same hook, so such models need ``layers`` named explicitly.
    """
    _check_eager(model)
    names, seen = [], set()
    for name, module in model.named_modules():
        if isinstance(module, ACTIVATIONS) and id(module) not in seen:
            seen.add(id(module))
            names.append(name)
    if not names:
        raise InputError("the model has no activation modules (nn.ReLU, nn.GELU, ...) to take Gram matrices of; "
                         "name the layers with --gram-layers")
    return tuple(names)


def layer_statistics(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    layers: Sequence[str],
    reduce: Callable[[torch.Tensor], torch.Tensor],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits ``[N, K]``, one ``torch.cat`` of ``reduce(output)`` per layer), both on the CPU.

    Each named module must run exactly once per forward pass. With no ``layers`` this is a plain batched forward
    pass of any module (ODIN's perturbed inputs).
    """
    if layers:
        _check_eager(model)
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise InputError(f"no module named {missing[0]!r} in the model (some names: "
                         f"{', '.join(n for n in list(modules)[1:6])})")
    if not isinstance(inputs, torch.Tensor) or inputs.shape[0] == 0:
        raise InputError("Expected a non-empty tensor of inputs")
    device = torch.device(device)
    try:
        model.eval()
    except NotImplementedError:  # torch.export programs: mode fixed at export time
        pass
    model = model.to(device, dtype)
    current: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = []
    for name in layers:
        def hook(_module, _args, output, name=name):
            if not isinstance(output, torch.Tensor):
                raise InputError(f"layer {name!r} does not return one tensor")
            current[name].append(reduce(output).cpu())
        handles.append(modules[name].register_forward_hook(hook))
    logits, collected = [], {name: [] for name in layers}
    shape = None
    try:
        with torch.inference_mode():
            for start in range(0, inputs.shape[0], batch_size):
                x = inputs[start:start + batch_size].to(device)
                x = x.to(dtype) / 255 if x.dtype == torch.uint8 else x.to(dtype)
                if shape is None:
                    shape = (1, -1, *([1] * (x.ndim - 2)))
                if mean is not None:
                    x = x - torch.as_tensor(list(mean), dtype=dtype, device=device).view(shape)
                if std is not None:
                    x = x / torch.as_tensor(list(std), dtype=dtype, device=device).view(shape)
                for parts in current.values():
                    parts.clear()
                out = model(x)
                if not isinstance(out, torch.Tensor):
                    raise InputError("the gram detector needs a model whose forward returns the logits tensor")
                for name in layers:
                    if len(current[name]) != 1:
                        raise InputError(f"layer {name!r} ran {len(current[name])} times in one forward pass; "
                                         "name modules that run once (--gram-layers)")
                    collected[name].append(current[name][0])
                logits.append(out.detach().to(torch.float64 if dtype == torch.float64 else torch.float32).cpu())
    finally:
        for h in handles:
            h.remove()
    return torch.cat(logits), [torch.cat(collected[name]) for name in layers]
