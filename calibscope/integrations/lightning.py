r"""``CalibrationCallback`` for Lightning: ECE, MCE, NLL, Brier, accuracy and the optimal temperature of every
validation epoch, logged through Lightning's own loggers, with an optional ``max_ece`` warning or stop.

    >>> from calibscope.integrations.lightning import CalibrationCallback     # doctest: +SKIP
    >>> trainer = lightning.Trainer(max_epochs=10,  # doctest: +SKIP
    ...                             callbacks=[CalibrationCallback(max_ece=0.05)])

Each validation batch adds its logits to a :class:`~calibscope.StreamingCalibration` (per-bin sums; the
logits are kept for the epoch only to fit the temperature, ``fit_temperature=False`` keeps none). The logits
are the ``validation_step``'s output when it returns them (a ``[B, K]`` tensor, a dict or an object with
``logits``); otherwise the callback runs ``pl_module(x)`` once more on the batch. Labels come from the output
(``labels``/``target``/``y``) or from the batch (``batch[1]``, or ``batch["labels"|"label"|"y"]``).

At the end of the epoch the statistics are all-reduced across ranks (under DDP), and the scalars
``calibration/ece``, ``calibration/mce``, ``calibration/nll``, ``calibration/brier``, ``calibration/accuracy``,
``calibration/temperature`` and ``calibration/ece_at_temperature`` go to ``pl_module.log`` (so every logger,
``ModelCheckpoint(monitor=...)`` and ``EarlyStopping`` see them). The reliability diagram goes to each logger
that takes images: TensorBoard (``add_image``), MLflow (a PNG artifact per epoch) and Weights & Biases
(``log_image``). Numbers as :func:`calibscope.calibration_metrics` (Guo et al. 2017 §2-3) and
:func:`calibscope.fit_temperature` (Guo et al. 2017 §4.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from calibscope.integrations import require

require("lightning", "calibscope.integrations.lightning")

import torch  # noqa: E402
from lightning.pytorch import Callback  # noqa: E402
from lightning.pytorch.utilities import rank_zero_warn  # noqa: E402

from calibscope.integrations._epoch import (  # noqa: E402
    EpochCalibration,
    epoch_calibration,
    new_stream,
    reliability_figure,
    validate_options,
)
from calibscope.render.trackers import TensorBoardTracker, figure_rgb  # noqa: E402

__all__ = ["CalibrationCallback"]

_LABEL_KEYS = ("labels", "label", "target", "targets", "y")


def _labels_from(container: Any) -> torch.Tensor | None:
    if isinstance(container, Mapping):
        for key in _LABEL_KEYS:
            if isinstance(container.get(key), torch.Tensor):
                return container[key]
        return None
    if isinstance(container, list | tuple) and len(container) >= 2 and isinstance(container[1], torch.Tensor):
        return container[1]
    return None


def _logits_from(outputs: Any, batch_size: int) -> torch.Tensor | None:
    if isinstance(outputs, Mapping):
        outputs = outputs.get("logits")
    elif hasattr(outputs, "logits"):
        outputs = outputs.logits
    if isinstance(outputs, torch.Tensor) and outputs.ndim == 2 and outputs.shape[0] == batch_size:
        return outputs
    return None


class CalibrationCallback(Callback):
    """Calibration of every validation epoch, logged to the trainer's loggers.

    Args:
        n_bins: M equal-width confidence bins (15, as Guo et al. and Müller et al.).
        max_ece: warn (``on_max_ece="warn"``) or stop training (``"stop"``) when the epoch's ECE is above it.
        fit_temperature: fit and log the NLL-optimal temperature (keeps the epoch's logits until its end).
        log_figure: log the reliability diagram to loggers that take images.
        prefix: prefix of the logged names.
    """

    def __init__(self, n_bins: int = 15, *, max_ece: float | None = None, on_max_ece: str = "warn",
                 fit_temperature: bool = True, log_figure: bool = True, prefix: str = "calibration/") -> None:
        self.max_ece = validate_options(max_ece, on_max_ece)
        self.on_max_ece = on_max_ece
        self.fit_temperature = bool(fit_temperature)
        self.log_figure = bool(log_figure)
        self.prefix = prefix
        self.stream = new_stream(n_bins, self.fit_temperature)
        self.last: EpochCalibration | None = None

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.stream.reset()

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            return
        labels = _labels_from(outputs)
        labels = _labels_from(batch) if labels is None else labels
        if labels is None:
            raise TypeError("CalibrationCallback: cannot find the labels; return them from validation_step as "
                            "{'logits': ..., 'labels': ...} or use batches (x, y)")
        logits = _logits_from(outputs, int(labels.shape[0]))
        if logits is None:  # validation_step returned a loss (or nothing): one more forward pass
            x = batch[0] if isinstance(batch, list | tuple) else batch
            with torch.no_grad():
                logits = _logits_from(pl_module(x), int(labels.shape[0]))
            if logits is None:
                raise TypeError("CalibrationCallback: pl_module(batch[0]) did not return [B, K] logits; return "
                                "them from validation_step as {'logits': ..., 'labels': ...}")
        self.stream.update(logits.detach(), labels.detach())

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or self.stream.n == 0 and not _distributed():
            return
        result = self.last = epoch_calibration(self.stream)
        self.stream.reset()
        for name, value in result.scalars.items():
            pl_module.log(self.prefix + name, value, on_epoch=True, sync_dist=False)  # already all-reduced
        if result.note and trainer.is_global_zero:
            rank_zero_warn(f"calibscope: {result.note}")
        if self.log_figure and trainer.is_global_zero:
            self._log_figure(trainer, result)
        message = result.gate_message(self.max_ece)
        if message is not None:
            if self.on_max_ece == "stop":
                trainer.should_stop = True
                message += "; stopping"
            rank_zero_warn(message)

    def _log_figure(self, trainer: Any, result: EpochCalibration) -> None:
        from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

        figure = None
        tag = self.prefix + "reliability"
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger | MLFlowLogger | WandbLogger):
                continue
            figure = figure or reliability_figure(result, f"epoch {trainer.current_epoch}")
            if isinstance(logger, TensorBoardLogger):
                TensorBoardTracker(logger.log_dir, writer=logger.experiment).log_figure(tag, figure,
                                                                                        trainer.global_step)
            elif isinstance(logger, MLFlowLogger):
                name = f"{tag.replace('/', '_')}_epoch{trainer.current_epoch:03d}.png"
                logger.experiment.log_figure(logger.run_id, figure, name)
            else:
                logger.log_image(key=tag, images=[figure_rgb(figure)], step=trainer.global_step)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()
