"""``calibscope report`` / ``compare``: every diagnostic of one model, or of several side by side.

Each section calls the workflow its own command calls, with that command's settings, so the numbers in the
page are those of ``calibscope ece``, ``temperature``, ``selective``, ``ood``, ``project``, ``mi`` and
``hessian``. A section whose inputs are missing (no training data for the projection, MI and Hessian; no OOD
data; a logits file where a model must run) is skipped with a visible note, as is one whose data cannot be
used (the one-line reason is shown). Models run once per data set (the session keeps their outputs).

To add a section: write ``def _mysection(ctx: ReportContext) -> Section`` below, register it in
:data:`SECTION_RUNNERS` (the order of :data:`SECTION_KEYS` is the page order), and add its HTML in
``render/report_sections.py`` (``SECTIONS`` title + renderer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.errors import ArgumentError, InputError
from calibscope.workflows import report_calibration
from calibscope.workflows.calibrate import CalibrateSettings
from calibscope.workflows.calibration import CalibrationSettings, CorpSettings
from calibscope.workflows.conformal import ConformalSettings
from calibscope.workflows.distill import DistillSettings
from calibscope.workflows.hessian import HessianSettings
from calibscope.workflows.mi import MiSettings
from calibscope.workflows.ood import OodSettings
from calibscope.workflows.projection import ProjectionSettings
from calibscope.workflows.selective import SelectiveSettings
from calibscope.workflows.session import Session, display_names
from calibscope.workflows.temperature import TemperatureSettings

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.inference.outputs import Outputs
    from calibscope.loading.types import Checkpoint
    from calibscope.render.report_model import Report, Section
    from calibscope.workflows.ensemble import Predictive

SECTION_KEYS = ("calibration", "corp", "temperature", "calibrate", "selective", "conformal", "ood", "projection", "mi",
                "hessian", "distill")
SECTION_ALIASES = {"ece": "calibration", "projections": "projection", "project": "projection",
                   "eigenvalues": "hessian", "risk-coverage": "selective", "conformal-prediction": "conformal",
                   "calibrators": "calibrate", "distillation": "distill", "soft-targets": "distill"}
CONFORMAL_METHODS = ("lac", "aps", "raps")  # the report's conformal section: every method at one α
REPORT_BOOTSTRAP = 200  # the report shows 95 % intervals by default


def parse_sections(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Section keys in page order from ``"calibration,temperature"`` (or a sequence; None or "all": every one).

    >>> parse_sections("hessian, ece")
    ('calibration', 'hessian')
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return SECTION_KEYS
    parts = spec.replace(" ", "").lower().split(",") if isinstance(spec, str) else [str(p).lower() for p in spec]
    wanted = []
    for part in parts:
        if not part:
            continue
        key = SECTION_ALIASES.get(part, part)
        if key not in SECTION_KEYS:
            raise ArgumentError("sections", f"`sections`: unknown section '{part}'; choose from "
                                f"{', '.join(SECTION_KEYS)} (or all)")
        if key not in wanted:
            wanted.append(key)
    if not wanted:
        raise ArgumentError("sections", "`sections` names no section; choose from " + ", ".join(SECTION_KEYS))
    return tuple(k for k in SECTION_KEYS if k in wanted)


@dataclass(frozen=True)
class ReportSettings:
    """The settings of every section (each diagnostic's own settings, with its own defaults) and the
    thresholds. ``mi.classes`` None: the first two classes of the projection."""

    sections: tuple[str, ...] = SECTION_KEYS
    calibration: CalibrationSettings = field(default_factory=lambda: CalibrationSettings(bootstrap=REPORT_BOOTSTRAP))
    temperature: TemperatureSettings | None = None  # None: nll, with the calibration's bins
    selective: SelectiveSettings = field(default_factory=SelectiveSettings)
    conformal: ConformalSettings = field(default_factory=lambda: ConformalSettings(alphas=()))  # one α: cheap
    ood: OodSettings = field(default_factory=OodSettings)
    projection: ProjectionSettings = field(default_factory=ProjectionSettings)
    mi: MiSettings = field(default_factory=MiSettings)
    hessian: HessianSettings = field(default_factory=HessianSettings)
    corp: CorpSettings = field(default_factory=CorpSettings)
    calibrate: CalibrateSettings = field(default_factory=lambda: CalibrateSettings(methods=("all",)))
    distill: DistillSettings = field(default_factory=DistillSettings)
    max_ece: float | None = None
    max_lambda1: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sections", parse_sections(self.sections))
        if self.temperature is None:
            object.__setattr__(self, "temperature", TemperatureSettings(n_bins=self.calibration.n_bins))
        if self.max_ece is not None and not 0 <= self.max_ece <= 1:
            raise ArgumentError("max_ece", f"`max_ece` must be a number between 0 and 1, got {self.max_ece}")
        if self.max_lambda1 is not None and not self.max_lambda1 > 0:
            raise ArgumentError("max_lambda1", f"`max_lambda1` must be a positive number, got {self.max_lambda1}")


@dataclass
class Model:
    name: str
    path: Path
    checkpoint: Checkpoint
    outputs: Outputs  # on the test data

    @property
    def is_logits(self) -> bool:
        from calibscope.loading.types import LogitsCheckpoint

        return isinstance(self.checkpoint, LogitsCheckpoint)

    @property
    def is_predictive(self) -> bool:
        """An ensemble / MC-dropout (:class:`~calibscope.workflows.ensemble.Predictive`): no single network."""
        from calibscope.workflows.ensemble import Predictive

        return isinstance(self.path, Predictive)


class ReportContext:
    """The settings, the data sets (as sessions) and every model with its test outputs."""

    def __init__(self, session: Session, settings: ReportSettings, *, val: Path | str | None,
                 train: Path | str | None, ood_data: Path | str | None):
        self.settings = settings
        self.ood_path = None if ood_data is None or "ood" not in settings.sections else Path(ood_data)
        self.train_path = None if train is None else Path(train)
        # Mahalanobis (like `calibscope ood --train`) needs penultimate features on the test and OOD data
        self.test = session.with_options(capture_features=self.ood_path is not None and train is not None)
        self.val = self._second(val, "val")
        self.train = self._second(train, "train")
        self.models: list[Model] = []
        self._choice = None

    def _second(self, path: Path | str | None, prefer_split: str) -> Session | None:
        """A second data set with features: its ``prefer_split`` where the source holds several (loaded now, so
        that its errors surface before any model runs)."""
        if path is None:
            return None
        other = self.test.for_data(path, prefer_split=prefer_split, label_column=self.test.label_column,
                                   capture_features=True)
        other.dataset  # noqa: B018
        return other

    def load_models(self, checkpoints: Sequence[Path | str | Predictive]) -> None:
        from calibscope.workflows.ensemble import Predictive, as_model_ref

        files = [c for c in checkpoints if not isinstance(c, Predictive)]
        file_names = iter(display_names(files))
        for path in checkpoints:
            name = path.name if isinstance(path, Predictive) else next(file_names)
            outputs, checkpoint = self.test.outputs(path)
            if outputs.labels is None:
                raise InputError(f"the test data of '{path}' has no labels; the report measures calibration "
                                 "against them")
            self.models.append(Model(name, as_model_ref(path), checkpoint, outputs))

    def runnable(self) -> list[Model]:
        """The models that are one network (not logits files, not ensembles / MC-dropout)."""
        return [m for m in self.models if not m.is_logits and not m.is_predictive]

    def class_choice(self):
        """The projection's three classes, as ``calibscope project`` chooses them (on the validation data when
        given, else the training data, pooled over the models)."""
        if self._choice is None:
            from calibscope.workflows.projection import choose_classes

            models = self.runnable()
            if not models or self.train is None:
                raise InputError("choosing the classes needs a model and training data")
            sets = [self.train] + ([self.val] if self.val is not None else [])
            self._choice = choose_classes(sets, [m.checkpoint for m in models], self.settings.projection.classes)
        return self._choice


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _per_model(models: list[Model], fn: Callable[[Model], Any], *, needs_model: bool = False,
               why: str = "") -> tuple[list, list[str]]:
    """``fn(model)`` for each model; a logits file (when a model must run) or an input error leaves that model
    out with a note."""
    results, notes = [], []
    for m in models:
        if needs_model and m.is_logits:
            notes.append(f"{m.name} is a logits file: {why or 'this section runs the model itself'}")
            continue
        if needs_model and m.is_predictive:
            notes.append(f"{m.name} averages several networks: {why or 'this section runs one network itself'}")
            continue
        try:
            results.append(fn(m))
        except InputError as exc:
            notes.append(f"{m.name}: {_one_line(exc)}")
    return results, notes


def _outcome(key: str, results: list, notes: list[str], make_document, carried: Any = None) -> Section:
    from calibscope.render.report_model import Section

    if not results:
        return Section(key, "skipped", note="; ".join(notes) or "nothing to measure")
    return Section(key, "ok", results=results if carried is None else carried, document=make_document(results),
                   notes=tuple(notes))


def _skipped(key: str, note: str) -> Section:
    from calibscope.render.report_model import Section

    return Section(key, "skipped", note=note)


# ----------------------------------------------------------------------------------------------------------
# the sections: the workflow of each command, with its settings
# ----------------------------------------------------------------------------------------------------------


def _calibration(ctx: ReportContext) -> Section:
    """As ``calibscope ece --all --bootstrap B --seed S``."""
    from calibscope.render import ece_view
    from calibscope.workflows.calibration import run_calibration

    results, notes = _per_model(ctx.models, lambda m: run_calibration(ctx.test, m.path, ctx.settings.calibration,
                                                                      name=m.name))
    return _outcome("calibration", results, notes, lambda rs: ece_view.document(rs, gate=None))


def _temperature(ctx: ReportContext) -> Section:
    """As ``calibscope temperature CKPT --data VAL --apply TEST`` (or ``--data TEST`` without a validation set;
    a logits file is fitted on its own test logits)."""
    from calibscope.render import temperature_view as view
    from calibscope.workflows.temperature import run_temperature

    notes: list[str] = []

    def one(m: Model):
        if ctx.val is not None and m.is_logits:
            notes.append(f"{m.name} is a logits file: its temperature is fitted on its own (test) logits, not on "
                         "the validation data")
        if ctx.val is not None and not m.is_logits:
            return run_temperature(ctx.val, m.path, ctx.settings.temperature, apply=ctx.test, name=m.name)
        return run_temperature(ctx.test, m.path, ctx.settings.temperature, name=m.name)

    results, errors = _per_model(ctx.models, one)
    return _outcome("temperature", results, notes + errors, lambda rs: [view.document(r) for r in rs])


def _selective(ctx: ReportContext) -> Section:
    """As ``calibscope selective CKPT --data TEST``."""
    from calibscope.render import selective_view
    from calibscope.workflows.selective import run_selective

    results, notes = _per_model(ctx.models, lambda m: run_selective(ctx.test, m.path, ctx.settings.selective,
                                                                    name=m.name))
    return _outcome("selective", results, notes, lambda rs: [selective_view.document(r) for r in rs])


def _conformal(ctx: ReportContext) -> Section:
    """As ``calibscope conformal CKPT --val VAL --data TEST --method M --alpha A`` for M = lac, aps, raps (at
    the one α only: no coverage-against-α curve)."""
    if ctx.val is None:
        return _skipped("conformal", "no --val given (split conformal calibrates on validation data)")
    from calibscope.render import conformal_view
    from calibscope.workflows.conformal import run_conformal

    def one(m: Model):
        return [run_conformal(ctx.test, m.path, dataclasses.replace(ctx.settings.conformal, method=method,
                                                                      min_coverage=None),
                              val=ctx.val.data_path, name=m.name)
                for method in CONFORMAL_METHODS]

    per_model, notes = _per_model(ctx.models, one, needs_model=True,
                                  why="conformal calibration needs the model's logits on --val")
    results = [r for rs in per_model for r in rs]
    return _outcome("conformal", results, notes, lambda rs: [conformal_view.document(r) for r in rs])


def _ood(ctx: ReportContext) -> Section:
    """As ``calibscope ood CKPT --data TEST --ood-data OOD [--train TRAIN]``."""
    if ctx.ood_path is None:
        return _skipped("ood", "no --ood-data given (out-of-distribution inputs, or a logits file of the model on "
                               "them)")
    from calibscope.render import ood_view
    from calibscope.workflows.ood import run_ood

    def one(m: Model):
        # mahalanobis needs one network's features
        train = ctx.train_path if not m.is_logits and not m.is_predictive else None
        return run_ood(ctx.test, m.path, ctx.settings.ood, ood_data=ctx.ood_path, train=train, name=m.name)

    results, notes = _per_model(ctx.models, one)
    return _outcome("ood", results, notes, lambda rs: [ood_view.document(r) for r in rs])


def _needs_train(key: str, what: str) -> Section:
    return _skipped(key, f"no --train given ({what})")


def _logits_notes(ctx: ReportContext, why: str) -> list[str]:
    return [f"{m.name} is a logits file: {why}" for m in ctx.models if m.is_logits] + [
        f"{m.name} averages several networks: {why}" for m in ctx.models if m.is_predictive]


def _projection(ctx: ReportContext) -> Section:
    """As ``calibscope project CKPT... --data TRAIN [--val VAL]``."""
    from calibscope.render import projection_view as view
    from calibscope.workflows.projection import run_projection

    if ctx.train is None:
        return _needs_train("projection", "the projection plots training and validation examples")
    notes = _logits_notes(ctx, "the projection reads its penultimate layer")
    models = ctx.runnable()
    if not models:
        return _skipped("projection", "; ".join(notes))
    s = dataclasses.replace(ctx.settings.projection)
    run = run_projection(ctx.train, [m.path for m in models], s, val=ctx.val, names=[m.name for m in models])
    results = list(run.results)
    return _outcome("projection", results, notes, lambda rs: view.document(rs, run.choice, per_class=run.per_class),
                    carried=(results, run.choice))


def _mi(ctx: ReportContext) -> Section:
    """As ``calibscope mi CKPT... --data TRAIN --classes a,b --examples N --draws L``."""
    from calibscope.render import mi_view
    from calibscope.workflows.mi import run_mi

    if ctx.train is None:
        return _needs_train("mi", "Müller et al. measure the logit-gap MI on training examples")
    if ctx.train.dataset.labels is None:
        return _skipped("mi", "the training data has no labels; MI picks examples of two classes")
    models = ctx.runnable()
    if not models:
        return _skipped("mi", "; ".join(_logits_notes(ctx, "MI runs the model on augmented inputs")))
    s = ctx.settings.mi
    if s.classes is None:
        s = dataclasses.replace(s, classes=ctx.class_choice().indices[:2])
    run = run_mi(ctx.train, [m.path for m in models], s, names=[m.name for m in models])
    results = list(run.results)
    notes = _logits_notes(ctx, "MI runs the model on augmented inputs") + list(run.notes)
    return _outcome("mi", results, notes, lambda rs: mi_view.document(rs, run.settings),
                    carried=(results, run.settings))


def _hessian(ctx: ReportContext) -> Section:
    """As ``calibscope hessian CKPT... --data TRAIN --examples N --top k --seed S``."""
    from calibscope.render import hessian_view
    from calibscope.workflows.hessian import run_hessian

    if ctx.train is None:
        return _needs_train("hessian", "the Hessian is that of the training loss")
    if ctx.train.dataset.labels is None:
        return _skipped("hessian", "the training data has no labels; the loss needs them")
    results, notes = _per_model(ctx.models, lambda m: run_hessian(ctx.train, [m.path], ctx.settings.hessian,
                                                                  names=[m.name])[0],
                                needs_model=True, why="the Hessian needs the parameters")
    return _outcome("hessian", results, notes, hessian_view.document)


SECTION_RUNNERS: dict[str, Callable[[ReportContext], Section]] = {
    "calibration": _calibration, "temperature": _temperature, "selective": _selective, "conformal": _conformal,
    "ood": _ood,
    "projection": _projection, "mi": _mi, "hessian": _hessian,
    "corp": report_calibration.corp_section, "calibrate": report_calibration.calibrate_section,
    "distill": report_calibration.distill_section}


# ----------------------------------------------------------------------------------------------------------
# thresholds, provenance, and the run
# ----------------------------------------------------------------------------------------------------------


def _checks(ctx: ReportContext, sections: list[Section]) -> list:
    """Every configured threshold applied to every model (comparisons only; the numbers come from the sections)."""
    from calibscope.workflows.gate import ece_checks, lambda1_checks

    s = ctx.settings
    by_key = {x.key: x for x in sections}
    checks = []
    calibration = by_key.get("calibration")
    if s.max_ece is not None and calibration is not None and calibration.status == "ok":
        checks += ece_checks(calibration.results, max_ece=s.max_ece)
    hessian = by_key.get("hessian")
    if s.max_lambda1 is not None and hessian is not None and hessian.status == "ok":
        checks += lambda1_checks(hessian.results, s.max_lambda1)
    return checks


def _generated() -> str:
    """Now in UTC, or ``SOURCE_DATE_EPOCH`` (reproducible builds) when set."""
    import os
    from datetime import UTC, datetime

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), UTC) if epoch and epoch.isdigit() else datetime.now(UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _provenance(ctx: ReportContext, sections: list[Section]) -> dict[str, Any]:
    import platform

    import matplotlib
    import numpy
    import torch

    from calibscope import __version__

    versions = {"calibscope": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": numpy.__version__, "matplotlib": matplotlib.__version__, "platform": platform.platform()}
    if torch.cuda.is_available():
        versions["cuda"] = torch.version.cuda
    inputs = [{"role": f"checkpoint {m.name}", "path": str(m.path), "format": m.checkpoint.format,
               "sha256": m.checkpoint.sha256, "n": None} for m in ctx.models]
    for role, label in (("test", "test data"), ("val", "validation data"), ("train", "training data")):
        session = getattr(ctx, role)
        info = None if session is None else session.dataset_info()
        if info is not None:
            inputs.append({"role": label, **info})
    ood = next((x for x in sections if x.key == "ood" and x.status == "ok"), None)
    if ood is not None:
        r = ood.results[0]
        meta = r.inference.get("ood", {})
        inputs.append({"role": "OOD data", "path": str(ctx.ood_path), "format": meta.get("dataset_format"),
                       "sha256": meta.get("dataset_sha256") or meta.get("checkpoint_sha256"), "n": r.report.n_out})
    s = ctx.settings
    done = {x.key for x in sections if x.status == "ok"}
    seeds = {}
    if "calibration" in done and s.calibration.bootstrap:
        seeds["bootstrap"] = s.calibration.seed
    if "corp" in done and s.corp.resamples:
        seeds["CORP consistency band"] = s.corp.seed
    if "calibrate" in done:
        seeds["calibrators' paired bootstrap"] = s.calibrate.seed
    if "mi" in done:
        seeds["MI examples and augmentations"] = s.mi.seed
    if "hessian" in done:
        seeds["Hessian subset, Lanczos start, Hutchinson probes"] = s.hessian.seed
    models = [{"name": m.name, "checkpoint": str(m.path), "format": m.checkpoint.format,
               "sha256": m.checkpoint.sha256, "inference": m.outputs.meta} for m in ctx.models]
    return {"versions": versions, "inputs": inputs, "models": models, "seeds": seeds}


def _settings(ctx: ReportContext, extra: dict[str, Any]) -> dict[str, Any]:
    s = ctx.settings
    options = ctx.test.options
    return {
        "sections": list(s.sections), "bins": s.calibration.n_bins, "bootstrap": s.calibration.bootstrap,
        "seed": s.calibration.seed, "ece_metric": s.calibration.headline, "classes": s.projection.classes,
        "per_class": s.projection.per_class, "mi_classes": s.mi.classes, "mi_examples": s.mi.examples,
        "mi_draws": s.mi.draws, "mi_repetitions": s.mi.repetitions, "mi_augment": s.mi.augment,
        "mi_shift": s.mi.shift, "mi_no_flip": not s.mi.flip, "hessian_examples": s.hessian.examples,
        "hessian_top": s.hessian.top, "device": options.device, "precision": options.precision,
        "batch_size": options.batch_size, "limit": ctx.test.limit, "layer": ctx.test.layer, **extra,
    }


def run_report(session: Session, checkpoints: Sequence[Path | str], settings: ReportSettings | None = None, *,
               val: Path | str | None = None, train: Path | str | None = None, ood_data: Path | str | None = None,
               command: str = "report", title: str | None = None, extra_settings: dict[str, Any] | None = None,
               progress: Callable[[str], None] | None = None) -> Report:
    """Every section of ``settings.sections`` for the models, on the session's (test) data, ``val`` (the
    temperature is fitted there; the projection's second column), ``train`` (projection, MI, Hessian,
    Mahalanobis) and ``ood_data``. ``command``: ``"report"`` (one model) or ``"compare"`` (two or more);
    ``progress(key)`` is called before each section. Thresholds do not raise: see ``Report.passed``."""
    from calibscope.render import report_model

    s = settings or ReportSettings()
    if command == "compare" and len(checkpoints) < 2:
        raise ArgumentError("checkpoints", "compare needs at least two checkpoints (for one, use a report)")
    if s.max_lambda1 is not None and (train is None or "hessian" not in s.sections):
        raise ArgumentError("max_lambda1", "`max_lambda1` needs the Hessian section: pass `train` (and keep "
                            "hessian in `sections`)")
    ctx = ReportContext(session, s, val=val, train=train, ood_data=ood_data)
    ctx.load_models(checkpoints)
    sections = []
    for key in s.sections:
        if progress is not None:
            progress(key)
        try:
            section = SECTION_RUNNERS[key](ctx)
        except InputError as exc:  # an input error of the whole section: skip it, say why
            section = report_model.Section(key, "skipped", note=_one_line(exc))
        sections.append(section)
    names = [m.name for m in ctx.models]
    title = title or (f"calibscope report: {names[0]}" if command == "report"
                      else "calibscope compare: " + " vs ".join(names))
    test_info = ctx.test.dataset_info()
    return report_model.Report(
        command=command, title=title,
        models=tuple(report_model.ModelInfo(m.name, m.path, m.checkpoint.format, m.checkpoint.sha256)
                     for m in ctx.models),
        sections=tuple(sections), checks=tuple(_checks(ctx, sections)),
        thresholds={"max_ece": s.max_ece, "ece_metric": s.calibration.headline, "max_lambda1": s.max_lambda1},
        data={"test": test_info, "val": None if ctx.val is None else ctx.val.dataset_info(),
              "train": None if ctx.train is None else ctx.train.dataset_info(),
              "ood": None if ctx.ood_path is None else {"path": str(ctx.ood_path)}},
        settings=_settings(ctx, extra_settings or {}), provenance=_provenance(ctx, sections), generated=_generated())
