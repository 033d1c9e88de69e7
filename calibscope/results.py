"""The result types of the workflows: what each ``run_*`` returns and every renderer reads.

Plain frozen dataclasses holding the diagnostics' results (from :mod:`calibscope.diagnostics`) with the
provenance of the inputs (names, paths, formats, ``Outputs.meta``). Nothing here computes, loads or draws;
this module imports nothing of calibscope at run time, so that ``render`` and ``workflows`` can both use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.diagnostics.calibration import CalibrationMetrics, CalibrationReport
    from calibscope.diagnostics.corp import CorpReliability
    from calibscope.diagnostics.hessian import HessianRepeats, HessianSpectrum
    from calibscope.diagnostics.landscape import LossLine, LossSurface
    from calibscope.diagnostics.mutual_information import AugmentationCheck, LogitGapMutualInformation
    from calibscope.diagnostics.ood import OodReport
    from calibscope.diagnostics.projection import PlaneProjection
    from calibscope.diagnostics.selective import SelectiveReport
    from calibscope.diagnostics.temperature import TemperatureFit, TemperatureSweep

__all__ = ["ClassChoice", "EceResult", "Evaluation", "Gate", "GateCheck", "HessianResult", "LandscapeResult",
           "MiResult",
           "MiMeasurement", "OodResult", "ProjectedSplit", "ProjectionResult", "SelectiveResult",
           "TemperatureResult"]


# --------------------------------------------------------------------------------------------------------
# calibscope ece (and the gate)
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EceResult:
    """One checkpoint's numbers. ``headline``: the metric (key of ``metrics``) that ``ece`` in the JSON and
    the gates refer to; ``temperature``: ``{"value": T, "source": ...}`` when the logits were divided by T;
    ``baseline``: ``{"path", "name", "value", "delta"}`` when compared with an earlier run."""

    name: str  # display name of the checkpoint
    path: Path
    format: str  # checkpoint format (export, torchscript, safetensors, npz, ...)
    report: CalibrationReport
    inference: dict[str, Any]  # Outputs.meta: device, precision, batch size, hashes, cache, timings
    metrics: CalibrationMetrics | None = None
    headline: str = "ece"
    temperature: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    warnings: tuple[str, ...] = ()  # about the data or the comparison: also printed on stderr
    notes: tuple[str, ...] = ()  # about the numbers' reliability (small bins): shown with the tables
    corp: CorpReliability | None = None  # with `ece --corp`: the CORP diagram and score decompositions

    @property
    def value(self) -> float:
        """The headline calibration error (ECE in the chosen norm)."""
        if self.metrics is not None:
            return self.metrics.value(self.headline)
        return {"ece": self.report.ece, "mce": self.report.mce}.get(self.headline, self.report.ece)


@dataclass(frozen=True)
class GateCheck:
    """One threshold applied to one checkpoint: ``check`` is ``"max_ece"``, ``"max_increase"`` or
    ``"max_lambda1"``."""

    checkpoint: str
    check: str
    metric: str
    value: float | None
    threshold: float
    passed: bool
    message: str

    @property
    def model(self) -> str:
        return self.checkpoint


@dataclass(frozen=True)
class Gate:
    """The CI gate of one run: thresholds, the baseline file, and every check made."""

    max_ece: float | None = None
    max_increase: float | None = None
    baseline: str | None = None
    checks: tuple[GateCheck, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failing(self) -> list[str]:
        names: list[str] = []
        for c in self.checks:
            if not c.passed and c.checkpoint not in names:
                names.append(c.checkpoint)
        return names

    @property
    def active(self) -> bool:
        return self.max_ece is not None or self.max_increase is not None


# --------------------------------------------------------------------------------------------------------
# calibscope temperature
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """One data set before and after scaling."""

    source: str
    fingerprint: dict[str, Any]
    before: CalibrationMetrics
    after: CalibrationMetrics
    sweep: TemperatureSweep | None = None


@dataclass(frozen=True)
class TemperatureResult:
    name: str
    path: Path
    format: str
    checkpoint_sha256: str | None
    objective: str
    nll_fit: TemperatureFit | None
    ece_fit: TemperatureFit
    fit: Evaluation
    apply: Evaluation | None = None
    inference: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def chosen(self) -> TemperatureFit:
        return self.nll_fit if self.objective == "nll" and self.nll_fit is not None else self.ece_fit

    @property
    def temperature(self) -> float:
        return self.chosen.temperature


# --------------------------------------------------------------------------------------------------------
# calibscope selective
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectiveResult:
    """One ``calibscope selective`` run: checkpoint, datasets (``data``: ``test`` and ``train`` paths or None),
    one report per confidence score, and how the outputs were produced (``inference``: Outputs.meta per
    dataset)."""

    name: str
    path: Path
    format: str
    data: dict[str, str | None]
    reports: tuple[SelectiveReport, ...]
    inference: dict[str, dict[str, Any]]
    temperature_fit: dict[str, Any] | None = None  # how T was fitted, when --temperature fit


# --------------------------------------------------------------------------------------------------------
# calibscope ood
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OodResult:
    """One ``calibscope ood`` run: the checkpoint, the datasets (``data``: ``in``, ``ood``, ``train`` paths or
    None), the :class:`OodReport`, and how each side's outputs were produced (``inference``: Outputs.meta
    per side)."""

    name: str  # display name of the checkpoint
    path: Path
    format: str
    data: dict[str, str | None]
    report: OodReport
    inference: dict[str, dict[str, Any]]
    temperature_fit: dict[str, Any] | None = None  # how T was fitted, when --temperature fit


# --------------------------------------------------------------------------------------------------------
# calibscope project
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassChoice:
    """The three classes and why: ``names`` are display names; ``picked_on`` is None when the user chose them,
    else a description of the data the most-confused triple was found on."""

    indices: tuple[int, int, int]
    names: tuple[str, str, str]
    picked_on: str | None = None


@dataclass(frozen=True)
class ProjectedSplit:
    split: str  # "train" or "val"
    data: Path
    projection: PlaneProjection
    inference: dict[str, Any] = field(default_factory=dict)  # Outputs.meta


@dataclass(frozen=True)
class ProjectionResult:
    name: str  # display name of the checkpoint
    path: Path
    format: str
    feature_layer: str | None
    splits: tuple[ProjectedSplit, ...]


# --------------------------------------------------------------------------------------------------------
# calibscope mi
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MiMeasurement:
    """What every checkpoint was measured on: the class pair, the chosen examples and the augmentation."""

    classes: tuple[int, int]
    class_names: tuple[str, str]
    examples: tuple[int, int]  # examples of class a and of class b actually used
    requested_per_class: int
    draws: int
    repetitions: int
    augmentation: str
    seed: int
    data: str
    split: str | None = None


@dataclass(frozen=True)
class MiResult:
    name: str  # display name of the checkpoint
    path: Path
    format: str
    label: str  # x-axis label
    x: float | None  # numeric x position (epoch, step) when every label has one, else None
    estimate: LogitGapMutualInformation
    inference: dict[str, Any] = field(default_factory=dict)
    check: AugmentationCheck | None = None  # accuracy and prediction agreement under the augmentation


# --------------------------------------------------------------------------------------------------------
# calibscope hessian
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HessianResult:
    name: str  # display name of the checkpoint
    path: Path
    format: str  # checkpoint format (export, torchscript, safetensors, ...)
    spectrum: HessianSpectrum  # the (first) subset
    repeats: HessianRepeats | None = None  # all subsets, when --repeats > 1
    meta: dict[str, Any] = field(default_factory=dict)  # hashes, dataset, normalisation


# --------------------------------------------------------------------------------------------------------
# calibscope landscape
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LandscapeResult:
    """One ``calibscope landscape A [B]`` run: the loss surface around A along filter-normalised random
    directions and, with B, the loss along the straight line from A to B (``line``; ``name_b``/``path_b``)."""

    name: str  # display name of checkpoint A
    path: Path
    format: str
    surface: LossSurface
    line: LossLine | None = None
    name_b: str | None = None
    path_b: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # hashes, dataset, normalisation


# --------------------------------------------------------------------------------------------------------
# calibscope conformal
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConformalResult:
    """One ``calibscope conformal`` run: calibrated on ``data['val']``, measured on ``data['test']``; ``gate``:
    ``{"min_coverage", "coverage", "passed"}`` when ``--min-coverage`` was given."""

    name: str
    path: Path
    format: str
    data: dict[str, str | None]
    report: Any  # calibscope.diagnostics.conformal.ConformalReport
    inference: dict[str, dict[str, Any]]
    gate: dict[str, Any] | None = None
