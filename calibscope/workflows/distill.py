"""``calibscope distill``: what each teacher's soft targets carry and how closely each student follows each
teacher, on one labelled dataset (Hinton et al. 2015; Müller et al. 2019 §4; Stanton et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.errors import ArgumentError

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.workflows.session import Session

DEFAULT_TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 20.0)  # = diagnostics.distillation.DEFAULT_TEMPERATURES
DEFAULT_TEMPERATURE = 4.0
DEFAULT_PAIRS = 5


@dataclass(frozen=True)
class DistillSettings:
    """``temperatures``: the soft-target sweep; ``temperature``: the distillation T (loss, matrices);
    ``pairs``: most similar class pairs listed; ``teachers``: how many of the leading checkpoints are
    teachers (the rest are students)."""

    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    temperature: float = DEFAULT_TEMPERATURE
    pairs: int = DEFAULT_PAIRS
    teachers: int = 1

    def __post_init__(self) -> None:
        if not self.temperatures or any(not t > 0 for t in self.temperatures):
            raise ArgumentError("temperatures", "`temperatures` must be positive numbers")
        if not self.temperature > 0:
            raise ArgumentError("temperature", f"`temperature` must be larger than 0, got {self.temperature}")
        if self.pairs < 0:
            raise ArgumentError("pairs", f"`pairs` must be 0 or more, got {self.pairs}")
        if self.teachers < 1:
            raise ArgumentError("teachers", f"`teachers` must be at least 1, got {self.teachers}")


@dataclass(frozen=True, eq=False)
class DistillResult:
    """``teachers``: name → SoftTargets; ``students``: (teacher, student, StudentAgreement) for every pair;
    ``class_names``; ``data``: where the examples came from."""

    teachers: dict[str, Any]
    students: tuple[tuple[str, str, Any], ...]
    class_names: tuple[str, ...] | None
    data: str | None
    settings: DistillSettings


def run_distill(session: Session, checkpoints: list[Path | str | Any], settings: DistillSettings | None = None, *,
                names: list[str] | None = None) -> DistillResult:
    """Soft targets of the first ``settings.teachers`` checkpoints and every student against every teacher
    (a checkpoint may also be an ensemble / MC-dropout :class:`~calibscope.workflows.ensemble.Predictive`)."""
    from calibscope.diagnostics.distillation import soft_targets, student_agreement
    from calibscope.workflows.ensemble import as_model_ref

    s = settings or DistillSettings()
    paths = [as_model_ref(c) for c in checkpoints]
    names = names or [p.name for p in paths]
    if s.teachers > len(paths):
        raise ArgumentError("teachers", f"`teachers` is {s.teachers} but only {len(paths)} checkpoints were given")
    outputs = {}
    class_names = None
    for name, path in zip(names, paths, strict=True):
        out, ckpt = session.outputs(path)
        if out.labels is None:
            raise ArgumentError("data", f"'{session.source(path)}' holds no labels; distillation needs them")
        outputs[name] = out
        class_names = class_names or (getattr(ckpt, "metadata", {}) or {}).get("class_names")
    first = outputs[names[0]]
    for name in names[1:]:
        if outputs[name].logits.shape != first.logits.shape or not bool((outputs[name].labels == first.labels).all()):
            raise ArgumentError("data", f"'{name}' and '{names[0]}' were not evaluated on the same examples "
                                "(shapes or labels differ)")
    teachers = {n: soft_targets(outputs[n].logits, outputs[n].labels, temperatures=s.temperatures,
                                temperature=s.temperature, n_pairs=s.pairs) for n in names[: s.teachers]}
    students = tuple((t, st, student_agreement(outputs[t].logits, outputs[st].logits, outputs[t].labels,
                                               temperature=s.temperature))
                     for t in names[: s.teachers] for st in names[s.teachers:])
    if class_names is None and session.dataset is not None and session.dataset.class_names:
        class_names = session.dataset.class_names
    return DistillResult(teachers, students, None if class_names is None else tuple(class_names),
                         None if session.data_path is None else str(session.data_path), s)
