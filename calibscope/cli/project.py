"""``calibscope project``: Müller et al.'s penultimate-layer plane projections (2019, §2) for one or more models."""

from __future__ import annotations

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
    NoCacheOpt,
    PrecisionOpt,
    SplitOpt,
    StdOpt,
    TrustOpt,
    cli_errors,
)


def project(
    checkpoints: list[Path] = typer.Argument(
        ..., help="One or more model checkpoints (.pt2, safetensors with arch metadata, state_dict + --arch), "
                  "one figure row each (e.g. hard targets and label smoothing).", show_default=False),
    data: Path | None = typer.Option(None, "--data", "-d", help="Training data (first column of the figure). "
                                     + HELP["data"], show_default=False),
    val: Path | None = typer.Option(None, "--val", help="Validation data (second column of the figure); the "
                                    "automatic class choice uses it when given.", show_default=False),
    classes: str | None = typer.Option(None, "--classes", "-c", help="Three classes a,b,c by index or name "
                                       "(e.g. 3,5,8 or cat,dog,deer); default: the three with most mutual "
                                       "confusion.", show_default=False),
    per_class: int = typer.Option(100, "--per-class", help="Examples per class (the first ones of each class, "
                                  "in dataset order); 0 keeps all."),
    layer: str | None = typer.Option(None, "--layer", help="Module (or .pt2 parameter prefix) of the final "
                                     "linear layer whose input is the penultimate activation (default: the last "
                                     "nn.Linear with num_classes outputs).", show_default=False),
    json_: JsonOpt = False,
    out: Path | None = typer.Option(None, "--out", "-o", help=HELP["out"] + " Figure: projection.png/.svg; "
                                    "numbers and coordinates: projection.json.", show_default=False),
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
    no_cache: NoCacheOpt = False,
) -> None:
    """Penultimate-layer activations projected onto the plane through three class templates.

    Templates w̃_k = (w_k, b_k) of the final layer, x̃ = (x, 1); E = orthonormal basis of
    span(w̃_b − w̃_a, w̃_c − w̃_a) (QR), origin p0 = mean template, coordinates u = Eᵀ(x̃ − p0)
    (Müller, Kornblith & Hinton 2019, §2). Label smoothing gives tight, equidistant clusters; hard targets
    broad spreads. The table gives the relative spread (mean distance to the class centre / distance between
    centres; smaller = tighter) in the plane and in the full feature space.

    Examples:

      calibscope project hard.pt2 smoothed.pt2 --data train.npz --val val.npz --out figs/

      calibscope project model.pt2 --data train.npz --classes cat,dog,deer --per-class 200

      calibscope project weights.safetensors --arch torchvision:resnet18 --data val/ --layer fc
    """
    with cli_errors():
        from calibscope.cli._common import ModelInputs, display_names, no_data_error, project_defaults
        from calibscope.diagnostics.projection import most_confused_classes, plane_projection, resolve_classes
        from calibscope.errors import InputError
        from calibscope.inference.pipeline import compute_outputs
        from calibscope.loading.checkpoint import load_checkpoint
        from calibscope.loading.files import display
        from calibscope.loading.types import LogitsCheckpoint
        from calibscope.render import projection_view as view

        if per_class < 0:
            raise InputError(f"--per-class must be a positive number of examples (or 0 for all), got {per_class}")
        defaults = project_defaults()
        common = dict(split=split, label_column=label_column, limit=limit, arch=arch, arch_kwargs=arch_kwargs,
                      trust=trust, device=device, precision=precision, batch_size=batch_size, mean=mean, std=std,
                      no_cache=no_cache, defaults=defaults, capture_features=True, layer=layer)
        sets = [("train", ModelInputs(data=data, **common))]
        if sets[0][1].data_path is None:
            raise no_data_error(checkpoints[0])
        if val is not None:
            sets.append(("val", ModelInputs(data=val, **common)))
        for _, inputs in sets:
            if inputs.dataset.labels is None:
                raise InputError(f"{display(inputs.data_path)} has no labels; the projection colours examples "
                                 "by their true class")

        runs = []  # (name, path, checkpoint, [(split, inputs, outputs)])
        for name, path in zip(display_names(checkpoints), checkpoints, strict=True):
            checkpoint = load_checkpoint(path, arch=arch, arch_kwargs=sets[0][1].arch_kwargs, trust=trust)
            if isinstance(checkpoint, LogitsCheckpoint):
                raise InputError(f"{display(path)} holds logits only; the projection needs the model itself "
                                 "(.pt2, safetensors or a state_dict with --arch) to read its penultimate layer")
            per_set = [(label, inputs, compute_outputs(checkpoint, inputs.dataset, inputs.options,
                                                       use_cache=inputs.use_cache)) for label, inputs in sets]
            runs.append((name, path, checkpoint, per_set))

        num_classes = {int(o.logits.shape[1]) for *_, per_set in runs for _, _, o in per_set}
        if len(num_classes) > 1:
            raise InputError(f"the checkpoints have different numbers of classes ({sorted(num_classes)}); "
                             "compare models of the same task")
        k = num_classes.pop()
        names = sets[0][1].dataset.class_names or next(
            (tuple(c.metadata["class_names"]) for *_, c, _ in runs if c.metadata.get("class_names")), None)
        if names is not None and len(names) != k:
            names = None
        if classes is not None:
            indices = resolve_classes(classes, k, names)
            picked_on = None
        else:
            import torch

            pick_set = len(sets) - 1  # validation when given, else training data
            logits = torch.cat([per_set[pick_set][2].logits for *_, per_set in runs])
            labels = torch.cat([per_set[pick_set][2].labels for *_, per_set in runs])
            indices = most_confused_classes(logits, labels)
            picked_on = str(sets[pick_set][1].data_path) + (
                f", pooled over {len(runs)} models" if len(runs) > 1 else "")
        choice = view.ClassChoice(indices, tuple(names[i] if names else str(i) for i in indices), picked_on)

        results = []
        for name, path, checkpoint, per_set in runs:
            splits = []
            for label, inputs, outputs in per_set:
                if outputs.features is None or outputs.weight is None:
                    raise InputError(f"{display(path)}: no penultimate features were captured; use the .pt2 "
                                     "or safetensors form of the model, or name the final layer with --layer")
                try:
                    projection = plane_projection(outputs.features, outputs.labels, outputs.weight, outputs.bias,
                                                  indices, per_class=per_class or None)
                except InputError as exc:
                    raise InputError(f"{name} on {display(inputs.data_path)}: {exc}") from None
                splits.append(view.ProjectedSplit(label, inputs.data_path, projection, outputs.meta))
            results.append(view.ProjectionResult(name, path, checkpoint.format,
                                                 per_set[0][2].meta.get("feature_layer"), tuple(splits)))

        doc = view.document(results, choice, per_class=per_class or None)
        written = view.write_outputs(out, results, choice, doc) if out is not None else None
        if json_:
            view.print_json(doc)
        else:
            view.print_tables(results, choice, written=written)
