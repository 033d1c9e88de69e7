r"""``CalibrationCallback`` for Hugging Face's ``Trainer``: ECE, MCE, NLL, Brier, accuracy and the optimal
temperature of every evaluation, logged where the trainer reports (``report_to``), with an optional
``max_ece`` warning or stop.

    >>> from calibscope.integrations.huggingface import CalibrationCallback   # doctest: +SKIP
    >>> trainer = Trainer(model, args, train_dataset=..., eval_dataset=...,  # doctest: +SKIP
    ...                   callbacks=[CalibrationCallback()])

How the numbers are collected: a forward hook on the model reads the ``logits`` of every forward pass made in
eval mode with ``labels`` (the evaluation loop's batches), into a :class:`~calibscope.StreamingCalibration`;
no second pass over the evaluation set. Sequence classification (logits ``[B, K]``) only. At ``on_evaluate``
the statistics are all-reduced across processes (when ``torch.distributed`` is initialised) and

* ``eval_calibration_ece``, ``eval_calibration_mce``, ``eval_calibration_nll``, ``eval_calibration_brier``,
  ``eval_calibration_accuracy``, ``eval_calibration_temperature``, ``eval_calibration_ece_at_temperature``
  are added to the evaluation's ``metrics`` (so ``trainer.evaluate()`` returns them,
  ``metric_for_best_model="eval_calibration_ece"`` and ``EarlyStoppingCallback`` can use them) and to
  ``state.log_history``;
* on the main process they are written to the trackers in ``args.report_to``, with each integration's
  naming: TensorBoard ``eval/calibration_ece`` (+ the reliability diagram as an image) in the run folder
  Hugging Face's ``TensorBoardCallback`` writes (``TENSORBOARD_LOGGING_DIR``, else the newest folder under
  ``output_dir/runs``), MLflow ``eval_calibration_ece`` (+ a PNG artifact) in the active run that
  ``MLflowCallback`` started, Weights & Biases through ``wandb.log``.

The Trainer logs its own evaluation metrics before any ``on_evaluate`` callback runs, so these scalars are
written by this callback itself, at the same ``global_step``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from calibscope.integrations import require

require("transformers", "calibscope.integrations.huggingface")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from calibscope.integrations._epoch import (  # noqa: E402
    EpochCalibration,
    epoch_calibration,
    new_stream,
    reliability_figure,
    validate_options,
)
from calibscope.render.trackers import MLflowTracker, TensorBoardTracker, figure_rgb  # noqa: E402

__all__ = ["CalibrationCallback"]


def _logits_of(output: Any) -> torch.Tensor | None:
    if isinstance(output, Mapping) or hasattr(output, "logits"):
        logits = output["logits"] if isinstance(output, Mapping) else output.logits
    elif isinstance(output, list | tuple) and len(output) >= 2:
        logits = output[1]  # (loss, logits, ...) when return_dict=False and labels were passed
    else:
        logits = output
    return logits if isinstance(logits, torch.Tensor) else None


def _tensorboard_dir(args: Any) -> Path:
    explicit = os.environ.get("TENSORBOARD_LOGGING_DIR")
    if explicit:
        return Path(explicit).expanduser()
    runs = Path(args.output_dir) / "runs"
    written = [p.parent for p in runs.glob("*/events.out.tfevents.*")]
    return max(written, key=lambda p: p.stat().st_mtime) if written else runs / "calibscope"


class CalibrationCallback(TrainerCallback):
    """Calibration of every evaluation of a Hugging Face ``Trainer``.

    Args:
        n_bins: M equal-width confidence bins (15, as Guo et al. and Müller et al.).
        max_ece: warn (``on_max_ece="warn"``) or stop training (``"stop"``) when the ECE is above it.
        fit_temperature: fit and log the NLL-optimal temperature (keeps the evaluation's logits until its end).
        log_figure: log the reliability diagram to trackers that take images.
    """

    def __init__(self, n_bins: int = 15, *, max_ece: float | None = None, on_max_ece: str = "warn",
                 fit_temperature: bool = True, log_figure: bool = True) -> None:
        self.max_ece = validate_options(max_ece, on_max_ece)
        self.on_max_ece = on_max_ece
        self.log_figure = bool(log_figure)
        self.stream = new_stream(n_bins, bool(fit_temperature))
        self.last: EpochCalibration | None = None
        self._hooked: torch.nn.Module | None = None
        self._handle: Any = None
        self._trackers: dict[str, Any] = {}

    # ---- collecting ----------------------------------------------------------------------------------------

    def _hook(self, model: torch.nn.Module | None) -> None:
        if model is None or model is self._hooked:
            return
        if self._handle is not None:
            self._handle.remove()
        self._hooked, self._handle = model, model.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        labels = kwargs.get("labels")
        if module.training or not isinstance(labels, torch.Tensor):
            return
        logits = _logits_of(output)
        if logits is None or logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
            raise TypeError("calibscope CalibrationCallback: expected logits [B, K] and labels [B] (sequence "
                            f"classification), but got {None if logits is None else tuple(logits.shape)} and "
                            f"{tuple(labels.shape)}")
        self.stream.update(logits.detach(), labels.detach())

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self._hook(model)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._hook(model)

    def on_predict(self, args, state, control, **kwargs):
        self.stream.reset()  # predict() batches with labels are not an evaluation

    # ---- reporting -------------------------------------------------------------------------------------------

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if self.stream.n == 0 and not distributed:
            if self._hooked is None:
                warnings.warn("calibscope CalibrationCallback saw no model; add it with Trainer(callbacks=[...])",
                              stacklevel=2)
            return control
        result = self.last = epoch_calibration(self.stream)
        self.stream.reset()
        prefix = _metric_prefix(metrics)
        values = {f"{prefix}_calibration_{name}": value for name, value in result.scalars.items()}
        if metrics is not None:
            metrics.update(values)
        state.log_history.append({**values, "epoch": state.epoch, "step": state.global_step})
        if state.is_world_process_zero:
            self._report(args, state, prefix, result)
            if result.note:
                warnings.warn(f"calibscope: {result.note}", stacklevel=2)
        message = result.gate_message(self.max_ece)
        if message is not None:
            if self.on_max_ece == "stop":
                control.should_training_stop = True
                message += "; stopping"
            warnings.warn(message, stacklevel=2)
        return control

    def _report(self, args: Any, state: Any, prefix: str, result: EpochCalibration) -> None:
        report_to = args.report_to if isinstance(args.report_to, list | tuple) else [args.report_to]
        step = state.global_step
        figure = reliability_figure(result, f"epoch {state.epoch:g}") if self.log_figure else None
        if "tensorboard" in report_to:
            tracker = self._trackers.get("tensorboard")
            if tracker is None:
                tracker = self._trackers["tensorboard"] = TensorBoardTracker(_tensorboard_dir(args))
            tracker.log_metrics({f"{prefix}/calibration_{k}": v for k, v in result.scalars.items()}, step)
            if figure is not None:
                tracker.log_figure(f"{prefix}/calibration_reliability", figure, step)
            tracker.writer.flush()
        if "mlflow" in report_to:
            import mlflow

            if mlflow.active_run() is not None:
                tracker = MLflowTracker()
                tracker.log_metrics({f"{prefix}_calibration_{k}": v for k, v in result.scalars.items()}, step)
                if figure is not None:
                    tracker.log_figure(f"{prefix}_calibration_reliability", figure, step)
        if "wandb" in report_to:
            import wandb

            if wandb.run is not None:
                logged = {f"{prefix}/calibration_{k}": v for k, v in result.scalars.items()}
                if figure is not None:
                    logged[f"{prefix}/calibration_reliability"] = wandb.Image(figure_rgb(figure))
                wandb.log({**logged, "train/global_step": step})

    def on_train_end(self, args, state, control, **kwargs):
        for tracker in self._trackers.values():
            tracker.close()
        self._trackers.clear()


def _metric_prefix(metrics: Mapping[str, Any] | None) -> str:
    """``eval`` (or the ``metric_key_prefix`` the evaluation used, read off its ``*_runtime`` key)."""
    for key in metrics or {}:
        if key.endswith("_runtime"):
            return key[: -len("_runtime")]
    return "eval"
