"""``calibscope landscape``: the loss around a model along filter-normalised random directions (Li et al. 2018)
and along the straight line to a second model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from calibscope.cli._common import (
    HELP,
    JsonOpt,
    LogOpt,
    checkpoint_options,
    cli_errors,
    data_options,
    device_option,
    with_options,
)
from calibscope.diagnostics.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EXAMPLES,
    DEFAULT_LINE_POINTS,
    DEFAULT_SPAN,
    DEFAULT_SURFACE_POINTS,
)


@with_options(checkpoint_options, device_option, data_options)
def landscape(
    checkpoint: Path = typer.Argument(..., help="Model A (.pt2, TorchScript, state_dict + --arch, safetensors): "
                                      "the surface is drawn around it.", show_default=False),
    other: Path | None = typer.Argument(None, help="Model B of the same architecture: adds the loss along the "
                                        "straight line from A to B.", show_default=False),
    data: Path | None = typer.Option(None, "--data", "-d", help=HELP["data"] + " Use the training data: "
                                     "the loss is the training loss.", show_default=False),
    dimensions: int = typer.Option(1, "--dimensions", "--dim", help="1: a line through A along one random "
                                   "direction; 2: a plane along two (steps² loss evaluations)."),
    span: float = typer.Option(DEFAULT_SPAN, "--span", help="α (and β) run from −span to +span, in units of the "
                               "filter-normalised direction (1 = as far as the weights are long)."),
    steps: int = typer.Option(DEFAULT_SURFACE_POINTS, "--steps", help="Grid points per axis of the surface."),
    line_steps: int = typer.Option(DEFAULT_LINE_POINTS, "--line-steps", help="Points of t ∈ [0, 1] on the "
                                   "line from A to B."),
    examples: int = typer.Option(DEFAULT_EXAMPLES, "--examples", help="Size of the fixed, seeded subset of the "
                                 "data the loss is averaged over (all examples if the dataset is smaller)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random directions and of the subset."),
    json_: JsonOpt = False,
    log: LogOpt = None,
    out: Path | None = typer.Option(None, "--out", "-o", help=HELP["out"] + " Plots: landscape.png/.svg and "
                                    "(with B) landscape_line.png/.svg; numbers: landscape.json.",
                                    show_default=False),
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, "--batch-size", "-b", help="Examples per batch of each "
                                   "loss evaluation (bounds memory)."),
    **options: Any,
) -> None:
    """Training loss around a model along filter-normalised random directions, and along the line to another.

    Surface: L(w + αd₁ [+ βd₂]) with Gaussian directions rescaled filter by filter to the norm of the weights
    they perturb, biases and norms left still (Li, Xu, Taylor, Studer & Goldstein 2018), so slices of
    different models share a scale. Line: L((1 − t)·w_A + t·w_B), t ∈ [0, 1] (Goodfellow et al. 2015), and
    its barrier above the chord (Frankle et al. 2020). Loss: mean cross-entropy over a fixed seeded subset,
    model in eval mode.

    Examples:

      calibscope landscape hard.pt2 --data train.npz --out figs/

      calibscope landscape hard.pt2 sam.pt2 --data train.npz --dimensions 2 --steps 11 --seed 1

      calibscope landscape weights.safetensors --arch torchvision:resnet18 --data train/ --examples 512 --json
    """
    with cli_errors():
        from calibscope.render import trackers

        log = trackers.check_trackers(log)
        from calibscope.cli._common import check_outputs

        check_outputs(folders={"--out": out})
        from calibscope.cli._common import display_names, project_defaults, session_from_options
        from calibscope.render import landscape_view as view
        from calibscope.workflows.landscape import LandscapeSettings, run_landscape

        settings = LandscapeSettings(dimensions=dimensions, span=span, steps=steps, line_steps=line_steps,
                                     examples=examples, seed=seed, batch_size=batch_size)
        session = session_from_options(data=data, no_cache=True, defaults=project_defaults(), **options)
        shown = display_names([checkpoint] + ([other] if other is not None else []))
        progress = view.Progress()
        try:
            result = run_landscape(session, checkpoint, other, settings,
                                   names=(shown[0], shown[1] if other is not None else None), on_progress=progress)
        finally:
            progress.close()
        doc = view.document(result)
        trackers.log_run(log, name="landscape", document=doc)
        written = view.write_outputs(out, result, doc) if out is not None else None
        if json_:
            view.print_json(doc)
        else:
            view.print_tables(result, written=written)
