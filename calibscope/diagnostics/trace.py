r"""Hutch++ (Meyer, Musco, Musco & Woodruff, SOSA 2021) for the trace of a symmetric operator.

With a budget of :math:`m` matrix-vector products (:math:`m` a multiple of 3), draw Rademacher
:math:`S, G \in \{\pm1\}^{d \times m/3}`, take an orthonormal basis :math:`Q` of :math:`AS` (QR) and

.. math::
    \widehat{\operatorname{tr}}(A) = \operatorname{tr}(Q^\top A Q)
      + \frac{3}{m} \operatorname{tr}\!\big(G^\top (I - QQ^\top) A (I - QQ^\top) G\big)

(Algorithm 1 of the paper): the top of the spectrum is taken exactly from the sketch and only the
remainder is estimated by Hutchinson, so for a Hessian whose spectrum decays the variance is far below
Hutchinson's at the same number of products (:math:`O(1/m^2)` against :math:`O(1/m)` relative error).

Cost: :math:`m/3` products for :math:`AS`, :math:`m/3` for :math:`AQ`, :math:`m/3` for the residual probes.
The reported standard error is that of the Hutchinson part given :math:`Q` (std(ddof=1)/√(m/3) of
:math:`g_i^\top PAPg_i`); the low-rank part has no error given :math:`Q`. The spread over sketches is measured
by repeating with other seeds (``benchmarks/hessian_trace.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from calibscope.diagnostics.hessian import TraceEstimate
from calibscope.errors import InputError

__all__ = ["hutchplusplus_trace", "DEFAULT_HUTCHPP_HVP"]

from calibscope.diagnostics.defaults import DEFAULT_HUTCHPP_HVP  # noqa: E402 - torch-free, for --help


def _rademacher(dim: int, cols: int, gen: torch.Generator, device, dtype) -> torch.Tensor:
    return (torch.randint(0, 2, (dim, cols), generator=gen) * 2 - 1).to(device, dtype)


def hutchplusplus_trace(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    *,
    n_hvp: int = DEFAULT_HUTCHPP_HVP,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TraceEstimate:
    """Hutch++ estimate of tr A from exactly ``n_hvp`` products ``matvec(v)`` (``v`` flat, length ``dim``).

    ``n_hvp`` must be a multiple of 3 and at least 6 (two residual probes, for a standard error). Probes come
    from ``torch.Generator().manual_seed(seed)``; sums are accumulated in float64. Returns a
    :class:`~calibscope.diagnostics.hessian.TraceEstimate` whose ``samples`` is the number of residual probes.

    Example (rank 2 ≤ m/3: the sketch holds the whole range, so the estimate is exact)::

        >>> u = torch.linspace(-1.0, 1.0, 40, dtype=torch.float64)
        >>> a = 3 * torch.outer(u, u) + torch.outer(u**2, u**2)
        >>> est = hutchplusplus_trace(lambda v: a @ v, 40, n_hvp=6, dtype=torch.float64)
        >>> round(est.trace, 6) == round(float(torch.trace(a)), 6), est.n_hvp
        (True, 6)
    """
    if isinstance(n_hvp, bool) or not isinstance(n_hvp, int) or n_hvp < 6 or n_hvp % 3:
        raise InputError(f"Expected argument `n_hvp` to be a multiple of 3 that is at least 6, but got {n_hvp!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise InputError(f"Expected argument `dim` to be a positive integer, but got {dim!r}")
    t0 = time.perf_counter()
    k = n_hvp // 3
    gen = torch.Generator().manual_seed(seed)
    sketch = _rademacher(dim, k, gen, device, dtype)
    probes = _rademacher(dim, k, gen, device, dtype)
    a_sketch = torch.stack([matvec(sketch[:, j]).to(dtype) for j in range(k)], dim=1)
    q, _ = torch.linalg.qr(a_sketch.double())  # d×k, orthonormal in float64
    q_cast = q.to(dtype)
    a_q = torch.stack([matvec(q_cast[:, j]).to(dtype) for j in range(k)], dim=1).double()
    low_rank = float((q * a_q).sum())  # tr(Qᵀ A Q)
    residual = probes.double() - q @ (q.T @ probes.double())  # (I − QQᵀ) G
    values = []
    for j in range(k):
        a_r = matvec(residual[:, j].to(dtype)).double()
        a_r = a_r - q @ (q.T @ a_r)  # (I − QQᵀ) A (I − QQᵀ) g_j
        values.append(float(residual[:, j] @ a_r))
    arr = np.asarray(values)
    return TraceEstimate(trace=low_rank + float(arr.mean()),
                         standard_error=float(arr.std(ddof=1) / math.sqrt(k)),
                         samples=k, n_hvp=n_hvp, seconds=time.perf_counter() - t0)
