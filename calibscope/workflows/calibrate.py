"""``calibscope calibrate``: fit calibrators on validation outputs, compare them on held-out data, and write the
chosen one as a deployable file — a ``.pt2`` of the model with the calibrator appended, or a JSON calibrator.

Which data scores the methods: ``test`` when given; otherwise, with several methods, a seeded random
``holdout`` fraction of the validation examples (the rest fit); with one method and no test data, the fit data
itself (in-sample, said so). The calibrator written is the one that was scored (fitted on the fit rows), so its
numbers on the evaluation data are exactly the ones shown.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.errors import ArgumentError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.workflows.session import Session

DEFAULT_METHODS = ("temperature",)
DEFAULT_CRITERION = "nll"
DEFAULT_BOOTSTRAP = 200
DEFAULT_HOLDOUT = 0.5
ALL_METHODS = ("temperature", "vector", "matrix", "dirichlet", "histogram", "isotonic", "platt", "beta")
CRITERIA = ("nll", "ece", "sce", "brier")
PT2_SUFFIXES = (".pt2",)
JSON_SUFFIXES = (".json",)


@dataclass(frozen=True)
class CalibrateSettings:
    """``methods``: calibrators to fit (``("all",)``: every one that applies); ``criterion``: what "best"
    minimises on the evaluation data; ``bootstrap``: resamples for the intervals (0 = none); ``holdout``: the
    validation fraction held out when no test data are given and several methods compete; ``seed``: of the
    hold-out split and the bootstrap; ``histogram_bins``, ``odir_lambda``, ``odir_mu``: method options."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    criterion: str = DEFAULT_CRITERION
    bootstrap: int = DEFAULT_BOOTSTRAP
    holdout: float = DEFAULT_HOLDOUT
    seed: int = 0
    histogram_bins: int | None = None
    odir_lambda: float | None = None
    odir_mu: float | None = None

    def __post_init__(self) -> None:
        methods = tuple(m.strip() for m in (self.methods.split(",") if isinstance(self.methods, str)
                                             else self.methods) if m.strip())
        if not methods:
            raise ArgumentError("methods", "`methods` must name at least one method (or all)")
        for m in methods:
            if m != "all" and m not in ALL_METHODS:
                raise ArgumentError("methods", f"`methods` has an unknown method {m!r}; choose from "
                                    f"{', '.join(ALL_METHODS)} or all")
        object.__setattr__(self, "methods", methods)
        if self.criterion not in CRITERIA:
            raise ArgumentError("criterion", f"`criterion` must be one of {', '.join(CRITERIA)}, got "
                                f"{self.criterion!r}")
        if self.bootstrap != 0 and not 200 <= self.bootstrap <= 100_000:
            raise ArgumentError("bootstrap", f"`bootstrap` must be 0 or between 200 and 100000, got {self.bootstrap}")
        if not 0 < self.holdout < 1:
            raise ArgumentError("holdout", f"`holdout` must be a fraction in (0, 1), got {self.holdout}")
        if self.seed < 0:
            raise ArgumentError("seed", f"`seed` must be 0 or more, got {self.seed}")


@dataclass(frozen=True, eq=False)
class CalibrateResult:
    """The comparison (:class:`~calibscope.diagnostics.calibrator_comparison.CalibratorComparison`), the chosen
    calibrator (the best, or the only method), where the fit and evaluation data came from, and the digest of
    the fit data recorded in every file written."""

    name: str
    path: Path
    format: str
    comparison: Any
    chosen: Any
    fit_data: dict[str, Any]
    evaluation: dict[str, Any]
    notes: tuple[str, ...] = ()
    written: tuple[str, ...] = field(default=())


def _digest(logits, labels) -> str:
    import numpy as np

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(logits.detach().cpu().float().numpy()).tobytes())
    h.update(np.ascontiguousarray(labels.detach().cpu().numpy().astype(np.int64)).tobytes())
    return h.hexdigest()


def _split(n: int, holdout: float, seed: int):
    import torch

    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=g)
    n_eval = max(1, min(n - 1, round(holdout * n)))
    return order[n_eval:].sort().values, order[:n_eval].sort().values


def is_model(session: Session, checkpoint: Path | str) -> bool:
    """Whether ``checkpoint`` is one runnable model (not a logits file, not an ensemble / MC-dropout)."""
    from calibscope.loading.types import ModelCheckpoint
    from calibscope.workflows.ensemble import Predictive

    if isinstance(checkpoint, Predictive):
        return False
    return isinstance(session.checkpoint(checkpoint), ModelCheckpoint)


def run_calibrate(session: Session, checkpoint: Path | str, settings: CalibrateSettings | None = None, *,
                  test: Path | str | Session | None = None, name: str | None = None) -> CalibrateResult:
    """Fit ``settings.methods`` on ``checkpoint``'s outputs on the session's (validation) data and score them
    on ``test`` (see the module docstring): for a model, a dataset (or a :class:`Session` on it, whose outputs
    are reused, as the report does); for a logits file, the logits file of the same model on the test data."""
    from calibscope.diagnostics.calibrator_comparison import applicable_methods, compare_calibrators
    from calibscope.workflows.ensemble import Predictive, as_model_ref

    s = settings or CalibrateSettings()
    path = as_model_ref(checkpoint)
    outputs, ckpt = session.outputs(path)
    if outputs.labels is None:
        raise ArgumentError("val", f"'{session.source(path)}' holds no labels; calibrators are fitted on labels")
    k = int(outputs.logits.shape[1])
    methods = applicable_methods(k) if "all" in s.methods else s.methods
    notes: list[str] = []
    z, y = outputs.logits, outputs.labels
    fit_rows = None
    test_session = None if test is None or isinstance(test, (str, Path)) else test
    if test_session is not None:
        test = test_session.data_path
        if test is None:
            raise ArgumentError("test", "the test session has no data set to score the calibrators on")
    if test is not None:
        if isinstance(path, Predictive) or is_model(session, path):
            test_outputs, _ = (test_session or session.for_data(test)).outputs(path)
        elif test_session is not None:
            raise ArgumentError("test", "a logits file is scored on the logits file of the same model on the test "
                                "data, not on a data set")
        else:
            test_outputs, test_ckpt = session.for_data(None).outputs(test)
            if getattr(test_ckpt, "module", None) is not None:
                raise ArgumentError("test", f"'{test}' is a model; with a logits file, --test is the logits file "
                                    "of the same model on the test data")
        if test_outputs.labels is None:
            raise ArgumentError("test", "the test data hold no labels")
        if int(test_outputs.logits.shape[1]) != k:
            raise ArgumentError("test", f"the test logits have {test_outputs.logits.shape[1]} classes, the "
                                f"validation logits {k}")
        fz, fy, ez, ey = z, y, test_outputs.logits, test_outputs.labels
        evaluation = {"source": "test", "data": str(test), "n": int(ey.shape[0])}
    elif len(methods) > 1:
        if z.shape[0] < 4:
            raise ArgumentError("val", f"comparing methods needs at least 4 validation examples, got {z.shape[0]}")
        fit_rows, eval_rows = _split(int(z.shape[0]), s.holdout, s.seed)
        fz, fy, ez, ey = z[fit_rows], y[fit_rows], z[eval_rows], y[eval_rows]
        evaluation = {"source": "held-out validation rows", "fraction": s.holdout, "seed": s.seed,
                      "n": int(ey.shape[0])}
        notes.append(f"no --test data: the methods are fitted on {fz.shape[0]} and scored on the other "
                     f"{ey.shape[0]} validation examples (seed {s.seed}); the calibrator written is the one fitted "
                     f"on the {fz.shape[0]}")
    else:
        fz, fy, ez, ey = z, y, z, y
        evaluation = {"source": "fit data (in-sample)", "n": int(ey.shape[0])}
        notes.append("no --test data: the numbers are on the validation data the calibrator was fitted on "
                     "(in-sample, optimistic); pass --test to score it on held-out data")
    options = {key: value for key, value in (("histogram_bins", s.histogram_bins), ("odir_lambda", s.odir_lambda),
                                             ("odir_mu", s.odir_mu)) if value is not None}
    comparison = compare_calibrators(fz, fy, ez, ey, methods=methods, criterion=s.criterion,
                                     bootstrap=s.bootstrap, seed=s.seed, **options)
    for score in comparison.scores:
        if score.skipped:
            notes.append(f"{score.method} not fitted: {score.skipped}")
        elif score.calibrator is not None and not score.calibrator.fit.get("converged", True):
            notes.append(f"{score.method}: the optimiser stopped before the tolerance "
                         f"(largest gradient {score.calibrator.fit.get('gradient_max'):.3g})")
    fitted = [sc for sc in comparison.scores if sc.calibrator is not None]
    if not fitted:
        raise InputError("no calibrator could be fitted: " + "; ".join(sc.skipped or "" for sc in comparison.scores
                                                                       if sc.skipped))
    if len(methods) == 1:
        chosen = fitted[0].calibrator
    else:
        best = comparison.score(comparison.best)
        chosen = best.calibrator if best.calibrator is not None else None
        if chosen is None:
            notes.append("the uncalibrated model scores best by the criterion; the best calibrator ("
                         f"{comparison.runner_up}) is the one written")
            chosen = comparison.score(comparison.runner_up).calibrator
    fit_data = {"checkpoint": str(path), "checkpoint_sha256": getattr(ckpt, "sha256", None),
                "data": str(session.data_path) if session.data_path else str(path),
                "dataset_sha256": getattr(session.dataset, "sha256", None) if session.data_path else None,
                "n": int(fy.shape[0]), "rows": "all" if fit_rows is None else
                f"validation rows not held out (fraction {s.holdout}, seed {s.seed})",
                "logits_labels_sha256": _digest(fz, fy)}
    chosen.fit["data"] = fit_data
    return CalibrateResult(name=name or path.name, path=path, format=ckpt.format, comparison=comparison,
                           chosen=chosen, fit_data=fit_data, evaluation=evaluation, notes=tuple(notes))


# ------------------------------------------------------------------------------------------------ writing


def check_output(out: Path, checkpoint_is_model: bool, *, what: str = "a logits file") -> None:
    """Refuse an output name calibscope cannot write, before anything is computed (``what`` the checkpoint is
    when it is not one model: a logits file, an ensemble)."""
    suffix = out.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return
    if suffix in PT2_SUFFIXES:
        if not checkpoint_is_model:
            raise ArgumentError("out", f"'{out}': {what} has no model to append the calibrator to; write "
                                "a calibrator file (-o calibrator.json) and use it with `calibscope ece LOGITS "
                                "--calibrator calibrator.json`")
        return
    raise ArgumentError("out", f"'{out}': write a .pt2 (the calibrated model) or a .json (the calibrator)")


def calibrator_document(result: CalibrateResult) -> dict[str, Any]:
    from calibscope.diagnostics.calibrators import calibrator_to_dict

    return calibrator_to_dict(result.chosen)


def write_calibrated(session: Session, result: CalibrateResult, out: Path) -> Path:
    """Write the chosen calibrator to ``out``: ``.json`` (calibrator file) or ``.pt2`` (``torch.export`` of
    ``Sequential(model, CalibratorModule)`` with a batch dimension of any size, and the model's metadata plus
    ``calibrator`` in the ``calibscope.json`` extra file). Atomic."""
    from calibscope.render.atomic import atomic_write_bytes, atomic_write_text

    doc = calibrator_document(result)
    if out.suffix.lower() in JSON_SUFFIXES:
        return atomic_write_text(out, json.dumps(doc, indent=1, allow_nan=False) + "\n")
    import torch

    from calibscope.diagnostics.calibrators import CalibratorModule
    from calibscope.loading.types import ModelCheckpoint

    ckpt = session.checkpoint(result.path)
    if not isinstance(ckpt, ModelCheckpoint):
        raise ArgumentError("out", "a logits file has no model to append the calibrator to; write a .json")
    options = session.options_for(ckpt)
    dataset = session.require_dataset("an example input is needed to export the calibrated model")
    if not isinstance(dataset.inputs, torch.Tensor):
        raise InputError("exporting a calibrated model with named (token) inputs is not supported; write the "
                         "calibrator as .json")
    from calibscope.conventions import input_normaliser

    raw = dataset.inputs[: max(2, min(8, len(dataset)))]
    example = input_normaliser(raw, options.mean, options.std, torch.device("cpu"))(raw)
    model = _Calibrated(ckpt.module, CalibratorModule(result.chosen))
    with torch.no_grad():
        probe = ckpt.module(example)
    if not isinstance(probe, torch.Tensor) or probe.ndim != 2 or probe.shape[1] != result.chosen.num_classes:
        raise InputError("the model's forward does not return one [N, K] logits tensor; write the calibrator as "
                         ".json and apply it with `calibscope ece --calibrator`")
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds for models it cannot trace
        raise InputError(f"torch.export could not export the model with its calibrator "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); write the calibrator as "
                         ".json instead") from None
    metadata = {k: v for k, v in (ckpt.metadata or {}).items() if k not in ("calibrator",)}
    if options.mean is not None:
        metadata["mean"], metadata["std"] = list(options.mean), list(options.std)
    metadata["num_classes"] = result.chosen.num_classes
    metadata["calibrator"] = doc
    import io

    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={"calibscope.json": json.dumps(metadata, allow_nan=False)})
    return atomic_write_bytes(out, buffer.getvalue())


def _Calibrated(model, calibrator):  # noqa: N802 - the module class is built here: this file imports no torch
    """``calibrator(model(x))``: the calibrated model that is exported."""
    import torch

    class Calibrated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.calibrator = model, calibrator

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.calibrator(self.model(x))

    return Calibrated()


def read_calibrator(path: Path | str):
    """A calibrator file written by ``calibscope calibrate -o FILE.json`` (at most 64 MiB), validated."""
    from calibscope.diagnostics.calibrators import calibrator_from_dict
    from calibscope.loading.files import read_json_file

    p = Path(path)
    doc = read_json_file(p, "the calibrator file", expected="a calibrator file",
                         missing="write one with `calibscope calibrate ... -o FILE.json`")
    return calibrator_from_dict(doc, where=f"'{p}'")
