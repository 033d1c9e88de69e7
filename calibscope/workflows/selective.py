"""Selective classification of one checkpoint (``calibscope selective`` and the report's section): risk–coverage,
AURC and E-AURC (Geifman et al. 2019) of each confidence score."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from calibscope.diagnostics.defaults import DEFAULT_COVERAGES
from calibscope.errors import ArgumentError
from calibscope.workflows.ood import (
    DEFAULT_SHRINKAGE,
    DEFAULT_TEMPERATURE,
    Shrinkage,
    Temperature,
    check_shrinkage,
    check_temperature,
    fit_train_gaussians,
    resolve_temperature,
    wants_features,
)
from calibscope.workflows.ood_scores import DetectorScorer, DetectorSettings, needs

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.results import SelectiveResult
    from calibscope.workflows.session import Session

DEFAULT_SCORES = ("msp",)


@dataclass(frozen=True)
class SelectiveSettings:
    """``scores``: confidence scores, drawn side by side; ``coverages``: where the accuracy of the kept examples
    is reported; ``target_risk``: report the largest coverage whose error rate is at most this; ``temperature``
    ``shrinkage`` and ``detectors`` (the post-hoc detectors' hyper-parameters) as in
    :class:`~calibscope.workflows.ood.OodSettings`."""

    scores: tuple[str, ...] = DEFAULT_SCORES
    coverages: tuple[float, ...] = DEFAULT_COVERAGES
    target_risk: float | None = None
    temperature: Temperature = DEFAULT_TEMPERATURE
    shrinkage: Shrinkage = DEFAULT_SHRINKAGE
    detectors: DetectorSettings = field(default_factory=DetectorSettings)

    def __post_init__(self) -> None:
        from calibscope.diagnostics.ood import parse_scores

        object.__setattr__(self, "scores", parse_scores(self.scores))
        object.__setattr__(self, "coverages", tuple(float(c) for c in self.coverages))
        object.__setattr__(self, "temperature", check_temperature(self.temperature))
        object.__setattr__(self, "shrinkage", check_shrinkage(self.shrinkage))


def run_selective(session: Session, checkpoint: Path | str, settings: SelectiveSettings | None = None, *,
                  train: Path | str | None = None, val: Path | str | None = None,
                  name: str | None = None) -> SelectiveResult:
    """Risk–coverage of ``checkpoint`` on the session's labelled data for each score; ``train``: fit data of
    the Mahalanobis score and the post-hoc detectors; ``val``: Gram's normalisers."""
    from calibscope.diagnostics.ood import DETECTOR_SCORES
    from calibscope.diagnostics.selective import selective_report
    from calibscope.loading.types import LogitsCheckpoint
    from calibscope.results import SelectiveResult
    from calibscope.workflows.ensemble import as_model_ref, check_predictive_scores

    s = settings or SelectiveSettings()
    path = as_model_ref(checkpoint)
    check_predictive_scores(s.scores, path)
    features = wants_features(s.scores, train)
    detectors = tuple(n for n in s.scores if n in DETECTOR_SCORES)
    if features or "features" in needs(detectors):
        session = session.with_options(capture_features=True)
    outputs, ckpt = session.outputs(path)
    scorer = DetectorScorer(session, ckpt, detectors, s.detectors, train=train, val=val) if detectors else None
    if outputs.labels is None:
        raise ArgumentError("data", f"'{session.source(path)}' holds no labels; selective risk needs them")
    t, temperature_fit = resolve_temperature(s.temperature, outputs)
    gaussians, train_meta = None, None
    if features:
        gaussians, train_meta = fit_train_gaussians(session, Path(train), checkpoint=ckpt, shrinkage=s.shrinkage)
    given = {n: scorer.score(n, outputs, session.dataset, role="test") for n in detectors}
    reports = tuple(
        selective_report(outputs.logits, outputs.labels, score=score, temperature=t, features=outputs.features,
                         gaussians=gaussians, coverages=s.coverages, target_risk=s.target_risk,
                         member_logits=outputs.member_logits, confidences=given.get(score))
        for score in s.scores)
    if scorer is not None and train_meta is None and "train" in scorer.meta:
        train_meta = scorer.meta["train"]
    fitted = features or "train" in needs(detectors)
    test_path = session.data_path if session.data_path is not None else (
        path if isinstance(ckpt, LogitsCheckpoint) else None)
    return SelectiveResult(
        name=name or path.name, path=path, format=ckpt.format,
        data={"test": None if test_path is None else str(test_path), "train": str(train) if fitted else None,
              **({"val": str(val)} if val is not None else {})},
        reports=reports, inference={"test": outputs.meta,
                                    **({"train": train_meta} if fitted and train_meta is not None else {})},
        temperature_fit=temperature_fit)
