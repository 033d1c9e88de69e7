"""Device and precision choice: the only place that decides where tensors go."""

from __future__ import annotations

from typing import Literal

import torch

from calibscope.errors import InputError

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` → ``cuda`` if available, else ``mps``, else ``cpu``; ``cuda:i`` / ``mps`` / ``cpu`` checked."""
    text = str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise InputError(f"unknown device '{spec}'; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device '{spec}' was asked for but CUDA is not available here "
                             f"(torch {torch.__version__}); use --device cpu or auto")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise InputError(f"device '{spec}' does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device("cuda", index)
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(f"device '{spec}' was asked for but MPS is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unsupported device '{spec}'; use auto, cpu, cuda, cuda:N or mps")
    return device


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (None for fp32, i.e. no autocast)."""
    if precision not in PRECISIONS:
        raise InputError(f"Expected argument `precision` to be one of fp32, bf16, fp16, but got '{precision}'")
    return PRECISIONS[precision]
