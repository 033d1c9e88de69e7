"""Penultimate-layer plane projections (Müller et al. 2019, §2) of one or more models, as ``calibscope project``
and the report's projection section compute them, and the choice of the three classes (also the default
class pair of the report's MI section)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from calibscope.errors import ArgumentError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.loading.types import Checkpoint
    from calibscope.results import ClassChoice, ProjectionResult
    from calibscope.workflows.session import Session

DEFAULT_PER_CLASS = 100


@dataclass(frozen=True)
class ProjectionSettings:
    """``classes``: three classes a,b,c by index or name (``"3,5,8"``, ``("cat", "dog", "deer")``), None for
    the three with most mutual confusion; ``per_class``: examples per class (the first ones of each class, in
    dataset order), 0 for all; ``paper_layout``: Müller et al.'s Fig. 1 rows — three dissimilar classes, then
    a similar pair with a third (:func:`~calibscope.diagnostics.projection.paper_layout_classes`)."""

    classes: str | Sequence[str | int] | None = None
    per_class: int = DEFAULT_PER_CLASS
    paper_layout: bool = False

    def __post_init__(self) -> None:
        if self.paper_layout and self.classes is not None:
            raise ArgumentError("paper_layout", "`paper_layout` picks its own classes (least confused triple, most "
                                "confused pair + a third); give either it or `classes`")
        if isinstance(self.per_class, bool) or not isinstance(self.per_class, int) or self.per_class < 0:
            raise ArgumentError("per_class", "`per_class` must be a positive number of examples (or 0 for all), "
                                f"got {self.per_class}")


@dataclass(frozen=True)
class ProjectionRow:
    """One row of the paper layout: ``role`` ("dissimilar" or "similar"), its classes, one result per model."""

    role: str
    choice: ClassChoice
    results: tuple[ProjectionResult, ...]


@dataclass(frozen=True)
class ProjectionRun:
    """One :class:`~calibscope.render.projection_view.ProjectionResult` per model, on the same classes; with
    ``paper_layout``, ``rows`` holds both rows (``results``/``choice`` are then the dissimilar row's)."""

    results: tuple[ProjectionResult, ...]
    choice: ClassChoice
    per_class: int | None  # None: all examples
    rows: tuple[ProjectionRow, ...] | None = None


def metadata_class_names(metadata: dict) -> tuple[str, ...] | None:
    names = metadata.get("class_names")
    return tuple(str(n) for n in names) if isinstance(names, (list, tuple)) else None


def class_names(session: Session, checkpoints: Sequence[Checkpoint]) -> tuple[str, ...] | None:
    """The data's class names, else those in a checkpoint's metadata, else None."""
    dataset = session.dataset
    names = dataset.class_names if dataset is not None else None
    if names is None:
        names = next((metadata_class_names(c.metadata) for c in checkpoints if metadata_class_names(c.metadata)),
                     None)
    return names


def choose_classes(sets: Sequence[Session], checkpoints: Sequence[Checkpoint],
                   classes: str | Sequence[str | int] | None) -> ClassChoice:
    """``classes`` resolved to indices, else the three most mutually confused on the last of ``sets``
    (validation when given, else training data), pooled over the models."""
    return _choices(sets, checkpoints, classes, paper=False)[0]


def choose_paper_layout(sets: Sequence[Session], checkpoints: Sequence[Checkpoint]) -> tuple[ClassChoice, ClassChoice]:
    """(dissimilar, similar) class choices of the paper layout, on the last of ``sets``, pooled over the models."""
    dissimilar, similar = _choices(sets, checkpoints, None, paper=True)
    return dissimilar, similar


def _choices(sets, checkpoints, classes, *, paper: bool) -> tuple[ClassChoice, ...]:
    import torch

    from calibscope.diagnostics.projection import most_confused_classes, paper_layout_classes, resolve_classes
    from calibscope.results import ClassChoice

    pick = sets[-1]
    per_model = [pick.run(c) for c in checkpoints]
    ks = {int(o.logits.shape[1]) for o in per_model}
    if len(ks) > 1:
        raise InputError(f"the checkpoints have different numbers of classes ({sorted(ks)}); compare models of "
                         "the same task")
    k = ks.pop()
    names = class_names(sets[0], checkpoints)
    if names is not None and len(names) != k:
        names = None
    if classes is not None:
        triples, picked_on = [resolve_classes(classes, k, names)], None
    else:
        logits = torch.cat([o.logits for o in per_model])
        labels = torch.cat([o.labels for o in per_model])
        triples = list(paper_layout_classes(logits, labels)) if paper else [most_confused_classes(logits, labels)]
        picked_on = str(pick.data_path) + (f", pooled over {len(checkpoints)} models" if len(checkpoints) > 1 else "")
    return tuple(ClassChoice(t, tuple(names[i] if names else str(i) for i in t), picked_on) for t in triples)


def projection_sets(session: Session, val: Session | Path | str | None) -> list[tuple[str, Session]]:
    """``[("train", ...), ("val", ...)]``: the sessions the projection runs on, with penultimate features."""
    from calibscope.loading.files import display

    train = session.with_options(capture_features=True)
    sets = [("train", train)]
    if val is not None:
        from calibscope.workflows.session import Session

        other = val if isinstance(val, Session) else session.for_data(val, split=session.split,
                                                                        label_column=session.label_column)
        sets.append(("val", other.with_options(capture_features=True)))
    for _, s in sets:
        if s.require_dataset("the projection plots examples of the data").labels is None:
            raise InputError(f"{display(s.data_path)} has no labels; the projection colours examples by their "
                             "true class")
    return sets


def run_projection(session: Session, checkpoints: Sequence[Path | str], settings: ProjectionSettings | None = None,
                   *, val: Session | Path | str | None = None, names: Sequence[str] | None = None) -> ProjectionRun:
    """Plane projections of every model on the session's (training) data and on ``val`` (second column).

    Templates w̃_k = (w_k, b_k) of the final layer, x̃ = (x, 1), E = orthonormal basis of
    span(w̃_b − w̃_a, w̃_c − w̃_a), coordinates u = Eᵀ(x̃ − p0) with p0 the mean template.
    """
    from calibscope.workflows.session import display_names

    s = settings or ProjectionSettings()
    sets = projection_sets(session, val)
    paths = [Path(p) for p in checkpoints]
    names = list(names) if names is not None else display_names(paths)
    models = [session.model(p, why="the projection needs the model itself (.pt2, safetensors or a state_dict "
                                   "with arch) to read its penultimate layer") for p in paths]
    per_class = s.per_class or None
    if s.paper_layout:
        dissimilar, similar = choose_paper_layout([x for _, x in sets], models)
        rows = tuple(ProjectionRow(role, choice, _project_all(sets, names, paths, models, choice, per_class))
                     for role, choice in (("dissimilar", dissimilar), ("similar", similar)))
        return ProjectionRun(rows[0].results, dissimilar, per_class, rows)
    choice = choose_classes([x for _, x in sets], models, s.classes)
    return ProjectionRun(_project_all(sets, names, paths, models, choice, per_class), choice, per_class)


def _project_all(sets, names, paths, models, choice: ClassChoice, per_class: int | None
                 ) -> tuple[ProjectionResult, ...]:
    from calibscope.diagnostics.projection import plane_projection
    from calibscope.loading.files import display
    from calibscope.results import ProjectedSplit, ProjectionResult

    results = []
    for name, path, checkpoint in zip(names, paths, models, strict=True):
        splits = []
        for label, data in sets:
            outputs = data.run(checkpoint)
            if outputs.features is None or outputs.weight is None:
                raise InputError(f"{display(path)}: no penultimate features were captured; use the .pt2 or "
                                 "safetensors form of the model, or name the final layer with `layer`")
            try:
                projection = plane_projection(outputs.features, outputs.labels, outputs.weight, outputs.bias,
                                              choice.indices, per_class=per_class)
            except InputError as exc:
                raise InputError(f"{name} on {display(data.data_path)}: {exc}") from None
            splits.append(ProjectedSplit(label, data.data_path, projection, outputs.meta))
        feature_layer = sets[0][1].run(checkpoint).meta.get("feature_layer")
        results.append(ProjectionResult(name, path, checkpoint.format, feature_layer, tuple(splits)))
    return tuple(results)
