"""What the Lightning and Hugging Face callbacks share: one validation epoch's calibration, its scalars, the
reliability diagram and the ``max_ece`` check. Framework-free (torch and calibscope only)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import torch

from calibscope.diagnostics.calibration import CalibrationMetrics
from calibscope.diagnostics.streaming import StreamingCalibration
from calibscope.errors import InputError

ON_MAX_ECE = ("warn", "stop")
# the scalars logged each epoch: name → what it is (also the docs' list)
EPOCH_SCALARS = {
    "ece": "top-label ECE, 15 equal-width bins (Guo et al. 2017)",
    "mce": "maximum calibration error over non-empty bins",
    "nll": "mean negative log-likelihood (nats)",
    "brier": "multi-class Brier score",
    "accuracy": "top-1 accuracy",
    "temperature": "the NLL-optimal temperature T* (exact, safeguarded Newton on 1/T)",
    "ece_at_temperature": "ECE of softmax(logits / T*)",
}


def validate_options(max_ece: Any, on_max_ece: Any) -> float | None:
    if max_ece is not None and (isinstance(max_ece, bool) or not isinstance(max_ece, numbers.Real)
                                or not 0 <= max_ece <= 1):
        raise InputError(f"Expected argument `max_ece` to be a number in [0, 1] or None, but got {max_ece!r}")
    if on_max_ece not in ON_MAX_ECE:
        raise InputError(f"Expected argument `on_max_ece` to be 'warn' or 'stop', but got {on_max_ece!r}")
    return None if max_ece is None else float(max_ece)


@dataclass(frozen=True)
class EpochCalibration:
    """The numbers of one validation epoch: ``metrics`` (the full family), ``scalars`` (name → value, the
    keys of :data:`EPOCH_SCALARS` that could be computed) and ``note`` (why a temperature is missing)."""

    metrics: CalibrationMetrics
    scalars: dict[str, float]
    note: str | None = None

    def gate_message(self, max_ece: float | None) -> str | None:
        """The one-line message when the ECE is above ``max_ece`` (else None)."""
        ece = self.scalars["ece"]
        if max_ece is None or not ece > max_ece:
            return None
        return f"calibscope: validation ECE {ece:.4f} > max_ece {max_ece:g} (n = {self.metrics.n})"


def new_stream(n_bins: int, fit_temperature: bool) -> StreamingCalibration:
    return StreamingCalibration(n_bins=n_bins, keep_logits=fit_temperature)


def epoch_calibration(stream: StreamingCalibration) -> EpochCalibration:
    """Sync ``stream`` over ``torch.distributed`` (if initialised), then every scalar; the temperature only when
    the logits were kept and a finite T* exists."""
    from calibscope.diagnostics.calibration import expected_calibration_error
    from calibscope.diagnostics.temperature import apply_temperature, fit_temperature

    metrics = stream.sync().compute()
    scalars = {name: metrics.value(name) for name in ("ece", "mce", "nll", "brier", "accuracy")}
    note = None
    if stream.keeps_logits:
        logits, labels = stream.logits, stream.labels
        try:
            fit = fit_temperature(logits, labels)
        except InputError as exc:  # e.g. every prediction right with a margin: no finite optimum
            note = f"no temperature: {exc}"
        else:
            scalars["temperature"] = fit.temperature
            scaled = apply_temperature(logits.to(torch.float64), fit.temperature)
            scalars["ece_at_temperature"] = float(expected_calibration_error(scaled, labels, n_bins=stream.n_bins))
    return EpochCalibration(metrics, scalars, note)


def reliability_figure(result: EpochCalibration, title: str) -> Any:
    from calibscope.render.figures import reliability_diagram

    return reliability_diagram(result.metrics.report, title=title)
