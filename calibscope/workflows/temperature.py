"""Temperature scaling of one checkpoint (Guo et al. 2017, §4.2): fit T of softmax(z / T) on one data set and
report the calibration before and after, there and on held-out data — as ``calibscope temperature`` and the
report's temperature section compute it. Also the fixed temperature that ``calibscope ece`` applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.bounds import MAX_BINS, check_upper
from calibscope.diagnostics.defaults import DEFAULT_BINS
from calibscope.errors import ArgumentError, InputError
from calibscope.workflows.session import Session

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.results import TemperatureResult

DEFAULT_OBJECTIVE = "nll"
OBJECTIVES = ("nll", "ece")


# --------------------------------------------------------------------------------------------------------
# which data: content fingerprints
# --------------------------------------------------------------------------------------------------------


def data_fingerprint(meta: dict[str, Any]) -> dict[str, str | None]:
    """What identifies the evaluated examples: the dataset's content hash, or for a logits file (which
    carries its own examples) the file's hash."""
    logits_file = str(meta.get("device", "")).startswith("none")
    return {"dataset_sha256": meta.get("dataset_sha256"),
            "logits_file_sha256": meta.get("checkpoint_sha256") if logits_file else None}


def same_data(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """True when two fingerprints share a non-empty hash."""
    if not a or not b:
        return False
    return any(a.get(key) and a.get(key) == b.get(key) for key in ("dataset_sha256", "logits_file_sha256"))


SAME_DATA_WARNING = ("the temperature was fitted on this same data (same content hash): the calibration "
                     "numbers after scaling are optimistic; report them on held-out data")


# --------------------------------------------------------------------------------------------------------
# --temperature / --temperature-from
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FixedTemperature:
    """A temperature given to ``calibscope ece``: by value (``--temperature``) or from a file."""

    value: float
    source: str
    fit_data: dict[str, Any] | None = None
    checkpoint_sha256: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "fit_data": self.fit_data}

    def warnings_for(self, meta: dict[str, Any]) -> list[str]:
        out = []
        if same_data(self.fit_data, data_fingerprint(meta)):
            out.append(SAME_DATA_WARNING)
        if self.checkpoint_sha256 and meta.get("checkpoint_sha256") and \
                self.checkpoint_sha256 != meta.get("checkpoint_sha256"):
            out.append(f"{self.source} was fitted for a different checkpoint (another content hash)")
        return out


def _check_temperature(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{where} must be a finite number larger than 0, got {value!r}")
    return float(value)


def temperature_option(temperature: float | None, temperature_from: Path | None) -> FixedTemperature | None:
    """Validate ``--temperature`` / ``--temperature-from`` (InputError on T ≤ 0, NaN, both given, bad file)."""

    if temperature is not None and temperature_from is not None:
        raise InputError("give either --temperature or --temperature-from, not both")
    if temperature is not None:
        return FixedTemperature(_check_temperature(temperature, "--temperature"), "--temperature")
    if temperature_from is None:
        return None
    from calibscope.loading.files import read_json_file

    doc = read_json_file(temperature_from, "the temperature file",
                         expected="one written by `calibscope temperature --save-temperature`",
                         missing="write one with `calibscope temperature ... --save-temperature FILE`")
    if not isinstance(doc, dict) or "temperature" not in doc:
        raise InputError(f"the temperature file '{temperature_from}' has no top-level \"temperature\" number")
    value = _check_temperature(doc["temperature"], f"\"temperature\" in '{temperature_from}'")
    fit = doc.get("fit") if isinstance(doc.get("fit"), dict) else {}
    fingerprint = fit.get("fingerprint") if isinstance(fit.get("fingerprint"), dict) else None
    sha = doc.get("checkpoint_sha256") if isinstance(doc.get("checkpoint_sha256"), str) else None
    return FixedTemperature(value, str(temperature_from), fingerprint, sha)


# --------------------------------------------------------------------------------------------------------
# the fit
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemperatureSettings:
    """``objective``: which T is chosen — ``nll`` (the exact NLL optimum) or ``ece`` (the ECE optimum, by
    search); ``n_bins``: bins of every ECE."""

    objective: str = DEFAULT_OBJECTIVE
    n_bins: int = DEFAULT_BINS

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ArgumentError("objective", f"`objective` must be nll or ece, got '{self.objective}'")
        if isinstance(self.n_bins, bool) or not isinstance(self.n_bins, int) or self.n_bins < 1:
            raise ArgumentError("n_bins", f"`n_bins` must be a positive integer, got {self.n_bins}")
        check_upper(self.n_bins, MAX_BINS, "n_bins")


def run_temperature(session: Session, checkpoint: Path | str, settings: TemperatureSettings | None = None, *,
                    apply: Session | Path | str | None = None, name: str | None = None) -> TemperatureResult:
    """Fit T on the session's data (the fit data, e.g. validation), then evaluate before/after there and on
    ``apply`` (held-out data: a session, or a dataset path; for a logits-file checkpoint, the path of another
    logits file of the same model). Under ``torchrun`` every pass sums over the ranks."""
    from calibscope.diagnostics.calibration import streamed_calibration_metrics
    from calibscope.diagnostics.temperature import apply_temperature, fit_temperature, temperature_sweep
    from calibscope.inference import distributed
    from calibscope.loading.types import LogitsCheckpoint, LogitsRows
    from calibscope.results import Evaluation, TemperatureResult
    from calibscope.workflows.ensemble import PredictiveCheckpoint, as_model_ref, require_model_members

    s = settings or TemperatureSettings()
    path = as_model_ref(checkpoint)
    group = distributed.current()
    reduce = None if group is None else group.all_reduce_sum
    gather = None if group is None else group.all_gather_rows
    outputs, ckpt = session.output_shard(path)
    logits, labels = outputs.logits(), outputs.labels
    warnings: list[str] = []
    held_out, apply_source = None, None
    if apply is not None:  # load and check the held-out data before any fitting
        if isinstance(ckpt, (LogitsCheckpoint, LogitsRows)):  # held-out logits of the same model, elsewhere
            apply_path = apply.data_path if isinstance(apply, Session) else Path(apply)
            held_out, _ = session.for_data(None).output_shard(apply_path)
            apply_source = str(apply_path)
        else:  # the same model on other data
            other = apply if isinstance(apply, Session) else session.for_data(apply)
            require_model_members(ckpt, f"the apply data '{other.data_path}'")
            held_out = other.output_shard(path)[0] if isinstance(ckpt, PredictiveCheckpoint) else other.shard_of(ckpt)
            apply_source = str(other.data_path)
        if held_out.num_classes != outputs.num_classes:
            raise InputError(f"the apply data '{apply_source}' gives {held_out.num_classes} classes but the fit "
                             f"data gives {outputs.num_classes}: a temperature only transfers between outputs of "
                             "the same model")

    try:
        nll_fit = fit_temperature(logits, labels, objective="nll", reduce=reduce, first_row=outputs.start)
    except InputError as exc:
        if s.objective == "nll":
            raise
        nll_fit = None
        warnings.append(f"no NLL-optimal temperature: {exc}")
    ece_fit = fit_temperature(logits, labels, objective="ece", n_bins=s.n_bins, reduce=reduce)
    chosen = nll_fit if s.objective == "nll" else ece_fit
    t = chosen.temperature
    if s.objective == "ece" and ece_fit.stop_reason == "bound":
        warnings.append(f"the ECE minimum lies at the edge of the searched range (T = {t:.3g})")

    def metrics(z, y):
        return streamed_calibration_metrics([(z, y)], num_classes=outputs.num_classes, n_bins=s.n_bins,
                                            reduce=reduce, gather=gather)

    def evaluate(z, y, source, meta):
        return Evaluation(source=source, fingerprint=data_fingerprint(meta), before=metrics(z, y),
                          after=metrics(apply_temperature(z, t), y),
                          sweep=temperature_sweep(z, y, n_bins=s.n_bins, reduce=reduce))

    fit_eval = evaluate(logits, labels, session.source(path), outputs.meta)
    apply_eval = None
    if held_out is not None:
        apply_eval = evaluate(held_out.logits(), held_out.labels, apply_source, held_out.meta)
        if same_data(fit_eval.fingerprint, apply_eval.fingerprint):
            warnings.append("the apply data is the fit data (same content hash): the numbers after scaling are "
                            "not held-out")
    return TemperatureResult(
        name=name or path.name, path=path, format=ckpt.format,
        checkpoint_sha256=outputs.meta.get("checkpoint_sha256"), objective=s.objective, nll_fit=nll_fit,
        ece_fit=ece_fit, fit=fit_eval, apply=apply_eval, inference=outputs.meta, warnings=tuple(warnings))

