"""``calibscope project``: Müller et al.'s penultimate-layer plane projections (2019, §2) for one or more models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from calibscope.cli._common import (
    HELP,
    JsonOpt,
    LogOpt,
    cache_option,
    checkpoint_options,
    cli_errors,
    data_options,
    device_option,
    inference_options,
    with_options,
)
from calibscope.workflows.projection import DEFAULT_PER_CLASS


@with_options(checkpoint_options, device_option, inference_options, data_options, cache_option)
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
    paper_layout: bool = typer.Option(False, "--paper-layout", help="Müller et al.'s Fig. 1 layout: a row of "
                                      "the three least mutually confused classes and a row of the most confused "
                                      "pair + the class least confused with both; one column per model × data "
                                      "set. Instead of --classes."),
    shared_scale: bool = typer.Option(False, "--shared-scale", help="One scale for every panel (default: each "
                                      "row its own, as feature scales differ between models)."),
    per_class: int = typer.Option(DEFAULT_PER_CLASS, "--per-class", help="Examples per class (the first ones of "
                                  "each class, in dataset order); 0 keeps all."),
    layer: str | None = typer.Option(None, "--layer", help="Module (or .pt2 parameter prefix) of the final "
                                     "linear layer whose input is the penultimate activation (default: the last "
                                     "nn.Linear with num_classes outputs).", show_default=False),
    json_: JsonOpt = False,
    log: LogOpt = None,
    out: Path | None = typer.Option(None, "--out", "-o", help=HELP["out"] + " Figure: projection.png/.svg; "
                                    "numbers and coordinates: projection.json.", show_default=False),
    **options: Any,
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

      calibscope project hard.pt2 smoothed.pt2 --data train.npz --val val.npz --paper-layout --shared-scale -o figs/

      calibscope project weights.safetensors --arch torchvision:resnet18 --data val/ --layer fc
    """
    with cli_errors():
        from calibscope.render import trackers

        log = trackers.check_trackers(log)
        from calibscope.cli._common import check_outputs

        check_outputs(folders={"--out": out})
        from calibscope.cli._common import display_names, project_defaults, session_from_options
        from calibscope.render import projection_view as view
        from calibscope.workflows.projection import ProjectionSettings, run_projection

        settings = ProjectionSettings(classes=classes, per_class=per_class, paper_layout=paper_layout)
        session = session_from_options(data=data, defaults=project_defaults(), layer=layer, **options)
        run = run_projection(session, checkpoints, settings, val=val, names=display_names(checkpoints))
        results = list(run.results)
        doc = view.document(results, run.choice, per_class=run.per_class, rows=run.rows)
        trackers.log_run(log, name="project", document=doc)
        written = view.write_outputs(out, results, run.choice, doc, shared_scale=shared_scale, rows=run.rows) \
            if out is not None else None
        if json_:
            view.print_json(doc)
        else:
            view.print_tables(results, run.choice, written=written, rows=run.rows)
