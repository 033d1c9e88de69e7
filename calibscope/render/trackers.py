"""Experiment trackers: TensorBoard event files and MLflow runs, for ``--log`` and the training callbacks.

``open_tracker("tensorboard:DIR")`` writes through ``torch.utils.tensorboard.SummaryWriter`` (needs the
``tensorboard`` package); ``open_tracker("mlflow")`` (or ``"mlflow:TRACKING_URI"``) logs into MLflow's active
run, or starts one (and ends it on :meth:`Tracker.close`), in the tracking store MLflow is configured with
(``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``). Every tracker takes the same three things:

* scalars (``log_metrics``), e.g. :func:`scalars` of a JSON document: its numeric fields, one key per result;
* figures (``log_figure``): a matplotlib ``Figure``, rendered to PNG with the Agg canvas (no pyplot);
* documents (``log_document``): the JSON document, as an MLflow artifact or a TensorBoard text entry.

A tracker whose package is missing raises one :class:`~calibscope.errors.InputError` naming the package.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from calibscope.errors import InputError
from calibscope.optional import require

__all__ = ["MLflowTracker", "TensorBoardTracker", "Tracker", "check_trackers", "figure_rgb", "log_run",
           "open_tracker", "parse_tracker", "scalars"]

TRACKER_HELP = ("Also log the numbers, figures and JSON to an experiment tracker: tensorboard:DIR (event files "
                "for TensorBoard) or mlflow (the active or a new MLflow run; mlflow:URI for another tracking "
                "store). Repeatable.")
MAX_SCALARS = 500  # a document with more numeric fields than this is logged by its first MAX_SCALARS
_SKIPPED_KEYS = {"schema_version", "meta", "definition", "definitions", "provenance", "settings", "trace",
                 "interval", "bins", "warnings", "notes"}
_TRANSPARENT_KEYS = {"results", "document"}
_LABEL_KEYS = ("name", "score", "key")  # what names an item of a list of results (model, score, section)
_MAX_UNLABELLED = 20  # a longer list of unlabelled dicts (e.g. per-example rows) is left out
_MAX_DEPTH = 8


def parse_tracker(spec: str) -> tuple[str, str | None]:
    """``"tensorboard:DIR"`` → ``("tensorboard", DIR)``; ``"mlflow"`` / ``"mlflow:URI"`` → ``("mlflow", URI)``.
    Checks the form only (nothing is imported or created)."""
    kind, _, where = str(spec).partition(":")
    kind = kind.strip().lower()
    if kind == "tensorboard":
        if not where:
            raise InputError(f"--log tensorboard needs a folder: --log tensorboard:DIR, got '{spec}'")
        return kind, where
    if kind == "mlflow":
        return kind, where or None
    raise InputError(f"--log must be tensorboard:DIR or mlflow[:TRACKING_URI], got '{spec}'")


def open_tracker(spec: str, *, run_name: str | None = None) -> Tracker:
    """The tracker that ``spec`` names (see :func:`parse_tracker`)."""
    kind, where = parse_tracker(spec)
    if kind == "tensorboard":
        return TensorBoardTracker(Path(where))
    return MLflowTracker(tracking_uri=where, run_name=run_name)


def check_trackers(specs: list[str] | None) -> list[str]:
    """Parse every ``--log`` spec and import its package now, before any work (exit 2 on a bad one)."""
    specs = list(specs or [])
    for spec in specs:
        kind, where = parse_tracker(spec)
        if kind == "tensorboard":
            require("tensorboard", "--log tensorboard")
            if Path(where).exists() and not Path(where).is_dir():
                raise InputError(f"--log tensorboard:{where}: not a folder")
        else:
            require("mlflow", "--log mlflow")
    return specs


def log_run(specs: list[str] | None, *, name: str, document: Mapping[str, Any],
            figures: list[tuple[str, Any]] | tuple = ()) -> None:
    """Log one command's result to every tracker in ``specs``: :func:`scalars` of the document, the figures
    (``(tag, Figure)`` pairs) and the document itself as ``NAME.json``. Nothing on ``torchrun`` ranks but 0
    (their writes are discarded, see :func:`calibscope.render.atomic.discarding_writes`)."""
    from calibscope.render.atomic import _DISCARD

    if not specs or _DISCARD.get():
        return
    metrics = scalars(document)
    for spec in specs:
        with open_tracker(spec, run_name=f"calibscope {name}") as tracker:
            tracker.log_metrics(metrics)
            for tag, figure in figures:
                tracker.log_figure(tag, figure)
            tracker.log_document(f"{name}.json", document)


def _metric_key(key: str) -> str:
    """MLflow's key alphabet (letters, digits, ``_ - . / space``); TensorBoard takes it as well."""
    return re.sub(r"[^\w\-./ ]", "_", key)


def scalars(document: Mapping[str, Any], *, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a calibscope JSON document, flattened to ``"RESULT/field"`` keys.

    A list of dicts is keyed by each item's label (its ``name``, ``score`` or ``key``, e.g. a model, an
    OOD/selective score, a report section) or, for a short unlabelled list, its index; ``results`` and
    ``document`` levels add no key part (a report section's ``document`` is its command's document). Lists of
    numbers (curves), definitions, intervals, per-bin tables and metadata are left out (they are in the
    document, logged whole). At most :data:`MAX_SCALARS` keys.
    """
    out: dict[str, float] = {}

    def walk(value: Any, key: str, depth: int) -> None:
        if len(out) >= MAX_SCALARS or depth > _MAX_DEPTH:
            return
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, int | float):
            if math.isfinite(value) and key:
                out[_metric_key(key)] = float(value)
            return
        if isinstance(value, Mapping):
            for k, v in value.items():
                if k in _TRANSPARENT_KEYS:  # a list of results / a section's document: no key part of its own
                    walk(v, key, depth + 1)
                elif k not in _SKIPPED_KEYS and not str(k).startswith("schema"):
                    walk(v, f"{key}/{k}" if key else str(k), depth + 1)
            return
        if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            field = next((f for f in _LABEL_KEYS if all(f in v for v in value)), None)
            if field is None and len(value) > _MAX_UNLABELLED:
                return
            names = [str(v[field]) if field else str(i) for i, v in enumerate(value)]
            unique = len(set(names)) == len(names)
            for i, v in enumerate(value):
                label = names[i] if unique else f"{i}_{names[i]}"
                walk({k: x for k, x in v.items() if k != field}, f"{key}/{label}" if key else label, depth + 1)

    walk(document, prefix, 0)
    return out


def figure_rgb(figure: Any):
    """A matplotlib ``Figure`` as a ``uint8`` RGB array ``[H, W, 3]`` (Agg canvas; pyplot is not touched)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class Tracker:
    """What every tracker does; subclasses write to one backend."""

    name = "tracker"

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        raise NotImplementedError

    def log_figure(self, tag: str, figure: Any, step: int | None = None) -> None:
        raise NotImplementedError

    def log_document(self, name: str, document: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release (ends a run the tracker started itself)."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class TensorBoardTracker(Tracker):
    """Event files in ``log_dir`` through ``torch.utils.tensorboard.SummaryWriter``."""

    name = "tensorboard"

    def __init__(self, log_dir: Path | str, *, writer: Any = None) -> None:
        if writer is None:
            require("tensorboard", "--log tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            log_dir = Path(log_dir)
            if log_dir.exists() and not log_dir.is_dir():
                raise InputError(f"--log tensorboard:{log_dir}: not a folder")
            writer = SummaryWriter(log_dir=str(log_dir))
        self.writer = writer

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, float(value), global_step=step)

    def log_figure(self, tag: str, figure: Any, step: int | None = None) -> None:
        self.writer.add_image(tag, figure_rgb(figure), global_step=step, dataformats="HWC")

    def log_document(self, name: str, document: Mapping[str, Any]) -> None:
        text = json.dumps(document, indent=2, default=str)
        self.writer.add_text(name, "\n".join("    " + line for line in text.splitlines()))  # markdown code

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class MLflowTracker(Tracker):
    """Metrics, figures (PNG artifacts) and JSON artifacts in an MLflow run: the active one if there is one
    (e.g. started by a training script or Hugging Face's ``MLflowCallback``), else a new run that
    :meth:`close` ends."""

    name = "mlflow"

    def __init__(self, *, tracking_uri: str | None = None, run_name: str | None = None) -> None:
        self.mlflow = require("mlflow", "--log mlflow")
        # mlflow.set_tracking_uri is process-global (and exports MLFLOW_TRACKING_URI): remember what was there so
        # close() gives it back, instead of redirecting whatever the host program logs next (e.g. a Trainer).
        self._previous_uri = None
        if tracking_uri:
            self._previous_uri = (_global_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"))
            self.mlflow.set_tracking_uri(tracking_uri)
        active = self.mlflow.active_run()
        self.started = False
        try:
            self.run = active if active is not None else self.mlflow.start_run(run_name=run_name)
        except Exception as exc:  # the tracking store cannot be opened: say which, in one line
            store = self.mlflow.get_tracking_uri()
            self._restore_uri()
            raise InputError(f"--log mlflow: cannot open the tracking store {store!r}: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        self.started = active is None

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if metrics:
            self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, run_id=self.run_id)

    def log_figure(self, tag: str, figure: Any, step: int | None = None) -> None:
        name = tag if step is None else f"{tag}_step{step}"
        self.mlflow.MlflowClient().log_figure(self.run_id, figure, f"{_metric_key(name).replace('/', '_')}.png")

    def log_document(self, name: str, document: Mapping[str, Any]) -> None:
        self.mlflow.log_dict(json.loads(json.dumps(document, default=str)), name, run_id=self.run_id)

    def close(self) -> None:
        if self.started:
            self.mlflow.end_run()
            self.started = False
        self._restore_uri()

    def _restore_uri(self) -> None:
        if self._previous_uri is None:
            return
        uri, environment = self._previous_uri
        self._previous_uri = None
        self.mlflow.set_tracking_uri(uri)  # None clears it (and the environment variable) again
        if environment is not None:
            os.environ["MLFLOW_TRACKING_URI"] = environment


def _global_tracking_uri() -> str | None:
    """The tracking URI set by ``mlflow.set_tracking_uri`` in this process (None when unset)."""
    try:
        from mlflow.tracking._tracking_service import utils
    except ImportError:  # a layout of another mlflow version: nothing set that we could restore
        return None
    return getattr(utils, "_tracking_uri", None)
