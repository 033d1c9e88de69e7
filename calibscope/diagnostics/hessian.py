"""Top Hessian eigenvalues of the training loss, certified by Lanczos residuals (Foret et al. 2021, SAM).

The loss is the mean cross-entropy over a fixed, seeded subset of the data (no augmentation),

.. math::

    L(\\theta) = \\frac{1}{N} \\sum_{i=1}^{N} \\operatorname{CE}(f_\\theta(x_i), y_i),

accumulated over batches as :math:`\\sum_b \\frac{1}{N} \\sum_{i \\in b} \\operatorname{CE}_i`, so that every
example weighs exactly :math:`1/N` whatever the batch sizes. The model is in eval mode (BatchNorm on its
running statistics) unless ``bn="train"`` (batch statistics, running statistics left untouched).
Hessian-vector products :math:`Hv` come from double backward over the batches (fallback: ``torch.func``
forward-over-reverse), in the parameters' dtype (fp32) with TF32 switched off.

The top eigenvalues come from Lanczos with full reorthogonalisation (every new vector is orthogonalised twice
against the whole basis, with the Krylov scalars — :math:`\\alpha_j, \\beta_j` and the projections — in
float64). After :math:`m` steps, :math:`T_m = S \\Theta S^\\top` gives Ritz pairs :math:`(\\theta_i, Q_m s_i)`
whose residual norms are exactly :math:`\\lVert H Q_m s_i - \\theta_i Q_m s_i \\rVert = |\\beta_m s_{m,i}|`;
a symmetric matrix has an eigenvalue within that distance of :math:`\\theta_i`. Iteration stops when each of
the ``top`` largest (algebraic) Ritz values has residual :math:`\\le \\mathrm{tol} \\cdot |\\theta_i|`.

Also: Hutchinson's trace estimate :math:`\\operatorname{tr} H \\approx \\frac1S \\sum_s z_s^\\top H z_s`
(Rademacher :math:`z_s`) with its standard error; the spectral density by stochastic Lanczos quadrature
(Ghorbani, Krishnan & Xiao 2019); the top eigenvalue of each layer's diagonal block; reruns on disjoint
subsets.

Across processes (``torchrun``): each process passes ``part=(rank, world_size)`` and a ``reduce`` that sums a
tensor over the processes (e.g. ``torch.distributed.all_reduce``). Each takes a contiguous part of the subset,
its batches sum :math:`\\frac{1}{N}\\sum_{i} \\operatorname{CE}_i` with the subset's N (so the sum of the parts
is the loss of the whole subset: sample-weighted, not a mean of means), and every Hessian-vector product,
gradient and loss is summed by ``reduce`` before use. The Lanczos recurrence then runs identically on every
process (same seed, same reduced products) and gives the one-process eigenvalues.

Published reference points (Foret et al. 2021, WRN without BatchNorm): :math:`\\lambda_1` 24.2 with SGD vs
1.0 with SAM, :math:`\\lambda_1/\\lambda_5` 11.4 vs 2.6.

Example::

    spectrum = top_hessian_eigenvalues(model, images, labels, top=5, mean=(0.31,), std=(0.377,))
    spectrum.eigenvalues, spectrum.n_hvp
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from calibscope.conventions import contiguous_shard
from calibscope.errors import InputError

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EXAMPLES",
    "DEFAULT_MAX_HVP",
    "DEFAULT_TOL",
    "DEFAULT_TOP",
    "DEFAULT_TRACE_SAMPLES",
    "HessianOperator",
    "HessianRepeats",
    "HessianSettings",
    "HessianSpectrum",
    "LanczosResult",
    "LayerEigenvalue",
    "SpectralDensity",
    "TraceEstimate",
    "hessian_repeats",
    "hessian_subsets",
    "hutchinson_trace",
    "lanczos_top_eigenvalues",
    "select_parameters",
    "spectral_density",
    "top_hessian_eigenvalues",
]

from calibscope.diagnostics.defaults import (  # noqa: E402 - the defaults, torch-free for --help
    DEFAULT_BATCH_SIZE,
    DEFAULT_EXAMPLES,
    DEFAULT_MAX_HVP,
    DEFAULT_TOL,
    DEFAULT_TOP,
    DEFAULT_TRACE_SAMPLES,
)

BnMode = Literal["eval", "train"]
HvpMethod = Literal["auto", "double-backward", "double-backward+math-attention", "forward-over-reverse"]
_METHODS = ("double-backward", "double-backward+math-attention", "forward-over-reverse")

_DEVICE_CACHE_BYTES = 1 << 30  # a subset up to this size stays on the accelerator for all HVPs
_BATCHNORM_NAMES = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm1d",
                    "LazyBatchNorm2d", "LazyBatchNorm3d"}


# ---------------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HessianSettings:
    """Everything that changes the numbers: which examples, which parameters, which mode and precision."""

    top: int
    tol: float
    max_hvp: int
    examples: int  # examples in the subset actually used
    examples_requested: int
    dataset_size: int
    seed: int
    subset: int  # which of the disjoint seeded subsets (0 for a single run)
    subset_sha256: str  # sha256 of the sorted example indices (int64, little-endian)
    bn: str  # "eval" or "train" (what was asked for)
    has_batchnorm: bool
    dtype: str  # "float32" (fp32) unless the model's parameters are float64
    tf32: bool  # always False: TF32 is switched off during the computation
    params: str  # the selection: "all", "last" or a regular expression
    parameter_names: tuple[str, ...]
    n_params: int
    batch_size: int
    hvp_method: str  # "double-backward" or "forward-over-reverse"
    device: str
    processes: int = 1  # processes that shared the examples (torchrun ranks)
    loss: str = "mean cross-entropy"
    start_vector: str = "standard normal from torch.Generator(cpu).manual_seed(seed), normalised"


@dataclass(frozen=True)
class LanczosResult:
    """Ritz values of the ``k`` largest algebraic eigenvalues (descending) and their residual bounds."""

    eigenvalues: tuple[float, ...]
    residuals: tuple[float, ...]  # |β_m s_{m,i}| = ‖H y_i − θ_i y_i‖ for unit Ritz vectors y_i
    converged: bool
    n_matvec: int


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson's estimate of tr H with Rademacher probes; ``standard_error`` = std(ddof=1)/√samples."""

    trace: float
    standard_error: float
    samples: int
    n_hvp: int
    seconds: float


@dataclass(frozen=True)
class LayerEigenvalue:
    """Top eigenvalue of one layer's diagonal block H_ll (parameters sharing a module prefix)."""

    layer: str
    n_params: int
    eigenvalue: float
    residual: float
    converged: bool
    n_hvp: int


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature (Ghorbani et al. 2019): Gaussian-smoothed ``density`` on ``grid``.

    ``nodes[r]``/``weights[r]``: Ritz values of run ``r`` and the squared first components of their
    eigenvectors (each run's weights sum to 1). ``density`` integrates to ≈ 1 over the grid.
    """

    grid: tuple[float, ...]
    density: tuple[float, ...]
    nodes: tuple[tuple[float, ...], ...]
    weights: tuple[tuple[float, ...], ...]
    runs: int
    steps: int
    sigma: float
    n_hvp: int


@dataclass(frozen=True)
class HessianSpectrum:
    """Top eigenvalues λ1 ≥ … ≥ λk of the Hessian of the loss on one subset, with certificates.

    ``residuals[i]`` bounds the distance from ``eigenvalues[i]`` to an eigenvalue of H (in exact
    arithmetic with exact HVPs); ``converged`` says all are ≤ ``tol·|λ_i|``. ``n_hvp`` counts the Lanczos
    Hessian-vector products only (trace, density and per-layer runs count their own).
    """

    eigenvalues: tuple[float, ...]
    residuals: tuple[float, ...]
    converged: bool
    n_hvp: int
    seconds: float
    loss: float
    settings: HessianSettings
    trace: TraceEstimate | None = None
    per_layer: tuple[LayerEigenvalue, ...] = ()
    density: SpectralDensity | None = None
    trace_hutchpp: TraceEstimate | None = None

    @property
    def ratio(self) -> float:
        """λ1/λk (Foret et al. 2021 report λ1/λ5)."""
        last = self.eigenvalues[-1]
        return self.eigenvalues[0] / last if last != 0 else math.inf


@dataclass(frozen=True)
class HessianRepeats:
    """The same measurement on R disjoint seeded subsets; mean and spread (std, ddof=1) across them."""

    spectra: tuple[HessianSpectrum, ...]
    eigenvalues_mean: tuple[float, ...]
    eigenvalues_std: tuple[float, ...]
    ratio_mean: float
    ratio_std: float
    trace_mean: float | None
    trace_std: float | None
    trace_hutchpp_mean: float | None = None
    trace_hutchpp_std: float | None = None


# ---------------------------------------------------------------------------------------------------------
# validation (once, at the edge)
# ---------------------------------------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"Expected argument `{name}` to be an integer of at least {minimum}, but got {value!r}")


def _validate_arguments(*, top, tol, examples, batch_size, max_hvp, trace_samples, repeats, bn, hvp_method,
                        seed) -> None:
    _check_int("top", top, 1)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0 < tol < 1):
        raise InputError(f"Expected argument `tol` to be a number in (0, 1), such as 1e-4, but got {tol!r}")
    _check_int("examples", examples, 2)
    _check_int("batch_size", batch_size, 1)
    _check_int("max_hvp", max_hvp, 1)
    _check_int("trace_samples", trace_samples, 0)
    _check_int("repeats", repeats, 1)
    _check_int("seed", seed, 0)
    if bn not in ("eval", "train"):
        raise InputError(f"Expected argument `bn` to be 'eval' or 'train', but got {bn!r}")
    if hvp_method != "auto" and hvp_method not in _METHODS:
        raise InputError(f"Expected argument `hvp_method` to be one of auto, {', '.join(_METHODS)}, but got "
                         f"{hvp_method!r}")


def _validate_data(inputs: torch.Tensor, labels: torch.Tensor | None) -> None:
    if not isinstance(inputs, torch.Tensor) and not hasattr(inputs, "keys"):  # a tensor or KeywordInputs
        raise InputError(f"Expected `inputs` to be a tensor, but got {type(inputs).__name__}")
    if labels is None:
        raise InputError("the Hessian of the loss needs labels: the dataset has none")
    if labels.ndim != 1 or labels.shape[0] != inputs.shape[0]:
        raise InputError(f"Expected labels of shape [{inputs.shape[0]}], but got {tuple(labels.shape)}")
    if inputs.shape[0] < 2:
        raise InputError(f"the Hessian needs a dataset of at least 2 examples, but it has {inputs.shape[0]}")


# ---------------------------------------------------------------------------------------------------------
# parameters, subsets, modes
# ---------------------------------------------------------------------------------------------------------


def _layer_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def select_parameters(model: nn.Module, params: str = "all") -> list[tuple[str, torch.Tensor]]:
    """``(name, parameter)`` pairs chosen by ``params``: ``"all"``, ``"last"`` (the parameters of the last
    module that has any, e.g. the classifier) or a regular expression searched in the names."""
    from calibscope.feeding import no_autograd_reason

    reason = no_autograd_reason(model)
    if reason is not None:
        raise InputError(f"the Hessian needs gradients through a torch model: {reason}")
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if not named:
        raise InputError("the model has no floating-point parameters: there is no Hessian to compute")
    if params == "all":
        return named
    if params == "last":
        last = _layer_of(named[-1][0])
        return [(n, p) for n, p in named if _layer_of(n) == last]
    try:
        pattern = re.compile(params)
    except re.error as exc:
        raise InputError(f"--params '{params}' is not a valid regular expression ({exc})") from None
    chosen = [(n, p) for n, p in named if pattern.search(n)]
    if not chosen:
        shown = ", ".join(n for n, _ in named[:6]) + (", …" if len(named) > 6 else "")
        raise InputError(f"--params '{params}' matches no parameter; the model has {len(named)}: {shown}")
    return chosen


def hessian_subsets(n: int, *, examples: int, repeats: int = 1, seed: int = 0) -> list[torch.Tensor]:
    """``repeats`` disjoint subsets of ``range(n)`` of ``min(examples, n // repeats)`` indices each.

    One seeded permutation (``torch.randperm`` with ``torch.Generator().manual_seed(seed)``), cut into
    consecutive pieces; each piece is sorted. With ``examples ≥ n`` and one repeat: all examples.
    """
    size = min(examples, n // repeats)
    if size < 2:
        raise InputError(f"{repeats} disjoint subsets of a dataset of {n} examples leave {size} example(s) "
                         "each; the Hessian needs at least 2 (use fewer --repeats or more data)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [perm[r * size:(r + 1) * size].sort().values for r in range(repeats)]


def _subset_sha256(indices: torch.Tensor) -> str:
    return hashlib.sha256(indices.to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()


def _batchnorm_modules(model: nn.Module) -> tuple[list[nn.Module], bool]:
    """(eager BatchNorm modules, whether the model has any BatchNorm at all — also compiled ones)."""
    eager = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if eager:
        return eager, True
    for m in model.modules():
        if getattr(m, "original_name", None) in _BATCHNORM_NAMES:  # TorchScript
            return [], True
    graph = getattr(model, "graph", None)
    if graph is not None and hasattr(graph, "nodes"):  # torch.export / fx
        for node in graph.nodes:
            if node.op == "call_function" and "batch_norm" in str(node.target):
                return [], True
    return [], False


@contextlib.contextmanager
def _model_mode(model: nn.Module, bn: str) -> Iterator[bool]:
    """Eval mode; with ``bn="train"`` BatchNorm uses batch statistics without touching its running ones.

    The trick: an eval-mode ``_BatchNorm`` whose running statistics are ``None`` normalises with the batch's
    statistics and updates nothing. Everything is restored afterwards. Yields whether BatchNorm is present.
    """
    eager_bn, has_bn = _batchnorm_modules(model)
    if bn == "train" and has_bn and not eager_bn:
        raise InputError("--bn train needs BatchNorm layers whose mode can change; this model's are compiled "
                         "in (torch.export / TorchScript fix the mode): load the weights from a state_dict or "
                         "safetensors file with --arch instead, or use --bn eval")
    was_training = model.training
    with contextlib.suppress(NotImplementedError):  # torch.export programs: mode fixed at export time
        model.eval()
    saved = []
    if bn == "train":
        for m in eager_bn:
            saved.append((m, m.running_mean, m.running_var))
            m.running_mean = None
            m.running_var = None
    try:
        yield has_bn
    finally:
        for m, mean, var in saved:
            m.running_mean = mean
            m.running_var = var
        if was_training:
            with contextlib.suppress(NotImplementedError):
                model.train()


@contextlib.contextmanager
def _tf32_off() -> Iterator[None]:
    """fp32 really means fp32: no TF32 in matmuls or cuDNN convolutions while the Hessian is computed."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


@contextlib.contextmanager
def parameters_requiring_grad(params: Sequence[torch.Tensor]) -> Iterator[None]:
    """``requires_grad`` on for ``params`` inside the block, each flag as it was afterwards (also on error)."""
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(params, before, strict=True):
            p.requires_grad_(flag)


@contextlib.contextmanager
def _math_attention() -> Iterator[None]:
    """``scaled_dot_product_attention`` through its composite ("math") implementation, which has a double
    backward; the fused kernels (flash, memory-efficient, cuDNN, the CPU flash kernel) have none."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "…"


# ---------------------------------------------------------------------------------------------------------
# the operator
# ---------------------------------------------------------------------------------------------------------


class HessianOperator:
    """v ↦ Hv for the mean cross-entropy of ``model`` on ``inputs``/``labels``, w.r.t. chosen parameters.

    Vectors are flat, in the parameters' dtype, on the parameters' device (the order of
    :attr:`names`). The model must already be in the wanted mode (see :func:`top_hessian_eigenvalues`,
    which manages it); ``inputs`` stay where they are and travel to the device batch by batch, uint8
    images becoming ``x/255`` and then ``(x − mean)/std`` (the inference engine's convention).
    :attr:`n_hvp` counts the products computed.

    Across processes: ``inputs`` are this process's part of the examples, ``total`` the number of examples
    in all parts (the N of the mean) and ``reduce`` sums a tensor over the processes; every product,
    gradient and loss is then that of the whole set, on every process.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        *,
        parameters: Sequence[tuple[str, torch.Tensor]],
        batch_size: int = DEFAULT_BATCH_SIZE,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        method: HvpMethod = "auto",
        resize_batches: bool = True,
        total: int | None = None,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        output: str | int | None = None,
    ):
        from calibscope.feeding import ModelCall

        self.model = model
        self.names = tuple(n for n, _ in parameters)
        self.params = [p for _, p in parameters]
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1:
            raise InputError(f"the chosen parameters mix dtypes {sorted(map(str, dtypes))}; choose one dtype")
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        if self.device.type != "cpu" and inputs.device != self.device and inputs.nbytes <= _DEVICE_CACHE_BYTES:
            inputs, labels = inputs.to(self.device), labels.to(self.device)  # copied once, not once per HVP
        self.inputs, self.labels = inputs, labels
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        self.n = int(inputs.shape[0])
        self.total = self.n if total is None else int(total)
        self.reduce = reduce
        self.batch_size = batch_size
        self.resize_batches = resize_batches
        self.n_hvp = 0
        self._gradient_graph = None  # (pairs, versions) of the single batch's gradient, see _cached_gradient
        # listed once: walking the modules on every product cost ≈ 1 ms per HVP
        self._state_tensors = (*self.model.parameters(), *self.model.buffers())
        self._keep_graph = True
        self._call = ModelCall(model, inputs, device=self.device, mean=mean, std=std, output=output)
        self.method = self._choose_method(method)

    # -- plumbing ------------------------------------------------------------------------------------------

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.n, self.batch_size):
            stop = min(self.n, start + self.batch_size)
            x = self._call.prepare(self.inputs[start:stop].to(self.device, non_blocking=True))
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                x = x.to(self.dtype)
            y = self.labels[start:stop].to(self.device, torch.int64, non_blocking=True)
            yield x, y

    def _loss_sum(self, x, y: torch.Tensor, fn: Callable | None = None) -> torch.Tensor:
        """Σ_i CE(model(x)_i, y_i) / total; ``fn``: the model called another way (``functional_call``)."""
        logits = self._call.logits(x, fn)
        return F.cross_entropy(logits.to(self.dtype), y, reduction="sum") / self.total

    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [part.view(shape) for part, shape in zip(v.split(self.sizes), self.shapes, strict=True)]

    def _flat(self, parts: Sequence[torch.Tensor | None]) -> torch.Tensor:
        return torch.cat([
            (torch.zeros(s, dtype=self.dtype, device=self.device) if t is None else t.reshape(-1).to(self.dtype))
            for t, s in zip(parts, self.sizes, strict=True)])

    def _accumulate(self, per_batch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Σ over batches (and processes) of ``per_batch(x, y)``; on CUDA out-of-memory halve the batch and
        start over."""
        while True:
            try:
                total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
                for x, y in self._batches():
                    total += per_batch(x, y)
                return total if self.reduce is None else self.reduce(total)
            except RuntimeError as exc:
                if not (self.device.type == "cuda" and _is_oom(exc)) or self.batch_size == 1:
                    raise
                if not self.resize_batches:
                    raise InputError(f"CUDA ran out of memory at --batch-size {self.batch_size}; with --bn train "
                                     "the batch size changes the numbers, so pass a smaller one") from None
                torch.cuda.empty_cache()
                self.batch_size = max(1, self.batch_size // 2)

    # -- Hessian-vector products ---------------------------------------------------------------------------

    def _hvp_double_backward(self, x, y, vs):
        with torch.enable_grad():
            loss = self._loss_sum(x, y)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
            pairs = [(g, v) for g, v in zip(grads, vs, strict=True) if g is not None and g.requires_grad]
            if not pairs:
                raise _NotTwiceDifferentiable("the gradient does not depend on the parameters")
            hv = torch.autograd.grad([g for g, _ in pairs], self.params, grad_outputs=[v for _, v in pairs],
                                     allow_unused=True)
        return self._flat(hv)

    def _hvp_forward_over_reverse(self, x, y, vs):
        from torch.func import functional_call, grad, jvp

        primals = {n: p.detach() for n, p in zip(self.names, self.params, strict=True)}
        tangents = dict(zip(self.names, vs, strict=True))

        def loss_of(p):
            return self._loss_sum(x, y, lambda *a, **k: functional_call(self.model, p, a, k, strict=False))

        with torch.enable_grad():
            _, hv = jvp(grad(loss_of), (primals,), (tangents,))
        return self._flat([hv[n] for n in self.names])

    def _hvp_function(self, method: str) -> Callable:
        if method == "forward-over-reverse":
            return self._hvp_forward_over_reverse
        if method == "double-backward+math-attention":
            def fn(x, y, vs):
                with _math_attention():
                    return self._hvp_double_backward(x, y, vs)

            return fn
        return self._hvp_double_backward

    def _choose_method(self, method: HvpMethod) -> str:
        """Probe the first batch: double backward if it works; else double backward with fused attention
        kernels (no double backward) replaced by the composite "math" attention; else ``torch.func``
        forward-over-reverse; else a clear error. A process with no examples has nothing to probe (its
        products are zero): it takes ``double-backward``, or the method asked for."""
        if self.n == 0:
            return "double-backward" if method == "auto" else method
        while True:
            try:
                return self._probe(method)
            except RuntimeError as exc:  # CUDA out of memory on the first batch: same back-off as the HVPs
                if not (self.device.type == "cuda" and _is_oom(exc)) or self.batch_size == 1:
                    raise
                if not self.resize_batches:
                    raise InputError(f"CUDA ran out of memory at --batch-size {self.batch_size}; with --bn train "
                                     "the batch size changes the numbers, so pass a smaller one") from None
                torch.cuda.empty_cache()
                self.batch_size = max(1, self.batch_size // 2)

    def _probe(self, method: HvpMethod) -> str:
        x, y = next(self._batches())
        gen = torch.Generator().manual_seed(0)
        vs = self._split(torch.randn(self.dim, generator=gen, dtype=torch.float64).to(self.device, self.dtype))
        self._check_used(x, y)
        candidates = list(_METHODS) if method == "auto" else [method]
        failures = []
        for candidate in candidates:
            fn = self._hvp_function(candidate)
            try:
                with parameters_requiring_grad(self.params):
                    hv = fn(x, y, vs)
            except InputError:
                raise
            except (RuntimeError, NotImplementedError, TypeError, AttributeError) as exc:
                if self.device.type == "cuda" and _is_oom(exc):
                    raise
                failures.append(f"{candidate}: {_one_line(exc)}")
                continue
            if not bool(torch.isfinite(hv).all()):
                raise InputError("the Hessian-vector product is not finite (NaN/Inf) on the first batch: is the "
                                 "loss finite and the input normalisation right?")
            return candidate
        if method != "auto":
            raise InputError(f"Hessian-vector products by {method} fail for this model: {failures[0]}")
        raise InputError(f"the loss is not twice differentiable with respect to the chosen parameters "
                         f"({_describe(self.names)}); choose others with --params. {' | '.join(failures)}")

    def _check_used(self, x, y) -> None:
        with parameters_requiring_grad(self.params), torch.enable_grad():
            loss = self._loss_sum(x, y)
            if not loss.requires_grad:
                raise InputError(f"the loss does not depend on the chosen parameters ({_describe(self.names)}): "
                                 "the model detaches them or they are not used")
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        unused = [n for n, g in zip(self.names, grads, strict=True) if g is None]
        if len(unused) == len(self.names):
            raise InputError(f"the loss does not depend on the chosen parameters ({_describe(self.names)})")

    # -- one batch: the gradient's graph is built once and reused (PyHessian's single-batch mode) -----------

    def _state_versions(self) -> tuple[int, ...]:
        """In-place version counters of the parameters and buffers: any change to the model bumps one."""
        return tuple(t._version for t in self._state_tensors)

    def _cached_gradient(self):
        """``(pairs, versions)``: ∇L(θ) with its graph (create_graph) for the single batch, rebuilt when a
        parameter or buffer changed in place since it was built. None when there are several batches or the
        method is not double backward: then each product runs forward + backward + double backward."""
        if (self.n == 0 or self.n > self.batch_size or not self.method.startswith("double-backward")
                or not self._keep_graph):
            return None
        versions = self._state_versions()
        cached = self._gradient_graph
        if cached is not None and cached[1] == versions:
            return cached[0]
        self._gradient_graph = None  # free the stale graph before building the new one
        context = _math_attention() if self.method == "double-backward+math-attention" else contextlib.nullcontext()
        with context, torch.enable_grad():
            x, y = next(self._batches())
            loss = self._loss_sum(x, y)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        pairs = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
        if not pairs:
            raise _NotTwiceDifferentiable("the gradient does not depend on the parameters")
        self._gradient_graph = (pairs, self._state_versions())
        return pairs

    def _hvp_cached(self, pairs, vs) -> torch.Tensor:
        context = _math_attention() if self.method == "double-backward+math-attention" else contextlib.nullcontext()
        with context:
            hv = torch.autograd.grad([g for _, g in pairs], self.params, grad_outputs=[vs[i] for i, _ in pairs],
                                     retain_graph=True, allow_unused=True)
        return self._flat(hv)

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector ``v`` (``[dim]``), summed over all batches.

        With a single batch the gradient graph is kept between products (one backward per product instead
        of forward + backward + backward); it is rebuilt if the model's parameters or buffers change.
        """
        vs = self._split(v.to(self.device, self.dtype))
        fn = self._hvp_function(self.method)
        with parameters_requiring_grad(self.params):
            out = None
            try:
                pairs = self._cached_gradient()
                if pairs is not None:
                    out = self._hvp_cached(pairs, vs)
                    out = out if self.reduce is None else self.reduce(out)
            except RuntimeError as exc:  # CUDA out of memory while the graph is kept: products batch by batch
                if not (self.device.type == "cuda" and _is_oom(exc)):
                    raise
                self.release()
                self._keep_graph = False
                torch.cuda.empty_cache()
                out = None
            if out is None:
                out = self._accumulate(lambda x, y: fn(x, y, vs))
        self.n_hvp += 1
        return out

    def release(self) -> None:
        """Drop the kept gradient graph (its activations) now rather than with the operator."""
        self._gradient_graph = None

    __call__ = hvp

    def loss(self) -> float:
        """L(θ): the mean cross-entropy over all examples."""
        total = torch.zeros((), dtype=torch.float64)
        with torch.no_grad():
            for x, y in self._batches():
                total += float(self._loss_sum(x, y))
        return float(total if self.reduce is None else self.reduce(total))

    def gradient(self) -> torch.Tensor:
        """∇L(θ) as a flat vector."""
        def per_batch(x, y):
            with torch.enable_grad():
                loss = self._loss_sum(x, y)
                return self._flat(torch.autograd.grad(loss, self.params, allow_unused=True))

        with parameters_requiring_grad(self.params):
            return self._accumulate(per_batch)


class _NotTwiceDifferentiable(RuntimeError):
    pass


def _describe(names: Sequence[str]) -> str:
    return ", ".join(names[:4]) + (f", … {len(names)} in all" if len(names) > 4 else "")


# ---------------------------------------------------------------------------------------------------------
# Lanczos
# ---------------------------------------------------------------------------------------------------------


def _dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a.double(), b.double()))


def _project64(basis: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """basis @ w accumulated in float64, in column chunks (no float64 copy of the whole basis). On CPU the
    chunks hold about 2¹⁸ elements (2 MiB in float64) so that each float64 copy stays in cache (whole-basis
    copies made Lanczos' bookkeeping cost as much as its HVPs); on an accelerator 2²⁴ (fewer launches)."""
    rows, dim = basis.shape
    chunk = max(1, (1 << (18 if basis.device.type == "cpu" else 24)) // max(rows, 1))
    w64 = w.double()
    out = torch.zeros(rows, dtype=torch.float64, device=w.device)
    for s in range(0, dim, chunk):
        out += basis[:, s:s + chunk].double() @ w64[s:s + chunk]
    return out


def _ritz(alpha: list[float], beta: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors of the symmetric tridiagonal T (diag α, off-diag β)."""
    from scipy.linalg import eigh_tridiagonal

    d = np.asarray(alpha, dtype=np.float64)
    if d.size == 1:
        return d.copy(), np.ones((1, 1))
    theta, s = eigh_tridiagonal(d, np.asarray(beta, dtype=np.float64))
    order = np.argsort(-theta, kind="stable")
    return theta[order], s[:, order]


class _Lanczos:
    """Lanczos with full reorthogonalisation; float64 scalars; restarts on invariant subspaces."""

    def __init__(self, matvec: Callable[[torch.Tensor], torch.Tensor], dim: int, *, device, dtype,
                 generator: torch.Generator, max_steps: int):
        self.matvec, self.dim = matvec, dim
        self.device, self.dtype = device, dtype
        self.generator = generator
        self.max_steps = min(max_steps, dim)
        self.basis = torch.empty((min(self.max_steps, 64) + 1, dim), dtype=dtype, device=device)
        self.alpha: list[float] = []
        self.beta: list[float] = []  # beta[j] couples q_j and q_{j+1}
        self.n_matvec = 0

    def _random_unit(self, against: int) -> torch.Tensor | None:
        q = torch.randn(self.dim, generator=self.generator, dtype=torch.float64).to(self.device, self.dtype)
        for _ in range(2):
            if against:
                q -= _project64(self.basis[:against], q).to(self.dtype) @ self.basis[:against]
        norm = math.sqrt(_dot64(q, q))
        return None if norm == 0 else q / norm

    def _grow(self, rows: int) -> None:
        if rows > self.basis.shape[0]:
            extra = torch.empty((min(self.basis.shape[0], self.max_steps + 1 - self.basis.shape[0]), self.dim),
                                dtype=self.dtype, device=self.device)
            self.basis = torch.cat([self.basis, extra])

    def run(self, stop: Callable[[np.ndarray, np.ndarray, float], bool] | None) -> tuple[np.ndarray, np.ndarray,
                                                                                          float]:
        """Iterate until ``stop(theta, s, beta_last)`` or ``max_steps``; returns the last Ritz decomposition."""
        self.basis[0] = self._random_unit(0)
        theta = s = None
        beta_last = 0.0
        for j in range(self.max_steps):
            q = self.basis[j]
            w = self.matvec(q).to(self.dtype)
            self.n_matvec += 1
            a = _dot64(q, w)
            w = w - a * q
            if j > 0:
                w -= self.beta[j - 1] * self.basis[j - 1]
            for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
                w -= _project64(self.basis[:j + 1], w).to(self.dtype) @ self.basis[:j + 1]
            b = math.sqrt(_dot64(w, w))
            self.alpha.append(a)
            theta, s = _ritz(self.alpha, self.beta)
            scale = max(float(np.max(np.abs(theta))), 1e-300)
            invariant = b <= 8 * torch.finfo(self.dtype).eps * scale * math.sqrt(j + 1)
            beta_last = 0.0 if invariant else b
            if j + 1 == self.max_steps or (stop is not None and stop(theta, s, beta_last)):
                break
            self._grow(j + 2)
            if invariant:  # a Krylov space is H-invariant: restart orthogonally to it (T gets a zero coupling)
                nxt = self._random_unit(j + 1)
                if nxt is None:
                    break
                self.beta.append(0.0)
                self.basis[j + 1] = nxt
            else:
                self.beta.append(b)
                self.basis[j + 1] = w / b
        return theta, s, beta_last


def _converged_top(k: int, tol: float, dtype: torch.dtype):
    floor = torch.finfo(dtype).eps

    def stop(theta: np.ndarray, s: np.ndarray, beta_last: float) -> bool:
        if theta.size < k:
            return False
        res = np.abs(beta_last * s[-1, :k])
        scale = float(np.max(np.abs(theta)))
        return bool(np.all(res <= tol * np.maximum(np.abs(theta[:k]), floor * scale)))

    return stop


def lanczos_top_eigenvalues(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    *,
    k: int = DEFAULT_TOP,
    tol: float = DEFAULT_TOL,
    max_matvec: int = DEFAULT_MAX_HVP,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LanczosResult:
    """The ``k`` largest algebraic eigenvalues of the symmetric operator ``matvec`` on ``R^dim``.

    Lanczos with full reorthogonalisation from a seeded standard-normal start vector; stops as soon as every
    wanted Ritz pair has residual :math:`|\\beta_m s_{m,i}| \\le \\mathrm{tol}\\cdot|\\theta_i|` (with
    :math:`|\\theta_i|` floored at machine epsilon × the largest :math:`|\\theta|`, so that zero eigenvalues can
    converge), or after ``max_matvec`` products (``converged=False``). A single start vector finds one copy
    of a repeated eigenvalue; Hessians of trained networks rarely have exact multiplicities at the top.
    """
    if k > dim:
        raise InputError(f"Expected argument `top` to be at most the number of parameters ({dim}), but got {k}")
    lanczos = _Lanczos(matvec, dim, device=torch.device(device), dtype=dtype,
                       generator=torch.Generator().manual_seed(seed), max_steps=max(max_matvec, 1))
    stop = _converged_top(k, tol, dtype)
    theta, s, beta_last = lanczos.run(stop)
    converged = stop(theta, s, beta_last)
    kk = min(k, theta.size)
    residuals = np.abs(beta_last * s[-1, :kk])
    return LanczosResult(eigenvalues=tuple(float(t) for t in theta[:kk]),
                         residuals=tuple(float(r) for r in residuals), converged=converged,
                         n_matvec=lanczos.n_matvec)


TraceMethod = Literal["hutchinson", "hutchpp", "both"]
TRACE_METHODS: tuple[str, ...] = ("hutchinson", "hutchpp", "both")


def trace_budget(method: str, trace_samples: int, trace_hvps: int | None) -> int:
    """Hessian-vector products per trace estimate (0: no trace), checked against ``method``.

    ``trace_hvps`` when given; else ``trace_samples`` for Hutchinson alone, and for Hutch++ (or both, side by
    side at the same budget) :data:`~calibscope.diagnostics.trace.DEFAULT_HUTCHPP_HVP` unless
    ``trace_samples`` is 0. Hutch++ needs a multiple of 3, at least 6; Hutchinson at least 2.
    """
    from calibscope.diagnostics.defaults import DEFAULT_HUTCHPP_HVP

    if method not in TRACE_METHODS:
        raise InputError(f"Expected argument `trace_method` to be one of {', '.join(TRACE_METHODS)}, but got "
                         f"{method!r}")
    if trace_hvps is None:
        budget = trace_samples if method == "hutchinson" or not trace_samples else DEFAULT_HUTCHPP_HVP
    else:
        _check_int("trace_hvps", trace_hvps, 0)
        budget = trace_hvps
    if budget and method != "hutchinson" and (budget < 6 or budget % 3):
        raise InputError(f"Expected argument `trace_hvps` to be a multiple of 3 that is at least 6 for Hutch++ "
                         f"(a third sketches, a third projects, a third probes the rest), but got {budget}")
    if budget == 1:
        raise InputError("Expected argument `trace_hvps` to be 0 (no trace) or at least 2 (for a standard error), "
                         "but got 1")
    return budget


def hutchinson_trace(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    *,
    samples: int = DEFAULT_TRACE_SAMPLES,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TraceEstimate:
    """Hutchinson (1989): :math:`\\operatorname{tr} H \\approx \\frac1S\\sum_s z_s^\\top H z_s`, Rademacher
    :math:`z_s` drawn from ``torch.Generator().manual_seed(seed)``; standard error std(ddof=1)/√S."""
    _check_int("trace_samples", samples, 2)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    values = []
    for _ in range(samples):
        z = (torch.randint(0, 2, (dim,), generator=gen) * 2 - 1).to(device, dtype)
        values.append(_dot64(z, matvec(z).to(dtype)))
    arr = np.asarray(values)
    return TraceEstimate(trace=float(arr.mean()), standard_error=float(arr.std(ddof=1) / math.sqrt(samples)),
                         samples=samples, n_hvp=samples, seconds=time.perf_counter() - t0)


def spectral_density(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    *,
    runs: int = 1,
    steps: int = 64,
    seed: int = 0,
    grid_points: int = 512,
    sigma: float | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019 §2).

    ``runs`` Lanczos runs of ``steps`` steps from random unit vectors; run r gives nodes θ_j and weights
    τ_j = s_{1,j}²; density φ(t) = (1/runs) Σ_r Σ_j τ_j 𝒩(t; θ_j, σ²) on a grid spanning the nodes ± 3σ, with
    σ = 1 % of the node range unless given.
    """
    _check_int("runs", runs, 1)
    _check_int("steps", steps, 1)
    gen = torch.Generator().manual_seed(seed)
    nodes, weights, n = [], [], 0
    for _ in range(runs):
        lanczos = _Lanczos(matvec, dim, device=torch.device(device), dtype=dtype, generator=gen, max_steps=steps)
        theta, s, _ = lanczos.run(None)
        nodes.append(tuple(float(t) for t in theta))
        weights.append(tuple(float(w) for w in s[0] ** 2))
        n += lanczos.n_matvec
    flat = np.concatenate([np.asarray(v) for v in nodes])
    lo, hi = float(flat.min()), float(flat.max())
    width = sigma if sigma is not None else max(0.01 * (hi - lo), 1e-12 * max(abs(lo), abs(hi), 1.0))
    grid = np.linspace(lo - 3 * width, hi + 3 * width, grid_points)
    density = np.zeros_like(grid)
    for th, tau in zip(nodes, weights, strict=True):
        th_a, tau_a = np.asarray(th)[:, None], np.asarray(tau)[:, None]
        density += (tau_a * np.exp(-((grid[None, :] - th_a) ** 2) / (2 * width**2))).sum(0)
    density /= runs * width * math.sqrt(2 * math.pi)
    return SpectralDensity(grid=tuple(grid.tolist()), density=tuple(density.tolist()), nodes=tuple(nodes),
                           weights=tuple(weights), runs=runs, steps=steps, sigma=width, n_hvp=n)


# ---------------------------------------------------------------------------------------------------------
# the diagnostic
# ---------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def top_hessian_eigenvalues(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    top: int = DEFAULT_TOP,
    tol: float = DEFAULT_TOL,
    examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
    subset: int = 0,
    repeats: int = 1,
    params: str = "all",
    bn: BnMode = "eval",
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_hvp: int = DEFAULT_MAX_HVP,
    trace_samples: int = 0,
    per_layer: bool = False,
    density: bool = False,
    density_runs: int = 1,
    density_steps: int = 64,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    hvp_method: HvpMethod = "auto",
    part: tuple[int, int] = (0, 1),
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    output: str | int | None = None,
    trace_method: TraceMethod = "hutchinson",
    trace_hvps: int | None = None,
) -> HessianSpectrum:
    """λ1 ≥ … ≥ λ_top of the Hessian of the mean cross-entropy on a seeded subset, with residual bounds.

    Args:
        model: the classifier; its parameters' device and dtype are where and how everything is computed
            (the model is put in eval mode for the computation and its mode restored afterwards).
        inputs: ``[N, ...]`` examples (uint8 images are divided by 255), anywhere; moved batch by batch.
        labels: ``[N]`` class indices.
        top: how many of the largest (algebraic) eigenvalues.
        tol: stop when every wanted Ritz pair has residual ≤ ``tol · |λ_i|``.
        examples, seed, subset, repeats: the subset is piece ``subset`` of ``repeats`` disjoint pieces of
            ``min(examples, N // repeats)`` examples of one seeded permutation (:func:`hessian_subsets`).
        params: ``"all"``, ``"last"`` or a regular expression over parameter names.
        bn: ``"eval"`` (running statistics) or ``"train"`` (batch statistics; the numbers then depend on
            ``batch_size``).
        trace_samples: Hutchinson probes for the trace (0: no trace estimate).
        trace_method: ``"hutchinson"``, ``"hutchpp"`` (Hutch++, Meyer et al. 2021) or ``"both"``, each with
            the same budget of Hessian-vector products (:func:`trace_budget`).
        trace_hvps: that budget (None: ``trace_samples`` for Hutchinson alone, else
            :data:`~calibscope.diagnostics.trace.DEFAULT_HUTCHPP_HVP`; a multiple of 3 for Hutch++).
        per_layer: also the top eigenvalue of each layer's diagonal block.
        density: also the spectral density by stochastic Lanczos quadrature.
        mean, std: per-channel normalisation after uint8 → [0, 1], as in inference.
        part, reduce: across processes, ``(index, count)`` — this process takes the index-th of ``count``
            contiguous parts of the subset (whole batches when ``bn="train"``) — and the function that sums a
            tensor over the processes (e.g. an ``all_reduce``); every process gets the same result.
        output: which of a non-tensor output holds the logits (``--output KEY|INDEX``; see
            :func:`calibscope.model_outputs.select_logits`).

    Returns:
        :class:`HessianSpectrum`; ``eigenvalues`` descending, ``ratio`` = λ1/λ_top.
    """
    _validate_arguments(top=top, tol=tol, examples=examples, batch_size=batch_size, max_hvp=max_hvp,
                        trace_samples=trace_samples, repeats=repeats, bn=bn, hvp_method=hvp_method, seed=seed)
    if trace_samples == 1:
        raise InputError("Expected argument `trace_samples` to be 0 (no trace) or at least 2 (for a standard "
                         "error), but got 1")
    budget = trace_budget(trace_method, trace_samples, trace_hvps)
    _check_int("subset", subset, 0)
    if subset >= repeats:
        raise InputError(f"Expected argument `subset` to be below `repeats` ({repeats}), but got {subset}")
    _validate_data(inputs, labels)
    chosen = select_parameters(model, params)
    n_params = sum(p.numel() for _, p in chosen)
    if top > n_params:
        raise InputError(f"--top {top} is larger than the number of chosen parameters ({n_params}); "
                         f"ask for at most {n_params}")
    if (reduce is None) != (tuple(part) == (0, 1)):
        raise InputError("Expected `part` and `reduce` together: a process that takes part of the examples must "
                         "sum its products with the others'")
    indices = hessian_subsets(int(inputs.shape[0]), examples=examples, repeats=repeats, seed=seed)[subset]
    start, stop = contiguous_shard(int(indices.numel()), *part, unit=batch_size if bn == "train" else 1)
    sub_inputs = inputs[indices[start:stop].to(inputs.device)]
    sub_labels = labels[indices[start:stop].to(labels.device)]

    with _tf32_off(), _model_mode(model, bn) as has_bn:
        op = HessianOperator(model, sub_inputs, sub_labels, parameters=chosen, batch_size=batch_size, mean=mean,
                             std=std, method=hvp_method, resize_batches=not (bn == "train" and has_bn),
                             total=int(indices.numel()), reduce=reduce, output=output)
        device, dtype = op.device, op.dtype
        _sync(device)
        t0 = time.perf_counter()
        eig = lanczos_top_eigenvalues(op, op.dim, k=top, tol=tol, max_matvec=max_hvp, seed=seed, device=device,
                                      dtype=dtype)
        _sync(device)
        seconds = time.perf_counter() - t0
        loss = op.loss()
        trace = trace_pp = None
        if budget and trace_method in ("hutchinson", "both"):
            trace = hutchinson_trace(op, op.dim, samples=budget, seed=seed + 1, device=device, dtype=dtype)
        if budget and trace_method in ("hutchpp", "both"):
            from calibscope.diagnostics.trace import hutchplusplus_trace

            trace_pp = hutchplusplus_trace(op, op.dim, n_hvp=budget, seed=seed + 1, device=device, dtype=dtype)
        layers: tuple[LayerEigenvalue, ...] = ()
        if per_layer:
            op.release()  # one kept graph at a time
            layers = _per_layer(model, sub_inputs, sub_labels, chosen, op, tol=tol, max_hvp=max_hvp, seed=seed,
                                mean=mean, std=std)
        dens = None
        if density:
            dens = spectral_density(op, op.dim, runs=density_runs, steps=density_steps, seed=seed + 2,
                                    device=device, dtype=dtype)
        op.release()
    settings = HessianSettings(
        top=top, tol=tol, max_hvp=max_hvp, examples=int(indices.numel()), examples_requested=examples,
        dataset_size=int(inputs.shape[0]), seed=seed, subset=subset, subset_sha256=_subset_sha256(indices), bn=bn,
        has_batchnorm=has_bn, dtype=str(dtype).removeprefix("torch."), tf32=False, params=params,
        parameter_names=op.names, n_params=op.dim, batch_size=op.batch_size, hvp_method=op.method,
        device=str(device), processes=int(part[1]))
    return HessianSpectrum(eigenvalues=eig.eigenvalues, residuals=eig.residuals, converged=eig.converged,
                           n_hvp=eig.n_matvec, seconds=seconds, loss=loss, settings=settings, trace=trace,
                           per_layer=layers, density=dens, trace_hutchpp=trace_pp)


def _per_layer(model, inputs, labels, chosen, op: HessianOperator, *, tol, max_hvp, seed, mean, std):
    groups: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for name, p in chosen:
        groups.setdefault(_layer_of(name), []).append((name, p))
    out = []
    for layer, members in groups.items():
        sub = HessianOperator(model, inputs, labels, parameters=members, batch_size=op.batch_size, mean=mean,
                              std=std, method=op.method, resize_batches=op.resize_batches, total=op.total,
                              reduce=op.reduce, output=op._call.output)
        res = lanczos_top_eigenvalues(sub, sub.dim, k=1, tol=tol, max_matvec=max_hvp, seed=seed,
                                      device=sub.device, dtype=sub.dtype)
        sub.release()
        out.append(LayerEigenvalue(layer=layer, n_params=sub.dim, eigenvalue=res.eigenvalues[0],
                                   residual=res.residuals[0], converged=res.converged, n_hvp=res.n_matvec))
    return tuple(out)


def hessian_repeats(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    repeats: int,
    **options,
) -> HessianRepeats:
    """:func:`top_hessian_eigenvalues` on each of ``repeats`` disjoint seeded subsets; mean ± std across them.

    Subset-to-subset variance is the main reason published λ1 values disagree; this measures it.
    Per-layer eigenvalues and the density (if asked for) are computed on the first subset only.
    """
    _check_int("repeats", repeats, 1)
    spectra = []
    for r in range(repeats):
        extra = {} if r == 0 else {"per_layer": False, "density": False}
        spectra.append(top_hessian_eigenvalues(model, inputs, labels, repeats=repeats, subset=r,
                                               **{**options, **extra}))
    eig = np.asarray([s.eigenvalues for s in spectra])
    ratios = np.asarray([s.ratio for s in spectra])
    ddof = 1 if repeats > 1 else 0
    traces = [s.trace.trace for s in spectra if s.trace is not None]
    traces_pp = [s.trace_hutchpp.trace for s in spectra if s.trace_hutchpp is not None]
    return HessianRepeats(
        spectra=tuple(spectra), eigenvalues_mean=tuple(eig.mean(0).tolist()),
        eigenvalues_std=tuple(eig.std(0, ddof=ddof).tolist()), ratio_mean=float(ratios.mean()),
        ratio_std=float(ratios.std(ddof=ddof)),
        trace_mean=float(np.mean(traces)) if traces else None,
        trace_std=float(np.std(traces, ddof=ddof)) if traces else None,
        trace_hutchpp_mean=float(np.mean(traces_pp)) if traces_pp else None,
        trace_hutchpp_std=float(np.std(traces_pp, ddof=ddof)) if traces_pp else None)
