r"""Penultimate-layer plane projections (Müller, Kornblith & Hinton, *When Does Label Smoothing Help?*,
NeurIPS 2019, §2 "Penultimate layer representations").

The logit of class k is :math:`z_k = w_k^\top x + b_k`, a distance-like comparison of the penultimate
activation :math:`x \in \mathbb{R}^D` with the class *template* :math:`w_k`. Appending the bias makes it
exact: with

.. math::

    \tilde w_k = \begin{bmatrix} w_k \\ b_k \end{bmatrix}, \qquad
    \tilde x = \begin{bmatrix} x \\ 1 \end{bmatrix}, \qquad z_k = \tilde w_k^\top \tilde x .

For three classes a, b, c the templates span an affine plane. We take an orthonormal basis
:math:`E \in \mathbb{R}^{(D+1) \times 2}` of :math:`\operatorname{span}(\tilde w_b - \tilde w_a,\ \tilde w_c -
\tilde w_a)` by a QR decomposition (float64), the origin :math:`p_0 = \tfrac13(\tilde w_a + \tilde w_b +
\tilde w_c)`, and the coordinates of every example of the three classes

.. math::

    u = E^\top (\tilde x - p_0) \in \mathbb{R}^2 .

Orientation (QR fixes it only up to signs): the first axis points from template a to template b, the second
towards template c (``R`` of the QR is made to have a positive diagonal). The templates themselves sit at
:math:`E^\top(\tilde w_k - p_0)`, a triangle centred on the origin.

Müller et al. observe that label smoothing pulls the examples of a class into a tight cluster, and the
clusters to equal distances from each other, while hard targets leave broad spreads. To compare that as a
number, :class:`ClusterTightness` gives for each class the mean distance of its examples to their centre
(the *spread*), in the plane and in the full D-dimensional feature space, and divides it by the distance
between the class centres:

.. math::

    s_k = \frac{1}{n_k} \sum_{i : y_i = k} \lVert u_i - \bar u_k \rVert, \qquad
    d_{jk} = \lVert \bar u_j - \bar u_k \rVert, \qquad
    \text{relative spread} = \frac{\tfrac13 \sum_k s_k}{\tfrac13 (d_{ab} + d_{ac} + d_{bc})} .

Smaller is tighter; it does not change when all features are scaled. ``equidistance`` is
:math:`\min d / \max d` (1 for an equilateral triangle of centres). The full-dimensional versions use
:math:`x_i` instead of :math:`u_i` (the appended 1 is the same for every example, so :math:`\tilde x` and
:math:`x` give the same distances).

Everything is computed in float64 on the device the tensors are on. No I/O, no printing.

Example (the label-smoothed sample model on its 150 training digits, classes 1, 2, 8)::

    >>> from calibscope import load_checkpoint, load_dataset
    >>> from calibscope.inference.engine import InferenceOptions
    >>> from calibscope.inference.pipeline import compute_outputs
    >>> out = compute_outputs(load_checkpoint("sample_checkpoints/digits_ls.pt2"),
    ...                       load_dataset("sample_checkpoints/digits_train.npz"),
    ...                       InferenceOptions(capture_features=True))
    >>> p = plane_projection(out.features, out.labels, out.weight, out.bias, (1, 2, 8))
    >>> p.coordinates.shape, round(p.statistics.relative_spread_plane, 4)
    (torch.Size([45, 2]), 0.0215)
    >>> p.templates
    tensor([[-0.4731, -0.2970],
            [ 0.5193, -0.2970],
            [-0.0461,  0.5941]], dtype=torch.float64)

(the hard-target model gives 0.1737: its clusters are eight times wider relative to their distances).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from calibscope.errors import InputError

__all__ = [
    "ClassCluster",
    "ClusterTightness",
    "PlaneProjection",
    "confusion_matrix",
    "most_confused_classes",
    "paper_layout_classes",
    "plane_projection",
    "resolve_classes",
]

_F64 = torch.float64
# Above this many classes, the triple search runs over the most-confused classes only (see most_confused_classes)
_EXHAUSTIVE_CLASSES = 64


# --------------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassCluster:
    """How tight one class's examples are.

    ``centre`` is :math:`\\bar u_k` in plane coordinates; ``spread_plane`` / ``spread_full`` the mean distance
    of the class's examples to their centre in the plane / in the D-dimensional feature space;
    ``relative_spread_*`` that spread divided by the mean distance from this class's centre to the other two.
    """

    class_index: int
    n: int
    centre: tuple[float, float]
    spread_plane: float
    spread_full: float
    relative_spread_plane: float
    relative_spread_full: float


@dataclass(frozen=True)
class ClusterTightness:
    """Cluster statistics of a :class:`PlaneProjection` (smaller ``relative_spread_*`` = tighter).

    ``centre_distances_*`` are :math:`(d_{ab}, d_{ac}, d_{bc})`; ``relative_spread_*`` is the mean spread of
    the three classes over the mean centre distance; ``equidistance_*`` is min/max centre distance.
    """

    clusters: tuple[ClassCluster, ClassCluster, ClassCluster]
    centre_distances_plane: tuple[float, float, float]
    centre_distances_full: tuple[float, float, float]
    relative_spread_plane: float
    relative_spread_full: float
    equidistance_plane: float
    equidistance_full: float


@dataclass(frozen=True, eq=False)
class PlaneProjection:
    """The result of :func:`plane_projection`.

    * ``classes``: (a, b, c), class indices.
    * ``coordinates``: float64 ``[n, 2]``, :math:`u_i = E^\\top(\\tilde x_i - p_0)` of the projected examples.
    * ``labels``: int64 ``[n]``, their true classes (each one of a, b, c); ``indices``: int64 ``[n]``, their
      rows in the ``features`` that were passed in (ascending within each class, classes in order a, b, c).
    * ``templates``: float64 ``[3, 2]``, the plane coordinates of :math:`\\tilde w_a, \\tilde w_b, \\tilde w_c`.
    * ``basis``: float64 ``[D + 1, 2]``, E; ``origin``: float64 ``[D + 1]``, :math:`p_0`.
    * ``per_class``: the cap on examples per class that was applied (None: every example).
    * ``statistics``: :class:`ClusterTightness` of these examples.
    """

    classes: tuple[int, int, int]
    coordinates: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    templates: torch.Tensor
    basis: torch.Tensor
    origin: torch.Tensor
    per_class: int | None
    statistics: ClusterTightness

    @property
    def counts(self) -> tuple[int, int, int]:
        """Number of projected examples of classes a, b, c."""
        return tuple(int((self.labels == k).sum()) for k in self.classes)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------
# validation (once, at the edge)
# --------------------------------------------------------------------------------------------------------


def _validate_tensor(value: Any, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise InputError(f"Expected argument `{name}` to be a torch.Tensor, but got {type(value).__name__}")


def _validate_classes(classes: Any, num_classes: int) -> tuple[int, int, int]:
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise InputError(f"Expected argument `classes` to be a sequence of 3 class indices, but got {classes!r}")
    values = []
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, numbers.Integral):
            raise InputError(f"Expected argument `classes` to hold integer class indices, but got {c!r}")
        values.append(int(c))
    if len(values) != 3:
        raise InputError(f"Expected argument `classes` to name exactly 3 classes (a plane through 3 templates), "
                         f"but got {len(values)}: {values}")
    duplicated = sorted({c for c in values if values.count(c) > 1})
    if duplicated:
        raise InputError(f"Expected 3 distinct classes, but class {duplicated[0]} is given more than once: {values}")
    bad = [c for c in values if not 0 <= c < num_classes]
    if bad:
        raise InputError(f"Expected every class index to be in [0, {num_classes}) for {num_classes} classes, "
                         f"but got {bad[0]}")
    return values[0], values[1], values[2]


def _validate_inputs(features: Any, labels: Any, weight: Any, bias: Any) -> None:
    _validate_tensor(features, "features")
    _validate_tensor(labels, "labels")
    _validate_tensor(weight, "weight")
    if features.ndim != 2 or not features.is_floating_point():
        raise InputError(f"Expected argument `features` to be a floating point tensor of shape [N, D], but got "
                         f"shape {tuple(features.shape)} and dtype {features.dtype}")
    if weight.ndim != 2 or not weight.is_floating_point():
        raise InputError(f"Expected argument `weight` to be a floating point tensor of shape [K, D], but got "
                         f"shape {tuple(weight.shape)} and dtype {weight.dtype}")
    if weight.shape[1] != features.shape[1]:
        raise InputError(f"Expected `weight` [K, D] to have D = {features.shape[1]} columns like `features`, "
                         f"but got shape {tuple(weight.shape)}")
    if weight.shape[0] < 3:
        raise InputError(f"A plane projection needs at least 3 classes, but the final layer has {weight.shape[0]}")
    if bias is not None:
        _validate_tensor(bias, "bias")
        if bias.shape != (weight.shape[0],):
            raise InputError(f"Expected argument `bias` to have shape [{weight.shape[0]}], but got "
                             f"{tuple(bias.shape)}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise InputError(f"Expected argument `labels` to have shape [{features.shape[0]}] (one per row of "
                         f"`features`), but got {tuple(labels.shape)}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise InputError(f"Expected argument `labels` to be an integer tensor, but got dtype {labels.dtype}")
    devices = {features.device, labels.device, weight.device} | ({bias.device} if bias is not None else set())
    if len(devices) > 1:
        raise InputError(f"Expected all tensors on one device, but got {sorted(map(str, devices))}")
    if not bool(torch.isfinite(features).all()) or not bool(torch.isfinite(weight).all()) or (
            bias is not None and not bool(torch.isfinite(bias).all())):
        raise InputError("Expected `features`, `weight` and `bias` to be finite, but found NaN or infinite values")


def _validate_per_class(per_class: Any) -> int | None:
    if per_class is None:
        return None
    if isinstance(per_class, bool) or not isinstance(per_class, numbers.Integral) or per_class < 1:
        raise InputError(f"Expected argument `per_class` to be an integer larger than 0 or None, but got "
                         f"{per_class!r}")
    return int(per_class)


# --------------------------------------------------------------------------------------------------------
# the projection
# --------------------------------------------------------------------------------------------------------


def plane_projection(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    classes: Sequence[int],
    *,
    per_class: int | None = None,
) -> PlaneProjection:
    r"""Project the penultimate activations of three classes onto the plane through their templates.

    Args:
        features: ``[N, D]`` penultimate activations :math:`x_i` (the input of the final linear layer).
        labels: ``[N]`` true classes.
        weight: ``[K, D]`` final-layer weight (row k is :math:`w_k`).
        bias: ``[K]`` final-layer bias :math:`b_k`, or None for a layer without bias (then :math:`b_k = 0`).
        classes: (a, b, c), three distinct class indices.
        per_class: keep only the first ``per_class`` examples of each class (in row order); None keeps all.

    Returns:
        :class:`PlaneProjection`: coordinates :math:`u_i = E^\top(\tilde x_i - p_0)` (see the module docstring
        for E, :math:`p_0` and the orientation), template coordinates and :class:`ClusterTightness`.

    Raises:
        InputError: bad shapes or dtypes, classes that are not 3 distinct valid indices, a class without
        examples, or templates that do not span a plane (:math:`\tilde w_a, \tilde w_b, \tilde w_c` collinear).

    Source: Müller, Kornblith & Hinton 2019, §2 and Fig. 1.
    """
    _validate_inputs(features, labels, weight, bias)
    a, b, c = _validate_classes(classes, int(weight.shape[0]))
    cap = _validate_per_class(per_class)

    rows = []
    for k in (a, b, c):
        idx = (labels == k).nonzero().flatten()
        if idx.numel() == 0:
            raise InputError(f"class {k} has no examples in the data; pick classes that occur in it")
        rows.append(idx if cap is None else idx[:cap])
    indices = torch.cat(rows)

    device = features.device
    w = weight.to(_F64)
    bvec = bias.to(_F64) if bias is not None else torch.zeros(w.shape[0], dtype=_F64, device=device)
    templates_full = torch.cat([w, bvec[:, None]], dim=1)[[a, b, c]]  # w̃_a, w̃_b, w̃_c: [3, D + 1]
    basis = _plane_basis(templates_full, (a, b, c))  # E: [D + 1, 2]
    origin = templates_full.mean(dim=0)  # p0

    x = features[indices].to(_F64)
    x_tilde = torch.cat([x, torch.ones(x.shape[0], 1, dtype=_F64, device=device)], dim=1)
    coordinates = (x_tilde - origin) @ basis  # u = Eᵀ(x̃ − p0), one row per example
    template_coordinates = (templates_full - origin) @ basis
    projected_labels = labels[indices].to(torch.int64)
    statistics = _tightness(coordinates, x, projected_labels, (a, b, c))
    return PlaneProjection(
        classes=(a, b, c),
        coordinates=coordinates,
        labels=projected_labels,
        indices=indices.to(torch.int64),
        templates=template_coordinates,
        basis=basis,
        origin=origin,
        per_class=cap,
        statistics=statistics,
    )


def _plane_basis(templates: torch.Tensor, classes: tuple[int, int, int]) -> torch.Tensor:
    """Orthonormal E of span(w̃_b − w̃_a, w̃_c − w̃_a) by QR, oriented a→b first, then towards c."""
    directions = torch.stack([templates[1] - templates[0], templates[2] - templates[0]], dim=1)  # [D + 1, 2]
    q, r = torch.linalg.qr(directions, mode="reduced")
    diag = torch.diagonal(r)
    scale = float(directions.norm(dim=0).max())
    if scale == 0.0 or float(diag.abs().min()) <= 1e-10 * scale:
        a, b, c = classes
        raise InputError(f"the templates of classes {a}, {b}, {c} are collinear (or equal), so they span no "
                         "plane; pick other classes")
    signs = torch.where(diag < 0, -1.0, 1.0).to(q.dtype)
    return q * signs  # makes R's diagonal positive: e1 ∥ (w̃_b − w̃_a), e2·(w̃_c − w̃_a) > 0


def _tightness(u: torch.Tensor, x: torch.Tensor, labels: torch.Tensor,
               classes: tuple[int, int, int]) -> ClusterTightness:
    """Per-class spreads and centre distances, in the plane (u) and in the feature space (x)."""

    def spreads(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        centres, spread = [], []
        for k in classes:
            p = points[labels == k]
            centre = p.mean(dim=0)
            centres.append(centre)
            spread.append((p - centre).norm(dim=1).mean())
        return torch.stack(centres), torch.stack(spread)

    centres_u, spread_u = spreads(u)
    centres_x, spread_x = spreads(x)
    pairs = ((0, 1), (0, 2), (1, 2))

    def distances(centres: torch.Tensor) -> torch.Tensor:
        return torch.stack([(centres[i] - centres[j]).norm() for i, j in pairs])

    d_u, d_x = distances(centres_u), distances(centres_x)

    def ratio(num: torch.Tensor, den: torch.Tensor) -> float:
        return float(num / den) if float(den) > 0 else float("inf")

    # mean distance from each centre to the other two: the pairs that contain class i
    neighbours = [[p for p, pair in enumerate(pairs) if i in pair] for i in range(3)]
    clusters = tuple(
        ClassCluster(
            class_index=k,
            n=int((labels == k).sum()),
            centre=(float(centres_u[i, 0]), float(centres_u[i, 1])),
            spread_plane=float(spread_u[i]),
            spread_full=float(spread_x[i]),
            relative_spread_plane=ratio(spread_u[i], d_u[neighbours[i]].mean()),
            relative_spread_full=ratio(spread_x[i], d_x[neighbours[i]].mean()),
        )
        for i, k in enumerate(classes)
    )
    return ClusterTightness(
        clusters=clusters,  # type: ignore[arg-type]
        centre_distances_plane=tuple(float(v) for v in d_u),  # type: ignore[arg-type]
        centre_distances_full=tuple(float(v) for v in d_x),  # type: ignore[arg-type]
        relative_spread_plane=ratio(spread_u.mean(), d_u.mean()),
        relative_spread_full=ratio(spread_x.mean(), d_x.mean()),
        equidistance_plane=ratio(d_u.min(), d_u.max()),
        equidistance_full=ratio(d_x.min(), d_x.max()),
    )


# --------------------------------------------------------------------------------------------------------
# choosing the classes
# --------------------------------------------------------------------------------------------------------


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``C[i, j]`` = number of examples of true class i predicted as j (argmax of the logits); int64 ``[K, K]``."""
    _validate_tensor(logits, "logits")
    _validate_tensor(labels, "labels")
    if logits.ndim != 2 or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise InputError(f"Expected `logits` [N, K] and `labels` [N], but got shapes {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    k = int(logits.shape[1])
    predicted = logits.argmax(dim=1)
    flat = labels.to(torch.int64) * k + predicted
    return torch.bincount(flat, minlength=k * k).reshape(k, k)


def most_confused_classes(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int, int]:
    r"""The three classes with the most mutual confusion, ascending.

    With the confusion matrix C (true × predicted) and :math:`M = C + C^\top` (diagonal ignored), the triple
    maximising :math:`M_{ab} + M_{ac} + M_{bc}` — the number of examples of any of the three classes predicted
    as another of the three. Ties (e.g. a model that makes no mistakes) are broken by the same sum over
    softmax probabilities, :math:`P_{ab} = \sum_{i: y_i = a} p_{ib} + \sum_{i: y_i = b} p_{ia}`, then by the
    smallest indices. Exhaustive for up to 64 classes; above that, over the 64 classes with the largest
    total mutual confusion.

    Several models (or data sets) can be pooled by concatenating their logits and labels.
    """
    pair = _pair_confusion(logits, labels)
    k = int(pair.shape[0])
    if k > _EXHAUSTIVE_CLASSES:
        candidates = torch.topk(pair.sum(dim=1), _EXHAUSTIVE_CLASSES).indices.sort().values
    else:
        candidates = torch.arange(k, device=logits.device)
    return _best_triple(pair, candidates, largest=True)


def _pair_confusion(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:math:`M = C + C^\top` (diagonal 0) plus the soft tie-breaker :math:`(P + P^\top) / (n + 1)`."""
    counts = confusion_matrix(logits, labels).to(_F64)
    k = int(counts.shape[0])
    if k < 3:
        raise InputError(f"A plane projection needs at least 3 classes, but the logits have {k}")
    probs = torch.softmax(logits.to(_F64), dim=1)
    soft = torch.zeros(k, k, dtype=_F64, device=logits.device).index_add_(0, labels.to(torch.int64), probs)
    n = float(logits.shape[0])
    # integer counts first; the soft sum (< n + 1 in total for a triple) only breaks ties
    pair = counts + counts.T + (soft + soft.T) / (n + 1.0)
    pair.fill_diagonal_(0.0)
    return pair


def _best_triple(pair: torch.Tensor, candidates: torch.Tensor, *, largest: bool) -> tuple[int, int, int]:
    """The triple of ``candidates`` with the largest (or smallest) :math:`M_{ab} + M_{ac} + M_{bc}`, ascending;
    ties to the smallest indices."""
    sub = pair[candidates][:, candidates]
    m = int(candidates.numel())
    score = sub[:, :, None] + sub[:, None, :] + sub[None, :, :]  # M_ab + M_ac + M_bc
    r = torch.arange(m, device=pair.device)
    valid = (r[:, None, None] < r[None, :, None]) & (r[None, :, None] < r[None, None, :])
    if largest:
        score = torch.where(valid, score, torch.full_like(score, -1.0))
        best = int(torch.argmax(score.flatten()))  # first maximum: smallest indices on ties
    else:
        score = torch.where(valid, score, torch.full_like(score, float("inf")))
        best = int(torch.argmin(score.flatten()))
    i, rest = divmod(best, m * m)
    j, ll = divmod(rest, m)
    picked = sorted(int(candidates[t]) for t in (i, j, ll))
    return picked[0], picked[1], picked[2]


def paper_layout_classes(logits: torch.Tensor, labels: torch.Tensor) -> tuple[tuple[int, int, int],
                                                                             tuple[int, int, int]]:
    r"""The two rows of Müller et al.'s Fig. 1 layout from one confusion matrix: three *dissimilar* classes and
    a *similar* pair with a third class.

    With :math:`M` as in :func:`most_confused_classes` (mutual confusion counts, soft-probability tie-break):

    * dissimilar: the triple minimising :math:`M_{ab} + M_{ac} + M_{bc}`, ascending (ties: smallest indices;
      above 64 classes, among the 64 with the least total confusion);
    * similar: the pair (a, b), a < b, maximising :math:`M_{ab}`, then the class c minimising
      :math:`M_{ac} + M_{bc}` — returned as (a, b, c), so the plane's first axis runs between the similar pair.

    Müller et al. show three dissimilar classes (CIFAR-10, CIFAR-100, ImageNet rows) and, in the last row,
    two semantically similar ImageNet classes (toy and miniature poodle) with a third, different one.
    """
    pair = _pair_confusion(logits, labels)
    k = int(pair.shape[0])
    if k > _EXHAUSTIVE_CLASSES:
        candidates = torch.topk(pair.sum(dim=1), _EXHAUSTIVE_CLASSES, largest=False).indices.sort().values
    else:
        candidates = torch.arange(k, device=logits.device)
    dissimilar = _best_triple(pair, candidates, largest=False)
    upper = torch.triu(pair, diagonal=1)
    upper = torch.where(torch.triu(torch.ones_like(pair, dtype=torch.bool), diagonal=1), upper,
                        torch.full_like(upper, -1.0))
    a, b = divmod(int(torch.argmax(upper.flatten())), k)  # first maximum: smallest indices on ties
    third = pair[a] + pair[b]
    third[[a, b]] = float("inf")
    c = int(torch.argmin(third))
    return dissimilar, (a, b, c)


def resolve_classes(spec: str | Sequence[str | int], num_classes: int,
                    class_names: Sequence[str] | None = None) -> tuple[int, int, int]:
    """Three class indices from ``"a,b,c"`` (or a sequence) of class names or indices.

    A token that equals a class name means that class; otherwise an integer token is an index. Raises
    :class:`InputError` for unknown names, indices out of range, duplicates or a count other than 3.
    """
    if isinstance(spec, str):
        tokens: list[str | int] = [t.strip() for t in spec.split(",")]
        tokens = [t for t in tokens if t != ""]
    else:
        tokens = list(spec)
    names = list(class_names) if class_names is not None else None
    values: list[int] = []
    for token in tokens:
        if isinstance(token, str) and names is not None and token in names:
            values.append(names.index(token))
            continue
        try:
            index = int(token)
        except (TypeError, ValueError):
            known = f"; known names: {', '.join(names[:12])}{', …' if len(names) > 12 else ''}" if names else \
                " (no class names are known: use indices)"
            raise InputError(f"unknown class '{token}'{known}") from None
        if not 0 <= index < num_classes:
            raise InputError(f"class index {index} is out of range: the model has {num_classes} classes "
                             f"(0..{num_classes - 1})")
        values.append(index)
    seen: dict[int, str | int] = {}
    for token, value in zip(tokens, values, strict=True):
        if value in seen:
            raise InputError(f"class {value} is given twice ('{seen[value]}' and '{token}'); a plane projection "
                             "needs 3 distinct classes")
        seen[value] = token
    if len(values) != 3:
        raise InputError(f"a plane projection needs exactly 3 distinct classes, got {len(values)}: "
                         f"{', '.join(map(str, tokens)) or 'none'}")
    return values[0], values[1], values[2]
