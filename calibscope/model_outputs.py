"""Which of a model's outputs are the logits, when its forward returns more than one tensor.

A forward may return a tensor, a tuple/list (``(features, logits)``), a dict, a Hugging Face ``ModelOutput``
(an ordered dict with attributes) or a dataclass. The logits are chosen by evidence, never by position alone:

1. ``output`` (``--output KEY|INDEX``) when the user names it;
2. a single tensor, or a container holding exactly one tensor with a row per example (a scalar loss beside it
   does not count);
3. the entry named ``logits``;
4. the one ``[batch, K]`` entry whose width ``K`` equals the classifier's width — the ``out_features`` of the
   model's final ``nn.Linear`` (:func:`classifier_width`).

Anything else is ambiguous and refused (:class:`~calibscope.errors.InputError` naming the entries and
``--output``): taking ``(features, logits)[0]`` would compute every metric from the features with exit 0.
The chosen width is cross-checked against the labels later (:func:`calibscope.inference.validate.validate_outputs`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from calibscope.errors import InputError

__all__ = ["classifier_width", "parse_output_spec", "select_logits"]

LOGITS_NAME = "logits"


def parse_output_spec(spec: str | int | None) -> str | int | None:
    """``--output``: an integer index (``1``, ``-1``) or a key/attribute name (``logits``)."""
    if spec is None or isinstance(spec, int):
        return spec
    text = str(spec).strip()
    if not text:
        raise InputError("--output expects a key such as 'logits' or an index such as 1, got ''")
    try:
        return int(text)
    except ValueError:
        return text


def _entries(out: Any) -> list[tuple[str | int, Any]] | None:
    """Top-level entries of a container output as (key or index, value); None for a non-container."""
    if isinstance(out, Mapping):  # dicts and transformers' ModelOutput (an OrderedDict of the non-None fields)
        return [(k, v) for k, v in out.items()]
    if isinstance(out, (tuple, list)):
        return list(enumerate(out))
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return [(f.name, getattr(out, f.name)) for f in dataclasses.fields(out)]
    return None


def _describe(entries: list[tuple[str | int, Any]]) -> str:
    parts = []
    for key, value in entries[:8]:
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        parts.append(f"{key if isinstance(key, int) else repr(key)}: {shape}")
    return ", ".join(parts) + (", …" if len(entries) > 8 else "")


def select_logits(out: Any, batch: int, *, width: int | None = None,
                  output: str | int | None = None) -> tuple[torch.Tensor, str | int | None]:
    """The logits ``[batch, K]`` among a forward's outputs, and the key/index they came from (None: the output
    was one tensor).

    ``width``: the classifier's number of outputs (:func:`classifier_width`), the evidence used when several
    ``[batch, ·]`` tensors are returned; ``output``: the key or index the user named. Raises
    :class:`InputError` when the choice is ambiguous or the chosen tensor is not ``[batch, K]``.
    """
    chosen: str | int | None = None
    entries = _entries(out)
    if entries is not None:
        if output is not None:
            chosen, out = _named(out, entries, output)
        else:
            chosen, out = _inferred(entries, batch, width)
    elif output is not None and not isinstance(out, torch.Tensor):
        raise InputError(f"--output {output!r}: the model returned a {type(out).__name__}, which has no entries")
    if not isinstance(out, torch.Tensor):
        what = f"entry {chosen!r}" if chosen is not None else "the model"
        raise InputError(f"{what} returned {type(out).__name__}, not a tensor of logits")
    if out.ndim != 2 or out.shape[0] != batch:
        where = f" (output {chosen!r})" if chosen is not None else ""
        raise InputError(f"the model returned shape {tuple(out.shape)}{where} for a batch of {batch}; expected "
                         f"[{batch}, num_classes] logits (is the input shape or normalisation right?)")
    return out, chosen


def _named(out: Any, entries: list[tuple[str | int, Any]], output: str | int) -> tuple[str | int, Any]:
    keys = [k for k, _ in entries]
    if isinstance(output, int):
        if -len(entries) <= output < len(entries):
            return entries[output][0] if isinstance(out, Mapping) else output, entries[output][1]
    elif output in keys:
        return output, dict(entries)[output]
    elif not isinstance(out, Mapping) and hasattr(out, output):
        return output, getattr(out, output)
    raise InputError(f"--output {output!r} is not among the model's outputs ({_describe(entries)}); pass one "
                     "of those keys or indices")


def _inferred(entries: list[tuple[str | int, Any]], batch: int, width: int | None) -> tuple[str | int, Any]:
    tensors = [(k, v) for k, v in entries if isinstance(v, torch.Tensor)]
    per_example = [(k, v) for k, v in tensors if v.ndim >= 1 and v.shape[0] == batch]
    if len(tensors) == 1 or len(per_example) == 1:  # e.g. (logits,) or {"logits": ..., "loss": scalar}
        return (tensors if len(tensors) == 1 else per_example)[0]
    named = [(k, v) for k, v in tensors if k == LOGITS_NAME]
    if named:
        return named[0]
    rows = [(k, v) for k, v in tensors if v.ndim == 2 and v.shape[0] == batch]
    if width is not None:
        fits = [(k, v) for k, v in rows if v.shape[1] == width]
        if len(fits) == 1:
            return fits[0]
    why = (f"{len(rows)} outputs are [{batch}, {width}], the final nn.Linear's width" if width is not None
           and len([1 for _, v in rows if v.shape[1] == width]) > 1
           else f"none is named 'logits' or has the final nn.Linear's width ({width})" if width is not None
           else "none is named 'logits' and the model has no final nn.Linear to tell the classes' width")
    raise InputError(f"the model returns several outputs ({_describe(entries)}) and which are the logits is "
                     f"ambiguous: {why}; say which with --output KEY|INDEX (e.g. --output 1)")


def classifier_width(model: Any) -> int | None:
    """``out_features`` of the model's final linear layer (its classifier head), or None if it has none.

    Eager and pickled modules: the last ``nn.Linear`` in registration order; TorchScript: the last submodule
    scripted from ``nn.Linear``; ``torch.export`` programs: the weight of the last ``aten.linear`` node.
    """
    if not isinstance(model, torch.nn.Module):
        return None
    width = None
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            width = int(module.out_features)
        elif getattr(module, "original_name", None) == "Linear" and hasattr(module, "weight"):
            weight = module.weight
            if isinstance(weight, torch.Tensor) and weight.ndim == 2:
                width = int(weight.shape[0])
    if width is not None or not isinstance(model, torch.fx.GraphModule):
        return width
    nodes = [n for n in model.graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.linear.default]
    if not nodes or len(nodes[-1].args) < 2:
        return None
    arg = nodes[-1].args[1]
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        obj: Any = model
        for part in str(arg.target).split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.Tensor) and obj.ndim == 2:
            return int(obj.shape[0])
    value = getattr(arg, "meta", {}).get("val") if isinstance(arg, torch.fx.Node) else None
    return int(value.shape[0]) if value is not None and getattr(value, "ndim", 0) == 2 else None
