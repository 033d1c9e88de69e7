"""``calibscope mi``: logit-gap mutual information (Müller et al. 2019 §4) across a series of checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from calibscope.cli._common import (
    HELP,
    ArchKwargsOpt,
    ArchOpt,
    BatchSizeOpt,
    DeviceOpt,
    JsonOpt,
    LabelColumnOpt,
    LimitOpt,
    MeanOpt,
    PrecisionOpt,
    SplitOpt,
    StdOpt,
    TrustOpt,
    cli_errors,
)


def mi(
    checkpoints: list[Path] = typer.Argument(
        ..., help="One or more model checkpoints (.pt2, TorchScript, state_dict, safetensors), e.g. "
                  "ckpts/epoch_*.pt2; sorted naturally (epoch_2 before epoch_10) unless --labels is given.",
        show_default=False),
    data: Path | None = typer.Option(None, "--data", "-d", help=HELP["data"] + " Use the training data.",
                                     show_default=False),
    classes: str | None = typer.Option(None, "--classes", "-c", help="The two classes a,b of the logit gap "
                                       "z_a − z_b: indices or class names, e.g. 3,5 or cat,dog.",
                                       show_default=False),
    examples: int = typer.Option(300, "--examples", "-n", help="Examples per class, chosen at random (seeded); "
                                 "all of them when a class has fewer. Müller et al.: 300 + 300."),
    draws: int = typer.Option(5, "--draws", "-L", help="Augmented draws per example (L ≥ 2)."),
    repetitions: int = typer.Option(3, "--repetitions", "-r", help="Independent repetitions of the draws; the "
                                    "spread is the standard deviation of Î over them."),
    shift: int | None = typer.Option(None, "--shift", help="Largest random translation in pixels, zero padding "
                                     "(images; selects --augment shift) \\[default: 4, the CIFAR recipe].",
                                     show_default=False),
    no_flip: bool = typer.Option(False, "--no-flip", help="No random horizontal flips with --augment shift/paper "
                                 "(for data where a flip changes the class: digits, text)."),
    augment: str | None = typer.Option(None, "--augment", help="noise:σ (Gaussian input noise in the data's "
                                       "units; the default, σ = 0.05), paper (±4 px shift + flip, Müller et al.'s "
                                       "CIFAR recipe), shift (±--shift px + flip) or shift+noise:σ. Use one the "
                                       "model was trained with: the premise check warns when the training "
                                       "predictions change under it.", show_default=False),
    seed: int = typer.Option(0, "--seed", help="Seed of the example choice and of every augmentation."),
    labels: str | None = typer.Option(None, "--labels", help="Comma-separated x-axis labels, one per "
                                      "checkpoint in the order given (numbers give a numeric axis, e.g. "
                                      "1,5,10,50).", show_default=False),
    json_: JsonOpt = False,
    out: Path | None = typer.Option(None, "--out", "-o", help=HELP["out"] + " Plot: mi.png/.svg; numbers: "
                                    "mi.json.", show_default=False),
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    trust: TrustOpt = False,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    batch_size: BatchSizeOpt = None,
    limit: LimitOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    split: SplitOpt = None,
    label_column: LabelColumnOpt = None,
) -> None:
    """Mutual information between training example and logit gap, against checkpoint.

    For classes a, b: N examples (300 + 300 by default) each get L augmented draws (default: Gaussian input
    noise σ = 0.05; --augment paper: Müller's random shift with zero padding + horizontal flip); Y = z_a − z_b.
    With μ_x the mean of example x's draws and σ² the pooled within-example variance,
    Î = mean over draws of [−(y − μ_x)²/2σ² − log (1/N) Σ_x' exp(−(y − μ_x')²/2σ²)]
    (Müller et al. 2019 §4, App. A.2), between 0 and log N: log N when every example keeps its own gap, log 2
    when only the class is left. With L = 5 Î is biased upwards by about 0.1 nats. The augmentation must be
    one the model is invariant to (Müller's d(·) is a training augmentation): each checkpoint's accuracy and
    prediction agreement under it are reported, with a warning below 90 % agreement.

    Examples:

      calibscope mi ckpts/epoch_*.pt2 --data train.npz --classes cat,dog --out figs/

      calibscope mi hard.pt2 ls.pt2 --data digits_train.npz --classes 3,5 --augment noise:0.05

      calibscope mi cifar_epoch_*.pt2 --data cifar_train/ --classes cat,dog --augment paper

      calibscope mi model.pt2 --data table.csv --classes 0,1 --augment noise:0.05 --json
    """
    with cli_errors():
        from calibscope.cli._common import ModelInputs, display_names, project_defaults
        from calibscope.errors import InputError

        defaults = project_defaults()
        inputs = ModelInputs(data=data, split=split, label_column=label_column, limit=limit, arch=arch,
                             arch_kwargs=arch_kwargs, trust=trust, device=device, precision=precision,
                             batch_size=batch_size, mean=mean, std=std, no_cache=True, defaults=defaults)
        if classes is None:
            raise InputError("--classes is required: name the two classes whose logit gap z_a − z_b is measured, "
                             "e.g. --classes 3,5 or --classes cat,dog")
        x_labels = _parse_labels(labels, len(checkpoints))
        if x_labels is None:
            checkpoints = sorted(checkpoints, key=_natural_key)
        names = display_names(checkpoints)
        if x_labels is None:
            x_labels = names
            x_values = _numbers([Path(name).stem for name in names], whole=False)
        else:
            x_values = _numbers(x_labels, whole=True)
        if inputs.data_path is None:
            raise InputError("mi needs the data to augment: pass --data TRAIN (the training examples), or set "
                             "data = \"path\" under [tool.calibscope] in pyproject.toml or in calibscope.toml")
        dataset = inputs.dataset
        if dataset.labels is None:
            raise InputError(f"'{dataset.source}' has no labels: mi needs them to pick examples of the two classes")

        from calibscope.diagnostics.mutual_information import (
            class_pair_examples,
            logit_gap_mutual_information,
            logit_gaps,
        )
        from calibscope.inference.augment import (
            augmented_logits,
            validate_augmentation,
            with_checkpoint_normalisation,
        )
        from calibscope.render import mi_view

        augmentation = _augmentation(augment, shift, no_flip, dataset=dataset)
        validate_augmentation(augmentation, tuple(dataset.inputs.shape))
        if draws < 2:
            raise InputError(f"--draws must be at least 2 (the within-example variance σ² needs two draws of "
                             f"each example), got {draws}")
        if repetitions < 1:
            raise InputError(f"--repetitions must be at least 1, got {repetitions}")
        first = _load_model(checkpoints[0], inputs)
        class_names = dataset.class_names or _metadata_class_names(first.metadata)
        pair = _parse_classes(classes, class_names)
        index = class_pair_examples(dataset.labels, pair, per_class=examples, seed=seed)
        chosen_labels = dataset.labels[index]
        counts = (int((chosen_labels == pair[0]).sum()), int((chosen_labels == pair[1]).sum()))
        chosen = dataset.inputs[index]
        _warn_split(dataset)

        results = []
        for i, (name, label, x, path) in enumerate(zip(names, x_labels, x_values, checkpoints, strict=True)):
            checkpoint = first if i == 0 else _load_model(path, inputs)
            options = with_checkpoint_normalisation(inputs.options, checkpoint.metadata)
            run = augmented_logits(checkpoint.module, chosen, augmentation=augmentation, draws=draws,
                                   repetitions=repetitions, seed=seed, options=options)
            estimate = logit_gap_mutual_information(logit_gaps(run.logits, pair))
            provenance = {**run.meta, "checkpoint_sha256": checkpoint.sha256, "dataset_sha256": dataset.sha256}
            results.append(mi_view.MiResult(name, path, checkpoint.format, label, x, estimate, provenance))
            first = None  # let each model go once measured

        settings = mi_view.MiSettings(
            classes=pair, class_names=tuple(_name(k, class_names) for k in pair), examples=counts,
            requested_per_class=examples, draws=draws, repetitions=repetitions,
            augmentation=augmentation.describe(), seed=seed, data=str(dataset.source),
            split=dataset.metadata.get("split"))
        doc = mi_view.document(results, settings)
        written = mi_view.write_outputs(out, results, settings, doc) if out is not None else None
        if json_:
            mi_view.print_json(doc)
        else:
            mi_view.print_tables(results, settings, written=written)


# --------------------------------------------------------------------------------------------------------
# option parsing (no math)
# --------------------------------------------------------------------------------------------------------


def _natural_key(path: Path) -> list:
    """``epoch_2`` before ``epoch_10``: digit runs compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower())
            for part in re.split(r"(\d+)", str(path)) if part]


def _parse_labels(text: str | None, count: int) -> list[str] | None:
    from calibscope.errors import InputError

    if text is None:
        return None
    values = [v.strip() for v in text.split(",")]
    if len(values) != count or any(not v for v in values):
        raise InputError(f"--labels needs one non-empty label per checkpoint ({count}), got {len(values)}: '{text}'")
    return values


def _numbers(labels: list[str], *, whole: bool) -> list[float | None]:
    """Numeric x positions: the label itself (``whole``) or its last number (``epoch_12`` → 12), when every label
    has one and they are distinct; else all None."""
    values: list[float | None] = []
    for label in labels:
        if whole:
            try:
                values.append(float(label))
            except ValueError:
                values.append(None)
        else:
            found = re.findall(r"\d+(?:\.\d+)?", label)
            values.append(float(found[-1]) if found else None)
    if any(v is None for v in values) or len(set(values)) != len(values):
        return [None] * len(labels)
    return values


def _load_model(path: Path, inputs):
    from calibscope.errors import InputError
    from calibscope.loading.checkpoint import load_checkpoint
    from calibscope.loading.types import LogitsCheckpoint

    checkpoint = load_checkpoint(path, arch=inputs.arch, arch_kwargs=inputs.arch_kwargs, trust=inputs.trust)
    if isinstance(checkpoint, LogitsCheckpoint):
        raise InputError(f"'{path}' holds precomputed logits, but mi must run a model on augmented inputs (for gaps "
                         "you already have, call calibscope.diagnostics.logit_gap_mutual_information from Python)")
    return checkpoint


def _warn_split(dataset) -> None:
    """Müller et al. measure on training examples: say so when a multi-split source gave another split."""
    from calibscope.cli._common import echo_err

    used = dataset.metadata.get("split")
    if used is not None and used != "train":
        echo_err(f"note: measuring on the '{used}' split of {dataset.source}; Müller et al. use the training "
                 "examples (--split train)")


def _metadata_class_names(metadata: dict) -> tuple[str, ...] | None:
    names = metadata.get("class_names")
    return tuple(str(n) for n in names) if isinstance(names, (list, tuple)) else None


def _parse_classes(text: str, class_names: tuple[str, ...] | None) -> tuple[int, int]:
    """``a,b``: class names (when the data or checkpoint names its classes) or indices."""
    from calibscope.errors import InputError

    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) != 2:
        raise InputError(f"--classes needs exactly two classes a,b (the logit gap is z_a − z_b), got '{text}'")
    pair = []
    for part in parts:
        if class_names is not None and part in class_names:
            pair.append(class_names.index(part))
        elif re.fullmatch(r"\d+", part):
            pair.append(int(part))
        else:
            known = f"; classes: {', '.join(class_names[:12])}" if class_names else ""
            raise InputError(f"--classes: '{part}' is neither a class index nor a class name{known}")
    if pair[0] == pair[1]:
        raise InputError(f"--classes names one class twice ({text}); the mutual information needs two classes")
    if class_names is not None:
        for k in pair:
            if k >= len(class_names):
                raise InputError(f"--classes: index {k} is out of range, the data has {len(class_names)} classes")
    return pair[0], pair[1]


def _name(index: int, class_names: tuple[str, ...] | None) -> str:
    return class_names[index] if class_names is not None and index < len(class_names) else str(index)


def _augmentation(spec: str | None, shift: int | None, no_flip: bool, *, dataset):
    """``--augment`` / ``--shift`` / ``--no-flip`` → :class:`~calibscope.inference.augment.Augmentation`."""
    from calibscope.inference.augment import augmentation_from_options

    return augmentation_from_options(spec, shift=shift, no_flip=no_flip, input_shape=tuple(dataset.inputs.shape),
                                     input_dtype=dataset.inputs.dtype)
