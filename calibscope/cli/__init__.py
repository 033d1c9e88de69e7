"""The ``calibscope`` command line: one module per command, thin over the library.

Exit codes: 0 success · 1 a gate failed (e.g. ``--max-ece``) · 2 bad input or usage (one line on stderr,
``--debug`` for the traceback) · 3 internal error.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="calibscope",
    help=(
        "How trustworthy is a trained classifier? Loads any checkpoint (.pt2, TorchScript, state_dict + "
        "--arch, safetensors, logits files) and a dataset, runs the model once in big batches, and measures "
        "calibration (ECE with 15 bins, NLL, Brier, reliability diagrams).\n\n"
        "Exit codes: 0 ok, 1 a gate failed (--max-ece), 2 bad input or usage, 3 internal error."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    from calibscope.cli import _common

    if version:
        from calibscope import __version__

        typer.echo(f"calibscope {__version__}")
        raise typer.Exit(0)
    import os

    # set on every invocation: an earlier --debug in the same process must not leak into this one
    _common.STATE["debug"] = debug or bool(os.environ.get("CALIBSCOPE_DEBUG"))
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


def _register() -> None:
    from calibscope.cli import (
        calibrate,
        conformal,
        distill,
        ece,
        hessian,
        mi,
        ood,
        project,
        report,
        selective,
        temperature,
    )

    app.command(name="ece", no_args_is_help=True)(ece.ece)
    app.command(name="project", no_args_is_help=True)(project.project)
    app.command(name="mi", no_args_is_help=True)(mi.mi)
    app.command(name="ood", no_args_is_help=True)(ood.ood)
    app.command(name="selective", no_args_is_help=True)(selective.selective)
    app.command(name="conformal", no_args_is_help=True)(conformal.conformal)
    app.command(name="hessian", no_args_is_help=True)(hessian.hessian)
    app.command(name="temperature", no_args_is_help=True)(temperature.temperature)
    app.command(name="calibrate", no_args_is_help=True)(calibrate.calibrate)
    app.command(name="distill", no_args_is_help=True)(distill.distill)
    app.command(name="report", no_args_is_help=True)(report.report)
    app.command(name="compare", no_args_is_help=True)(report.compare)


_register()


def main() -> None:  # console-script entry point
    app()
