"""Seeded data augmentation on the device, and logits of a model under repeated augmented draws.

Müller et al. (2019, §4 and App. A.2) estimate the logit-gap mutual information from L augmented draws of each
training example: a random translation by up to 4 pixels with zero padding plus a horizontal flip (the CIFAR
recipe: ``RandomCrop(32, padding=4)`` then ``RandomHorizontalFlip``). For data where flips change the class
(digits, text) the flip is turned off; for non-image data the augmentation is Gaussian input noise.

Where the work happens. The batches are formed, copied to the device and normalised by the inference engine
(:func:`calibscope.inference.engine.run_inference`, uint8 on the wire); the augmentation runs on the device,
on each normalised batch, just before the model: :func:`shift_and_flip` fills the uncovered pixels with the
value that raw pixel 0 takes after normalisation (so the padding is "zero padding" of the raw image, as in
torchvision), and Gaussian noise of standard deviation σ in the data's own units ([0, 1] for uint8 images) is
added as σ / std after normalisation. Both equal augmenting the raw images and then normalising.

Reproducibility. Every random number is drawn on the CPU from ``seed``: the shifts and flips of all
examples, draws and repetitions up front (a few integers each), the noise in fixed blocks of 64 rows, each
block with its own seed. So the result does not depend on the batch size (nor on a batch being halved after
a CUDA out-of-memory error) and is the same on every device.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from calibscope.errors import InputError
from calibscope.inference import distributed
from calibscope.inference.engine import InferenceOptions, run_inference, with_checkpoint_normalisation

__all__ = [
    "DEFAULT_NOISE",
    "PAPER_SHIFT",
    "AugmentedLogits",
    "Augmentation",
    "augmentation_from_options",
    "augmented_logits",
    "gaussian_noise_rows",
    "shift_and_flip",
    "validate_augmentation",
    "with_checkpoint_normalisation",
]

DEFAULT_NOISE = 0.05  # σ of the default perturbation, in the data's units ([0, 1] for uint8 images)
PAPER_SHIFT = 4  # Müller et al.'s CIFAR recipe: shift by up to 4 px (zero padding) + horizontal flip
_NOISE_BLOCK = 64  # rows of noise drawn from one seeded CPU generator
_SEED_MASK = (1 << 63) - 1


@dataclass(frozen=True)
class Augmentation:
    """What one augmented draw does to an example.

    ``shift``: random translation by an integer number of pixels, uniform in ``[-shift, shift]`` independently
    along each axis, with zero padding (images ``[N, C, H, W]`` only). ``flip``: horizontal flip with
    probability 1/2, after the shift (images only). ``noise``: standard deviation of Gaussian noise added to
    every input value, in the data's units (``[0, 1]`` for uint8 images); 0 for none.
    """

    shift: int = 4
    flip: bool = True
    noise: float = 0.0

    def describe(self) -> str:
        parts = []
        if self.shift:
            parts.append(f"shift ±{self.shift} px (zero padding)")
        if self.flip:
            parts.append("horizontal flip")
        if self.noise:
            parts.append(f"Gaussian noise σ={self.noise:g}")
        return " + ".join(parts) or "none"


def validate_augmentation(augmentation: Augmentation, input_shape: tuple[int, ...] | torch.Size) -> None:
    """Raise :class:`InputError` unless ``augmentation`` can be applied to inputs of ``input_shape`` ``[N, ...]``."""
    if not isinstance(augmentation, Augmentation):
        raise InputError(f"Expected argument `augmentation` to be an Augmentation, but got "
                         f"{type(augmentation).__name__}")
    shift, noise = augmentation.shift, augmentation.noise
    if isinstance(shift, bool) or not isinstance(shift, numbers.Integral) or shift < 0:
        raise InputError(f"Expected the shift to be a whole number of pixels ≥ 0, but got {shift!r}")
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not math.isfinite(noise) or noise < 0:
        raise InputError(f"Expected the noise standard deviation to be a finite number ≥ 0, but got {noise!r}")
    if shift == 0 and not augmentation.flip and noise == 0:
        raise InputError("the augmentation changes nothing (no shift, no flip, no noise): every draw of an "
                         "example would give the same logit gap; use --shift N, flips or --augment noise:σ")
    shape = tuple(int(s) for s in input_shape)
    if (shift or augmentation.flip) and len(shape) != 4:
        raise InputError(f"shifts and flips move the pixels of images [N, C, H, W], but the inputs have shape "
                         f"{list(shape)}; use --augment noise:σ (Gaussian input noise) for non-image data")
    if shift and len(shape) == 4 and shift >= min(shape[2], shape[3]):
        raise InputError(f"a shift of up to {shift} px does not fit {shape[2]}×{shape[3]} images (the image "
                         f"could leave the frame entirely); use --shift below {min(shape[2], shape[3])}")


def augmentation_from_options(spec: str | None, *, shift: int | None = None, no_flip: bool = False,
                              input_shape: tuple[int, ...], input_dtype: torch.dtype) -> Augmentation:
    """The augmentation named by ``--augment`` / ``--shift`` / ``--no-flip``, or the default for the input kind.

    Names: ``paper`` (shift ±4 px with zero padding + horizontal flip: Müller et al.'s CIFAR recipe), ``shift``
    (±``shift`` px, default 4, + flip unless ``no_flip``), ``noise`` or ``noise:σ`` (Gaussian input noise,
    σ in the data's units, default 0.05), ``shift+noise:σ``.

    Default (no ``spec``; ``shift``/``no_flip`` alone select ``shift``): Gaussian noise σ = 0.05 for every
    floating-point or uint8 input. Why: Müller et al.'s d(·) is an augmentation *the network was trained with*,
    so that the draws of one example stay that example; a shift + flip changes the predictions of a network
    trained without it (the shipped digits models lose half their training accuracy under ±4 px + flip), and
    then Î measures the augmentation, not the model. Small input noise is the perturbation almost every network
    is invariant to; the premise check (:func:`calibscope.diagnostics.mutual_information.augmentation_check`)
    tells when even it is not. Integer inputs other than uint8 (token ids) have no meaningful default.
    """
    shape = tuple(int(s) for s in input_shape)
    is_image = len(shape) == 4
    if spec is None:
        if shift is not None or no_flip:
            spec = "shift"
        elif input_dtype.is_floating_point or input_dtype == torch.uint8:
            return Augmentation(shift=0, flip=False, noise=DEFAULT_NOISE)
        else:
            raise InputError(f"the inputs are integers ({str(input_dtype).removeprefix('torch.')}, e.g. token ids): "
                             "no augmentation keeps their meaning, so there is no default; the logit-gap MI needs "
                             "an augmentation the model was trained with")
    use_shift, flip, noise = False, False, 0.0
    for part in spec.replace(" ", "").lower().split("+"):
        if part == "paper":
            use_shift, flip = True, not no_flip
        elif part == "shift":
            use_shift, flip = True, not no_flip
        elif part == "noise":
            noise = DEFAULT_NOISE
        elif part.startswith("noise:"):
            try:
                noise = float(part.removeprefix("noise:"))
            except ValueError:
                raise InputError(f"--augment noise:σ expects a number, e.g. noise:0.05, got '{spec}'") from None
            if not noise > 0 or noise == float("inf"):
                raise InputError(f"--augment noise:σ expects a positive standard deviation, got '{spec}'")
        else:
            raise InputError(f"--augment expects paper, shift, noise, noise:σ or shift+noise:σ, got '{spec}'")
    if not use_shift:
        if shift is not None:
            raise InputError("--shift applies to --augment shift; use --augment shift+noise:σ to combine them")
        return Augmentation(shift=0, flip=False, noise=noise)
    if not is_image:
        raise InputError(f"the data are not images [N, C, H, W] (shape {list(shape)}), so shifts and flips do not "
                         "apply: use --augment noise:σ (Gaussian input noise in the data's units)")
    if shift is not None and shift < 0:
        raise InputError(f"--shift must be a whole number of pixels ≥ 0, got {shift}")
    return Augmentation(shift=PAPER_SHIFT if shift is None else shift, flip=flip, noise=noise)


# --------------------------------------------------------------------------------------------------------
# device-side primitives: pure functions that work where the tensors are
# --------------------------------------------------------------------------------------------------------


def shift_and_flip(
    x: torch.Tensor,
    dy: torch.Tensor,
    dx: torch.Tensor,
    flip: torch.Tensor | None = None,
    *,
    fill: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Translate each image of ``x`` ``[B, C, H, W]`` by ``(dy[i], dx[i])`` pixels, then flip it where ``flip[i]``.

    ``out[i, :, r, c] = x[i, :, r - dy[i], c' - dx[i]]`` with ``c' = W - 1 - c`` for flipped images and
    ``c' = c`` otherwise; pixels that come from outside the image take ``fill`` (a number, or a tensor that
    broadcasts to ``[1, C, 1, 1]``, e.g. the normalised value of a black pixel). Positive ``dy`` moves the
    content down, positive ``dx`` right. This is torchvision's ``RandomCrop(size, padding=p)`` (with offset
    ``p − d``) followed by ``RandomHorizontalFlip``, done for a whole batch with one ``gather``.
    ``dy``, ``dx`` (integers) and ``flip`` (bool) have shape ``[B]`` and are moved to ``x``'s device.
    """
    b, c, h, w = x.shape
    device = x.device
    dy = dy.to(device=device, dtype=torch.long)
    dx = dx.to(device=device, dtype=torch.long)
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device).expand(b, w)
    if flip is not None:
        cols = torch.where(flip.to(device=device, dtype=torch.bool)[:, None], (w - 1) - cols, cols)
    src_r = rows[None, :] - dy[:, None]  # [B, H]
    src_c = cols - dx[:, None]  # [B, W]
    inside = ((src_r >= 0) & (src_r < h))[:, :, None] & ((src_c >= 0) & (src_c < w))[:, None, :]  # [B, H, W]
    index = src_r.clamp(0, h - 1)[:, :, None] * w + src_c.clamp(0, w - 1)[:, None, :]  # [B, H, W]
    out = x.reshape(b, c, h * w).gather(2, index.reshape(b, 1, h * w).expand(b, c, h * w)).reshape(b, c, h, w)
    fill_t = torch.as_tensor(fill, dtype=out.dtype, device=device)
    out = torch.where(inside[:, None, :, :], out, fill_t)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)  # keep the engine's CUDA layout
    return out


def gaussian_noise_rows(
    shape: tuple[int, ...],
    start: int,
    stop: int,
    *,
    seed: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise for rows ``start … stop − 1`` of an ``[N, *shape]`` array, on the CPU.

    Row i's values depend only on ``seed`` and i (rows come in blocks of 64, each drawn from a CPU generator
    seeded with ``seed`` and the block number), so any split of the rows into batches gives the same noise.
    """
    parts = []
    first, last = start // _NOISE_BLOCK, (stop - 1) // _NOISE_BLOCK
    for block in range(first, last + 1):
        generator = torch.Generator().manual_seed(_block_seed(seed, block))
        values = torch.randn((_NOISE_BLOCK, *shape), generator=generator, dtype=dtype)
        lo = max(start, block * _NOISE_BLOCK) - block * _NOISE_BLOCK
        hi = min(stop, (block + 1) * _NOISE_BLOCK) - block * _NOISE_BLOCK
        parts.append(values[lo:hi])
    return torch.cat(parts) if parts else torch.empty((0, *shape), dtype=dtype)


def _block_seed(seed: int, block: int) -> int:
    # a 64-bit mix (splitmix64 finaliser) so that neighbouring seeds and blocks give unrelated streams
    z = (int(seed) * 0x9E3779B97F4A7C15 + block + 1) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _SEED_MASK


# --------------------------------------------------------------------------------------------------------
# logits under augmentation
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentedLogits:
    """``logits`` float32 ``[R, N, L, K]`` on the CPU: repetition r, example n, draw l; ``clean_logits``
    ``[N, K]``: the same examples without augmentation (for the premise check).

    ``meta``: how they were produced (the inference engine's device/precision/batch size of the first run,
    the augmentation, seed, draws, repetitions).
    """

    logits: torch.Tensor
    augmentation: Augmentation
    seed: int
    meta: dict[str, Any]
    clean_logits: torch.Tensor | None = None


class _AugmentedModel(nn.Module):
    """Applies draw-specific augmentation parameters to each normalised batch on the device, then the model.

    The engine feeds the rows in order; the parameters of rows ``cursor … cursor + B − 1`` are used, and the
    cursor moves on only after the model returned, so a batch retried after an out-of-memory error gets the
    same parameters again.
    """

    def __init__(self, model: nn.Module, *, augmentation: Augmentation, dy: torch.Tensor, dx: torch.Tensor,
                 flip: torch.Tensor, noise_seed: int, fill: torch.Tensor | None, noise_scale: torch.Tensor | None):
        super().__init__()
        self.model = model
        self.augmentation = augmentation
        self._dy, self._dx, self._flip = dy, dx, flip
        self._noise_seed = noise_seed
        self._fill = fill
        self._noise_scale = noise_scale
        self.cursor = 0

    def train(self, mode: bool = True) -> _AugmentedModel:
        self.training = mode
        try:
            self.model.train(mode)
        except NotImplementedError:  # torch.export programs: mode fixed at export time
            pass
        return self

    def forward(self, x: torch.Tensor) -> Any:
        start, stop = self.cursor, self.cursor + int(x.shape[0])
        if stop > self._dy.shape[0]:
            raise RuntimeError(f"augmentation parameters out of step with the batches (rows {start}…{stop} of "
                               f"{self._dy.shape[0]})")
        aug = self.augmentation
        if aug.shift or aug.flip:
            fill = 0.0 if self._fill is None else self._fill.to(device=x.device, dtype=x.dtype)
            x = shift_and_flip(x, self._dy[start:stop], self._dx[start:stop],
                               self._flip[start:stop] if aug.flip else None, fill=fill)
        if aug.noise:
            noise = gaussian_noise_rows(tuple(x.shape[1:]), start, stop, seed=self._noise_seed)
            noise = noise.to(device=x.device, dtype=x.dtype, non_blocking=True)
            scale = aug.noise if self._noise_scale is None else self._noise_scale.to(x.device, x.dtype) * aug.noise
            x = x + noise * scale
        out = self.model(x)
        self.cursor = stop
        return out


def _per_channel(values: tuple[float, ...], ndim: int) -> torch.Tensor:
    """The engine's broadcasting of --mean/--std values: channels (dim 1) of images, features otherwise."""
    t = torch.tensor(values, dtype=torch.float32)
    if ndim == 2:
        return t.reshape(1, -1)
    return t.reshape((1, -1) + (1,) * (ndim - 2))


def augmented_logits(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    augmentation: Augmentation,
    draws: int = 5,
    repetitions: int = 1,
    seed: int = 0,
    options: InferenceOptions | None = None,
    progress: bool | None = False,
    on_notice: Callable[[str], None] | None = None,
) -> AugmentedLogits:
    """Logits of ``model`` on ``draws`` augmented versions of each input, ``repetitions`` times over.

    Args:
        model: the classifier (as loaded: eager, TorchScript or ``torch.export`` module).
        inputs: ``[N, ...]`` examples as a :class:`~calibscope.loading.types.Dataset` holds them (images NCHW,
            uint8 or float); they are batched, moved and normalised (``options.mean``/``std``) by the engine.
        augmentation: what each draw does (:class:`Augmentation`), checked against ``inputs``' shape.
        draws: L ≥ 2 augmented draws per example; repetitions: R ≥ 1 independent sets of L draws.
        seed: the only source of randomness (CPU generators; see the module docstring).
        options: the engine's options (device, precision, batch size, normalisation).

    Returns:
        :class:`AugmentedLogits` with ``logits`` ``[R, N, L, K]`` (float32, CPU).

    Under ``torchrun`` each rank runs its contiguous shard of the N examples with the same per-row
    augmentation parameters, and every rank receives all logits: the same numbers as one process.
    """
    if not isinstance(inputs, torch.Tensor):
        raise InputError("the MI augmentations (noise, shifts, flips) are not defined for named token inputs "
                         "(input_ids, attention_mask, …): noise on token ids has no meaning")
    validate_augmentation(augmentation, tuple(inputs.shape))
    for name, value, least in (("draws", draws, 2), ("repetitions", repetitions, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise InputError(f"Expected argument `{name}` to be an integer of at least {least}, but got {value!r}")
    options = options or InferenceOptions()
    n = int(inputs.shape[0])
    r_count, l_count = int(repetitions), int(draws)
    generator = torch.Generator().manual_seed(int(seed))
    s = augmentation.shift
    dy = torch.randint(-s, s + 1, (r_count, l_count, n), generator=generator)
    dx = torch.randint(-s, s + 1, (r_count, l_count, n), generator=generator)
    flip = torch.randint(0, 2, (r_count, l_count, n), generator=generator).bool()
    noise_seeds = torch.randint(0, 1 << 62, (r_count, l_count), generator=generator)

    fill = noise_scale = None
    if options.mean is not None and options.std is not None:
        mean = _per_channel(tuple(options.mean), inputs.ndim)
        std = _per_channel(tuple(options.std), inputs.ndim)
        fill = (0.0 - mean) / std  # raw pixel 0 after normalisation
        noise_scale = 1.0 / std

    group = distributed.current()
    start, stop = (0, n) if group is None else group.shard(n)
    logits = None
    meta: dict[str, Any] = {}
    seconds = 0.0
    for r in range(r_count if stop > start else 0):
        for draw in range(l_count):
            wrapped = _AugmentedModel(model, augmentation=augmentation, dy=dy[r, draw], dx=dx[r, draw],
                                      flip=flip[r, draw], noise_seed=int(noise_seeds[r, draw]), fill=fill,
                                      noise_scale=noise_scale)
            wrapped.cursor = start  # the rows' own augmentation parameters, whichever rank runs them
            out = run_inference(wrapped, inputs[start:stop], None, options=options, on_notice=on_notice,
                                progress=progress if group is None or group.is_main else False)
            if wrapped.cursor != stop:
                raise RuntimeError(f"augmented inference saw rows {start}…{wrapped.cursor} of {start}…{stop}")
            if r == 0 and draw == 0:
                logits = torch.empty((stop - start, r_count, l_count, out.num_classes), dtype=torch.float32)
                meta = dict(out.meta)
            logits[:, r, draw, :] = out.logits
            seconds += float(out.meta.get("seconds") or 0.0)
    clean = None
    if stop > start:  # the same rows without augmentation: does the augmentation keep the predictions?
        clean = run_inference(model, inputs[start:stop], None, options=options, on_notice=on_notice,
                              progress=False).logits.to(torch.float32)
    if group is not None:  # rows [N, R, L, K] of every rank, in order; rank 0's meta; the slowest rank's time
        logits = group.all_gather_rows(logits)
        clean = group.all_gather_rows(clean)
        meta = group.broadcast_object(meta)
        seconds = float(group.all_gather_rows(torch.tensor([[seconds]], dtype=torch.float64)).max())
        meta["distributed"] = {"world_size": group.world_size, "backend": group.backend}
    logits = logits.permute(1, 0, 2, 3).contiguous()
    rows = n * l_count * r_count
    meta.update({"augmentation": augmentation.describe(), "seed": int(seed), "draws": l_count,
                 "repetitions": r_count, "rows": rows, "seconds": seconds,
                 "examples_per_second": rows / seconds if seconds > 0 else None})
    return AugmentedLogits(logits=logits, augmentation=augmentation, seed=int(seed), meta=meta, clean_logits=clean)
