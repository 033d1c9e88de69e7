"""Tensor conventions shared by every part that feeds a model: how inputs are converted and what counts as
logits. Imported by ``inference`` (the forward passes) and by ``diagnostics.hessian`` (which needs gradients
and so runs its own passes); it imports nothing of calibscope but the error types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from calibscope.errors import InputError


def input_normaliser(inputs: torch.Tensor, mean, std, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 → float32 ÷ 255, then per-channel (images: dim 1) or per-feature standardisation."""
    shape: Sequence[int] | None = None
    if mean is not None:
        n = len(mean)
        if inputs.ndim == 4:
            if n not in (1, inputs.shape[1]):
                raise InputError(f"--mean/--std have {n} values but the images have {inputs.shape[1]} channels")
            shape = (1, n, 1, 1)
        else:
            width = inputs[0].numel()
            if n not in (1, width):
                raise InputError(f"--mean/--std have {n} values but the inputs have {width} features")
            shape = (1, n) if inputs.ndim == 2 else (1,) + (n,) + (1,) * (inputs.ndim - 2)
        m = torch.tensor(mean, dtype=torch.float32, device=device).reshape(shape)
        s = torch.tensor(std, dtype=torch.float32, device=device).reshape(shape)
    is_uint8 = inputs.dtype == torch.uint8

    def convert(x: torch.Tensor) -> torch.Tensor:
        if is_uint8:  # .float() made a fresh tensor: in-place is safe
            x = x.float().div_(255.0)
            return x.sub_(m).div_(s) if shape is not None else x
        x = x.float()  # may alias the caller's data: never modify in place
        return (x - m) / s if shape is not None else x

    return convert


def as_logits(out, batch: int) -> torch.Tensor:
    """Accept a tensor, or a tuple/list/dict whose first tensor / ``logits`` entry is ``[batch, K]``."""
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values()), None))
    if isinstance(out, (tuple, list)):
        out = out[0] if out else None
    if not isinstance(out, torch.Tensor):
        raise InputError(f"the model returned {type(out).__name__}, not a tensor of logits")
    if out.ndim != 2 or out.shape[0] != batch:
        raise InputError(f"the model returned shape {tuple(out.shape)} for a batch of {batch}; expected "
                         f"[{batch}, num_classes] logits (is the input shape or normalisation right?)")
    return out


def contiguous_shard(n: int, index: int, count: int, *, unit: int = 1) -> tuple[int, int]:
    """Rows ``[start, stop)`` of part ``index`` of ``count`` contiguous parts of ``range(n)``.

    The parts cover every row exactly once (no padding, no duplicates, unlike ``DistributedSampler``'s
    default) and are as equal as possible: with ``q, r = divmod(ceil(n / unit), count)`` the first ``r``
    parts hold ``q + 1`` blocks of ``unit`` rows, the others ``q`` (the last block may be short). ``unit``
    keeps boundaries on multiples of a batch size where batches change the numbers (BatchNorm in train mode).

    Example::

        >>> [contiguous_shard(5, i, 2) for i in range(2)]
        [(0, 3), (3, 5)]
    """
    if count < 1 or not 0 <= index < count:
        raise InputError(f"Expected part `index` in [0, {count}) of `count` ≥ 1 parts, but got {index} of {count}")
    if unit < 1:
        raise InputError(f"Expected argument `unit` to be an integer larger than 0, but got {unit}")
    blocks = -(-n // unit)
    q, r = divmod(blocks, count)
    first = index * q + min(index, r)
    last = first + q + (1 if index < r else 0)
    return min(n, first * unit), min(n, last * unit)
