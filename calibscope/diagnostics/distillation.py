r"""What a teacher's soft targets carry, and how closely a student follows them.

Soft targets (Hinton, Vinyals & Dean 2015, §2): :math:`p^T_i = \operatorname{softmax}(z_i / T)`. For each
temperature T (default :data:`DEFAULT_TEMPERATURES`):

* **non-target entropy** ("dark knowledge"): the entropy of the distribution over the K − 1 wrong classes,
  renormalised, :math:`q_{ik} = p^T_{ik} / (1 - p^T_{iy_i})` for k ≠ y_i, i.e. ``softmax`` of the non-target
  logits over T (computed that way, so it stays exact when :math:`p^T_{iy_i}` rounds to 1):
  :math:`H_i = -\sum_{k \ne y_i} q_{ik} \log q_{ik}` nats, averaged over examples, also divided by
  :math:`\log(K-1)` (1 = the wrong classes are indistinguishable to the teacher, 0 = one wrong class takes it
  all); the **non-target information** :math:`\log(K-1) - H_i = \mathrm{KL}(q_i \,\|\, \text{uniform})` nats,
  averaged;
* **mass off the true class**: mean of :math:`1 - p^T_{iy_i}`.

Class similarity at the distillation temperature: the average soft-target matrix
:math:`A_{ck} = \operatorname{mean}_{i: y_i = c} p^T_{ik}` (row c: what the teacher says about class-c
examples), and the non-target similarity :math:`S_{ab} = \tfrac12(Q_{ab} + Q_{ba})` with
:math:`Q_{ck} = \operatorname{mean}_{i: y_i = c} q_{ik}`. Classes are ordered by average-linkage hierarchical
clustering of the distance 1 − S (``scipy.cluster.hierarchy``, optimal leaf ordering); the most similar pairs
are the largest :math:`S_{ab}`. Müller et al. 2019 §4 find that a label-smoothed teacher distils worse: label
smoothing pushes the wrong classes' logits to equal values, which raises the non-target entropy towards its
maximum and erases the similarity structure.

With a student (Stanton et al. 2021, *Does knowledge distillation really work?*, §3):
the distillation loss :math:`T^2 \cdot \operatorname{mean}_i \mathrm{KL}(p^T_{\text{teacher},i} \,\|\,
p^T_{\text{student},i})` at the chosen T (Hinton's T² keeps gradient magnitudes comparable across T), top-1
agreement :math:`\operatorname{mean}_i [\arg\max z^{t}_i = \arg\max z^{s}_i]` and the mean KL at T = 1.

Pure functions of tensors, computed in float64 on the tensors' device.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch

from calibscope.diagnostics.calibration import _validate_logits_labels, expected_calibration_error
from calibscope.errors import InputError

__all__ = [
    "DEFAULT_DISTILLATION_TEMPERATURE",
    "DEFAULT_TEMPERATURES",
    "SoftTargets",
    "StudentAgreement",
    "TemperatureProfile",
    "soft_targets",
    "student_agreement",
]

DEFAULT_TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 20.0)
DEFAULT_DISTILLATION_TEMPERATURE = 4.0
DEFAULT_SIMILAR_PAIRS = 5
_F64 = torch.float64
REFERENCES = {
    "soft_targets": "Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network, Section 2",
    "label_smoothing": "Mueller, Kornblith & Hinton 2019, When Does Label Smoothing Help?, Section 4",
    "agreement": "Stanton et al. 2021, Does Knowledge Distillation Really Work?, Section 3",
}


@dataclass(frozen=True)
class TemperatureProfile:
    """Soft-target statistics at one temperature: mean non-target entropy (nats and ÷ log(K−1)), the
    non-target information log(K−1) − entropy (nats), and the mean probability mass off the true class."""

    temperature: float
    non_target_entropy: float
    non_target_entropy_normalised: float
    non_target_information: float
    off_true_mass: float


@dataclass(frozen=True)
class SoftTargets:
    """What one teacher's soft targets carry.

    ``profiles``: one :class:`TemperatureProfile` per temperature; ``temperature``: the one the matrices are
    taken at; ``average_soft_targets``: A [K][K] (rows: true class; NaN rows for classes without examples);
    ``similarity``: S [K][K] (diagonal 0); ``class_order``: the leaves of the clustering; ``similar_pairs``:
    (a, b, S_ab), largest first; ``accuracy`` / ``ece`` at T = 1.
    """

    n: int
    num_classes: int
    accuracy: float
    ece: float
    temperature: float
    profiles: tuple[TemperatureProfile, ...]
    average_soft_targets: tuple[tuple[float, ...], ...]
    similarity: tuple[tuple[float, ...], ...]
    class_order: tuple[int, ...]
    similar_pairs: tuple[tuple[int, int, float], ...]
    definition: dict[str, Any] = field(default_factory=dict)

    def profile(self, temperature: float) -> TemperatureProfile:
        for p in self.profiles:
            if p.temperature == temperature:
                return p
        raise KeyError(temperature)


@dataclass(frozen=True)
class StudentAgreement:
    """How closely a student follows a teacher: ``distillation_loss`` = T²·mean KL(teacher_T ‖ student_T),
    ``kl_at_1`` = mean KL at T = 1 (nats), ``agreement`` = top-1 agreement, and each model's accuracy and ECE
    (15 bins) at T = 1."""

    temperature: float
    distillation_loss: float
    kl_at_1: float
    agreement: float
    teacher_accuracy: float
    student_accuracy: float
    teacher_ece: float
    student_ece: float
    n: int


def _validate_temperatures(values: Any, name: str) -> tuple[float, ...]:
    out = []
    for t in values:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t <= 0:
            raise InputError(f"Expected every value of `{name}` to be a finite number larger than 0, but got {t!r}")
        out.append(float(t))
    if not out:
        raise InputError(f"Expected argument `{name}` to hold at least one temperature, but got none")
    return tuple(out)


def _non_target_log_q(z: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """log q [N, K]: log-softmax of the non-target logits over T; -inf at the true class."""
    masked = (z / temperature).scatter(1, y[:, None], -math.inf)
    return torch.log_softmax(masked, 1)


def _entropy(log_p: torch.Tensor) -> torch.Tensor:
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per row KL(p ‖ q) = Σ_k p_k (log p_k − log q_k), with 0·log 0 = 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(1)


def _class_means(values: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    total = torch.zeros(k, values.shape[1], dtype=_F64, device=values.device).index_add_(0, y, values)
    count = torch.bincount(y, minlength=k).to(_F64)
    return torch.where(count[:, None] > 0, total / count.clamp_min(1)[:, None], torch.nan)


def _cluster_order(similarity: torch.Tensor, present: list[int]) -> list[int]:
    """Average-linkage clustering of 1 − S over the classes that have examples (optimal leaf order); the
    others follow in index order."""
    import numpy as np
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    if len(present) < 3:
        order = list(present)
    else:
        s = similarity[present][:, present].cpu().numpy()
        distance = np.clip(1.0 - s, 0.0, None)
        np.fill_diagonal(distance, 0.0)
        tree = linkage(squareform(distance, checks=False), method="average", optimal_ordering=True)
        order = [present[i] for i in leaves_list(tree)]
    return order + [c for c in range(similarity.shape[0]) if c not in set(present)]


def soft_targets(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperatures: tuple[float, ...] | list[float] = DEFAULT_TEMPERATURES,
    temperature: float = DEFAULT_DISTILLATION_TEMPERATURE,
    n_pairs: int = DEFAULT_SIMILAR_PAIRS,
) -> SoftTargets:
    r"""The teacher's soft targets: non-target entropy and mass off the true class at each of
    ``temperatures``, and the class-similarity structure (A, S, clustering order, the ``n_pairs`` most similar
    pairs) at ``temperature``. See the module docstring for the formulas.

    Args:
        logits: teacher logits ``[N, K]``, K ≥ 3 (with two classes there is one wrong class: no structure).
        labels: ``[N]`` in ``[0, K)``.

    Example:
        >>> z = torch.tensor([[4.0, 1.0, 1.0], [1.0, 4.0, 0.0]])
        >>> st = soft_targets(z, torch.tensor([0, 1]), temperatures=(1.0,), temperature=1.0)
        >>> round(st.profiles[0].non_target_entropy_normalised, 4), st.similar_pairs[0][:2]
        (0.92, (0, 1))
    """
    _validate_logits_labels(logits, labels)
    n, k = (int(s) for s in logits.shape)
    if n == 0:
        raise InputError("Expected at least one example, but got N = 0")
    if k < 3:
        raise InputError(f"Soft-target structure needs at least 3 classes (one wrong class carries no "
                         f"information), but the logits have K = {k}")
    grid = _validate_temperatures(temperatures, "temperatures")
    (t_star,) = _validate_temperatures((temperature,), "temperature")
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, numbers.Integral) or n_pairs < 0:
        raise InputError(f"Expected argument `n_pairs` to be an integer of at least 0, but got {n_pairs!r}")
    z = logits.to(_F64)
    y = labels.to(device=z.device, dtype=torch.int64)
    profiles = []
    for t in grid:
        entropy = _entropy(_non_target_log_q(z, y, t)).mean()
        log_p = torch.log_softmax(z / t, 1)
        off = -torch.expm1(log_p.gather(1, y[:, None])).mean()  # 1 - p_y, exact for p_y near 1
        h = float(entropy)
        profiles.append(TemperatureProfile(t, h, h / math.log(k - 1), math.log(k - 1) - h, float(off)))
    average = _class_means(torch.softmax(z / t_star, 1), y, k)
    q = _class_means(_non_target_log_q(z, y, t_star).exp(), y, k)
    similarity = 0.5 * (q + q.t())
    similarity.fill_diagonal_(0.0)
    present = [c for c in range(k) if not bool(torch.isnan(q[c]).any())]
    pairs = [(a, b, float(similarity[a, b])) for i, a in enumerate(present) for b in present[i + 1:]
             if not math.isnan(float(similarity[a, b]))]
    pairs.sort(key=lambda p: (-p[2], p[0], p[1]))
    correct = z.argmax(1) == y
    return SoftTargets(
        n=n, num_classes=k, accuracy=float(correct.to(_F64).mean()), ece=expected_calibration_error(z, y),
        temperature=t_star, profiles=tuple(profiles),
        average_soft_targets=tuple(tuple(row) for row in average.cpu().tolist()),
        similarity=tuple(tuple(row) for row in similarity.cpu().tolist()),
        class_order=tuple(_cluster_order(similarity, present)), similar_pairs=tuple(pairs[: int(n_pairs)]),
        definition={
            "soft_targets": "p_T = softmax(z / T), float64",
            "non_target_entropy": "mean_i H(q_i), q_i = softmax of the K-1 non-target logits / T (nats); "
                                  "normalised: divided by log(K - 1)",
            "non_target_information": "log(K - 1) - non_target_entropy = mean_i KL(q_i || uniform), nats",
            "off_true_mass": "mean_i (1 - p_T[i, y_i])",
            "average_soft_targets": "A[c, k] = mean over examples of class c of p_T[i, k]",
            "similarity": "S[a, b] = (Q[a, b] + Q[b, a]) / 2, Q[c, k] = mean over class-c examples of q_i[k]",
            "class_order": "average-linkage clustering of 1 - S, optimal leaf ordering (scipy)",
            "references": [REFERENCES["soft_targets"], REFERENCES["label_smoothing"]],
        },
    )


def student_agreement(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = DEFAULT_DISTILLATION_TEMPERATURE,
    n_bins: int = 15,
) -> StudentAgreement:
    r"""Distillation loss :math:`T^2 \operatorname{mean}_i \mathrm{KL}(p^T_t \| p^T_s)`, mean KL at T = 1,
    top-1 agreement, and both models' accuracy and ECE (Stanton et al. 2021).

    Example:
        >>> z = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
        >>> a = student_agreement(z, z, torch.tensor([0, 1]))
        >>> a.distillation_loss, a.agreement
        (0.0, 1.0)
    """
    _validate_logits_labels(teacher_logits, labels)
    if not isinstance(student_logits, torch.Tensor) or teacher_logits.shape != student_logits.shape:
        raise InputError(f"Teacher and student logits must have the same shape, but got "
                         f"{tuple(teacher_logits.shape)} and {tuple(getattr(student_logits, 'shape', ()))}")
    _validate_logits_labels(student_logits, labels)
    if teacher_logits.shape[0] == 0:
        raise InputError("Expected at least one example, but got N = 0")
    (t,) = _validate_temperatures((temperature,), "temperature")
    zt, zs = teacher_logits.to(_F64), student_logits.to(device=teacher_logits.device, dtype=_F64)
    y = labels.to(device=zt.device, dtype=torch.int64)
    loss = t * t * _kl(torch.log_softmax(zt / t, 1), torch.log_softmax(zs / t, 1)).mean()
    kl1 = _kl(torch.log_softmax(zt, 1), torch.log_softmax(zs, 1)).mean()
    return StudentAgreement(
        temperature=t, distillation_loss=float(loss), kl_at_1=float(kl1),
        agreement=float((zt.argmax(1) == zs.argmax(1)).to(_F64).mean()),
        teacher_accuracy=float((zt.argmax(1) == y).to(_F64).mean()),
        student_accuracy=float((zs.argmax(1) == y).to(_F64).mean()),
        teacher_ece=expected_calibration_error(zt, y, n_bins=n_bins),
        student_ece=expected_calibration_error(zs, y, n_bins=n_bins), n=int(zt.shape[0]))
