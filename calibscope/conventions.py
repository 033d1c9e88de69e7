"""Tensor conventions shared by every part that feeds a model: how inputs are converted and what counts as
logits. Imported by ``inference`` (the forward passes) and by ``diagnostics.hessian`` (which needs gradients
and so runs its own passes); it imports nothing of calibscope but the error types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from calibscope.errors import InputError


def input_normaliser(inputs: torch.Tensor, mean, std, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 → float32 ÷ 255, then per-channel (images: dim 1) or per-feature standardisation.

    Other integer inputs (token ids) and named inputs (:class:`calibscope.feeding.KeywordInputs`) pass as they
    are; ``mean``/``std`` do not apply to named inputs, and make integer features float.
    """
    shape: Sequence[int] | None = None
    if not isinstance(inputs, torch.Tensor):  # named inputs (input_ids, attention_mask, …)
        if mean is not None:
            raise InputError("--mean/--std apply to images and features, not to named (token) inputs; omit them")
        return lambda x: x
    keep_integers = mean is None and not inputs.dtype.is_floating_point and inputs.dtype not in (torch.uint8,
                                                                                                  torch.bool)
    if keep_integers:
        return lambda x: x
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


def as_logits(out, batch: int, *, width: int | None = None, output: str | int | None = None) -> torch.Tensor:
    """The ``[batch, K]`` logits among a forward's outputs (see :func:`calibscope.model_outputs.select_logits`:
    a tensor, the entry named ``logits``, the one of the classifier's ``width``, or the ``output`` named)."""
    from calibscope.model_outputs import select_logits

    return select_logits(out, batch, width=width, output=output)[0]


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
