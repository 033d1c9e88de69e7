"""``calibscope ood``: how well the model's confidence separates in-distribution from out-of-distribution inputs.

Also the input plumbing shared with ``calibscope selective``: the outputs of the same model on a second
dataset (the OOD set) and the class Gaussians of the Mahalanobis score fitted on ``--train``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from calibscope.cli._common import (
    HELP,
    ArchKwargsOpt,
    ArchOpt,
    BatchSizeOpt,
    DeviceOpt,
    JsonOpt,
    LabelColumnOpt,
    MeanOpt,
    NoCacheOpt,
    PrecisionOpt,
    SplitOpt,
    StdOpt,
    TrustOpt,
    cli_errors,
)

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.cli._common import ModelInputs
    from calibscope.diagnostics.ood import ClassGaussians
    from calibscope.inference.outputs import Outputs
    from calibscope.loading.types import Checkpoint, Dataset

HELP_SCORES = ("Comma-separated confidence scores: msp (max softmax probability), max-logit, energy (Liu et al. "
               "2020), mahalanobis (Lee et al. 2018; needs --train)")
HELP_TRAIN = ("Training data (with labels) for the mahalanobis score: class means and one shared covariance of "
              "the penultimate features. Its 'train' split is used when it holds several.")
HELP_TEMPERATURE = ("Softmax temperature T for msp and energy: a number (e.g. the T that 'calibscope temperature' "
                    "fitted on validation data, Guo et al. 2017), or 'fit' for the NLL-optimal T on the labelled "
                    "--data itself (optimistic: it sees the test labels) [default: 1].")
HELP_SHRINKAGE = ("Covariance shrinkage of the mahalanobis score towards a scaled identity: ledoit-wolf "
                  "(Ledoit & Wolf 2004, data-driven) or a fixed δ in [0, 1] (0: none, may be singular).")
HELP_LAYER = "Feature layer for mahalanobis (default: the input of the last linear layer with K outputs)."


def parse_shrinkage(text: str) -> float | str:
    """``ledoit-wolf`` (or ``lw``) or a number in [0, 1]."""
    from calibscope.errors import InputError

    key = text.strip().lower()
    if key in ("ledoit-wolf", "ledoit_wolf", "lw"):
        return "ledoit-wolf"
    try:
        value = float(key)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise InputError(f"--shrinkage must be 'ledoit-wolf' or a number in [0, 1], got '{text}'")
    return value


def parse_temperature(text: str) -> float | None:
    """A positive number, or None for ``fit``."""
    import math

    from calibscope.errors import InputError

    if text.strip().lower() == "fit":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"--temperature must be a positive number or 'fit', got '{text}'")
    return value


def resolve_temperature(value: float | None, outputs: Outputs) -> tuple[float, dict[str, Any] | None]:
    """``value``, or the NLL-optimal temperature of the labelled ``outputs`` (Guo et al. 2017) when None."""
    from calibscope.errors import InputError

    if value is not None:
        return value, None
    if outputs.labels is None:
        raise InputError("--temperature fit needs labels on --data; pass a number instead")
    from calibscope.diagnostics.temperature import fit_temperature

    fit = fit_temperature(outputs.logits, outputs.labels)
    return fit.temperature, {"temperature": fit.temperature, "objective": fit.objective, "fitted_on": "data",
                             "n": fit.n, "converged": fit.converged}


def _read_dataset(path: Path, inputs: ModelInputs, *, prefer_split: str | None) -> Dataset:
    """A second dataset with the command's --limit (and --label-column for CSV files); ``prefer_split`` is
    taken where the source holds several splits, else the source's only one."""
    from calibscope.errors import InputError
    from calibscope.loading.dataset import load_dataset
    from calibscope.loading.files import sniff

    label_column = inputs.label_column if path.exists() and sniff(path) == "text" else None
    if prefer_split is not None:
        try:
            return load_dataset(path, limit=inputs.limit, split=prefer_split, label_column=label_column)
        except InputError:
            pass  # a single-split source: fall through to its own split (or its real error)
    return load_dataset(path, limit=inputs.limit, label_column=label_column)


def _same_input_shape(first: Dataset | None, second: Dataset, option: str) -> None:
    from calibscope.errors import InputError

    if first is None:
        return
    a, b = tuple(first.inputs.shape[1:]), tuple(second.inputs.shape[1:])
    if a != b:
        raise InputError(f"{option} '{second.source}' has inputs of shape {list(b)} per example but --data "
                         f"'{first.source}' has {list(a)}; the model needs one input shape (resize or crop the "
                         "second set the way the first was prepared)")


def ood_outputs(path: Path, *, checkpoint: Checkpoint, inputs: ModelInputs, num_classes: int) -> Outputs:
    """The same model's outputs on the OOD set ``path``: a dataset it is run on, or a logits file.

    OOD labels are dropped (they name other classes); the output cache holds no labels, so the entry is
    shared with any other use of the same file.
    """
    import dataclasses

    from calibscope.errors import InputError
    from calibscope.inference.outputs import Outputs
    from calibscope.inference.pipeline import compute_outputs
    from calibscope.inference.validate import validate_outputs
    from calibscope.loading.checkpoint import load_checkpoint
    from calibscope.loading.types import LogitsCheckpoint

    source = f"--ood-data '{path}'"
    if isinstance(checkpoint, LogitsCheckpoint):
        need = (f"the checkpoint '{checkpoint.path}' is a logits file, so --ood-data must be a logits file too "
                f"(the same model's logits on the OOD inputs)")
        try:
            other = load_checkpoint(path)
        except InputError as exc:
            raise InputError(f"{need}: {exc}") from None
        if not isinstance(other, LogitsCheckpoint):
            raise InputError(f"{need}, but '{path}' is a model")
        logits = other.logits
    else:
        try:
            dataset = _read_dataset(path, inputs, prefer_split=inputs.split)
        except InputError as dataset_error:
            try:  # precomputed logits of this model on the OOD inputs?
                other = load_checkpoint(path)
            except InputError:
                raise dataset_error from None
            if not isinstance(other, LogitsCheckpoint):
                raise dataset_error from None
            logits = other.logits
        else:
            _same_input_shape(inputs.dataset, dataset, "--ood-data")
            dataset = dataclasses.replace(dataset, labels=None)  # OOD labels name other classes
            outputs = compute_outputs(checkpoint, dataset, inputs.options, use_cache=inputs.use_cache)
            return dataclasses.replace(outputs, meta={**outputs.meta, "role": "ood"})
    if inputs.limit is not None:
        logits = logits[: inputs.limit]
    if logits.shape[0] == 0:
        raise InputError(f"{source} holds no examples (0 rows of logits)")
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise InputError(f"{source} holds logits of shape {list(logits.shape)} but the in-distribution outputs have "
                         f"{num_classes} classes; both must come from the same model")
    outputs = Outputs(logits=logits, labels=None, meta={"device": "none (logits file)", "precision": "as stored",
                                                       "checkpoint_format": other.format, "role": "ood",
                                                       "checkpoint_sha256": other.sha256,
                                                       "from_probabilities": other.from_probabilities})
    validate_outputs(outputs, source=source)
    return outputs


def fit_train_gaussians(path: Path, *, checkpoint: Checkpoint, inputs: ModelInputs,
                        shrinkage: float | str) -> tuple[ClassGaussians, dict[str, Any]]:
    """Class Gaussians (Lee et al. 2018) of the model's penultimate features on the training set ``path``."""
    from calibscope.diagnostics.ood import fit_class_gaussians
    from calibscope.errors import InputError
    from calibscope.inference.pipeline import compute_outputs
    from calibscope.loading.types import LogitsCheckpoint

    if isinstance(checkpoint, LogitsCheckpoint):
        raise InputError(f"the mahalanobis score needs penultimate features, and '{checkpoint.path}' is a logits "
                         "file; pass the model (.pt2, safetensors or state_dict + --arch)")
    dataset = _read_dataset(path, inputs, prefer_split="train")
    if dataset.labels is None:
        raise InputError(f"--train '{path}' holds no labels; the class means of the mahalanobis score need them")
    _same_input_shape(inputs.dataset, dataset, "--train")
    outputs = compute_outputs(checkpoint, dataset, inputs.options, use_cache=inputs.use_cache)
    if outputs.features is None:
        raise InputError("no penultimate features were captured for --train; name the layer with --layer NAME")
    gaussians = fit_class_gaussians(outputs.features, outputs.labels, shrinkage=shrinkage)
    return gaussians, {**outputs.meta, "role": "train"}


def wants_features(names: tuple[str, ...], train: Path | None) -> bool:
    from calibscope.errors import InputError

    if "mahalanobis" not in names:
        return False
    if train is None:
        raise InputError("--score mahalanobis needs --train TRAIN: the class means and the shared covariance are "
                         "fitted on the model's penultimate features of training data (Lee et al. 2018)")
    return True


def ood(
    checkpoint: Path = typer.Argument(..., help="Checkpoint (.pt2, TorchScript, state_dict, safetensors) or a "
                                      "logits file of the in-distribution test set.", show_default=False),
    data: Path | None = typer.Option(None, "--data", "-d", help="In-distribution test set. " + HELP["data"],
                                     show_default=False),
    ood_data: Path = typer.Option(..., "--ood-data", help="Out-of-distribution inputs: a dataset with the same "
                                  "input shape (labels ignored), or a logits file of the same model on them.",
                                  show_default=False),
    train: Path | None = typer.Option(None, "--train", help=HELP_TRAIN, show_default=False),
    score: str | None = typer.Option(None, "--score", "-s", help=HELP_SCORES + " [default: msp,max-logit,"
                                     "energy, and mahalanobis with --train].", show_default=False),
    temperature: str = typer.Option("1", "--temperature", "-T", help=HELP_TEMPERATURE, show_default=False),
    shrinkage: str = typer.Option("ledoit-wolf", "--shrinkage", help=HELP_SHRINKAGE),
    tpr: float = typer.Option(0.95, "--tpr", help="TPR level of the FPR metric (FPR at 95 % TPR)."),
    bins: int = typer.Option(50, "--bins", help="Bins of the score histograms."),
    layer: str | None = typer.Option(None, "--layer", help=HELP_LAYER, show_default=False),
    json_: JsonOpt = False,
    out: Path | None = typer.Option(None, "--out", "-o", help=HELP["out"] + " ROC curves: ood_roc.png/.svg; "
                                    "score histograms: ood_scores.png/.svg; numbers: ood.json.", show_default=False),
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    trust: TrustOpt = False,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    batch_size: BatchSizeOpt = None,
    limit: int | None = typer.Option(None, "--limit", help="Use only the first N examples of each dataset.",
                                     show_default=False),
    mean: MeanOpt = None,
    std: StdOpt = None,
    split: SplitOpt = None,
    label_column: LabelColumnOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """Out-of-distribution detection: AUROC, AUPR-In, AUPR-Out and FPR at 95 % TPR of each confidence score.

    In-distribution inputs are the positives; every score is higher for inputs that look more
    in-distribution. Ties are handled as scikit-learn does. Scores: max softmax probability (Hendrycks &
    Gimpel 2017), max logit, energy T·logsumexp(z/T) (Liu et al. 2020) and, with --train, the Mahalanobis
    distance of the penultimate features to the closest class mean (Lee et al. 2018).

    Examples:

      calibscope ood model.pt2 --data test.npz --ood-data noise.npz

      calibscope ood model.pt2 --data test.npz --ood-data svhn/ --train train.npz --out figs/

      calibscope ood test_logits.npz --ood-data ood_logits.npz --score energy --json
    """
    with cli_errors():
        from calibscope.cli._common import ModelInputs, display_names, project_defaults
        from calibscope.diagnostics.ood import LOGIT_SCORES, ood_report, parse_scores
        from calibscope.loading.types import LogitsCheckpoint
        from calibscope.render import ood_view

        names = parse_scores(score) if score is not None else LOGIT_SCORES + (("mahalanobis",) if train else ())
        features = wants_features(names, train)
        shrink = parse_shrinkage(shrinkage)
        temperature_value = parse_temperature(temperature)
        inputs = ModelInputs(data=data, split=split, label_column=label_column, limit=limit, arch=arch,
                             arch_kwargs=arch_kwargs, trust=trust, device=device, precision=precision,
                             batch_size=batch_size, mean=mean, std=std, no_cache=no_cache,
                             defaults=project_defaults(), capture_features=features, layer=layer)
        in_outputs, ckpt = inputs.outputs(checkpoint)
        t, temperature_fit = resolve_temperature(temperature_value, in_outputs)
        gaussians, train_meta = None, None
        if features:
            gaussians, train_meta = fit_train_gaussians(train, checkpoint=ckpt, inputs=inputs, shrinkage=shrink)
        out_outputs = ood_outputs(ood_data, checkpoint=ckpt, inputs=inputs, num_classes=in_outputs.num_classes)
        report = ood_report(in_outputs.logits, out_outputs.logits, scores=names, temperature=t,
                            in_features=in_outputs.features, out_features=out_outputs.features,
                            gaussians=gaussians, tpr_level=tpr, n_bins=bins)
        in_path = inputs.data_path if inputs.data_path is not None else (
            checkpoint if isinstance(ckpt, LogitsCheckpoint) else None)
        result = ood_view.OodResult(
            name=display_names([checkpoint])[0], path=checkpoint, format=ckpt.format,
            data={"in": None if in_path is None else str(in_path), "ood": str(ood_data),
                  "train": str(train) if features else None},
            report=report,
            inference={"in": in_outputs.meta, "ood": out_outputs.meta, **({"train": train_meta} if features else {})},
            temperature_fit=temperature_fit,
        )
        doc = ood_view.document(result)
        written = ood_view.write_outputs(out, result, doc) if out is not None else None
        if json_:
            ood_view.print_json(doc)
        else:
            ood_view.print_tables(result, written=written)
