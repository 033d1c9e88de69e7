"""Penultimate-feature capture: the input of the final linear layer and that layer's weight and bias.

Müller et al. (2019, §2) project the penultimate activations onto planes through the class templates
w̃_k = [w_k; b_k] of the last layer. We capture

* eager modules (and pickled modules): a forward pre-hook on the last ``nn.Linear`` whose ``out_features``
  equals the number of classes (or the module named by ``layer``);
* ``torch.export`` programs (``.pt2``): the first argument of the last ``aten.linear`` node of the graph, by
  inserting a probe module after it (the exported program itself is not modified: we work on a copy).

TorchScript modules do not accept new hooks after scripting; asking for features there is a clear error.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from calibscope.errors import InputError


@dataclass
class FeatureTap:
    """A model prepared to record its penultimate features on every forward call."""

    model: nn.Module
    layer_name: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    take: Callable[[], torch.Tensor]  # returns (and clears) the features of the last forward call
    remove: Callable[[], None]


class _Probe(nn.Module):
    """Identity that remembers its input (inserted into exported graphs)."""

    def __init__(self) -> None:
        super().__init__()
        self.last: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last = x
        return x


def _is_torchscript(model: nn.Module) -> bool:
    return isinstance(model, torch.jit.ScriptModule)


def _is_exported_graph(model: nn.Module) -> bool:
    return isinstance(model, torch.fx.GraphModule) and not any(
        isinstance(m, nn.Linear) for m in model.modules())


def attach_feature_tap(model: nn.Module, num_classes: int, *, layer: str | None = None) -> FeatureTap:
    """Prepare ``model`` so each forward call records the input of its final linear layer."""
    from calibscope.feeding import no_autograd_reason

    reason = no_autograd_reason(model)
    if reason is not None:
        raise InputError(f"penultimate features need a torch model: {reason}")
    if _is_torchscript(model):
        raise InputError("cannot capture penultimate features from a TorchScript model (it accepts no new "
                         "hooks); use the .pt2 (torch.export) or safetensors/state_dict form of the checkpoint")
    if _is_exported_graph(model):
        return _tap_exported(model, num_classes, layer)
    return _tap_eager(model, num_classes, layer)


def _tap_eager(model: nn.Module, num_classes: int, layer: str | None) -> FeatureTap:
    modules = dict(model.named_modules())
    if layer is not None:
        if layer not in modules:
            linear_names = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
            raise InputError(f"--layer '{layer}' is not a module of the model; linear layers: "
                             f"{', '.join(linear_names[-5:]) or 'none'}")
        target = modules[layer]
        name = layer
    else:
        candidates = [(n, m) for n, m in modules.items()
                      if isinstance(m, nn.Linear) and m.out_features == num_classes]
        if not candidates:
            raise InputError(f"found no nn.Linear with out_features={num_classes} (the number of classes) to "
                             "capture penultimate features from; name the layer with --layer NAME")
        name, target = candidates[-1]
    weight = getattr(target, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise InputError(f"layer '{name}' has no 2-D weight; --layer must name a linear layer")
    store: dict[str, torch.Tensor] = {}

    def hook(_module, args):
        store["x"] = args[0].flatten(1) if args[0].ndim > 2 else args[0]

    handle = target.register_forward_pre_hook(hook)
    bias = getattr(target, "bias", None)
    return FeatureTap(model, name, weight.detach(), None if bias is None else bias.detach(),
                      lambda: store.pop("x"), handle.remove)


def _tap_exported(gm: torch.fx.GraphModule, num_classes: int, layer: str | None) -> FeatureTap:
    linear_ops = {torch.ops.aten.linear.default}
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in linear_ops]
    if layer is not None:
        nodes = [n for n in nodes if _param_name(gm, n.args[1]).rsplit(".", 1)[0] == layer or n.name == layer]
        if not nodes:
            raise InputError(f"--layer '{layer}' names no linear node of the exported program")
    if not nodes:
        raise InputError("the exported program has no linear layer to capture penultimate features from")
    node = nodes[-1]
    with warnings.catch_warnings():  # torch's own pytree deprecation noise on deepcopy
        warnings.simplefilter("ignore", FutureWarning)
        tapped = copy.deepcopy(gm)
    node = next(n for n in tapped.graph.nodes if n.name == node.name)
    probe = _Probe()
    tapped.add_submodule("_calibscope_probe", probe)
    with tapped.graph.inserting_before(node):
        probed = tapped.graph.call_module("_calibscope_probe", (node.args[0],))
    node.args = (probed, *node.args[1:])
    tapped.recompile()
    weight = _resolve_attr(tapped, node.args[1])
    bias = _resolve_attr(tapped, node.args[2]) if len(node.args) > 2 and node.args[2] is not None else None
    if weight.shape[0] != num_classes and layer is None:
        raise InputError(f"the last linear node has {weight.shape[0]} outputs, not {num_classes} classes; "
                         "name the layer with --layer NAME")

    def take() -> torch.Tensor:
        x, probe.last = probe.last, None
        return x.flatten(1) if x.ndim > 2 else x

    return FeatureTap(tapped, _param_name(tapped, node.args[1]).rsplit(".", 1)[0], weight.detach(),
                      None if bias is None else bias.detach(), take, lambda: None)


def _param_name(gm: torch.fx.GraphModule, arg) -> str:
    return str(arg.target) if isinstance(arg, torch.fx.Node) and arg.op == "get_attr" else str(arg)


def _resolve_attr(gm: torch.fx.GraphModule, arg) -> torch.Tensor:
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        obj = gm
        for part in str(arg.target).split("."):
            obj = getattr(obj, part)
        return obj
    raise InputError("the final linear layer's weight is computed, not a parameter; cannot read the templates")
