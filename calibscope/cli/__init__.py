"""The ``calibscope`` command line: one module per command, thin over the library.

Exit codes: 0 success · 1 a gate failed (e.g. ``--max-ece``) · 2 bad input or usage (one line on stderr,
``--debug`` for the traceback) · 3 internal error.
"""

from __future__ import annotations

import re

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


def _reflow(text: str | None) -> str | None:
    """Docstring paragraphs as one line each (Rich keeps single newlines); indented lines (examples) stay."""
    if not text:
        return text
    out = []
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        lines = paragraph.split("\n")
        out.append(paragraph if any(line.startswith(" ") for line in lines) else " ".join(lines))
    return "\n\n".join(out)


def _polish(command) -> None:
    """Help that reads well: no ``<bool>`` on plain flags, arguments named in capitals (``CHECKPOINTS...``), not
    by their Python type (``<list[Path]>``), list options shown as ``TYPE...``, paragraphs reflowed."""
    command.help = _reflow(command.help)
    for param in command.params:
        if getattr(param, "help", None):  # "[default: …]" written in a help text is text, not Rich markup
            param.help = re.sub(r"(?<!\\)\[default", r"\\[default", param.help)
        if isinstance(param, TyperOption):
            if not param.is_flag and param.default is not None and "default" not in (param.help or "").lower():
                param.show_default = True  # every default shown
            if param.is_flag:
                param.metavar = ""
            elif param.type_descriptor.is_list:
                param.metavar = "<" + param.type_descriptor.annotation.__args__[0].__name__.lower() + ">..."
        elif isinstance(param, TyperArgument):
            param.metavar = param.name.upper()
            param.display_type_rich = lambda ctx: None  # the name says it; no Python type


def _usage(command, ctx) -> list[str]:
    pieces = [command.options_metavar] if command.options_metavar and command.get_params(ctx) else []
    for param in command.get_params(ctx):
        if isinstance(param, TyperArgument):
            name = param.name.upper() + ("..." if param.nargs != 1 else "")
            pieces.append(name if param.required else f"[{name}]")
    return pieces


def _help_option(option):
    if option is not None:
        option.metavar = ""
    return option


class HelpCommand(TyperCommand):
    """A command whose --help is polished (see :func:`_polish`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _polish(self)

    def collect_usage_pieces(self, ctx) -> list[str]:
        return _usage(self, ctx)

    def get_help_option(self, ctx):
        return _help_option(super().get_help_option(ctx))


class HelpGroup(TyperGroup):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _polish(self)

    def get_help_option(self, ctx):
        return _help_option(super().get_help_option(ctx))


app = typer.Typer(
    name="calibscope",
    cls=HelpGroup,
    help=(
        "How trustworthy is a trained classifier? Loads any checkpoint (.pt2, TorchScript, state_dict + --arch, "
        "safetensors, Hugging Face, ONNX, logits files) and a dataset, runs the model once in big batches (the "
        "outputs are cached: the next command on the same inputs does not run it again) and measures: "
        "calibration and the CI gate (ece), temperature scaling (temperature), selective classification "
        "(selective), conformal prediction sets (conformal), post-hoc calibrators (calibrate), "
        "soft targets for distillation (distill), "
        "out-of-distribution detection (ood), Müller et al.'s "
        "penultimate-layer projections (project) and logit-gap mutual information (mi), SAM's top Hessian "
        "eigenvalues (hessian), loss-surface slices (landscape), and all of them in one HTML page (report, "
        "compare).\n\n"
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


# (name, module, function): every command, in the order --help lists them
COMMANDS = (
    ("ece", "ece", "ece"),
    ("temperature", "temperature", "temperature"),
    ("calibrate", "calibrate", "calibrate"),
    ("distill", "distill", "distill"),
    ("selective", "selective", "selective"),
    ("conformal", "conformal", "conformal"),
    ("ood", "ood", "ood"),
    ("project", "project", "project"),
    ("mi", "mi", "mi"),
    ("hessian", "hessian", "hessian"),
    ("landscape", "landscape", "landscape"),
    ("report", "report", "report"),
    ("compare", "report", "compare"),
)


def _register() -> None:
    import importlib

    for name, module, function in COMMANDS:
        fn = getattr(importlib.import_module(f"calibscope.cli.{module}"), function)
        app.command(name=name, no_args_is_help=True, cls=HelpCommand)(fn)


_register()


def main() -> None:  # console-script entry point
    app()
