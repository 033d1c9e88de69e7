"""``calibscope distill``: what a teacher's soft targets carry, and how closely students follow it."""

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
from calibscope.workflows.distill import DEFAULT_PAIRS, DEFAULT_TEMPERATURE, DEFAULT_TEMPERATURES


@with_options(checkpoint_options, device_option, inference_options, data_options, cache_option)
def distill(
    checkpoints: list[Path] = typer.Argument(..., help="TEACHER [STUDENT ...]: the first --teachers checkpoints "
                                             "are teachers, the rest students.", show_default=False),
    data: Path | None = typer.Option(None, "--data", "-d", help=HELP["data"], show_default=False),
    temperature: float = typer.Option(DEFAULT_TEMPERATURE, "--temperature", "-T", help="Distillation temperature: "
                                      "the T of the loss T²·KL and of the soft-target matrix."),
    temperatures: str = typer.Option(",".join(f"{t:g}" for t in DEFAULT_TEMPERATURES), "--temperatures",
                                     help="Temperatures of the soft-target sweep (comma-separated)."),
    teachers: int = typer.Option(1, "--teachers", help="How many of the leading checkpoints are teachers (e.g. 2 "
                                 "for a hard and a label-smoothed teacher side by side)."),
    pairs: int = typer.Option(DEFAULT_PAIRS, "--pairs", help="Most similar class pairs to list."),
    json_: JsonOpt = False,
    log: LogOpt = None,
    out: Path | None = typer.Option(None, "--out", "-o", help=HELP["out"] + " Heat maps soft_targets_NAME, "
                                    "non_target_entropy; numbers: distill.json.", show_default=False),
    **options: Any,
) -> None:
    """Soft targets (Hinton et al. 2015) and knowledge distillation (Stanton et al. 2021).

    For each teacher and T: the entropy of the renormalised wrong-class distribution ("dark knowledge"; ÷
    log(K−1): 1 = the wrong classes look alike to the teacher), its information log(K−1) − H, and the mass off
    the true class; the average soft-target matrix as a heat map (classes ordered by hierarchical clustering)
    and the most similar class pairs. With students: T²·KL(teacher_T ‖ student_T), KL at T = 1, top-1
    agreement, accuracy and ECE. Müller et al. 2019 §4: a label-smoothed teacher's wrong classes look alike.

    Examples:

      calibscope distill teacher.pt2 student.pt2 --data test.npz

      calibscope distill hard.pt2 ls.pt2 --teachers 2 --data test.npz --out figs/
    """
    with cli_errors():
        from calibscope.render import trackers

        log = trackers.check_trackers(log)
        from calibscope.cli._common import display_names, parse_floats, project_defaults, session_from_options
        from calibscope.render import distill_view
        from calibscope.render.atomic import check_folder
        from calibscope.workflows.distill import DistillSettings, run_distill

        settings = DistillSettings(temperatures=parse_floats(temperatures, "temperatures"), temperature=temperature,
                                   pairs=pairs, teachers=teachers)
        check_folder(out, "--out")
        session = session_from_options(data=data, defaults=project_defaults(), **options)
        result = run_distill(session, checkpoints, settings, names=display_names(checkpoints))
        doc = distill_view.document(result)
        trackers.log_run(log, name="distill", document=doc)
        written = distill_view.write_outputs(out, result, doc) if out is not None else None
        if json_:
            distill_view.print_json(doc)
        else:
            distill_view.print_tables(result, written=written)
