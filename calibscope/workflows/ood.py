"""Out-of-distribution detection of one checkpoint (``calibscope ood`` and the report's OOD section), and the
plumbing it shares with selective classification: the same model's outputs on a second (OOD) dataset, the
class Gaussians of the Mahalanobis score fitted on training data, and the ``"fit"`` temperature.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from calibscope.bounds import MAX_BINS, check_upper
from calibscope.errors import ArgumentError, InputError
from calibscope.workflows.ood_scores import DetectorScorer, DetectorSettings, needs

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.diagnostics.ood import ClassGaussians
    from calibscope.inference.outputs import Outputs
    from calibscope.loading.types import Checkpoint, Dataset
    from calibscope.results import OodResult
    from calibscope.workflows.session import Session

DEFAULT_TEMPERATURE = 1.0
DEFAULT_SHRINKAGE = "ledoit-wolf"
DEFAULT_TPR = 0.95
DEFAULT_HISTOGRAM_BINS = 50
Temperature = float | Literal["fit"]  # "fit": the NLL-optimal T on the labelled data itself (optimistic)
Shrinkage = float | Literal["ledoit-wolf"]


def check_temperature(value: Temperature) -> Temperature:
    """A finite T > 0, or ``"fit"``."""
    if value == "fit":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ArgumentError("temperature", f"`temperature` must be a positive number or 'fit', got {value!r}")
    return float(value)


def check_shrinkage(value: Shrinkage) -> Shrinkage:
    """``"ledoit-wolf"`` or a number in [0, 1]."""
    if value == "ledoit-wolf":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ArgumentError("shrinkage", f"`shrinkage` must be 'ledoit-wolf' or a number in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class OodSettings:
    """``scores``: detectors (default msp, max-logit, energy, and mahalanobis when training data is given);
    ``temperature`` of msp and energy; ``shrinkage`` of the Mahalanobis covariance; ``tpr``: the TPR level of
    the FPR metric; ``n_bins``: bins of the score histograms; ``detectors``: hyper-parameters of the post-hoc
    detectors (:class:`~calibscope.workflows.ood_scores.DetectorSettings`); ``positive``: the positive class of
    the FPR metric and the ROC curves, ``"ood"`` (default: pytorch-ood's and torch-uncertainty's convention)
    or ``"in"``."""

    scores: tuple[str, ...] | None = None
    temperature: Temperature = DEFAULT_TEMPERATURE
    shrinkage: Shrinkage = DEFAULT_SHRINKAGE
    tpr: float = DEFAULT_TPR
    n_bins: int = DEFAULT_HISTOGRAM_BINS
    positive: str = "ood"
    detectors: DetectorSettings = field(default_factory=DetectorSettings)

    def __post_init__(self) -> None:
        from calibscope.diagnostics.ood import check_positive

        try:
            object.__setattr__(self, "positive", check_positive(self.positive))
        except InputError as exc:
            raise ArgumentError("positive", str(exc)) from None
        if self.scores is not None:
            from calibscope.diagnostics.ood import parse_scores

            object.__setattr__(self, "scores", parse_scores(self.scores))
        object.__setattr__(self, "temperature", check_temperature(self.temperature))
        object.__setattr__(self, "shrinkage", check_shrinkage(self.shrinkage))
        check_upper(self.n_bins, MAX_BINS, "n_bins")

    def score_names(self, has_train: bool, members: int = 0) -> tuple[str, ...]:
        """The scores asked for, else msp, max-logit, energy, + mahalanobis with training data; for an ensemble /
        MC-dropout of ``members`` predictive distributions: msp, and with two or more the epistemic scores
        (mutual-information, disagreement) — its logits are log-probabilities, on which max-logit ranks as msp
        and energy is constant."""
        from calibscope.diagnostics.ood import EPISTEMIC_SCORES, LOGIT_SCORES

        if self.scores is not None:
            return self.scores
        if members:
            return ("msp",) + (EPISTEMIC_SCORES if members > 1 else ())
        return LOGIT_SCORES + (("mahalanobis",) if has_train else ())


def run_ood(session: Session, checkpoint: Path | str, settings: OodSettings | None = None, *,
            ood_data: Path | str, train: Path | str | None = None, val: Path | str | None = None,
            name: str | None = None) -> OodResult:
    """AUROC, AUPR-In/Out and FPR at 95 % TPR of each score, the session's data being in-distribution and
    ``ood_data`` (a dataset of the same input shape, or a logits file of the model on it) the rest;
    ``train``: in-distribution fit data (Mahalanobis, KNN, ViM, ReAct, Gram); ``val``: Gram's normalisers."""
    from calibscope.diagnostics.ood import DETECTOR_SCORES, ood_report
    from calibscope.loading.types import LogitsCheckpoint
    from calibscope.results import OodResult
    from calibscope.workflows.ensemble import Predictive, as_model_ref, check_predictive_scores

    s = settings or OodSettings()
    path, ood_path = as_model_ref(checkpoint), Path(ood_data)
    names = s.score_names(train is not None, members=path.samples if isinstance(path, Predictive) else 0)
    check_predictive_scores(names, path)
    features = wants_features(names, train)
    detectors = tuple(n for n in names if n in DETECTOR_SCORES)
    if features or "features" in needs(detectors):
        session = session.with_options(capture_features=True)
    in_outputs, ckpt = session.outputs(path)
    scorer = DetectorScorer(session, ckpt, detectors, s.detectors, train=train, val=val) if detectors else None
    t, temperature_fit = resolve_temperature(s.temperature, in_outputs)
    gaussians, train_meta = None, None
    if features:
        gaussians, train_meta = fit_train_gaussians(session, Path(train), checkpoint=ckpt, shrinkage=s.shrinkage)
    out_outputs = ood_outputs(session, ood_path, checkpoint=ckpt, num_classes=in_outputs.num_classes)
    precomputed = {}
    if scorer is not None:
        in_set, out_set = session.dataset, ood_dataset(session, ood_path, checkpoint=ckpt)
        for n in detectors:
            precomputed[n] = (scorer.score(n, in_outputs, in_set, role="in-distribution"),
                              scorer.score(n, out_outputs, out_set, role="OOD"), scorer.definition(n))
        if train_meta is None and "train" in scorer.meta:
            train_meta = scorer.meta["train"]
    report = ood_report(in_outputs.logits, out_outputs.logits, scores=names, temperature=t,
                        in_features=in_outputs.features, out_features=out_outputs.features,
                        gaussians=gaussians, tpr_level=s.tpr, n_bins=s.n_bins, positive=s.positive,
                        in_member_logits=in_outputs.member_logits, out_member_logits=out_outputs.member_logits,
                        precomputed=precomputed)
    fitted = features or (scorer is not None and "train" in needs(detectors))
    in_path = session.data_path if session.data_path is not None else (
        path if isinstance(ckpt, LogitsCheckpoint) else None)
    return OodResult(
        name=name or path.name, path=path, format=ckpt.format,
        data={"in": None if in_path is None else str(in_path), "ood": str(ood_path),
              "train": str(train) if fitted else None, **({"val": str(val)} if val is not None else {})},
        report=report,
        inference={"in": in_outputs.meta, "ood": out_outputs.meta,
                   **({"train": train_meta} if fitted and train_meta is not None else {})},
        temperature_fit=temperature_fit,
    )


# --------------------------------------------------------------------------------------------------------
# shared with selective classification
# --------------------------------------------------------------------------------------------------------


def wants_features(names: tuple[str, ...], train: Path | str | None) -> bool:
    """Whether the scores need penultimate features (mahalanobis); refused without training data."""
    if "mahalanobis" not in names:
        return False
    if train is None:
        raise ArgumentError("train", "the mahalanobis score needs `train`: the class means and the shared "
                            "covariance are fitted on the model's penultimate features of training data "
                            "(Lee et al. 2018)")
    return True


def resolve_temperature(value: Temperature, outputs: Outputs) -> tuple[float, dict[str, Any] | None]:
    """``value``, or for ``"fit"`` the NLL-optimal temperature of the labelled ``outputs`` (Guo et al. 2017)."""
    if value != "fit":
        return float(value), None
    if outputs.labels is None:
        raise ArgumentError("temperature", "`temperature` 'fit' needs labelled data; pass a number instead")
    from calibscope.diagnostics.temperature import fit_temperature

    fit = fit_temperature(outputs.logits, outputs.labels)
    return fit.temperature, {"temperature": fit.temperature, "objective": fit.objective, "fitted_on": "data",
                             "n": fit.n, "converged": fit.converged}


def _same_input_shape(first: Dataset | None, second: Dataset, argument: str) -> None:
    if first is None:
        return
    a, b = tuple(first.inputs.shape[1:]), tuple(second.inputs.shape[1:])
    if a != b:
        raise ArgumentError(argument, f"`{argument}` '{second.source}' has inputs of shape {list(b)} per example "
                            f"but the data '{first.source}' has {list(a)}; the model needs one input shape "
                            "(resize or crop the second set the way the first was prepared)")


def ood_outputs(session: Session, path: Path, *, checkpoint: Checkpoint, num_classes: int) -> Outputs:
    """The same model's outputs on the OOD set ``path``: a dataset it is run on, or a logits file.

    OOD labels are dropped (they name other classes); the output cache holds no labels, so the entry is
    shared with any other use of the same file.
    """
    from calibscope.inference.outputs import Outputs
    from calibscope.inference.pipeline import compute_outputs
    from calibscope.inference.validate import validate_outputs
    from calibscope.loading.checkpoint import load_checkpoint
    from calibscope.loading.types import LogitsCheckpoint
    from calibscope.workflows.ensemble import PredictiveCheckpoint, predictive_outputs, require_model_members

    source = f"`ood_data` '{path}'"
    if isinstance(checkpoint, PredictiveCheckpoint):  # each member (and pass) on the OOD inputs, then averaged
        require_model_members(checkpoint, f"the OOD data '{path}'")
        ood = session.for_data(path, prefer_split=session.split)
        _same_input_shape(session.dataset, ood.dataset, "ood_data")
        outputs, _ = predictive_outputs(ood, checkpoint.path, dataset=dataclasses.replace(ood.dataset, labels=None))
        return dataclasses.replace(outputs, meta={**outputs.meta, "role": "ood"})
    if isinstance(checkpoint, LogitsCheckpoint):
        need = (f"the checkpoint '{checkpoint.path}' is a logits file, so `ood_data` must be a logits file too "
                f"(the same model's logits on the OOD inputs)")
        try:
            other = load_checkpoint(path)
        except InputError as exc:
            raise ArgumentError("ood_data", f"{need}: {exc}") from None
        if not isinstance(other, LogitsCheckpoint):
            raise ArgumentError("ood_data", f"{need}, but '{path}' is a model")
        logits = other.logits
    else:
        try:
            ood = session.for_data(path, prefer_split=session.split)
            dataset = ood.dataset
        except InputError as dataset_error:
            try:  # precomputed logits of this model on the OOD inputs?
                other = load_checkpoint(path)
            except InputError:
                raise dataset_error from None
            if not isinstance(other, LogitsCheckpoint):
                raise dataset_error from None
            logits = other.logits
        else:
            _same_input_shape(session.dataset, dataset, "ood_data")
            dataset = dataclasses.replace(dataset, labels=None)  # OOD labels name other classes
            outputs = compute_outputs(checkpoint, dataset, ood.options, use_cache=ood.use_cache)
            return dataclasses.replace(outputs, meta={**outputs.meta, "role": "ood"})
    if session.limit is not None:
        logits = logits[: session.limit]
    if logits.shape[0] == 0:
        raise ArgumentError("ood_data", f"{source} holds no examples (0 rows of logits)")
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ArgumentError("ood_data", f"{source} holds logits of shape {list(logits.shape)} but the "
                            f"in-distribution outputs have {num_classes} classes; both must come from the same "
                            "model")
    outputs = Outputs(logits=logits, labels=None, meta={"device": "none (logits file)", "precision": "as stored",
                                                       "checkpoint_format": other.format, "role": "ood",
                                                       "checkpoint_sha256": other.sha256,
                                                       "from_probabilities": other.from_probabilities})
    validate_outputs(outputs, source=source)
    return outputs


def ood_dataset(session: Session, path: Path, *, checkpoint: Checkpoint) -> Dataset | None:
    """The OOD inputs as a dataset (labels dropped), or None when ``path`` is a logits file."""
    from calibscope.loading.types import LogitsCheckpoint

    if isinstance(checkpoint, LogitsCheckpoint):
        return None
    try:
        dataset = session.for_data(path, prefer_split=session.split).dataset
    except InputError:
        return None
    return dataclasses.replace(dataset, labels=None)


def fit_train_gaussians(session: Session, path: Path, *, checkpoint: Checkpoint,
                        shrinkage: Shrinkage) -> tuple[ClassGaussians, dict[str, Any]]:
    """Class Gaussians (Lee et al. 2018) of the model's penultimate features on the training set ``path``
    (its ``train`` split where it holds several)."""
    from calibscope.diagnostics.ood import fit_class_gaussians
    from calibscope.loading.types import LogitsCheckpoint

    if isinstance(checkpoint, LogitsCheckpoint):
        raise InputError(f"the mahalanobis score needs penultimate features, and '{checkpoint.path}' is a logits "
                         "file; pass the model (.pt2, safetensors or state_dict + arch)")
    train = session.for_data(path, prefer_split="train", capture_features=True)
    dataset = train.dataset
    if dataset.labels is None:
        raise ArgumentError("train", f"`train` '{path}' holds no labels; the class means of the mahalanobis "
                            "score need them")
    _same_input_shape(session.dataset, dataset, "train")
    outputs = train.run(checkpoint)
    if outputs.features is None:
        raise ArgumentError("layer", "no penultimate features were captured for `train`; name the layer with "
                            "`layer`")
    gaussians = fit_class_gaussians(outputs.features, outputs.labels, shrinkage=shrinkage)
    return gaussians, {**outputs.meta, "role": "train"}
