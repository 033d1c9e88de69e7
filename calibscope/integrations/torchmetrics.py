r"""``CalibscopeECE``: calibscope's ECE as a ``torchmetrics.Metric``, for any torchmetrics or Lightning code.

The state is the mergeable per-bin sums of :class:`~calibscope.diagnostics.calibration.CalibrationStats`
(float64: ``count``, ``sum_confidence``, ``sum_correct`` per bin and the totals n, n_correct, ΣNLL, ΣBrier),
all with ``dist_reduce_fx="sum"``, so torchmetrics' own synchronisation across ranks gives the ECE of every
example. The number is calibscope's (Guo et al. 2017 §2-3, right-closed equal-width bins, softmax in
float64): it equals ``torchmetrics.classification.MulticlassCalibrationError`` to ~1e-15 except when a
confidence lies exactly on a bin edge (torchmetrics' bins are left-closed there).

    >>> import torch
    >>> metric = CalibscopeECE(n_bins=15)
    >>> metric.update(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    >>> round(float(metric.compute()), 4)
    0.4251
"""

from __future__ import annotations

from typing import Any

from calibscope.integrations import require

require("torchmetrics", "calibscope.integrations.torchmetrics")

import torch  # noqa: E402
from torchmetrics import Metric  # noqa: E402

from calibscope.diagnostics.calibration import (  # noqa: E402
    CalibrationReport,
    CalibrationStats,
    _calibration_errors,
    _validate_n_bins,
    _validate_norm,
    calibration_stats,
    summarize,
)
from calibscope.errors import InputError  # noqa: E402

__all__ = ["CalibscopeECE"]


class CalibscopeECE(Metric):
    """Top-label expected calibration error (``norm="l1"``; ``"l2"`` and ``"max"`` = MCE) of logits.

    Args:
        n_bins: M equal-width right-closed confidence bins (default 15, as Guo et al. and Müller et al.).
        norm: ``"l1"`` (ECE), ``"l2"`` or ``"max"`` (MCE).
        num_classes: K, optional: when given, every batch must have K columns.

    ``update(logits [B, K], labels [B])`` takes logits or log-probabilities (softmax is applied);
    ``compute()`` returns a 0-d float64 tensor; :meth:`report` the reliability bins, NLL, Brier and accuracy.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, n_bins: int = 15, norm: str = "l1", *, num_classes: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_bins = _validate_n_bins(n_bins)
        _validate_norm(norm)
        self.norm = norm
        self.num_classes = num_classes
        zeros = torch.zeros(self.n_bins, dtype=torch.float64)
        for name in ("count", "sum_confidence", "sum_correct"):
            self.add_state(name, default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("totals", default=torch.zeros(4, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if self.num_classes is not None and logits.ndim == 2 and logits.shape[1] != self.num_classes:
            raise InputError(f"Expected logits with {self.num_classes} classes, but got shape {tuple(logits.shape)}")
        stats = calibration_stats(logits.detach(), labels, n_bins=self.n_bins)
        self.count += stats.count
        self.sum_confidence += stats.sum_confidence
        self.sum_correct += stats.sum_correct
        self.totals += torch.stack([stats.n, stats.n_correct, stats.sum_nll, stats.sum_brier])
        if self.num_classes is None:
            self.num_classes = stats.num_classes

    def _stats(self) -> CalibrationStats:
        if float(self.totals[0]) == 0:
            raise InputError("Expected at least one example, but got N = 0")
        return CalibrationStats(self.count, self.sum_confidence, self.sum_correct, *self.totals.unbind(),
                                num_classes=int(self.num_classes or 0))

    def compute(self) -> torch.Tensor:
        stats = self._stats()
        return _calibration_errors(stats.count, stats.sum_confidence, stats.sum_correct)[self.norm]

    def report(self) -> CalibrationReport:
        """The :class:`CalibrationReport` of the (synchronised) state: per-bin accuracy and confidence for a
        reliability diagram, ECE, MCE, NLL, Brier, accuracy."""
        return summarize(self._stats())
