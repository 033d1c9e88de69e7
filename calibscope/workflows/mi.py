"""Logit-gap mutual information (Müller et al. 2019 §4, App. A.2) across a series of checkpoints, as
``calibscope mi`` and the report's MI section compute it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from calibscope.bounds import check_seed
from calibscope.errors import ArgumentError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.inference.augment import Augmentation
    from calibscope.results import MiMeasurement as Measured
    from calibscope.results import MiResult
    from calibscope.workflows.session import Session

DEFAULT_EXAMPLES = 300  # per class; Müller et al.: 300 + 300
DEFAULT_DRAWS = 5  # L
DEFAULT_REPETITIONS = 3


@dataclass(frozen=True)
class MiSettings:
    """``classes``: the two classes a, b of the logit gap z_a − z_b (``"3,5"``, ``("cat", "dog")``);
    ``examples`` per class (seeded choice); ``draws`` L ≥ 2 augmented draws each; ``repetitions`` of the draws;
    ``augment``: ``"noise:σ"`` (the default, σ = 0.05), ``"paper"`` (±4 px shift + flip), ``"shift"`` or
    ``"shift+noise:σ"``; ``shift``: largest translation in pixels (default 4); ``flip``: random horizontal flips
    with shifts; ``seed`` of everything random."""

    classes: str | Sequence[str | int] | None = None
    examples: int = DEFAULT_EXAMPLES
    draws: int = DEFAULT_DRAWS
    repetitions: int = DEFAULT_REPETITIONS
    augment: str | None = None
    shift: int | None = None
    flip: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.examples < 1:
            raise ArgumentError("examples", f"`examples` must be at least 1, got {self.examples}")
        if self.draws < 2:
            raise ArgumentError("draws", "`draws` must be at least 2 (the within-example variance σ² needs two "
                                f"draws of each example), got {self.draws}")
        if self.repetitions < 1:
            raise ArgumentError("repetitions", f"`repetitions` must be at least 1, got {self.repetitions}")
        if self.seed < 0:
            raise ArgumentError("seed", f"`seed` must be 0 or more, got {self.seed}")
        check_seed(self.seed)


@dataclass(frozen=True)
class MiRun:
    results: tuple[MiResult, ...]
    settings: Measured  # what every checkpoint was measured on
    notes: tuple[str, ...] = ()


def run_mi(session: Session, checkpoints: Sequence[Path | str], settings: MiSettings | None = None, *,
           names: Sequence[str] | None = None, labels: Sequence[str] | None = None) -> MiRun:
    """Î(X; Y) of each checkpoint on the same examples and draws, Y = z_a − z_b.

    With μ_x the mean of example x's L draws and σ² the pooled within-example variance,
    Î = mean over draws of [−(y − μ_x)²/2σ² − log (1/N) Σ_x' exp(−(y − μ_x')²/2σ²)], between 0 and log N.
    ``names``: display names (default: the file names); ``labels``: x-axis labels (default: the names, with
    a numeric axis when each has a number, e.g. ``epoch_12``).
    """
    from calibscope.diagnostics.mutual_information import (
        augmentation_check,
        class_pair_examples,
        logit_gap_mutual_information,
        logit_gaps,
    )
    from calibscope.inference.augment import augmented_logits, validate_augmentation
    from calibscope.results import MiMeasurement as Measured
    from calibscope.results import MiResult
    from calibscope.workflows.projection import metadata_class_names
    from calibscope.workflows.session import display_names

    s = settings or MiSettings()
    if s.classes is None:
        raise ArgumentError("classes", "`classes` is required: name the two classes whose logit gap z_a − z_b is "
                            "measured, e.g. 3,5 or cat,dog")
    paths = [Path(p) for p in checkpoints]
    names = list(names) if names is not None else display_names(paths)
    if labels is None:
        labels, x_values = names, x_positions([Path(n).stem for n in names], whole=False)
    else:
        if len(labels) != len(paths):
            raise ArgumentError("labels", f"`labels` needs one label per checkpoint ({len(paths)}), got {len(labels)}")
        x_values = x_positions(list(labels), whole=True)
    dataset = session.require_dataset("mi needs the data to augment (the training examples)")
    if dataset.labels is None:
        raise InputError(f"'{dataset.source}' has no labels: mi needs them to pick examples of the two classes")
    augmentation = augmentation_for(s, dataset)
    validate_augmentation(augmentation, tuple(dataset.inputs.shape))
    why = ("mi must run a model on augmented inputs (for gaps you already have, call "
           "calibscope.diagnostics.logit_gap_mutual_information from Python)")
    first = session.model(paths[0], why=why, keep=False)
    class_names = dataset.class_names or metadata_class_names(first.metadata)
    pair = parse_pair(s.classes, class_names)
    index = class_pair_examples(dataset.labels, pair, per_class=s.examples, seed=s.seed)
    chosen_labels = dataset.labels[index]
    counts = (int((chosen_labels == pair[0]).sum()), int((chosen_labels == pair[1]).sum()))
    chosen = dataset.inputs[index]
    notes = []
    used = dataset.metadata.get("split")
    if used is not None and used != "train":
        notes.append(f"measuring on the '{used}' split of {dataset.source}; Müller et al. use the training "
                     "examples (split train)")

    plain = session.with_options(capture_features=False, layer=None)  # the logits alone
    results = []
    for name, label, x, path in zip(names, labels, x_values, paths, strict=True):
        checkpoint = session.model(path, why=why, keep=False)  # a long series is not held in memory
        run = augmented_logits(checkpoint.module, chosen, augmentation=augmentation, draws=s.draws,
                               repetitions=s.repetitions, seed=s.seed, options=plain.options_for(checkpoint))
        estimate = logit_gap_mutual_information(logit_gaps(run.logits, pair))
        check = augmentation_check(run.clean_logits, run.logits, chosen_labels)
        if not check.premise_holds:
            notes.append(premise_warning(name, check, augmentation.describe()))
        provenance = {**run.meta, "checkpoint_sha256": checkpoint.sha256, "dataset_sha256": dataset.sha256}
        results.append(MiResult(name, path, checkpoint.format, label, x, estimate, provenance, check))
    measured = Measured(
        classes=pair, class_names=tuple(_name(k, class_names) for k in pair), examples=counts,
        requested_per_class=s.examples, draws=s.draws, repetitions=s.repetitions,
        augmentation=augmentation.describe(), seed=s.seed, data=str(dataset.source), split=used)
    return MiRun(tuple(results), measured, tuple(notes))


# --------------------------------------------------------------------------------------------------------
# inputs (no math)
# --------------------------------------------------------------------------------------------------------


def premise_warning(name: str, check, augmentation: str) -> str:
    """The warning when the augmentation changes the training predictions (Müller et al.'s d(·) is one the
    network was trained with; see :func:`~calibscope.diagnostics.mutual_information.augmentation_check`)."""
    return (f"warning: {name}: under {augmentation} only {100 * check.agreement:.1f} % of the draws keep the "
            f"unaugmented prediction (accuracy {100 * check.accuracy:.1f} % → {100 * check.augmented_accuracy:.1f} "
            f"%; premise: ≥ {100 * check.min_agreement:.0f} %): Î then measures the augmentation, not the model. "
            "Use one the model was trained with or a weaker one (e.g. --augment noise:0.02, --shift 1 --no-flip)")


def natural_key(path: Path | str) -> list:
    """``epoch_2`` before ``epoch_10``: digit runs compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower())
            for part in re.split(r"(\d+)", str(path)) if part]


def x_positions(labels: list[str], *, whole: bool) -> list[float | None]:
    """Numeric x positions: the label itself (``whole``) or its last number (``epoch_12`` → 12), when every label
    has one and they are distinct; else all None.

    >>> x_positions(["epoch_1", "epoch_12"], whole=False)
    [1.0, 12.0]
    >>> x_positions(["hard", "smooth"], whole=False)
    [None, None]
    """
    values: list[float | None] = []
    for label in labels:
        if whole:
            try:
                values.append(float(label))
            except ValueError:
                values.append(None)
        else:
            found = re.findall(r"\d+(?:\.\d+)?", label)
            values.append(float(found[-1]) if found else None)
    if any(v is None for v in values) or len(set(values)) != len(values):
        return [None] * len(labels)
    return values


def parse_pair(spec: str | Sequence[str | int], class_names: tuple[str, ...] | None) -> tuple[int, int]:
    """``a,b``: class names (when the data or checkpoint names its classes) or indices."""
    parts = [p.strip() for p in spec.split(",") if p.strip()] if isinstance(spec, str) else list(spec)
    if len(parts) != 2:
        raise ArgumentError("classes", f"`classes` needs exactly two classes a,b (the logit gap is z_a − z_b), "
                            f"got '{spec}'")
    pair = []
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            pair.append(part)
        elif class_names is not None and part in class_names:
            pair.append(class_names.index(part))
        elif re.fullmatch(r"\d+", str(part)):
            pair.append(int(part))
        else:
            known = f"; classes: {', '.join(class_names[:12])}" if class_names else ""
            raise ArgumentError("classes", f"`classes`: '{part}' is neither a class index nor a class name{known}")
    if pair[0] == pair[1]:
        raise ArgumentError("classes", f"`classes` names one class twice ({spec}); the mutual information needs "
                            "two classes")
    if class_names is not None:
        for k in pair:
            if k >= len(class_names):
                raise ArgumentError("classes", f"`classes`: index {k} is out of range, the data has "
                                    f"{len(class_names)} classes")
    return pair[0], pair[1]


def _name(index: int, class_names: tuple[str, ...] | None) -> str:
    return class_names[index] if class_names is not None and index < len(class_names) else str(index)


def augmentation_for(s: MiSettings, dataset) -> Augmentation:
    """``augment`` / ``shift`` / ``flip`` → :class:`~calibscope.inference.augment.Augmentation` (default:
    Gaussian input noise, see :func:`~calibscope.inference.augment.augmentation_from_options`)."""
    from calibscope.inference.augment import augmentation_from_options

    return augmentation_from_options(s.augment, shift=s.shift, no_flip=not s.flip,
                                     input_shape=tuple(dataset.inputs.shape), input_dtype=dataset.inputs.dtype)
