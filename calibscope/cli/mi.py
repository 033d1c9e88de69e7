"""``calibscope mi``: logit-gap mutual information (Müller et al. 2019 §4) across a series of checkpoints."""

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
    inference_options,
    with_options,
)
from calibscope.workflows.mi import DEFAULT_DRAWS, DEFAULT_EXAMPLES, DEFAULT_REPETITIONS


@with_options(checkpoint_options, device_option, inference_options, data_options)
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
    examples: int = typer.Option(DEFAULT_EXAMPLES, "--examples", "-n", help="Examples per class, chosen at random "
                                 "(seeded); all of them when a class has fewer. Müller et al.: 300 + 300."),
    draws: int = typer.Option(DEFAULT_DRAWS, "--draws", "-L", help="Augmented draws per example (L ≥ 2)."),
    repetitions: int = typer.Option(DEFAULT_REPETITIONS, "--repetitions", "-r", help="Independent repetitions of "
                                    "the draws; the spread is the standard deviation of Î over them."),
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
    log: LogOpt = None,
    out: Path | None = typer.Option(None, "--out", "-o", help=HELP["out"] + " Plot: mi.png/.svg; numbers: "
                                    "mi.json.", show_default=False),
    **options: Any,
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
        from calibscope.render import trackers

        log = trackers.check_trackers(log)
        from calibscope.cli._common import check_outputs

        check_outputs(folders={"--out": out})
        from calibscope.cli._common import display_names, echo_err, project_defaults, session_from_options
        from calibscope.errors import InputError
        from calibscope.render import mi_view
        from calibscope.workflows.mi import MiSettings, natural_key, run_mi

        settings = MiSettings(classes=classes, examples=examples, draws=draws, repetitions=repetitions,
                              augment=augment, shift=shift, flip=not no_flip, seed=seed)
        session = session_from_options(data=data, no_cache=True, defaults=project_defaults(), **options)
        x_labels = None
        if labels is not None:
            x_labels = [v.strip() for v in labels.split(",")]
            if len(x_labels) != len(checkpoints) or not all(x_labels):
                raise InputError(f"--labels needs one non-empty label per checkpoint ({len(checkpoints)}), got "
                                 f"{len(x_labels)}: '{labels}'")
        else:
            checkpoints = sorted(checkpoints, key=natural_key)
        run = run_mi(session, checkpoints, settings, names=display_names(checkpoints), labels=x_labels)
        for note in run.notes:
            echo_err(note if note.startswith("warning:") else f"note: {note}")
        results = list(run.results)
        doc = mi_view.document(results, run.settings)
        trackers.log_run(log, name="mi", document=doc)
        written = mi_view.write_outputs(out, results, run.settings, doc) if out is not None else None
        if json_:
            mi_view.print_json(doc)
        else:
            mi_view.print_tables(results, run.settings, written=written)
