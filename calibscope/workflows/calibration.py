"""Calibration of one checkpoint: ECE and its family (Guo et al. 2017), as ``calibscope ece`` and the report's
calibration section compute it.

Example::

    >>> from calibscope import Session, run_calibration, CalibrationSettings
    >>> r = run_calibration(Session("sample_checkpoints/digits_test.npz"),
    ...                     "sample_checkpoints/digits_hard.safetensors", CalibrationSettings())
    >>> round(r.value, 4)
    0.0305
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.bounds import MAX_BINS, MAX_BOOTSTRAP, check_seed, check_upper
from calibscope.diagnostics.defaults import DEFAULT_BAND_LEVEL, DEFAULT_BAND_RESAMPLES, DEFAULT_BINS
from calibscope.errors import ArgumentError
from calibscope.workflows.ensemble import as_model_ref
from calibscope.workflows.temperature import FixedTemperature

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.results import EceResult
    from calibscope.workflows.ensemble import Predictive
    from calibscope.workflows.gate import Baseline
    from calibscope.workflows.session import Session

DEFAULT_NORM = "l1"
MIN_BOOTSTRAP = 200  # fewer resamples give no usable 95 % interval
NORMS = ("l1", "l2", "max")
HEADLINE = {"l1": "ece", "l2": "ece_l2", "max": "mce"}  # the metric that `ece` and the gates mean, per norm


@dataclass(frozen=True)
class CorpSettings:
    """The CORP reliability diagram (Dimitriadis, Gneiting & Jordan 2021;
    :func:`~calibscope.diagnostics.corp.corp_reliability`): ``resamples`` of the consistency band (0 = no
    band), its ``level``, and the ``seed`` of ``numpy.random.default_rng``."""

    resamples: int = DEFAULT_BAND_RESAMPLES
    level: float = DEFAULT_BAND_LEVEL
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, int) or not 0 <= self.resamples:
            raise ArgumentError("resamples", f"`resamples` must be an integer of at least 0, got {self.resamples}")
        check_upper(self.resamples, MAX_BOOTSTRAP, "resamples")
        if isinstance(self.level, bool) or not isinstance(self.level, (int, float)) or not 0 < self.level < 1:
            raise ArgumentError("level", f"`level` must be a number between 0 and 1 (exclusive), got {self.level}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ArgumentError("seed", f"`seed` must be 0 or more, got {self.seed}")
        check_seed(self.seed)


@dataclass(frozen=True)
class CalibrationSettings:
    """``n_bins`` equal-width bins; ``norm`` picks the headline ECE (l1, l2 or max = MCE); ``bootstrap``
    resamples for 95 % intervals (0 = none, else ≥ 200) with ``seed``; ``temperature``: divide the logits by
    this fixed T first; ``calibrator``: a fitted :class:`~calibscope.diagnostics.calibrators.Calibrator`
    (from ``calibscope calibrate -o FILE.json``) that the logits pass through first; ``corp``: also the CORP
    reliability diagram and score decompositions (:class:`CorpSettings`; None = not computed)."""

    n_bins: int = DEFAULT_BINS
    norm: str = DEFAULT_NORM
    bootstrap: int = 0
    seed: int = 0
    temperature: FixedTemperature | None = None
    calibrator: Any = None
    calibrator_source: str | None = None
    corp: CorpSettings | None = None

    def __post_init__(self) -> None:
        if self.calibrator is not None and self.temperature is not None:
            raise ArgumentError("calibrator", "`calibrator` and `temperature` both transform the logits; give one")
        if isinstance(self.n_bins, bool) or not isinstance(self.n_bins, int) or self.n_bins < 1:
            raise ArgumentError("n_bins", f"`n_bins` must be a positive integer, got {self.n_bins}")
        if self.norm not in NORMS:
            raise ArgumentError("norm", f"`norm` must be one of l1, l2, max, got '{self.norm}'")
        if self.bootstrap != 0 and self.bootstrap < MIN_BOOTSTRAP:
            raise ArgumentError("bootstrap", f"`bootstrap` needs at least {MIN_BOOTSTRAP} resamples for a 95 % "
                                f"interval, got {self.bootstrap} (0 turns it off)")
        if self.seed < 0:
            raise ArgumentError("seed", f"`seed` must be 0 or more, got {self.seed}")
        check_seed(self.seed)
        check_upper(self.n_bins, MAX_BINS, "n_bins")
        check_upper(self.bootstrap, MAX_BOOTSTRAP, "bootstrap")

    @property
    def headline(self) -> str:
        return HEADLINE[self.norm]


def run_calibration(session: Session, checkpoint: Path | str | Predictive,
                    settings: CalibrationSettings | None = None, *,
                    name: str | None = None, baseline: Baseline | None = None, n_results: int = 1) -> EceResult:
    """The ECE family, NLL, Brier and accuracy of ``checkpoint`` on the session's data.

    Without bootstrap the sufficient statistics are streamed chunk by chunk (and summed over ``torchrun``
    ranks): the logits are never all in one place. ``baseline``: compare with an earlier run (fills
    ``result.baseline``; ``n_results`` is the number of checkpoints of the run, for name matching).
    """
    from calibscope.diagnostics.calibration import calibration_metrics, streamed_calibration_metrics
    from calibscope.diagnostics.temperature import apply_temperature
    from calibscope.inference import distributed
    from calibscope.results import EceResult

    s = settings or CalibrationSettings()
    path = as_model_ref(checkpoint)
    fixed_t = s.temperature
    if s.calibrator is not None:
        from calibscope.diagnostics.calibrators import apply_calibrator

        def apply_temperature(z, _unused, cal=s.calibrator):  # noqa: F811 - the calibrator replaces the division
            return apply_calibrator(cal, z)

        fixed_t = _CalibratorAsTransform(s.calibrator, s.calibrator_source)
    corp = None
    if s.bootstrap or s.corp is not None:  # resampling and PAV need every example in one place (gathered on
        outputs, ckpt = session.outputs(path)  # every rank under torchrun)
        meta, logits = outputs.meta, outputs.logits
        if fixed_t is not None:
            logits = apply_temperature(logits, fixed_t.value)
        metrics = calibration_metrics(logits, outputs.labels, n_bins=s.n_bins, bootstrap=s.bootstrap, seed=s.seed)
        if s.corp is not None:
            from calibscope.diagnostics.corp import corp_from_logits

            corp = corp_from_logits(logits, outputs.labels, resamples=s.corp.resamples, level=s.corp.level,
                                    seed=s.corp.seed)
    else:
        group = distributed.current()
        shard, ckpt = session.output_shard(path)
        meta = shard.meta
        chunks = shard.chunks() if fixed_t is None else (
            (apply_temperature(z, fixed_t.value), y) for z, y in shard.chunks())
        metrics = streamed_calibration_metrics(
            chunks, num_classes=shard.num_classes, n_bins=s.n_bins, num_examples=len(shard),
            reduce=None if group is None else group.all_reduce_sum,
            gather=None if group is None else group.all_gather_rows)
    warnings: list[str] = []
    temperature_info = None
    if fixed_t is not None:
        temperature_info = None if isinstance(fixed_t, _CalibratorAsTransform) else fixed_t.describe()
        warnings += fixed_t.warnings_for(meta)
        for m in metrics.metrics.values():
            m.definition["logits"] = (fixed_t.definition if isinstance(fixed_t, _CalibratorAsTransform) else
                                      f"divided by the temperature T = {fixed_t.value!r} before the softmax")
    result = EceResult(name or path.name, path, ckpt.format, metrics.report, meta, metrics=metrics,
                       headline=s.headline, temperature=temperature_info, warnings=tuple(warnings),
                       notes=metrics.warnings, corp=corp)
    if baseline is not None:
        result = baseline.compare(result, n_results=n_results)
    return result


class _CalibratorAsTransform:
    """A calibrator in the place of a fixed temperature: how the result describes it."""

    value = None

    def __init__(self, calibrator: Any, source: str | None):
        self.calibrator, self.source = calibrator, source
        self.definition = (f"passed through the {calibrator.method} calibrator"
                           + (f" of '{source}'" if source else "") + " before the softmax")

    def describe(self) -> dict[str, Any]:
        return {"calibrator": self.calibrator.method, "source": self.source,
                "fit_data": self.calibrator.fit.get("data")}

    def warnings_for(self, meta: Any) -> list[str]:
        return []
