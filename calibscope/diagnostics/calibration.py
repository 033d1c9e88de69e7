r"""Confidence calibration: expected calibration error (ECE), MCE, NLL, Brier score, reliability bins.

Definitions follow Guo, Pleiss, Sun & Weinberger, *On Calibration of Modern Neural Networks*, ICML 2017,
§2 ("Calibration") and §3 (reliability diagrams, ECE, MCE, NLL); Müller et al. 2019 use the same ECE with
M = 15 bins, our default.

With :math:`p_i = \operatorname{softmax}(z_i)`, confidence :math:`\hat p_i = \max_k p_{ik}`, prediction
:math:`\hat y_i = \arg\max_k p_{ik}` and M equal-width, right-closed bins

.. math::

    B_m = \{\, i : \hat p_i \in (\tfrac{m-1}{M}, \tfrac{m}{M}] \,\}, \qquad m = 1, \dots, M
    \quad (\hat p_i = 0 \text{ joins } B_1),

    \operatorname{acc}(B_m) = \frac{1}{|B_m|} \sum_{i \in B_m} [\hat y_i = y_i], \qquad
    \operatorname{conf}(B_m) = \frac{1}{|B_m|} \sum_{i \in B_m} \hat p_i,

    \mathrm{ECE} = \sum_{m=1}^{M} \frac{|B_m|}{n} \bigl|\operatorname{acc}(B_m) - \operatorname{conf}(B_m)\bigr|,
    \qquad
    \mathrm{MCE} = \max_{m:\,|B_m| > 0} \bigl|\operatorname{acc}(B_m) - \operatorname{conf}(B_m)\bigr|.

Everything is computed in float64 (logits are cast, softmax is taken in float64) and the bin edges are
exactly ``m / M`` in float64, so the numbers agree with a float64 numpy implementation to ~1e-15 and do not
move with the hardware or the precision the model ran in.

The per-bin sums (:class:`CalibrationStats`) are sufficient statistics: computed batch by batch (or rank by
rank) and added, they give exactly the one-shot result. :func:`calibration_report` is
``summarize(calibration_stats(...))``.

The functions are pure: no I/O, no printing, and they run on the device the tensors are on.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from calibscope.bounds import MAX_BINS, MAX_BOOTSTRAP, check_seed, check_upper
from calibscope.diagnostics._top_label import confidence_and_prediction
from calibscope.errors import InputError

__all__ = [
    "ALL_METRICS",
    "COMPACT_METRICS",
    "BootstrapInterval",
    "CalibrationMetric",
    "CalibrationMetrics",
    "CalibrationReport",
    "CalibrationStats",
    "CalibrationSums",
    "ConfidenceBins",
    "ReliabilityBins",
    "adaptive_calibration_error",
    "calibration_definition",
    "calibration_metrics",
    "calibration_report",
    "calibration_stats",
    "calibration_sums",
    "classwise_calibration_error",
    "confidence_bins",
    "debiased_calibration_error",
    "expected_calibration_error",
    "metric_definitions",
    "metrics_from_sums",
    "smooth_calibration_error",
    "streamed_calibration_metrics",
    "summarize",
]

Norm = Literal["l1", "l2", "max"]
_NORMS = ("l1", "l2", "max")
_F64 = torch.float64


# --------------------------------------------------------------------------------------------------------
# validation (once, at the edge; torchmetrics-style messages)
# --------------------------------------------------------------------------------------------------------


def _validate_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
        raise InputError(f"Expected argument `n_bins` to be an integer larger than 0, but got {n_bins!r}")
    check_upper(n_bins, MAX_BINS, "n_bins")
    return int(n_bins)


def _validate_norm(norm: Any) -> None:
    if norm not in _NORMS:
        raise InputError(f"Expected argument `norm` to be one of {_NORMS}, but got {norm!r}")


def _validate_tensor(value: Any, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise InputError(f"Expected argument `{name}` to be a torch.Tensor, but got {type(value).__name__}")


def _validate_labels(labels: Any, n: int, num_classes: int | None, device: torch.device) -> None:
    _validate_tensor(labels, "labels")
    if labels.ndim != 1:
        raise InputError(f"Expected argument `labels` to have shape [N], but got shape {tuple(labels.shape)}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise InputError(f"Expected argument `labels` to be an integer tensor, but got dtype {labels.dtype}")
    if labels.shape[0] != n:
        raise InputError(
            f"Expected argument `labels` to have {n} entries (one per row of `logits`), but got {labels.shape[0]}"
        )
    if labels.device != device:
        raise InputError(f"Expected `logits` and `labels` on the same device, but got {device} and {labels.device}")
    if num_classes is not None and n > 0:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise InputError(
                f"Expected every label to be in [0, {num_classes}) for {num_classes} classes, "
                f"but got labels in [{low}, {high}]"
            )


def _validate_logits_labels_values(logits: torch.Tensor) -> None:
    if logits.shape[0] > 0:
        # -inf is allowed (log of a probability 0); NaN, +inf and all -inf rows have no softmax.
        if bool(torch.isfinite(logits.amax(dim=1)).all()):  # one fast pass: amax propagates NaN and +inf,
            return  # and a row of all -inf has the maximum -inf
        if bool(torch.isnan(logits).any()) or bool(torch.isposinf(logits).any()):
            raise InputError("Expected argument `logits` to contain no NaN or +inf values, but found some")
        if bool(torch.isneginf(logits).all(dim=1).any()):
            raise InputError("Expected every row of `logits` to have a finite entry, but found a row of all -inf")


def _validate_logits_labels(logits: Any, labels: Any, *, check_values: bool = True) -> None:
    _validate_tensor(logits, "logits")
    if logits.ndim != 2:
        raise InputError(f"Expected argument `logits` to have shape [N, K], but got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise InputError(f"Expected argument `logits` to be a floating point tensor, but got dtype {logits.dtype}")
    num_classes = int(logits.shape[1])
    if num_classes < 2:
        raise InputError(
            f"Expected argument `logits` to have at least 2 classes (shape [N, K], K >= 2), but got K = {num_classes}"
        )
    if check_values:
        _validate_logits_labels_values(logits)
    _validate_labels(labels, int(logits.shape[0]), num_classes, logits.device)


def _validate_confidences(confidences: Any, correct: Any) -> None:
    _validate_tensor(confidences, "confidences")
    _validate_tensor(correct, "correct")
    if confidences.ndim != 1 or not confidences.is_floating_point():
        raise InputError(
            "Expected argument `confidences` to be a 1-D floating point tensor, but got "
            f"shape {tuple(confidences.shape)} and dtype {confidences.dtype}"
        )
    if correct.ndim != 1 or correct.shape[0] != confidences.shape[0]:
        raise InputError(
            f"Expected argument `correct` to have shape [{confidences.shape[0]}] like `confidences`, "
            f"but got shape {tuple(correct.shape)}"
        )
    if correct.device != confidences.device:
        raise InputError(
            f"Expected `confidences` and `correct` on the same device, but got {confidences.device} "
            f"and {correct.device}"
        )
    if confidences.shape[0] > 0:
        low, high = float(confidences.min()), float(confidences.max())
        if bool(torch.isnan(confidences).any()) or low < 0.0 or high > 1.0:
            raise InputError(
                f"Expected argument `confidences` to lie in [0, 1], but got values in [{low}, {high}]"
                + (" and NaN" if bool(torch.isnan(confidences).any()) else "")
            )
        if not bool(((correct == 0) | (correct == 1)).all()):
            raise InputError("Expected argument `correct` to hold only 0/1 (or False/True) values")


# --------------------------------------------------------------------------------------------------------
# binning
# --------------------------------------------------------------------------------------------------------


def _bin_edges(n_bins: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``[0, 1/M, ..., (M-1)/M, 1]`` in float64, each edge exactly ``m / M`` (one rounding)."""
    return torch.arange(n_bins + 1, dtype=_F64, device=device) / n_bins


def _calibration_errors(count: torch.Tensor, sum_confidence: torch.Tensor, sum_correct: torch.Tensor):
    """ECE in the three norms from per-bin sums (float64 tensors ``[..., M]``, e.g. ``[M]`` or one row per
    bootstrap replicate); returns tensors of the leading shape (0-d for ``[M]``)."""
    nonempty = count > 0
    safe = torch.where(nonempty, count, torch.ones_like(count))
    gap = torch.where(nonempty, (sum_correct - sum_confidence) / safe, torch.zeros_like(count)).abs()
    weight = count / count.sum(-1, keepdim=True)
    return {
        "l1": (weight * gap).sum(-1),
        "l2": (weight * gap * gap).sum(-1).sqrt(),
        "max": gap.max(-1).values,  # empty bins contribute 0, so this is the max over the non-empty bins
    }


@dataclass(frozen=True, eq=False)
class ConfidenceBins:
    """Per-bin sums of a confidence histogram: the result of :func:`confidence_bins`.

    ``count``, ``sum_confidence`` and ``sum_correct`` are float64 tensors of shape ``[M]`` (bin ``m - 1``
    holds :math:`B_m`), on the device of the confidences.
    """

    count: torch.Tensor
    sum_confidence: torch.Tensor
    sum_correct: torch.Tensor

    @property
    def n_bins(self) -> int:
        return int(self.count.shape[0])

    @property
    def edges(self) -> torch.Tensor:
        """Bin edges ``[M + 1]``, exactly ``m / M`` in float64."""
        return _bin_edges(self.n_bins, self.count.device)

    @property
    def mean_confidence(self) -> torch.Tensor:
        """:math:`\\operatorname{conf}(B_m)`; NaN for an empty bin."""
        return self.sum_confidence / self.count

    @property
    def accuracy(self) -> torch.Tensor:
        """:math:`\\operatorname{acc}(B_m)`; NaN for an empty bin."""
        return self.sum_correct / self.count

    def calibration_error(self, norm: Norm = "l1") -> float:
        """ECE (``"l1"``), RMS calibration error (``"l2"``) or MCE (``"max"``) of these bins."""
        _validate_norm(norm)
        if float(self.count.sum()) == 0:
            raise InputError("Expected at least one example in the bins, but got 0")
        return float(_calibration_errors(self.count, self.sum_confidence, self.sum_correct)[norm])


def _confidence_bins(confidences: torch.Tensor, correct: torch.Tensor, n_bins: int) -> ConfidenceBins:
    """Unvalidated core of :func:`confidence_bins`: one ``bucketize``, a ``bincount`` and two ``index_add_``."""
    conf = confidences.to(_F64)
    hits = correct.to(_F64)
    edges = _bin_edges(n_bins, conf.device)
    # right=False: index m-1 for edges[m-1] < conf <= edges[m], i.e. right-closed; conf <= 1/M (and 0) -> 0,
    # conf > (M-1)/M (and 1.0) -> M-1.
    index = torch.bucketize(conf, edges[1:-1], right=False, out_int32=True)
    zeros = torch.zeros(n_bins, dtype=_F64, device=conf.device)
    # index_add_ rather than bincount(weights=...): it has a deterministic CUDA implementation; counts are
    # integers, exact either way.
    return ConfidenceBins(
        count=torch.bincount(index, minlength=n_bins).to(_F64),
        sum_confidence=zeros.index_add(0, index, conf),
        sum_correct=zeros.index_add(0, index, hits),
    )


def confidence_bins(confidences: torch.Tensor, correct: torch.Tensor, *, n_bins: int = 15) -> ConfidenceBins:
    r"""Sort confidences into M equal-width right-closed bins and sum them (Guo et al. 2017, §3).

    .. math::

        B_m = \{\, i : c_i \in (\tfrac{m-1}{M}, \tfrac{m}{M}] \,\} \quad (c_i = 0 \text{ joins } B_1),
        \qquad \text{count}_m = |B_m|, \quad
        \text{sum\_confidence}_m = \sum_{i \in B_m} c_i, \quad
        \text{sum\_correct}_m = \sum_{i \in B_m} a_i.

    Args:
        confidences: ``[N]`` floating tensor in [0, 1] (cast to float64; pass float64 to place a value
            exactly on an edge ``m / M``).
        correct: ``[N]`` bool or 0/1 tensor, whether each prediction was right.
        n_bins: M.

    Returns:
        :class:`ConfidenceBins` with float64 tensors ``[M]`` on the confidences' device.

    Example:
        >>> b = confidence_bins(torch.tensor([0.0, 0.2, 1 / 3, 0.9, 1.0], dtype=torch.float64),
        ...                     torch.tensor([False, True, True, True, True]), n_bins=3)
        >>> b.count.tolist(), b.accuracy.tolist()
        ([3.0, 0.0, 2.0], [0.6666666666666666, nan, 1.0])
        >>> round(b.calibration_error("l1"), 6)
        0.313333
    """
    n_bins = _validate_n_bins(n_bins)
    _validate_confidences(confidences, correct)
    return _confidence_bins(confidences, correct, n_bins)


# --------------------------------------------------------------------------------------------------------
# mergeable sufficient statistics
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CalibrationStats:
    """Mergeable sufficient statistics of calibration (torchmetrics-style state).

    Per bin (float64 ``[M]``): ``count`` = :math:`|B_m|`, ``sum_confidence`` = :math:`\\sum_{B_m} \\hat p_i`,
    ``sum_correct`` = :math:`\\sum_{B_m} [\\hat y_i = y_i]`. Totals (0-d float64 tensors, on the same
    device, so accumulating never synchronises with a GPU): ``n``, ``n_correct``, ``sum_nll``
    (:math:`\\sum_i -\\log p_{i y_i}`) and ``sum_brier`` (:math:`\\sum_i \\sum_k (p_{ik} - [y_i = k])^2`).

    ``a + b`` (or :meth:`merge`, or ``sum([...])``) adds two sets of statistics over disjoint examples. Across
    ``torch.distributed`` ranks::

        v = stats.to_tensor()
        torch.distributed.all_reduce(v)          # SUM
        stats = CalibrationStats.from_tensor(v, num_classes=stats.num_classes)
    """

    count: torch.Tensor
    sum_confidence: torch.Tensor
    sum_correct: torch.Tensor
    n: torch.Tensor
    n_correct: torch.Tensor
    sum_nll: torch.Tensor
    sum_brier: torch.Tensor
    num_classes: int

    @property
    def n_bins(self) -> int:
        return int(self.count.shape[0])

    @property
    def bins(self) -> ConfidenceBins:
        return ConfidenceBins(self.count, self.sum_confidence, self.sum_correct)

    @classmethod
    def empty(cls, *, n_bins: int = 15, num_classes: int, device: torch.device | str | None = None) -> CalibrationStats:
        """Zero statistics (the identity of ``+``), e.g. for a rank whose shard is empty."""
        n_bins = _validate_n_bins(n_bins)
        zeros = torch.zeros(n_bins, dtype=_F64, device=device)
        zero = torch.zeros((), dtype=_F64, device=device)
        return cls(zeros, zeros.clone(), zeros.clone(), zero, zero.clone(), zero.clone(), zero.clone(), num_classes)

    def merge(self, other: CalibrationStats) -> CalibrationStats:
        """Statistics of the union of the two (disjoint) sets of examples."""
        if not isinstance(other, CalibrationStats):
            raise TypeError(f"Expected CalibrationStats, but got {type(other).__name__}")
        if other.n_bins != self.n_bins or other.num_classes != self.num_classes:
            raise InputError(
                "Expected statistics with the same `n_bins` and `num_classes` to merge, but got "
                f"n_bins {self.n_bins} and {other.n_bins}, num_classes {self.num_classes} and {other.num_classes}"
            )
        return CalibrationStats(
            count=self.count + other.count,
            sum_confidence=self.sum_confidence + other.sum_confidence,
            sum_correct=self.sum_correct + other.sum_correct,
            n=self.n + other.n,
            n_correct=self.n_correct + other.n_correct,
            sum_nll=self.sum_nll + other.sum_nll,
            sum_brier=self.sum_brier + other.sum_brier,
            num_classes=self.num_classes,
        )

    def __add__(self, other: CalibrationStats) -> CalibrationStats:
        if not isinstance(other, CalibrationStats):
            return NotImplemented
        return self.merge(other)

    def __radd__(self, other: Any) -> CalibrationStats:
        if isinstance(other, int) and other == 0:  # so that sum(list_of_stats) works
            return self
        return NotImplemented

    def to_tensor(self) -> torch.Tensor:
        """Flat float64 vector ``[3M + 4]``: count, sum_confidence, sum_correct, n, n_correct, sum_nll, sum_brier."""
        totals = torch.stack([self.n, self.n_correct, self.sum_nll, self.sum_brier]).to(_F64)
        return torch.cat([self.count, self.sum_confidence, self.sum_correct, totals])

    @classmethod
    def from_tensor(cls, vector: torch.Tensor, *, num_classes: int) -> CalibrationStats:
        """Inverse of :meth:`to_tensor` (M is read from the length)."""
        _validate_tensor(vector, "vector")
        length = int(vector.shape[0]) if vector.ndim == 1 else -1
        if vector.ndim != 1 or length < 7 or (length - 4) % 3 != 0:
            raise InputError(f"Expected a 1-D vector of length 3 * n_bins + 4, but got shape {tuple(vector.shape)}")
        m = (length - 4) // 3
        v = vector.to(_F64)
        return cls(
            count=v[:m].clone(),
            sum_confidence=v[m : 2 * m].clone(),
            sum_correct=v[2 * m : 3 * m].clone(),
            n=v[3 * m].clone(),
            n_correct=v[3 * m + 1].clone(),
            sum_nll=v[3 * m + 2].clone(),
            sum_brier=v[3 * m + 3].clone(),
            num_classes=int(num_classes),
        )


def _nll(z: torch.Tensor, label: torch.Tensor, zmax: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """−log p_y = max − z_y + log S with S = Σ_k exp(z_k − max) = 1 / confidence (log-sum-exp in float64;
    finite whenever z_y is). ``label`` ``[n, 1]``."""
    return zmax - z.gather(1, label)[:, 0].to(_F64) - confidence.log()


def _brier_in_place(p: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Σ_k (p_k − [k = y])² per row, overwriting ``p`` (float64 ``[n, K]``) — no [n, K] one-hot."""
    p.scatter_add_(1, label, torch.full_like(label, -1.0, dtype=_F64))
    return p.square_().sum(-1)


def _calibration_stats(logits: torch.Tensor, labels: torch.Tensor, n_bins: int) -> CalibrationStats:
    """Unvalidated core of :func:`calibration_stats`: the lean top-label pass, then one float64 softmax per
    chunk of rows for NLL and Brier."""
    labels = labels.to(torch.int64)
    k = int(logits.shape[1])
    confidences, corrects, sum_nll, sum_brier = [], [], 0.0, 0.0
    for a, b in _row_chunks(int(logits.shape[0]), k):
        z, label = logits[a:b], labels[a:b, None]
        zmax, prediction, confidence = confidence_and_prediction(z)
        sum_nll = sum_nll + _nll(z, label, zmax, confidence).sum()
        sum_brier = sum_brier + _brier_in_place(torch.softmax(z, dim=1, dtype=_F64), label).sum()
        confidences.append(confidence)
        corrects.append(prediction == labels[a:b])
    correct = torch.cat(corrects)
    bins = _confidence_bins(torch.cat(confidences), correct, n_bins)
    device = logits.device
    return CalibrationStats(
        count=bins.count,
        sum_confidence=bins.sum_confidence,
        sum_correct=bins.sum_correct,
        n=torch.tensor(float(labels.shape[0]), dtype=_F64, device=device),
        n_correct=correct.sum().to(_F64),
        sum_nll=torch.as_tensor(sum_nll, dtype=_F64, device=device),
        sum_brier=torch.as_tensor(sum_brier, dtype=_F64, device=device),
        num_classes=k,
    )


def calibration_stats(logits: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15) -> CalibrationStats:
    r"""Sufficient statistics of calibration for one batch, in one pass (Guo et al. 2017, §2–3).

    .. math::

        p_i = \operatorname{softmax}(z_i), \quad \hat p_i = \max_k p_{ik}, \quad
        \hat y_i = \arg\max_k p_{ik}, \quad
        \mathrm{NLL}_i = -\log p_{i y_i}, \quad
        \mathrm{Brier}_i = \sum_{k=1}^{K} (p_{ik} - [y_i = k])^2 \ \text{(Brier 1950, multi-class)}.

    Args:
        logits: ``[N, K]`` floating tensor, K ≥ 2 (log-probabilities work too: softmax(log p) = p).
            ``-inf`` entries are allowed. ``N = 0`` gives empty statistics.
        labels: ``[N]`` integer tensor with values in ``[0, K)``, on the same device.
        n_bins: M, the number of equal-width confidence bins.

    Returns:
        :class:`CalibrationStats` (float64, on the logits' device); ``sum(...)`` of per-batch statistics
        equals the statistics of the concatenated batches.

    Example:
        >>> s = calibration_stats(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), n_bins=15)
        >>> s.count.nonzero().flatten().tolist(), s.n_correct.item()
        ([10, 13], 1.0)
    """
    n_bins = _validate_n_bins(n_bins)
    _validate_logits_labels(logits, labels)
    return _calibration_stats(logits, labels, n_bins)


# --------------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------------


def calibration_definition(n_bins: int, norm: Norm = "l1") -> dict[str, Any]:
    """A JSON-ready description of exactly how the ECE was computed (carried in every result)."""
    return {
        "binning": "equal-width",
        "n_bins": int(n_bins),
        "edges": "right-closed ((m-1)/M, m/M], conf=0 in bin 1; edges m/M in float64",
        "norm": norm,
        "calibration": "top-label",
        "confidence": "max softmax probability, float64",
        "debiased": False,
        "reference": "Guo et al. 2017, On Calibration of Modern Neural Networks, Sections 2-3",
    }


@dataclass(frozen=True)
class ReliabilityBins:
    """The reliability diagram's numbers, one entry per bin (``M`` entries each).

    ``lower``/``upper``: the bin's edges ``(m-1)/M`` and ``m/M``; ``count``: :math:`|B_m|`;
    ``mean_confidence``: :math:`\\operatorname{conf}(B_m)`; ``accuracy``: :math:`\\operatorname{acc}(B_m)`;
    ``gap``: ``mean_confidence - accuracy`` (positive = over-confident in that bin).
    An empty bin has ``count`` 0 and ``mean_confidence``, ``accuracy`` and ``gap`` NaN (``null`` in JSON).
    """

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    count: tuple[int, ...]
    mean_confidence: tuple[float, ...]
    accuracy: tuple[float, ...]
    gap: tuple[float, ...]


@dataclass(frozen=True)
class CalibrationReport:
    """Calibration of a classifier on ``n`` examples (Guo et al. 2017). All rates are in [0, 1].

    ``accuracy``: top-1 accuracy; ``mean_confidence``: mean of the top-label confidence (over-confidence
    overall = ``mean_confidence - accuracy``); ``ece``: expected calibration error (ℓ1, top-label,
    ``n_bins`` equal-width right-closed bins); ``mce``: maximum calibration error over the non-empty bins;
    ``nll``: mean negative log-likelihood (cross-entropy, nats; ``inf`` if a true class had probability 0);
    ``brier``: mean multi-class Brier score :math:`\\sum_k (p_{ik} - [y_i = k])^2`, in [0, 2];
    ``bins``: :class:`ReliabilityBins`; ``definition``: :func:`calibration_definition`.
    """

    n: int
    num_classes: int
    n_bins: int
    accuracy: float
    mean_confidence: float
    ece: float
    mce: float
    nll: float
    brier: float
    bins: ReliabilityBins
    definition: dict[str, Any] = field(default_factory=dict)


def summarize(stats: CalibrationStats) -> CalibrationReport:
    r"""Turn sufficient statistics into a :class:`CalibrationReport` (Guo et al. 2017, §3).

    .. math::

        \mathrm{ECE} = \sum_{m=1}^{M} \frac{|B_m|}{n}\,\bigl|\operatorname{acc}(B_m) - \operatorname{conf}(B_m)\bigr|,
        \qquad
        \mathrm{MCE} = \max_{m:\,|B_m|>0} \bigl|\operatorname{acc}(B_m) - \operatorname{conf}(B_m)\bigr|.

    Raises:
        InputError: if the statistics hold no example.
    """
    if not isinstance(stats, CalibrationStats):
        raise InputError(f"Expected argument `stats` to be CalibrationStats, but got {type(stats).__name__}")
    n = int(round(float(stats.n)))
    if n == 0:
        raise InputError("Expected at least one example to summarize, but got n = 0")
    bins = stats.bins
    errors = _calibration_errors(bins.count, bins.sum_confidence, bins.sum_correct)
    # one transfer to the host for everything that follows
    edges = _bin_edges(stats.n_bins).tolist()
    count = bins.count.cpu()
    mean_confidence = bins.mean_confidence.cpu()
    accuracy = bins.accuracy.cpu()
    gap = mean_confidence - accuracy
    total = (
        torch.stack([stats.n_correct, bins.sum_confidence.sum(), stats.sum_nll, stats.sum_brier, *errors.values()])
        .cpu()
        .tolist()
    )
    n_correct, sum_confidence, sum_nll, sum_brier, ece, _, mce = total
    return CalibrationReport(
        n=n,
        num_classes=stats.num_classes,
        n_bins=stats.n_bins,
        accuracy=n_correct / n,
        mean_confidence=sum_confidence / n,
        ece=ece,
        mce=mce,
        nll=sum_nll / n,
        brier=sum_brier / n,
        bins=ReliabilityBins(
            lower=tuple(edges[:-1]),
            upper=tuple(edges[1:]),
            count=tuple(int(round(c)) for c in count.tolist()),
            mean_confidence=tuple(mean_confidence.tolist()),
            accuracy=tuple(accuracy.tolist()),
            gap=tuple(gap.tolist()),
        ),
        definition=calibration_definition(stats.n_bins, "l1"),
    )


def calibration_report(logits: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15) -> CalibrationReport:
    r"""ECE, MCE, accuracy, NLL, Brier and reliability bins of ``logits`` against ``labels``.

    ``summarize(calibration_stats(logits, labels, n_bins=n_bins))``; see :func:`calibration_stats` for the
    arguments and :func:`summarize` for the formulas (Guo et al. 2017, §2–3).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> logits = 2 * torch.randn(10_000, 10, generator=g)
        >>> labels = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)  # calibrated by construction
        >>> round(calibration_report(logits, labels).ece, 4)
        0.0154
        >>> r = calibration_report(3 * logits, labels)  # sharpened: over-confident
        >>> round(r.accuracy, 4), round(r.mean_confidence, 4), round(r.ece, 4)
        (0.5334, 0.8194, 0.286)
    """
    return summarize(calibration_stats(logits, labels, n_bins=n_bins))


def expected_calibration_error(
    logits: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15, norm: Norm = "l1"
) -> float:
    r"""Top-label expected calibration error with M equal-width right-closed bins (Guo et al. 2017, §3).

    .. math::

        \mathrm{ECE}_{\ell_1} = \sum_{m} \frac{|B_m|}{n}\,|\operatorname{acc}(B_m) - \operatorname{conf}(B_m)|,
        \quad
        \mathrm{ECE}_{\ell_2} = \sqrt{\sum_{m} \frac{|B_m|}{n}\,(\operatorname{acc}(B_m) - \operatorname{conf}(B_m))^2},
        \quad
        \mathrm{ECE}_{\max} = \mathrm{MCE} = \max_{m:\,|B_m|>0} |\operatorname{acc}(B_m) - \operatorname{conf}(B_m)|,

    with :math:`B_m = \{i : \hat p_i \in ((m-1)/M, m/M]\}` (:math:`\hat p_i = 0` joins :math:`B_1`). The ℓ2
    form is not debiased (Kumar et al. 2019). Unlike ``torchmetrics`` (left-closed bins, 1.0 in a bin of its
    own), a confidence exactly on an edge ``m/M`` belongs to the bin below it, as in Guo's code.

    Args:
        logits: ``[N, K]`` floating tensor, K ≥ 2, N ≥ 1.
        labels: ``[N]`` integer tensor in ``[0, K)``.
        n_bins: M (Guo and Müller use 15).
        norm: ``"l1"`` (ECE), ``"l2"`` (RMS calibration error) or ``"max"`` (MCE).

    Returns:
        The calibration error as a Python float in [0, 1].

    Example:
        >>> expected_calibration_error(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        0.4251307503260613
    """
    n_bins = _validate_n_bins(n_bins)
    _validate_norm(norm)
    _validate_logits_labels(logits, labels, check_values=False)  # values: checked on the row maxima below
    if logits.shape[0] == 0:
        raise InputError("Expected at least one example, but got N = 0")
    confidence, prediction = _confidence_and_prediction(logits)
    return _confidence_bins(confidence, prediction == labels.to(torch.int64), n_bins).calibration_error(norm)


def _confidence_and_prediction(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-label confidence (float64, = 1 / Σ_k exp(z_k − max_k z)) and prediction (first argmax), reading the
    logits once (:mod:`calibscope.diagnostics._top_label`).

    Validates the values on the way: a NaN or +inf anywhere in a row, or a row of all -inf, makes that row's
    maximum non-finite, so one check on the ``[N]`` maxima replaces three passes over ``[N, K]``.
    """
    zmax, prediction, confidence = confidence_and_prediction(logits)
    if not bool(torch.isfinite(zmax).all()):
        _validate_logits_labels_values(logits)  # raises the precise message
    return confidence, prediction


# --------------------------------------------------------------------------------------------------------
# the family of calibration errors
# --------------------------------------------------------------------------------------------------------

SMOOTH_GRID = 4096  # intervals of the grid on [0, 1] that smooth ECE splats residuals onto
MIN_BIN_COUNT = 20  # fewer examples than this in a non-empty bin: warn that its accuracy is noise
_REFERENCES = {
    "guo": "Guo et al. 2017, On Calibration of Modern Neural Networks, Sections 2-3",
    "kumar": "Kumar, Liang & Ma 2019, Verified Uncertainty Calibration, Section 5 (debiased estimator)",
    "ace": "Nguyen & O'Connor 2015; Mukhoti et al. 2020 (AdaECE): top-label ECE with equal-mass bins",
    "nixon": "Nixon et al. 2019, Measuring Calibration in Deep Learning, Section 4 (static calibration error)",
    "smooth": "Blasiok & Nakkiran 2023, Smooth ECE: Principled Reliability Diagrams via Kernel Smoothing",
    "brier": "Brier 1950, multi-class form",
}


def _validate_bootstrap(bootstrap: Any, confidence_level: Any, seed: Any) -> tuple[int, float, int]:
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, numbers.Integral) or (
        bootstrap != 0 and bootstrap < 200
    ):
        raise InputError(
            "Expected argument `bootstrap` to be 0 (off) or an integer of at least 200 replicates, "
            f"but got {bootstrap!r}"
        )
    if isinstance(confidence_level, bool) or not isinstance(confidence_level, numbers.Real) or not (
        0 < confidence_level < 1
    ):
        raise InputError(f"Expected argument `confidence_level` to be in (0, 1), but got {confidence_level!r}")
    check_upper(bootstrap, MAX_BOOTSTRAP, "bootstrap")
    return int(bootstrap), float(confidence_level), check_seed(seed)


def _validate_grid_size(grid: Any) -> int:
    if isinstance(grid, bool) or not isinstance(grid, numbers.Integral) or grid < 16:
        raise InputError(f"Expected argument `smooth_grid` to be an integer of at least 16, but got {grid!r}")
    return int(grid)


@dataclass(frozen=True, eq=False)
class CalibrationSums:
    r"""Mergeable sufficient statistics of every binned or smoothed calibration error (all but ACE).

    ``top``: :class:`CalibrationStats` (top-label equal-width bins, n, NLL and Brier sums);
    ``classwise_count`` / ``classwise_sum_probability`` / ``classwise_sum_label``: float64 ``[K, M]``, for
    class k and bin m the number of examples with :math:`p_{ik} \in B_m`, the sum of those :math:`p_{ik}`
    and how many of them have :math:`y_i = k` (every example appears once per class);
    ``smooth_residual``: float64 ``[G + 1]``, the residuals :math:`r_i = \hat p_i - [\hat y_i = y_i]`
    splatted linearly onto the grid :math:`t_j = j / G` (weights ``1 - frac`` and ``frac`` of the two
    neighbouring grid points). ``a + b`` adds statistics of disjoint examples, as for :class:`CalibrationStats`.
    """

    top: CalibrationStats
    classwise_count: torch.Tensor
    classwise_sum_probability: torch.Tensor
    classwise_sum_label: torch.Tensor
    smooth_residual: torch.Tensor

    @property
    def n(self) -> int:
        return int(round(float(self.top.n)))

    @property
    def smooth_grid(self) -> int:
        return int(self.smooth_residual.shape[0]) - 1

    def merge(self, other: CalibrationSums) -> CalibrationSums:
        if not isinstance(other, CalibrationSums):
            raise TypeError(f"Expected CalibrationSums, but got {type(other).__name__}")
        if other.smooth_grid != self.smooth_grid:
            raise InputError(f"Expected the same `smooth_grid` to merge, but got {self.smooth_grid} and "
                             f"{other.smooth_grid}")
        return CalibrationSums(
            top=self.top.merge(other.top),
            classwise_count=self.classwise_count + other.classwise_count,
            classwise_sum_probability=self.classwise_sum_probability + other.classwise_sum_probability,
            classwise_sum_label=self.classwise_sum_label + other.classwise_sum_label,
            smooth_residual=self.smooth_residual + other.smooth_residual,
        )

    def __add__(self, other: CalibrationSums) -> CalibrationSums:
        if not isinstance(other, CalibrationSums):
            return NotImplemented
        return self.merge(other)

    def __radd__(self, other: Any) -> CalibrationSums:
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    def to_tensor(self) -> torch.Tensor:
        """Flat float64 vector ``[3M + 4 + 3KM + G + 1]`` (top, classwise count / probability / label, smooth
        grid), e.g. for ``torch.distributed.all_reduce``; :meth:`from_tensor` inverts it."""
        return torch.cat([self.top.to_tensor(), self.classwise_count.flatten(),
                          self.classwise_sum_probability.flatten(), self.classwise_sum_label.flatten(),
                          self.smooth_residual.to(_F64)])

    @classmethod
    def from_tensor(cls, vector: torch.Tensor, *, num_classes: int, n_bins: int, smooth_grid: int) -> CalibrationSums:
        """Inverse of :meth:`to_tensor`."""
        _validate_tensor(vector, "vector")
        top, km = 3 * n_bins + 4, num_classes * n_bins
        if vector.ndim != 1 or vector.shape[0] != top + 3 * km + smooth_grid + 1:
            raise InputError(f"Expected a 1-D vector of length {top + 3 * km + smooth_grid + 1} (n_bins {n_bins}, "
                             f"num_classes {num_classes}, smooth_grid {smooth_grid}), but got shape "
                             f"{tuple(vector.shape)}")
        parts = vector.to(_F64).split([top, km, km, km, smooth_grid + 1])
        return cls(
            top=CalibrationStats.from_tensor(parts[0], num_classes=num_classes),
            classwise_count=parts[1].reshape(num_classes, n_bins).clone(),
            classwise_sum_probability=parts[2].reshape(num_classes, n_bins).clone(),
            classwise_sum_label=parts[3].reshape(num_classes, n_bins).clone(),
            smooth_residual=parts[4].clone(),
        )


def _splat(position: torch.Tensor, values: torch.Tensor, grid: int) -> torch.Tensor:
    """Linear splatting of ``values`` at ``position`` ∈ [0, 1] (both ``[..., n]``) onto the ``grid + 1``
    points ``j / grid``: ``[..., grid + 1]``, one grid per leading index."""
    lead = position.shape[:-1]
    x = position.to(_F64) * grid
    j = x.floor().clamp_(0, grid - 1)
    frac = x - j
    offset = (grid + 1) * torch.arange(math.prod(lead), device=position.device).view(*lead, 1)
    j = (j.to(torch.int64) + offset).flatten()
    out = torch.zeros(math.prod(lead) * (grid + 1), dtype=_F64, device=position.device)
    out.index_add_(0, j, ((1 - frac) * values).flatten())
    out.index_add_(0, j + 1, (frac * values).flatten())
    return out.view(*lead, grid + 1)


def _per_example(z: torch.Tensor, y: torch.Tensor, n_bins: int, grid: int, *,
                 keep_probabilities: bool = False) -> dict[str, torch.Tensor]:
    """What each example contributes to every statistic (``z`` ``[n, K]`` logits, ``y`` ``[n]`` labels): the
    one place where probabilities, bins and residuals are defined.

    The top label comes from the lean pass (:func:`confidence_and_prediction`: first argmax, confidence
    1 / S with S = Σ_k exp(z_k − max)); p is one float64 softmax; NLL = max − z_y + log S (log-sum-exp, finite
    whenever z_y is); Brier = Σ_k (p_k − [k = y])², subtracting 1 at y in place (no [n, K] one-hot).

    ``top`` ``[n]``: the top-label bin (right-closed, as :func:`confidence_bins`); ``cls`` ``[n, K]``: the bin
    of p_ik plus k·M; ``cls_y`` ``[n]``: the entry of ``cls`` at the label; ``splat_j`` / ``splat_lo`` /
    ``splat_hi``: the residual conf − correct split linearly between the grid points j/G and (j+1)/G;
    ``p`` ``[n, K]`` with ``keep_probabilities`` (the bootstrap weighs them per replicate), else
    ``classwise_sum_probability`` ``[K·M]``, p summed in its bins (p itself is overwritten by the Brier score).
    """
    zmax, prediction, confidence = confidence_and_prediction(z)
    p = torch.softmax(z, dim=-1, dtype=_F64)
    correct = prediction == y
    hit = correct.to(_F64)
    edges = _bin_edges(n_bins, z.device)[1:-1]
    offsets = n_bins * torch.arange(p.shape[1], dtype=torch.int32, device=z.device)
    cls = torch.bucketize(p, edges, right=False, out_int32=True).add_(offsets)  # int32: half the traffic
    if keep_probabilities:  # the bootstrap weighs p per replicate; else p's bin sums, before p is overwritten
        kept = {"p": p}
    else:
        kept = {"classwise_sum_probability": torch.zeros(p.shape[1] * n_bins, dtype=_F64, device=z.device)
                .index_add_(0, cls.flatten(), p.flatten())}
    label = y[:, None]
    nll = _nll(z, label, zmax, confidence)
    x = confidence * grid
    j = x.floor().clamp_(0, grid - 1)
    frac = x - j
    residual = confidence - hit
    return {
        "confidence": confidence,
        "correct": correct,
        "hit": hit,
        "nll": nll,
        "brier": _brier_in_place(p.clone() if keep_probabilities else p, label),
        "top": torch.bucketize(confidence, edges, right=False, out_int32=True),
        "cls": cls,
        "cls_y": cls.gather(1, label)[:, 0],
        "splat_j": j.to(torch.int64),
        "splat_lo": (1 - frac) * residual,
        "splat_hi": frac * residual,
        **kept,
    }


def _chunk_sums(e: dict[str, torch.Tensor], n_bins: int, grid: int, num_classes: int) -> CalibrationSums:
    """The statistics of one chunk: :func:`_per_example` summed (``bincount`` for counts — integers, exact —
    and ``index_add`` for float sums, deterministic on CUDA)."""
    device, k = e["confidence"].device, num_classes
    zeros = torch.zeros(n_bins, dtype=_F64, device=device)
    smooth = torch.zeros(grid + 1, dtype=_F64, device=device)
    smooth.index_add_(0, e["splat_j"], e["splat_lo"]).index_add_(0, e["splat_j"] + 1, e["splat_hi"])
    return CalibrationSums(
        top=CalibrationStats(
            count=torch.bincount(e["top"], minlength=n_bins).to(_F64),
            sum_confidence=zeros.index_add(0, e["top"], e["confidence"]),
            sum_correct=zeros.index_add(0, e["top"], e["hit"]),
            n=torch.tensor(float(e["hit"].shape[0]), dtype=_F64, device=device),
            n_correct=e["hit"].sum(),
            sum_nll=e["nll"].sum(),
            sum_brier=e["brier"].sum(),
            num_classes=k,
        ),
        classwise_count=torch.bincount(e["cls"].flatten(), minlength=k * n_bins).to(_F64).view(k, n_bins),
        classwise_sum_probability=e["classwise_sum_probability"].view(k, n_bins),
        classwise_sum_label=torch.bincount(e["cls_y"], minlength=k * n_bins).to(_F64).view(k, n_bins),
        smooth_residual=smooth,
    )


_SUMS_CHUNK_ELEMENTS = 1 << 20  # a few [rows, K] float64 temporaries of 8 MiB: they stay in L3 (2.5× faster
# than 2**22 on CPU, 500k × 100) and bound the working memory


def _row_chunks(n: int, k: int):
    rows = max(1, _SUMS_CHUNK_ELEMENTS // max(k, 1))
    return [(a, min(a + rows, n)) for a in range(0, max(n, 1), rows)]  # one (possibly empty) chunk at least


def _calibration_sums_with_top(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int, grid: int
) -> tuple[CalibrationSums, torch.Tensor, torch.Tensor]:
    """Unvalidated core: chunk by chunk of rows, merged (the statistics are sums), plus all top-label
    confidences and correctness (for the equal-mass bins)."""
    labels = labels.to(torch.int64)
    k = int(logits.shape[1])
    sums, confidences, correct = None, [], []
    for a, b in _row_chunks(int(logits.shape[0]), k):
        e = _per_example(logits[a:b], labels[a:b], n_bins, grid)
        part = _chunk_sums(e, n_bins, grid, k)
        sums = part if sums is None else sums + part
        confidences.append(e["confidence"])
        correct.append(e["correct"])
    assert sums is not None
    return sums, torch.cat(confidences), torch.cat(correct)


def _calibration_sums(logits: torch.Tensor, labels: torch.Tensor, n_bins: int, grid: int) -> CalibrationSums:
    """Unvalidated core of :func:`calibration_sums`."""
    return _calibration_sums_with_top(logits, labels, n_bins, grid)[0]


def calibration_sums(
    logits: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15, smooth_grid: int = SMOOTH_GRID
) -> CalibrationSums:
    """Mergeable statistics of one batch for ECE/ℓ2/MCE, debiased ℓ2, classwise ECE, smooth ECE, NLL, Brier.

    Args as for :func:`calibration_stats`; ``smooth_grid``: G, the intervals of the smooth-ECE grid.
    ``sum(...)`` over batches equals the statistics of the concatenated batches.
    """
    n_bins = _validate_n_bins(n_bins)
    grid = _validate_grid_size(smooth_grid)
    _validate_logits_labels(logits, labels)
    return _calibration_sums(logits, labels, n_bins, grid)


# ---- formulas on the statistics (batched: leading dimensions are independent sets of examples) -------


def _debiased_l2(count: torch.Tensor, sum_confidence: torch.Tensor, sum_correct: torch.Tensor) -> torch.Tensor:
    """Kumar et al. 2019: sqrt(max(0, Σ_m |B_m|/n [(conf − acc)² − acc(1 − acc)/(|B_m| − 1)])), bins with
    fewer than 2 examples contributing 0. Inputs ``[..., M]``."""
    usable = count >= 2
    safe = torch.where(usable, count, torch.full_like(count, 2.0))
    acc = sum_correct / safe
    gap = (sum_confidence - sum_correct) / safe
    term = torch.where(usable, gap * gap - acc * (1 - acc) / (safe - 1), torch.zeros_like(count))
    return ((count / count.sum(-1, keepdim=True)) * term).sum(-1).clamp_min(0).sqrt()


def _classwise_ece(count: torch.Tensor, sum_probability: torch.Tensor, sum_label: torch.Tensor) -> torch.Tensor:
    """Nixon et al. 2019 SCE: (1/K) Σ_k Σ_m |B_km|/n |acc_k(B_km) − conf_k(B_km)|. Inputs ``[..., K, M]``."""
    n = count[..., 0, :].sum(-1)
    return ((sum_label - sum_probability).abs().sum((-2, -1)) / n) / count.shape[-2]


_EXP_UNDERFLOW = 746.0  # math.exp(-746.0) == 0.0 in float64


def _periodic_gaussian_spectrum(sigma: torch.Tensor, grid: int) -> torch.Tensor:
    """rfft of φ_σ summed over its images x − 2m (period 2) and sampled at the 2G points j / G, for each σ
    of ``sigma`` ``[R]``: ``[R, G + 1]``.

    By Poisson summation it is G Σ_m exp(−(πσ(k + 2Gm))² / 2), k = 0..G; for σ ≥ 1/G the aliases beyond
    m = −1, 0, 1 are below e^−44 and left out.
    """
    k = torch.arange(grid + 1, dtype=_F64, device=sigma.device)
    scale = math.pi * sigma[:, None]
    # exp(−x) is exactly 0.0 in float64 for x > 746: only the columns where some row is above that are
    # computed (bit for bit the same values; for σ ≳ 0.003 this skips most of the grid and all aliases)
    smallest = float(scale.min()) if scale.numel() else 0.0
    reach = math.inf if smallest <= 0 else math.sqrt(2 * _EXP_UNDERFLOW) / smallest  # |πσ j| beyond: 0.0
    out = torch.zeros(sigma.shape[0], grid + 1, dtype=_F64, device=sigma.device)
    head = int(min(grid + 1, math.floor(reach) + 1))
    out[:, :head] = torch.exp(-0.5 * (scale * k[:head]) ** 2)
    tail = int(max(0, math.ceil(2 * grid - reach)))  # columns k ≥ tail may have a 2G − k alias above 0.0
    if tail <= grid:
        out[:, tail:] += torch.exp(-0.5 * (scale * (2 * grid - k[tail:])) ** 2)
    if 2 * grid <= reach:
        out += torch.exp(-0.5 * (scale * (2 * grid + k)) ** 2)
    return grid * out


def _smooth_ece_at(spectrum: torch.Tensor, n: torch.Tensor | float, sigma: torch.Tensor | float,
                   grid: int) -> torch.Tensor:
    """∫_0^1 |(1/n) Σ_i K_σ(t, f_i) r_i| dt with the reflected Gaussian kernel (circular convolution of the
    even extension), by the trapezoid rule on the grid; ``spectrum`` ``[R, G + 1]`` → ``[R]``."""
    sigma = torch.as_tensor(sigma, dtype=_F64, device=spectrum.device).reshape(-1)
    kernel = _periodic_gaussian_spectrum(sigma, grid)
    smoothed = torch.fft.irfft(spectrum * kernel, n=2 * grid, dim=-1)[..., : grid + 1].abs()
    integral = (smoothed.sum(-1) - 0.5 * (smoothed[..., 0] + smoothed[..., -1])) / grid
    return integral / torch.as_tensor(n, dtype=_F64, device=spectrum.device)


def _residual_spectrum(residual_grid: torch.Tensor) -> torch.Tensor:
    """rfft of the even extension of ``[..., G + 1]`` grids, end points doubled (K(t, 0) = 2 φ(t),
    K(t, 1) = 2 φ(t − 1))."""
    v = residual_grid
    extended = torch.cat([v[..., :1] * 2, v[..., 1:-1], v[..., -1:] * 2, v[..., 1:-1].flip(-1)], dim=-1)
    return torch.fft.rfft(extended, dim=-1)


def _smooth_ece(residual_grid: torch.Tensor, n: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """(smooth ECE, σ*) of each grid in ``[..., G + 1]``, σ* the fixed point smECE_σ = σ: the Illinois
    method on log σ in [log(1/G), 0], run for all grids at once (each with its own bracket)."""
    lead = residual_grid.shape[:-1]
    grid = int(residual_grid.shape[-1]) - 1
    spectrum = _residual_spectrum(residual_grid.reshape(-1, grid + 1))
    n = torch.as_tensor(n, dtype=_F64, device=residual_grid.device).reshape(-1)

    def excess(log_sigma: torch.Tensor) -> torch.Tensor:
        return _smooth_ece_at(spectrum, n, log_sigma.exp(), grid) - log_sigma.exp()

    r = spectrum.shape[0]
    a = torch.full((r,), math.log(1.0 / grid), dtype=_F64, device=spectrum.device)
    b = torch.zeros_like(a)
    fa, fb = excess(a), excess(b)
    below, above = fa <= 0, fb >= 0  # fixed point under the grid's resolution / at σ = 1
    c, fc = torch.where(below, a, torch.where(above, b, a)), torch.where(below, fa, torch.where(above, fb, fa))
    done = below | above
    side = torch.zeros(r, dtype=torch.int8, device=spectrum.device)
    for _ in range(200):
        if bool(done.all()):
            break
        denominator = torch.where(fb != fa, fb - fa, torch.ones_like(fa))
        new_c = torch.where(done, c, (a * fb - b * fa) / denominator)
        new_fc = excess(new_c)
        c, fc = torch.where(done, c, new_c), torch.where(done, fc, new_fc)
        left = (fc > 0) == (fa > 0)  # c replaces a; else c replaces b
        active = ~done
        a_new, fa_new = torch.where(active & left, c, a), torch.where(active & left, fc, fa)
        b_new, fb_new = torch.where(active & ~left, c, b), torch.where(active & ~left, fc, fb)
        # Illinois: halve the value at the end point that stayed twice in a row
        fb_new = torch.where(active & left & (side == -1), fb_new / 2, fb_new)
        fa_new = torch.where(active & ~left & (side == 1), fa_new / 2, fa_new)
        side = torch.where(active, torch.where(left, -1, 1).to(torch.int8), side)
        a, fa, b, fb = a_new, fa_new, b_new, fb_new
        done = done | (fc == 0) | ((b - a).abs() < 1e-13) | (fc.abs() <= 1e-13 * c.exp())
    sigma = c.exp()
    return (sigma + fc).reshape(lead), sigma.reshape(lead)


def _adaptive_bins(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int) -> ConfidenceBins:
    """Equal-mass bins of each row of ``[..., n]``: sort (stable), then runs of ⌈n/M⌉ / ⌊n/M⌋ consecutive
    examples, the longer runs first (numpy.array_split). Sums ``[..., M]``."""
    lead, n = confidence.shape[:-1], int(confidence.shape[-1])
    conf = confidence.to(_F64).reshape(-1, n)
    order = torch.sort(conf, dim=-1, stable=True).indices
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(n, device=conf.device).expand_as(order))
    q, rem = divmod(n, n_bins)
    big = (q + 1) * rem  # the first `rem` runs hold q + 1
    index = torch.where(rank < big, rank // (q + 1), rem + (rank - big) // max(q, 1))
    index = (index + n_bins * torch.arange(conf.shape[0], device=conf.device)[:, None]).flatten()
    zeros = torch.zeros(conf.shape[0] * n_bins, dtype=_F64, device=conf.device)
    return ConfidenceBins(
        count=zeros.index_add(0, index, torch.ones_like(conf).flatten()).view(*lead, n_bins),
        sum_confidence=zeros.index_add(0, index, conf.flatten()).view(*lead, n_bins),
        sum_correct=zeros.index_add(0, index, correct.to(_F64).reshape(-1)).view(*lead, n_bins),
    )


def _family(count, sum_confidence, sum_correct, n, n_correct, sum_nll, sum_brier, classwise_count,
            classwise_sum_probability, classwise_sum_label, smooth_residual, adaptive) -> dict[str, torch.Tensor]:
    """Every metric of the family from the statistics; arguments batched alike (``[..., M]``, ``[...]``)."""
    errors = _calibration_errors(count, sum_confidence, sum_correct)
    smooth, bandwidth = _smooth_ece(smooth_residual, n)
    return {
        "ece": errors["l1"],
        "ece_l2": errors["l2"],
        "mce": errors["max"],
        "ece_l2_debiased": _debiased_l2(count, sum_confidence, sum_correct),
        "ace": _calibration_errors(adaptive.count, adaptive.sum_confidence, adaptive.sum_correct)["l1"],
        "sce": _classwise_ece(classwise_count, classwise_sum_probability, classwise_sum_label),
        "signed_ce": (sum_confidence.sum(-1) - n_correct) / n,
        "accuracy": n_correct / n,
        "nll": sum_nll / n,
        "brier": sum_brier / n,
        "smooth_ece": smooth,
        "smooth_ece_bandwidth": bandwidth,
    }


def _family_values(sums: CalibrationSums, adaptive: ConfidenceBins) -> dict[str, float]:
    """:func:`_family` of one set of statistics, with one transfer to the host."""
    top = sums.top
    values = _family(top.count, top.sum_confidence, top.sum_correct, top.n, top.n_correct, top.sum_nll,
                     top.sum_brier, sums.classwise_count, sums.classwise_sum_probability,
                     sums.classwise_sum_label, sums.smooth_residual, adaptive)
    names = list(values)
    return dict(zip(names, torch.stack([values[k].reshape(()) for k in names]).tolist(), strict=True))


_BOOTSTRAP_BLOCK_ELEMENTS = 1 << 24  # replicates × n of the multiplicity matrix per block


def _sparse(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, check_invariants=False)


def _bootstrap_replicates(logits: torch.Tensor, labels: torch.Tensor, n_bins: int, grid: int, replicates: int,
                          seed: int) -> dict[str, torch.Tensor]:
    """Every metric on ``replicates`` resamples of the rows (with replacement): name → ``[replicates]``.

    Replicate b is ``torch.randint(0, n, (n,), generator=g)``, the b-th draw of a ``torch.Generator`` seeded
    with ``seed`` on the logits' device. Every statistic but ACE is a sum over examples, so a resample's
    statistics are ``W @ contributions`` with W the examples' multiplicities: one (sparse) matrix product for
    a block of replicates, from the same :func:`_per_example` contributions as the point estimate. ACE sorts
    each resample's confidences, as for the point estimate.
    """
    labels = labels.to(torch.int64)
    n, k = int(logits.shape[0]), int(logits.shape[1])
    device = logits.device
    generator = torch.Generator(device=device).manual_seed(seed)
    block = max(1, min(replicates, _BOOTSTRAP_BLOCK_ELEMENTS // max(n, 1)))
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, replicates, block):
        size = min(block, replicates - start)
        index = torch.stack([torch.randint(0, n, (n,), generator=generator, device=device) for _ in range(size)])
        weights = torch.zeros(size, n, dtype=_F64, device=device)
        weights.scatter_add_(1, index, torch.ones_like(index, dtype=_F64))  # multiplicities [size, n]
        top = torch.zeros(size, 3 * n_bins, dtype=_F64, device=device)
        totals = torch.zeros(size, 3, dtype=_F64, device=device)
        infinite_nll = torch.zeros(size, dtype=torch.bool, device=device)
        classwise = torch.zeros(3 * k * n_bins, size, dtype=_F64, device=device)
        smooth = torch.zeros(grid + 1, size, dtype=_F64, device=device)
        confidence, correct = [], []
        for a, b in _row_chunks(n, k):
            e = _per_example(logits[a:b], labels[a:b], n_bins, grid, keep_probabilities=True)
            w = weights[:, a:b]
            rows = b - a
            onehot_top = torch.zeros(rows, n_bins, dtype=_F64, device=device).scatter_(1, e["top"][:, None], 1.0)
            top += w @ torch.cat([onehot_top, onehot_top * e["confidence"][:, None],
                                  onehot_top * e["hit"][:, None]], dim=1)
            finite = torch.isfinite(e["nll"])
            totals += w @ torch.stack([e["hit"], torch.where(finite, e["nll"], 0.0), e["brier"]], dim=1)
            infinite_nll |= (w @ (~finite).to(_F64)) > 0
            column = torch.arange(rows, device=device)
            cls, cols = e["cls"].flatten(), column.repeat_interleave(k)
            classwise += torch.sparse.mm(
                _sparse(torch.cat([cls, cls + k * n_bins, e["cls_y"] + 2 * k * n_bins]),
                        torch.cat([cols, cols, column]),
                        torch.cat([torch.ones_like(cls, dtype=_F64), e["p"].flatten(),
                                   torch.ones_like(column, dtype=_F64)]), (3 * k * n_bins, rows)), w.T)
            smooth += torch.sparse.mm(
                _sparse(torch.cat([e["splat_j"], e["splat_j"] + 1]), column.repeat(2),
                        torch.cat([e["splat_lo"], e["splat_hi"]]), (grid + 1, rows)), w.T)
            confidence.append(e["confidence"])
            correct.append(e["correct"])
        confidence_all, correct_all = torch.cat(confidence), torch.cat(correct)
        adaptive = _adaptive_bins(confidence_all[index], correct_all[index], n_bins)
        classwise = classwise.T.reshape(size, 3, k, n_bins)
        nll = torch.where(infinite_nll, math.inf, totals[:, 1])
        values = _family(top[:, :n_bins], top[:, n_bins : 2 * n_bins], top[:, 2 * n_bins :],
                         torch.full((size,), float(n), dtype=_F64, device=device), totals[:, 0], nll,
                         totals[:, 2], classwise[:, 0], classwise[:, 1], classwise[:, 2], smooth.T, adaptive)
        for name, value in values.items():
            out.setdefault(name, []).append(value)
    return {name: torch.cat(parts) for name, parts in out.items()}


@dataclass(frozen=True)
class BootstrapInterval:
    """Percentile bootstrap interval: ``low``/``high`` are the (1 ± level)/2 quantiles (linear interpolation,
    as ``numpy.quantile``) of the metric over ``replicates`` resamples of the n examples with replacement,
    drawn by ``torch.Generator`` seeded with ``seed`` on the tensors' device."""

    low: float
    high: float
    level: float
    replicates: int
    seed: int
    method: str = "percentile bootstrap, examples resampled with replacement"


@dataclass(frozen=True)
class CalibrationMetric:
    """One number of the family, with exactly how it was computed (``definition``) and, with bootstrapping,
    its confidence interval."""

    name: str
    value: float
    definition: dict[str, Any]
    interval: BootstrapInterval | None = None


@dataclass(frozen=True, eq=False)
class CalibrationMetrics:
    """The family of calibration errors of one set of predictions.

    ``metrics``: name → :class:`CalibrationMetric`, in display order: ``ece``, ``mce``, ``signed_ce``,
    ``nll``, ``brier``, ``accuracy`` (the compact view), then ``ece_l2``, ``ece_l2_debiased``, ``ace``,
    ``sce``, ``smooth_ece``. ``report``: the :class:`CalibrationReport` (bins for the reliability diagram).
    ``warnings``: one-line warnings (bins too small to trust).
    """

    n: int
    num_classes: int
    n_bins: int
    metrics: dict[str, CalibrationMetric]
    report: CalibrationReport
    warnings: tuple[str, ...] = ()

    def __getitem__(self, name: str) -> CalibrationMetric:
        return self.metrics[name]

    def value(self, name: str) -> float:
        return self.metrics[name].value


COMPACT_METRICS = ("ece", "mce", "signed_ce", "nll", "brier", "accuracy")
ALL_METRICS = COMPACT_METRICS + ("ece_l2", "ece_l2_debiased", "ace", "sce", "smooth_ece")


def metric_definitions(n: int, n_bins: int, num_classes: int, smooth_grid: int = SMOOTH_GRID,
                       smooth_bandwidth: float | None = None) -> dict[str, dict[str, Any]]:
    """JSON-ready definitions of every metric in :data:`ALL_METRICS` (binning, edges, norm, top-label or
    classwise, debiased or not, n, formula, reference)."""
    equal_width = calibration_definition(n_bins, "l1")
    common = {"n": int(n), "confidence": equal_width["confidence"]}

    def top(norm: str, **extra: Any) -> dict[str, Any]:
        return {**calibration_definition(n_bins, norm), "n": int(n), **extra}

    return {
        "ece": top("l1", formula="sum_m |B_m|/n * |acc(B_m) - conf(B_m)|"),
        "mce": top("max", formula="max over non-empty m of |acc(B_m) - conf(B_m)|"),
        "signed_ce": {
            **top("signed", formula="sum_m |B_m|/n * (conf(B_m) - acc(B_m)) = mean confidence - accuracy",
                  interpretation="positive: over-confident; negative: under-confident"),
            "binning": "none (the bin weights cancel)",
        },
        "nll": {**common, "formula": "-(1/n) sum_i log p_i,y_i (natural log, nats)", "probability": "softmax, float64"},
        "brier": {**common, "formula": "(1/n) sum_i sum_k (p_ik - [y_i = k])^2, in [0, 2]",
                  "reference": _REFERENCES["brier"]},
        "accuracy": {**common, "formula": "(1/n) sum_i [argmax_k p_ik = y_i]"},
        "ece_l2": top("l2", formula="sqrt(sum_m |B_m|/n * (acc(B_m) - conf(B_m))^2)"),
        "ece_l2_debiased": top(
            "l2", debiased=True,
            formula="sqrt(max(0, sum_m |B_m|/n * [(conf(B_m) - acc(B_m))^2 - acc(B_m)(1 - acc(B_m))/(|B_m| - 1)])),"
                    " bins with |B_m| < 2 contribute 0",
            reference=_REFERENCES["kumar"]),
        "ace": {
            **top("l1", formula="sum_m |B_m|/n * |acc(B_m) - conf(B_m)| over equal-mass bins"),
            "binning": "equal-mass",
            "edges": "examples sorted by confidence (stable sort, ties in input order), split into M consecutive "
                     "groups of ceil(n/M) or floor(n/M) (numpy.array_split)",
            "reference": _REFERENCES["ace"],
        },
        "sce": {
            **top("l1", formula="(1/K) sum_k sum_m |B_km|/n * |acc_k(B_km) - conf_k(B_km)|, B_km = {i : p_ik in "
                                "bin m}, acc_k = fraction with y_i = k, conf_k = mean p_ik"),
            "calibration": "classwise",
            "num_classes": int(num_classes),
            "confidence": "softmax probability of each class, float64",
            "reference": _REFERENCES["nixon"],
        },
        "smooth_ece": {
            **common,
            "binning": "none (kernel smoothing)",
            "calibration": "top-label",
            "norm": "l1",
            "debiased": False,
            "kernel": "Gaussian reflected at 0 and 1",
            "bandwidth": "sigma* solving smECE_sigma = sigma (Illinois method on log sigma, floor 1/G)",
            "bandwidth_value": smooth_bandwidth,
            "formula": "smECE_sigma = integral_0^1 |(1/n) sum_i K_sigma(t, conf_i)(conf_i - [correct_i])| dt",
            "grid": f"residuals splatted linearly onto {smooth_grid + 1} points j/G, trapezoid rule",
            "reference": _REFERENCES["smooth"],
        },
    }


def _small_bin_warning(bins: ConfidenceBins, min_count: int) -> str | None:
    count = bins.count.cpu().tolist()
    small = [(m, int(c)) for m, c in enumerate(count) if 0 < c < min_count]
    if not small:
        return None
    nonempty = sum(1 for c in count if c > 0)
    n = sum(count)
    m_total = len(count)
    share = sum(c for _, c in small) / n
    fewest = min(c for _, c in small)
    listed = ", ".join(f"({m / m_total:.3f}, {(m + 1) / m_total:.3f}]: {c}" for m, c in small[:4])
    more = f" and {len(small) - 4} more" if len(small) > 4 else ""
    return (f"{len(small)} of {nonempty} non-empty bins hold fewer than {min_count} examples ({listed}{more}); "
            f"their accuracy is uncertain by up to ±{1.96 * 0.5 / math.sqrt(fewest):.2f} (95 %), so MCE is "
            f"unreliable; they hold {100 * share:.1f} % of the examples (their weight in ECE)")


def calibration_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    n_bins: int = 15,
    bootstrap: int = 0,
    confidence_level: float = 0.95,
    seed: int = 0,
    min_bin_count: int = MIN_BIN_COUNT,
    smooth_grid: int = SMOOTH_GRID,
) -> CalibrationMetrics:
    r"""The family of calibration errors, each with its exact definition and optional bootstrap interval.

    With :math:`p_i = \operatorname{softmax}(z_i)` (float64), :math:`\hat p_i = \max_k p_{ik}`, equal-width
    right-closed bins :math:`B_m` of :math:`\hat p` (as in :func:`expected_calibration_error`):

    * ``ece`` / ``ece_l2`` / ``mce``: top-label ECE in the ℓ1, ℓ2 and max norms (Guo et al. 2017);
    * ``ece_l2_debiased``: Kumar et al. 2019's debiased ℓ2 estimator,
      :math:`\sqrt{\max(0, \sum_m \frac{|B_m|}{n}[(\operatorname{conf}-\operatorname{acc})^2 -
      \frac{\operatorname{acc}(1-\operatorname{acc})}{|B_m|-1}])}`;
    * ``ace``: top-label ℓ1 ECE over M equal-mass bins (sorted confidences split as ``numpy.array_split``);
    * ``sce``: classwise ECE (Nixon et al. 2019),
      :math:`\frac{1}{K}\sum_k \sum_m \frac{|B_{km}|}{n}|\operatorname{acc}_k - \operatorname{conf}_k|`;
    * ``smooth_ece``: Błasiok & Nakkiran 2023 with a reflected Gaussian kernel at the bandwidth σ* where
      :math:`\mathrm{smECE}_{\sigma^*} = \sigma^*`;
    * ``signed_ce``: :math:`\sum_m \frac{|B_m|}{n}(\operatorname{conf}(B_m) - \operatorname{acc}(B_m))` =
      mean confidence − accuracy (> 0 over-confident);
    * ``nll``, ``brier``, ``accuracy``.

    All but ``ace`` come from :class:`CalibrationSums` (mergeable per-bin sums, one pass of ``index_add``);
    ``ace`` sorts the confidences once. ``bootstrap = B`` (0 or ≥ 200) resamples the n examples with
    replacement B times (``torch.Generator`` seeded with ``seed``, on the tensors' device), computes every
    metric of each resample from the same per-example contributions (weighted by the examples'
    multiplicities; ACE re-sorted) and reports percentile intervals at ``confidence_level``.

    Returns:
        :class:`CalibrationMetrics`; ``warnings`` says when non-empty bins hold fewer than ``min_bin_count``
        examples.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> logits = 2 * torch.randn(10_000, 10, generator=g)
        >>> labels = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
        >>> m = calibration_metrics(logits, labels)  # calibrated by construction: every error is small
        >>> [round(m.value(k), 4) for k in ("ece", "ace", "sce", "smooth_ece", "ece_l2_debiased")]
        [0.0154, 0.0131, 0.0068, 0.012, 0.0109]
        >>> m = calibration_metrics(3 * logits, labels)  # sharpened: over-confident in every bin
        >>> round(m.value("ece"), 4), round(m.value("signed_ce"), 4)
        (0.286, 0.286)
    """
    n_bins = _validate_n_bins(n_bins)
    bootstrap, confidence_level, seed = _validate_bootstrap(bootstrap, confidence_level, seed)
    grid = _validate_grid_size(smooth_grid)
    if isinstance(min_bin_count, bool) or not isinstance(min_bin_count, numbers.Integral) or min_bin_count < 0:
        raise InputError(f"Expected argument `min_bin_count` to be an integer of at least 0, but got {min_bin_count!r}")
    _validate_logits_labels(logits, labels)
    n = int(logits.shape[0])
    if n == 0:
        raise InputError("Expected at least one example, but got N = 0")
    labels = labels.to(torch.int64)

    sums, confidence, correct = _calibration_sums_with_top(logits, labels, n_bins, grid)
    point = _family_values(sums, _adaptive_bins(confidence, correct, n_bins))
    intervals: dict[str, BootstrapInterval] = {}
    if bootstrap:
        replicates = _bootstrap_replicates(logits, labels, n_bins, grid, bootstrap, seed)
        q = torch.tensor([(1 - confidence_level) / 2, (1 + confidence_level) / 2], dtype=_F64)
        for name in ALL_METRICS:
            low, high = torch.quantile(replicates[name].cpu(), q).tolist()
            intervals[name] = BootstrapInterval(low, high, confidence_level, bootstrap, seed)
    definitions = metric_definitions(n, n_bins, int(logits.shape[1]), grid, point["smooth_ece_bandwidth"])
    metrics = {
        name: CalibrationMetric(name, point[name], definitions[name], intervals.get(name)) for name in ALL_METRICS
    }
    warning = _small_bin_warning(sums.top.bins, int(min_bin_count))
    return CalibrationMetrics(n=n, num_classes=int(logits.shape[1]), n_bins=n_bins, metrics=metrics,
                              report=summarize(sums.top), warnings=(warning,) if warning else ())


def streamed_calibration_metrics(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    n_bins: int = 15,
    min_bin_count: int = MIN_BIN_COUNT,
    smooth_grid: int = SMOOTH_GRID,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    num_examples: int | None = None,
) -> CalibrationMetrics:
    r""":func:`calibration_metrics` (without bootstrap) of examples that arrive in batches and are never all
    held at once: a logits file read chunk by chunk, or the shards of ``torchrun`` ranks.

    Each batch ``(logits [b, K], labels [b])`` adds its :class:`CalibrationSums` and is dropped; ACE's
    equal-mass bins need the order of all confidences, so each example's top-label confidence and correctness
    are kept (9 bytes). Across processes, ``reduce`` sums a float64 vector over them (e.g. an ``all_reduce``)
    and ``gather`` concatenates per-example tensors in process order (e.g. an ``all_gather``); every process
    then returns the metrics of all the examples. Equal to :func:`calibration_metrics` of the concatenated
    batches up to float64 summation order (exactly, in one process, with batches of ``2²² // K`` rows).

    Args:
        batches: ``(logits, labels)`` pairs; none at all on a process that holds no examples.
        num_classes: K (needed by a process with no batches; every batch must have K columns).
        n_bins, min_bin_count, smooth_grid: as for :func:`calibration_metrics`.
        num_examples: how many examples the batches hold here, if known: the per-example buffers are then
            allocated once (memory stays flat over thousands of batches), else they grow geometrically.

    Example:
        >>> z = 3 * torch.randn(10_000, 10, generator=torch.Generator().manual_seed(0))
        >>> y = torch.randint(0, 10, (10_000,), generator=torch.Generator().manual_seed(1))
        >>> m = streamed_calibration_metrics(zip(z.split(1000), y.split(1000), strict=True), num_classes=10)
        >>> abs(m.value("ece") - calibration_metrics(z, y).value("ece")) < 1e-12
        True
    """
    n_bins = _validate_n_bins(n_bins)
    grid = _validate_grid_size(smooth_grid)
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise InputError(f"Expected argument `num_classes` to be an integer of at least 2, but got {num_classes!r}")
    if isinstance(min_bin_count, bool) or not isinstance(min_bin_count, numbers.Integral) or min_bin_count < 0:
        raise InputError(f"Expected argument `min_bin_count` to be an integer of at least 0, but got {min_bin_count!r}")
    k = int(num_classes)
    # Accumulated in place, in buffers allocated once (or grown geometrically): a fresh tensor kept per batch
    # would be scattered between the batches' freed temporaries and fragment the heap batch after batch.
    vector: torch.Tensor | None = None
    confidence = correct = None
    filled = 0
    for logits, labels in batches:
        _validate_logits_labels(logits, labels)
        if logits.shape[1] != k:
            raise InputError(f"Expected batches with {k} classes, but got logits of shape {tuple(logits.shape)}")
        b = int(logits.shape[0])
        if b == 0:
            continue
        sums, conf, right = _calibration_sums_with_top(logits, labels, n_bins, grid)
        if vector is None:
            vector = sums.to_tensor()
        else:
            vector += sums.to_tensor()
        if confidence is None or filled + b > confidence.shape[0]:
            capacity = max(filled + b, num_examples or 0, 2 * (0 if confidence is None else confidence.shape[0]),
                           1 << 16)
            grown_conf = torch.empty(capacity, dtype=_F64, device=conf.device)
            grown_right = torch.empty(capacity, dtype=torch.bool, device=conf.device)
            if confidence is not None:
                grown_conf[:filled] = confidence[:filled]
                grown_right[:filled] = correct[:filled]
            confidence, correct = grown_conf, grown_right
        confidence[filled:filled + b] = conf
        correct[filled:filled + b] = right
        filled += b
    if vector is None:
        vector = torch.zeros(3 * n_bins + 4 + 3 * k * n_bins + grid + 1, dtype=_F64)
        confidence, correct = torch.zeros(0, dtype=_F64), torch.zeros(0, dtype=torch.bool)
    confidence, correct = confidence[:filled], correct[:filled]
    if reduce is not None:
        vector = reduce(vector)
    if gather is not None:
        confidence = gather(confidence)
        correct = gather(correct.to(torch.uint8)).to(torch.bool)
    return metrics_from_sums(vector, confidence, correct, num_classes=k, n_bins=n_bins, smooth_grid=grid,
                             min_bin_count=int(min_bin_count))


def metrics_from_sums(vector: torch.Tensor, confidence: torch.Tensor, correct: torch.Tensor, *, num_classes: int,
                      n_bins: int, smooth_grid: int, min_bin_count: int = MIN_BIN_COUNT) -> CalibrationMetrics:
    """:class:`CalibrationMetrics` (no bootstrap) from accumulated state: ``vector`` the
    :meth:`CalibrationSums.to_tensor` of all the examples, ``confidence`` / ``correct`` ``[n]`` their top-label
    confidences and correctness in example order (for ACE's equal-mass bins). Shared by
    :func:`streamed_calibration_metrics` and :class:`calibscope.diagnostics.streaming.StreamingCalibration`.
    """
    sums = CalibrationSums.from_tensor(vector, num_classes=num_classes, n_bins=n_bins, smooth_grid=smooth_grid)
    n = sums.n
    if n == 0:
        raise InputError("Expected at least one example, but got N = 0")
    point = _family_values(sums, _adaptive_bins(confidence, correct, n_bins))
    definitions = metric_definitions(n, n_bins, num_classes, smooth_grid, point["smooth_ece_bandwidth"])
    metrics = {name: CalibrationMetric(name, point[name], definitions[name]) for name in ALL_METRICS}
    warning = _small_bin_warning(sums.top.bins, int(min_bin_count))
    return CalibrationMetrics(n=n, num_classes=num_classes, n_bins=n_bins, metrics=metrics,
                              report=summarize(sums.top), warnings=(warning,) if warning else ())


def adaptive_calibration_error(logits: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15) -> float:
    r"""Top-label ℓ1 ECE over M equal-mass bins (AdaECE; Nguyen & O'Connor 2015, Mukhoti et al. 2020).

    Confidences are sorted (stable) and split into M consecutive groups of ⌈n/M⌉ or ⌊n/M⌋ examples, the
    larger groups first (``numpy.array_split``); then :math:`\sum_m \frac{|B_m|}{n}|\operatorname{acc}(B_m) -
    \operatorname{conf}(B_m)|`. (Nixon et al. 2019 call a *classwise* variant "ACE"; this one is top-label.)
    """
    n_bins = _validate_n_bins(n_bins)
    _validate_logits_labels(logits, labels)
    if logits.shape[0] == 0:
        raise InputError("Expected at least one example, but got N = 0")
    confidence, prediction = _confidence_and_prediction(logits)  # values are validated here
    bins = _adaptive_bins(confidence, prediction == labels.to(torch.int64), n_bins)
    return float(_calibration_errors(bins.count, bins.sum_confidence, bins.sum_correct)["l1"])


def classwise_calibration_error(logits: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15) -> float:
    r"""Classwise (static) calibration error, SCE (Nixon et al. 2019, §4):
    :math:`\frac{1}{K}\sum_{k}\sum_{m} \frac{|B_{km}|}{n} |\operatorname{acc}_k(B_{km}) -
    \operatorname{conf}_k(B_{km})|` with :math:`B_{km} = \{i : p_{ik} \in ((m-1)/M, m/M]\}`,
    :math:`\operatorname{acc}_k` the fraction of :math:`B_{km}` with :math:`y_i = k` and
    :math:`\operatorname{conf}_k` the mean of :math:`p_{ik}` over it."""
    n_bins = _validate_n_bins(n_bins)
    _validate_logits_labels(logits, labels)
    if logits.shape[0] == 0:
        raise InputError("Expected at least one example, but got N = 0")
    s = _calibration_sums(logits, labels, n_bins, 16)
    return float(_classwise_ece(s.classwise_count, s.classwise_sum_probability, s.classwise_sum_label))


def debiased_calibration_error(logits: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15) -> float:
    r"""Kumar et al. 2019's debiased estimator of the top-label ℓ2 calibration error (equal-width bins):

    .. math::

        \sqrt{\max\Bigl(0, \sum_m \frac{|B_m|}{n}\Bigl[(\operatorname{conf}(B_m) - \operatorname{acc}(B_m))^2
        - \frac{\operatorname{acc}(B_m)(1 - \operatorname{acc}(B_m))}{|B_m| - 1}\Bigr]\Bigr)},

    bins with fewer than 2 examples contributing 0 (as in the authors' ``calibration`` package)."""
    n_bins = _validate_n_bins(n_bins)
    _validate_logits_labels(logits, labels)
    if logits.shape[0] == 0:
        raise InputError("Expected at least one example, but got N = 0")
    top = _calibration_stats(logits, labels, n_bins)
    return float(_debiased_l2(top.count, top.sum_confidence, top.sum_correct))


def smooth_calibration_error(
    logits: torch.Tensor, labels: torch.Tensor, *, smooth_grid: int = SMOOTH_GRID
) -> tuple[float, float]:
    r"""Smooth ECE (Błasiok & Nakkiran 2023) of the top-label confidence, and its bandwidth: ``(smECE, σ*)``.

    .. math::

        \mathrm{smECE}_\sigma = \int_0^1 \Bigl|\frac{1}{n}\sum_i K_\sigma(t, \hat p_i)\,(\hat p_i - [\hat y_i =
        y_i])\Bigr|\,dt, \qquad \mathrm{smECE} = \mathrm{smECE}_{\sigma^*}\ \text{with}\
        \mathrm{smECE}_{\sigma^*} = \sigma^*,

    :math:`K_\sigma` the Gaussian kernel reflected at 0 and 1. Residuals are splatted linearly onto G + 1
    grid points; the convolution is exact on that grid (FFT of the even periodic extension).
    """
    grid = _validate_grid_size(smooth_grid)
    _validate_logits_labels(logits, labels)
    if logits.shape[0] == 0:
        raise InputError("Expected at least one example, but got N = 0")
    confidence, prediction = _confidence_and_prediction(logits)
    residual = _splat(confidence, confidence - (prediction == labels.to(torch.int64)).to(_F64), grid)
    value, sigma = _smooth_ece(residual, float(logits.shape[0]))
    return float(value), float(sigma)
