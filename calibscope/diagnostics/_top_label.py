r"""The lean top-label pass: confidence :math:`\hat p_i = 1 / \sum_k e^{z_{ik} - \max_k z_{ik}}` and the first
argmax, reading the logits once.

Every top-label metric (ECE, MCE, AdaECE, smooth ECE) needs only these two numbers per example, so this pass is
what their cost is. Values are float64 throughout: the float32 logits are cast exactly, the exponentials are
float64, and the results agree with a float64 numpy softmax to a few ulp (≈ 1e-15 relative).

CPU — NumPy's argmax and SIMD float64 ``exp`` are 4–6× faster than torch's ``max(dim=1)`` and float64
``exp`` on the same core (measured with torch 2.13, numpy 2.4, AVX-512: 50M elements, argmax 10 vs 67 ms,
exp 29 vs 77 ms), so the pass works block by block in NumPy on views of the tensor (no copy of the input):

1. ``argmax`` of the block (the first maximum, as numpy and torch both define it) — the one read from memory;
2. ``S = Σ_k exp(z_k)`` on the block, which now sits in the cache, copied (exactly) into a float64 buffer;
3. after the loop, for all N rows at once: ``max = z[i, argmax]`` and ``Σ_k exp(z_k − max) = S · exp(−max)``.

Step 3 replaces a subtraction pass over ``[N, K]`` by one over ``[N]``; it costs one more rounding (the
product) and needs ``exp(z)`` to neither overflow nor go subnormal where it matters, which holds when
``−600 ≤ max ≤ 700 − ln K``. The rare rows outside that range are recomputed with the shift
(``exp(z − max)``, exact in float64). With several torch threads the row ranges run on that many Python
threads, in blocks small enough that torch's sum stays on its own thread; NumPy's exp releases the GIL but its
argmax does not, so two threads gain ≈ 1.3×, not 2× (benchmarks/ece.py --threads 2).

CUDA — blocks of 2**25 elements, one mixed-dtype kernel per step; ``CALIBSCOPE_COMPILE=1`` fuses them with
torch.compile.
"""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

_F64 = torch.float64
_CUDA_BLOCK_ELEMENTS = 1 << 25
_CPU_BLOCK_ELEMENTS = 1 << 16  # 512 KiB of float64: the block stays in L2 between the argmax and the exp
_CPU_THREADED_BLOCK_ELEMENTS = 1 << 15  # ≤ torch's GRAIN_SIZE: the sum of a block never forks threads
_MIN_ELEMENTS_PER_THREAD = 1 << 20  # below this, starting threads costs more than it saves
_SAFE_MAX = (-600.0, 700.0)  # exp(max) is a normal float64 and K · exp(max + ln K) does not overflow
_COMPILED: dict[str, Any] = {}


def confidence_and_prediction(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row maxima (float64), first argmax (int64) and confidence ``1 / Σ_k exp(z_k − max)`` (float64).

    The caller checks the maxima: a NaN or +inf anywhere in a row, or a row of all −inf, makes that row's
    maximum non-finite (numpy's argmax returns the first NaN), so one check on ``[N]`` validates ``[N, K]``.
    """
    if logits.device.type == "cpu":
        zmax, prediction, s0 = _cpu(logits.detach())
    else:
        zmax, prediction, s0 = _blocked(logits.detach())
    return zmax, prediction, s0.reciprocal_()


# ---- CPU ---------------------------------------------------------------------------------------------


def _cpu(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, k = logits.shape
    prediction = torch.empty(n, dtype=torch.int64)
    sums = torch.empty(n, dtype=_F64)
    threads = min(torch.get_num_threads(), max(1, (n * k) // _MIN_ELEMENTS_PER_THREAD))
    if threads == 1:
        _cpu_rows(logits, prediction, sums, 0, n, False)
    else:
        bounds = [n * t // threads for t in range(threads + 1)]
        with ThreadPoolExecutor(threads) as pool:
            jobs = [pool.submit(_cpu_rows, logits, prediction, sums, a, b, True)
                    for a, b in itertools.pairwise(bounds)]
            for job in jobs:
                job.result()
    zmax = _row_values(logits, prediction).to(_F64)
    s0 = sums.mul_(torch.exp(-zmax))
    low, high = _SAFE_MAX
    redo = torch.isfinite(zmax) & ((zmax < low) | (zmax > high - math.log(k)))
    if bool(redo.any()):
        rows = redo.nonzero()[:, 0]
        s0[rows] = torch.exp(logits[rows].to(_F64) - zmax[rows, None]).sum(1)
    return zmax, prediction, s0


def _row_values(logits: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """``logits[i, prediction[i]]``: numpy's flat ``take`` when contiguous (≈ 2× torch's gather), else gather."""
    if logits.is_contiguous() and logits.dtype in (torch.float32, torch.float64):
        k = logits.shape[1]
        flat = logits.numpy().reshape(-1)
        return torch.from_numpy(flat.take(np.arange(0, flat.size, k) + prediction.numpy()))
    return logits.gather(1, prediction[:, None])[:, 0]


def _cpu_rows(logits: torch.Tensor, prediction: torch.Tensor, sums: torch.Tensor, start: int, stop: int,
              threaded: bool) -> None:
    """Rows ``start:stop``: first argmax into ``prediction`` and ``Σ_k exp(z_k)`` (float64) into ``sums``."""
    k = logits.shape[1]
    elements = _CPU_THREADED_BLOCK_ELEMENTS if threaded else _CPU_BLOCK_ELEMENTS
    rows = max(1, elements // max(k, 1))
    native = logits.dtype in (torch.float32, torch.float64)
    z = logits.numpy() if native else None
    predictions = prediction.numpy()
    buffer = torch.empty(min(rows, max(stop - start, 1)), k, dtype=_F64)
    block_np = buffer.numpy()
    with np.errstate(over="ignore", under="ignore"):  # such rows are recomputed with the shift
        for a in range(start, stop, rows):
            b = min(a + rows, stop)
            chunk = z[a:b] if native else logits[a:b].to(torch.float32).numpy()  # exact for 16-bit floats
            np.argmax(chunk, axis=1, out=predictions[a:b])
            block = block_np[: b - a]
            np.copyto(block, chunk)  # exact; exp in place on float64 beats exp with a casting input loop
            np.exp(block, out=block)
            torch.sum(buffer[: b - a], 1, out=sums[a:b])


# ---- CUDA (and any other device) ---------------------------------------------------------------------


def _kernel(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row max, first argmax, and S0 = Σ_k exp(z_k − max) in float64 (z − max is exact in float64)."""
    zmax, prediction = z.max(dim=1)
    shifted = z - zmax.to(_F64)[:, None]  # one kernel reads fp32 and writes float64
    s0 = shifted.exp_().sum(1)
    return zmax.to(_F64), prediction, s0


def _compiled_kernel():
    """The fused (torch.compile) kernel, opt-in with ``CALIBSCOPE_COMPILE=1`` on CUDA; None when unavailable."""
    if os.environ.get("CALIBSCOPE_COMPILE", "0") != "1" or _COMPILED.get("failed"):
        return None
    if "kernel" not in _COMPILED:
        _COMPILED["kernel"] = torch.compile(_kernel, dynamic=True)
    return _COMPILED["kernel"]


def _blocked(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, k = logits.shape
    rows = max(1, _CUDA_BLOCK_ELEMENTS // max(k, 1))
    kernel = _compiled_kernel() if logits.device.type == "cuda" else None
    maxima, predictions, sums = [], [], []
    for a in range(0, n, rows):
        chunk = logits[a : a + rows]
        if kernel is not None:
            try:
                out = kernel(chunk)
            except Exception:  # noqa: BLE001 - any compiler failure: fall back to eager, once and for all
                _COMPILED["failed"] = True
                kernel, out = None, _kernel(chunk)
        else:
            out = _kernel(chunk)
        maxima.append(out[0])
        predictions.append(out[1])
        sums.append(out[2])
    return torch.cat(maxima), torch.cat(predictions), torch.cat(sums)
