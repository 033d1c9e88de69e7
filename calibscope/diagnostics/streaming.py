r"""Calibration of predictions that arrive batch by batch: inside a validation loop, or spread over ranks.

:class:`StreamingCalibration` is the stateful form of
:func:`calibscope.diagnostics.calibration.calibration_metrics` (torchmetrics' pattern: ``update`` keeps only
sufficient statistics, ``compute`` calls the same formulas as the one-shot function). Its state is

* the mergeable per-bin sums of :class:`~calibscope.diagnostics.calibration.CalibrationSums` as one float64
  vector (top-label bins, n, NLL and Brier sums, classwise bins, the smooth-ECE residual grid; Guo et al.
  2017 §2-3, Nixon et al. 2019, Błasiok & Nakkiran 2023), summed over batches, merged streams and ranks;
* each example's top-label confidence and correctness (9 bytes), because the equal-mass bins of ACE need the
  order of all confidences;
* the logits and labels themselves only when they are needed: ``bootstrap > 0`` (resampling needs the
  examples) or ``keep_logits=True`` (e.g. to fit a temperature afterwards).

Over any split into batches, streams and ranks, :meth:`StreamingCalibration.compute` equals
``calibration_metrics`` of the concatenated examples up to float64 summation order (≈ 1e-16).
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from calibscope.diagnostics.calibration import (
    MIN_BIN_COUNT,
    SMOOTH_GRID,
    CalibrationMetrics,
    _calibration_sums_with_top,
    _validate_bootstrap,
    _validate_grid_size,
    _validate_logits_labels,
    _validate_n_bins,
    calibration_metrics,
    metrics_from_sums,
)
from calibscope.errors import InputError

__all__ = ["StreamingCalibration"]

_F64 = torch.float64


def _state_length(num_classes: int, n_bins: int, grid: int) -> int:
    """Length of :meth:`CalibrationSums.to_tensor`: 3M + 4 top-label entries, 3KM classwise, G + 1 grid."""
    return 3 * n_bins + 4 + 3 * num_classes * n_bins + grid + 1


class StreamingCalibration:
    r"""Accumulates calibration statistics batch by batch; :meth:`compute` gives :class:`CalibrationMetrics`.

    Args:
        n_bins: M equal-width right-closed confidence bins (Guo et al. 2017; Müller et al. 2019 use 15).
        num_classes: K; optional (read from the first batch), but needed by a rank that sees no batch before
            :meth:`sync` when no other rank knows it either.
        bootstrap, confidence_level, seed: as for :func:`calibration_metrics`; ``bootstrap > 0`` keeps the
            logits and labels (resampling needs the examples).
        keep_logits: keep the logits (float32, on their device) and labels even without bootstrap;
            :attr:`logits` / :attr:`labels` then return them (e.g. for
            :func:`~calibscope.diagnostics.temperature.fit_temperature`).
        min_bin_count, smooth_grid: as for :func:`calibration_metrics`.

    The state lives on the device of the first batch; every method works there (no host synchronisation in
    :meth:`update`).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z, y = 3 * torch.randn(10_000, 10, generator=g), torch.randint(0, 10, (10_000,), generator=g)
        >>> stream = StreamingCalibration(n_bins=15)
        >>> for zb, yb in zip(z.split(1000), y.split(1000), strict=True):
        ...     stream.update(zb, yb)
        >>> abs(stream.compute().value("ece") - calibration_metrics(z, y).value("ece")) < 1e-12
        True
    """

    def __init__(
        self,
        n_bins: int = 15,
        *,
        num_classes: int | None = None,
        bootstrap: int = 0,
        confidence_level: float = 0.95,
        seed: int = 0,
        keep_logits: bool = False,
        min_bin_count: int = MIN_BIN_COUNT,
        smooth_grid: int = SMOOTH_GRID,
    ) -> None:
        self.n_bins = _validate_n_bins(n_bins)
        self.bootstrap, self.confidence_level, self.seed = _validate_bootstrap(bootstrap, confidence_level, seed)
        self.smooth_grid = _validate_grid_size(smooth_grid)
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2
        ):
            raise InputError(f"Expected argument `num_classes` to be an integer of at least 2, but got {num_classes!r}")
        if isinstance(min_bin_count, bool) or not isinstance(min_bin_count, numbers.Integral) or min_bin_count < 0:
            raise InputError(f"Expected argument `min_bin_count` to be an integer of at least 0, but got "
                             f"{min_bin_count!r}")
        if not isinstance(keep_logits, bool):
            raise InputError(f"Expected argument `keep_logits` to be True or False, but got {keep_logits!r}")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.min_bin_count = int(min_bin_count)
        self.keeps_logits = keep_logits or self.bootstrap > 0
        self.reset()

    # ---- state ----------------------------------------------------------------------------------------

    def reset(self) -> StreamingCalibration:
        """Forget every example (e.g. at the start of a validation epoch); returns ``self``."""
        self._vector: torch.Tensor | None = None
        self._confidence: list[torch.Tensor] = []
        self._correct: list[torch.Tensor] = []
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        return self

    @property
    def n(self) -> int:
        """How many examples the state holds (one host synchronisation)."""
        return 0 if self._vector is None else int(round(float(self._vector[3 * self.n_bins])))

    @property
    def logits(self) -> torch.Tensor:
        """The kept logits ``[n, K]`` in example order (``keep_logits=True`` or ``bootstrap > 0``)."""
        return self._kept(self._logits, "logits")

    @property
    def labels(self) -> torch.Tensor:
        """The kept labels ``[n]`` in example order (``keep_logits=True`` or ``bootstrap > 0``)."""
        return self._kept(self._labels, "labels")

    def _kept(self, parts: list[torch.Tensor], name: str) -> torch.Tensor:
        if not self.keeps_logits:
            raise InputError(f"Expected StreamingCalibration(keep_logits=True) to read back the {name}, but they "
                             "were not kept")
        if not parts:
            raise InputError("Expected at least one example, but got N = 0")
        return torch.cat(parts)

    def _check_classes(self, k: int) -> None:
        if self.num_classes is None:
            self.num_classes = k
        elif k != self.num_classes:
            raise InputError(f"Expected logits with {self.num_classes} classes, but got {k}")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch: ``logits`` ``[b, K]`` (any floating dtype; softmax is taken in float64) and
        ``labels`` ``[b]`` in ``[0, K)``."""
        _validate_logits_labels(logits, labels)
        self._check_classes(int(logits.shape[1]))
        if logits.shape[0] == 0:
            return
        labels = labels.to(torch.int64)
        logits = logits.detach()
        sums, confidence, correct = _calibration_sums_with_top(logits, labels, self.n_bins, self.smooth_grid)
        vector = sums.to_tensor()
        if self._vector is None:
            self._vector = vector
        else:
            self._vector += vector.to(self._vector.device)
        self._confidence.append(confidence)
        self._correct.append(correct)
        if self.keeps_logits:
            self._logits.append(logits.to(torch.float32) if logits.dtype != torch.float64 else logits)
            self._labels.append(labels)

    def _same_settings(self, other: StreamingCalibration) -> None:
        mine = (self.n_bins, self.smooth_grid, self.keeps_logits)
        theirs = (other.n_bins, other.smooth_grid, other.keeps_logits)
        if mine != theirs:
            raise InputError(f"Expected streams with the same n_bins, smooth_grid and keep_logits to merge, but got "
                             f"{mine} and {theirs}")

    def merge(self, other: StreamingCalibration) -> StreamingCalibration:
        """Add the examples of ``other`` (disjoint from ours) after ours, in place; returns ``self``."""
        if not isinstance(other, StreamingCalibration):
            raise TypeError(f"Expected StreamingCalibration, but got {type(other).__name__}")
        self._same_settings(other)
        if other.num_classes is not None:
            self._check_classes(other.num_classes)
        if other._vector is None:
            return self
        device = other._vector.device if self._vector is None else self._vector.device
        self._vector = other._vector.clone().to(device) if self._vector is None else self._vector + other._vector.to(
            device)
        self._confidence += [t.to(device) for t in other._confidence]
        self._correct += [t.to(device) for t in other._correct]
        self._logits += [t.to(device) for t in other._logits]
        self._labels += [t.to(device) for t in other._labels]
        return self

    # ---- across processes --------------------------------------------------------------------------------

    def sync(self, group: Any = None) -> StreamingCalibration:
        """Replace this process's state by the union over the ``torch.distributed`` group (sums all-reduced,
        per-example tensors all-gathered in rank order), so that :meth:`compute` gives every rank the metrics
        of all examples. A collective: every rank must call it. Without an initialised process group it does
        nothing. Returns ``self``."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = self._collective_device(dist, group)
        k = self._agreed_classes(dist, group, device)
        length = _state_length(k, self.n_bins, self.smooth_grid)
        vector = torch.zeros(length, dtype=_F64, device=device) if self._vector is None else self._vector.to(device)
        dist.all_reduce(vector, group=group)
        home = device if self._vector is None else self._vector.device
        parts = [(self._confidence, _F64, ()), (self._correct, torch.bool, ())]
        if self.keeps_logits:  # float64 on the wire: ranks may hold different floating dtypes
            parts += [(self._logits, _F64, (k,)), (self._labels, torch.int64, ())]
        gathered = [_all_gather_rows(torch.cat(p).to(device, dtype) if p else torch.zeros((0, *shape), dtype=dtype,
                                                                                          device=device),
                                     dist, group) for p, dtype, shape in parts]
        self._vector = vector.to(home)
        self._confidence, self._correct = [gathered[0].to(home)], [gathered[1].to(home)]
        if self.keeps_logits:
            self._logits, self._labels = [gathered[2].to(home)], [gathered[3].to(home)]
        return self

    def _collective_device(self, dist: Any, group: Any) -> torch.device:
        backend = str(dist.get_backend(group))
        if "nccl" in backend and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _agreed_classes(self, dist: Any, group: Any, device: torch.device) -> int:
        mine = torch.tensor([self.num_classes or 0], dtype=torch.int64, device=device)
        everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(everyone, mine, group=group)
        known = {int(t) for t in everyone if int(t) > 0}
        if len(known) != 1:
            raise InputError("Expected every rank to see the same number of classes before sync(), but got "
                             + (f"{sorted(known)}" if known else "no batch on any rank and no `num_classes`"))
        self.num_classes = known.pop()
        return self.num_classes

    # ---- the result -----------------------------------------------------------------------------------------

    def compute(self) -> CalibrationMetrics:
        """The metrics of every example added so far (on this process; call :meth:`sync` first across ranks):
        exactly the numbers of :func:`calibration_metrics` on the concatenated examples, bootstrap intervals
        included when ``bootstrap > 0``. Raises :class:`InputError` when no example was added."""
        if self._vector is None or self.n == 0:
            raise InputError("Expected at least one example, but got N = 0")
        if self.bootstrap:
            return calibration_metrics(self.logits, self.labels, n_bins=self.n_bins, bootstrap=self.bootstrap,
                                       confidence_level=self.confidence_level, seed=self.seed,
                                       min_bin_count=self.min_bin_count, smooth_grid=self.smooth_grid)
        assert self.num_classes is not None
        return metrics_from_sums(self._vector, torch.cat(self._confidence), torch.cat(self._correct),
                                 num_classes=self.num_classes, n_bins=self.n_bins, smooth_grid=self.smooth_grid,
                                 min_bin_count=self.min_bin_count)

    def __repr__(self) -> str:
        return (f"StreamingCalibration(n_bins={self.n_bins}, num_classes={self.num_classes}, n={self.n}, "
                f"bootstrap={self.bootstrap}, keep_logits={self.keeps_logits})")


def _all_gather_rows(local: torch.Tensor, dist: Any, group: Any) -> torch.Tensor:
    """Concatenation over ranks (in rank order) of tensors whose first dimension differs between ranks."""
    world = dist.get_world_size(group)
    size = torch.tensor([local.shape[0]], dtype=torch.int64, device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    rows = [int(s) for s in sizes]
    wire = local.to(torch.uint8) if local.dtype == torch.bool else local  # gloo has no bool all_gather
    padded = torch.zeros((max(1, *rows), *wire.shape[1:]), dtype=wire.dtype, device=wire.device)
    padded[: wire.shape[0]] = wire
    pieces = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded, group=group)
    out = torch.cat([p[:r] for p, r in zip(pieces, rows, strict=True)])
    return out.to(torch.bool) if local.dtype == torch.bool else out
