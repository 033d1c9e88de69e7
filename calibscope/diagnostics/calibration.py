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

import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from calibscope.errors import InputError

__all__ = [
    "CalibrationReport",
    "CalibrationStats",
    "ConfidenceBins",
    "ReliabilityBins",
    "calibration_definition",
    "calibration_report",
    "calibration_stats",
    "confidence_bins",
    "expected_calibration_error",
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


def _validate_logits_labels(logits: Any, labels: Any) -> None:
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
    if logits.shape[0] > 0:
        # -inf is allowed (log of a probability 0); NaN, +inf and all -inf rows have no softmax.
        if bool(torch.isnan(logits).any()) or bool(torch.isposinf(logits).any()):
            raise InputError("Expected argument `logits` to contain no NaN or +inf values, but found some")
        if bool(torch.isneginf(logits).all(dim=1).any()):
            raise InputError("Expected every row of `logits` to have a finite entry, but found a row of all -inf")
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
    """ECE in the three norms from per-bin sums (float64 tensors ``[M]``); returns 0-d tensors."""
    nonempty = count > 0
    safe = torch.where(nonempty, count, torch.ones_like(count))
    gap = torch.where(nonempty, (sum_correct - sum_confidence) / safe, torch.zeros_like(count)).abs()
    weight = count / count.sum()
    return {
        "l1": (weight * gap).sum(),
        "l2": (weight * gap * gap).sum().sqrt(),
        "max": gap.max(),  # empty bins contribute 0, so this is the max over the non-empty bins
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
    """Unvalidated core of :func:`confidence_bins`: one ``bucketize`` + three ``index_add_``."""
    conf = confidences.to(_F64)
    hits = correct.to(_F64)
    edges = _bin_edges(n_bins, conf.device)
    # right=False: index m-1 for edges[m-1] < conf <= edges[m], i.e. right-closed; conf <= 1/M (and 0) -> 0,
    # conf > (M-1)/M (and 1.0) -> M-1.
    index = torch.bucketize(conf, edges[1:-1], right=False)
    zeros = torch.zeros(n_bins, dtype=_F64, device=conf.device)
    # index_add_ rather than bincount(weights=...): it has a deterministic CUDA implementation.
    return ConfidenceBins(
        count=zeros.index_add(0, index, torch.ones_like(conf)),
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


def _calibration_stats(logits: torch.Tensor, labels: torch.Tensor, n_bins: int) -> CalibrationStats:
    """Unvalidated core of :func:`calibration_stats`: one softmax, one bucketize, sums."""
    labels = labels.to(torch.int64)
    log_p = torch.log_softmax(logits.to(_F64), dim=1)  # float64 all the way
    p = log_p.exp()
    confidence, prediction = p.max(dim=1)
    correct = prediction == labels
    bins = _confidence_bins(confidence, correct, n_bins)
    sum_nll = -log_p.gather(1, labels[:, None]).sum()
    # p - onehot(y), in place, then sum of squares
    p.scatter_add_(1, labels[:, None], torch.full((labels.shape[0], 1), -1.0, dtype=_F64, device=p.device))
    sum_brier = (p * p).sum()
    return CalibrationStats(
        count=bins.count,
        sum_confidence=bins.sum_confidence,
        sum_correct=bins.sum_correct,
        n=torch.tensor(float(labels.shape[0]), dtype=_F64, device=p.device),
        n_correct=correct.sum().to(_F64),
        sum_nll=sum_nll,
        sum_brier=sum_brier,
        num_classes=int(logits.shape[1]),
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
    _validate_logits_labels(logits, labels)
    if logits.shape[0] == 0:
        raise InputError("Expected at least one example, but got N = 0")
    return _calibration_stats(logits, labels, n_bins).bins.calibration_error(norm)
