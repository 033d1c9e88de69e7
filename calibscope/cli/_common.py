"""Shared command-line plumbing: option parsing helpers, input loading, and errors → exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from calibscope.diagnostics.defaults import (
    DEFAULT_ASH_PERCENTILE,
    DEFAULT_ASH_VARIANT,
    DEFAULT_GRADNORM_TEMPERATURE,
    DEFAULT_GRAM_POLES,
    DEFAULT_KNN_K,
    DEFAULT_ODIN_EPSILON,
    DEFAULT_ODIN_TEMPERATURE,
    DEFAULT_REACT_PERCENTILE,
)
from calibscope.errors import GateFailed, InputError

STATE: dict[str, Any] = {"debug": bool(os.environ.get("CALIBSCOPE_DEBUG"))}

# Help texts shared by every command that runs a model.
HELP = {
    "data": "Dataset: .npz/.pt/.safetensors (x/y or images/labels), image folder, CIFAR batches, MNIST IDX, "
            "CSV. Optional for logits files that carry labels, or when pyproject.toml \\[tool.calibscope] / "
            "calibscope.toml names one.",
    "arch": "Architecture for a state_dict/safetensors file: package.module:callable, path/to/file.py:Callable, "
            "torchvision:NAME or timm:NAME. A module:callable or file.py:Callable runs that code (your code, by "
            "design; never code named by a file without --trust).",
    "arch_kwargs": "JSON keyword arguments for --arch, e.g. '{\"num_classes\": 10}'.",
    "trust": "Allow loading files that run code: pickled Python objects, .pt2 archives with code torch.export does "
             "not write, AOTInductor libraries, Hugging Face remote code (runs code from the file!).",
    "device": "auto (cuda → mps → cpu), cpu, cuda, cuda:N or mps.",
    "precision": "fp32 (default; calibration numbers must not move with hardware), bf16 or fp16 (autocast).",
    "batch_size": "Examples per batch (halved automatically on CUDA out-of-memory); by default chosen from the "
                  "size of one example and the free memory (1024 for small inputs, 8 for 224² images on CPU).",
    "limit": "Use only the first N examples of the dataset.",
    "mean": "Per-channel mean after uint8 → [0, 1], e.g. 0.485,0.456,0.406 (default: from the checkpoint).",
    "std": "Per-channel std, e.g. 0.229,0.224,0.225 (default: from the checkpoint).",
    "no_cache": "Do not read or write the output cache (.calibscope/cache/).",
    "split": "Which split of a multi-split dataset (e.g. train/test for CIFAR or MNIST directories).",
    "label_column": "Label column of a CSV dataset (default: label/labels/y/target/class).",
    "json": "Print a versioned JSON document to stdout instead of tables.",
    "out": "Write figures (PNG + SVG) and JSON into this directory.",
    "output": "Which of the model's outputs are the logits when its forward returns several (a tuple, dict or "
              "ModelOutput): a key such as logits or an index such as 1 (default: the one named logits, or the "
              "one as wide as the final nn.Linear; ambiguity is refused).",
    "labels": "Labels for a logits/probabilities file that holds none: .npy/.npz/.csv/.txt with one class index "
              "per row, one-hot rows, or class names.",
    "prefix": "Where the network's weights sit in a training checkpoint's state_dict, e.g. model. (default: the "
              "one prefix whose keys fit --arch; other entries are ignored with a note).",
}


# Ensembles and MC-dropout (calibscope.workflows.ensemble), on every command that evaluates predictions.
HELP_ENSEMBLE = ("Average the checkpoints' softmax probabilities into one model, shown as ensemble(a,b,…) "
                 "(logits = log of the mean probability); the members must give the same classes on the same "
                 "data. Only the ensemble is reported (run without --ensemble for the members).")
HELP_MC_DROPOUT = ("MC-dropout: N ≥ 1 stochastic passes with the dropout layers in train mode (the rest in eval), "
                   "averaged like an ensemble; masks seeded by --seed. Eager models only (state_dict / "
                   "safetensors + arch, Hugging Face); refused for .pt2, TorchScript, ONNX, logits files and "
                   "models without dropout.")
HELP_MC_SEED = "Seed of the MC-dropout masks (with --mc-dropout)."
EnsembleOpt = Annotated[bool, typer.Option("--ensemble", help=HELP_ENSEMBLE)]
McDropoutOpt = Annotated[int | None, typer.Option("--mc-dropout", help=HELP_MC_DROPOUT, show_default=False)]
McSeedOpt = Annotated[int, typer.Option("--seed", help=HELP_MC_SEED)]


def model_refs(checkpoints: list[Path], *, ensemble: bool = False, mc_dropout: int | None = None,
               seed: int = 0) -> list[tuple[str, Any]]:
    """(display name, checkpoint path or :class:`~calibscope.workflows.ensemble.Predictive`) of each model to
    evaluate: the checkpoints as they are, one ensemble of them (``--ensemble``), and/or MC-dropout of each."""
    if mc_dropout is not None and (mc_dropout < 1):
        raise InputError(f"--mc-dropout must be a number of stochastic passes ≥ 1, got {mc_dropout}")
    if not ensemble and mc_dropout is None:
        return list(zip(display_names(checkpoints), checkpoints, strict=True))
    from calibscope.workflows.ensemble import Predictive

    passes = mc_dropout or 0
    if ensemble:
        spec = Predictive(tuple(checkpoints), mc_dropout=passes, seed=seed)
        return [(spec.name, spec)]
    specs = [Predictive((p,), mc_dropout=passes, seed=seed, names=(n,))
             for n, p in zip(display_names(checkpoints), checkpoints, strict=True)]
    return [(spec.name, spec) for spec in specs]


def one_model(checkpoints: list[Path], *, ensemble: bool = False, mc_dropout: int | None = None,
              seed: int = 0) -> tuple[str, Any]:
    """The one model of a single-model command: a checkpoint, or (``--ensemble``) the ensemble of several."""
    if len(checkpoints) > 1 and not ensemble:
        raise InputError(f"this command evaluates one model but got {len(checkpoints)} checkpoints; pass "
                         "--ensemble to average them into one")
    return model_refs(checkpoints, ensemble=ensemble, mc_dropout=mc_dropout, seed=seed)[0]


# Help texts shared by ood and selective.
HELP_SCORES = ("Comma-separated confidence scores: msp (max softmax probability), max-logit, energy (Liu et al. "
               "2020), mahalanobis (Lee et al. 2018; needs --train), and the post-hoc detectors odin (Liang et al. "
               "2018), knn (Sun et al. 2022; --train), vim (Wang et al. 2022; --train), react (Sun et al. 2021; "
               "--train), ash (Djurisic et al. 2023), gradnorm (Huang et al. 2021), gram (Sastry & Oore 2020; "
               "--train, --val); with --ensemble / --mc-dropout the epistemic mutual-information (BALD) and "
               "disagreement; docs/ood.md")
HELP_TRAIN = ("Training data (with labels) the detectors are fitted on: class means and shared covariance "
              "(mahalanobis), the feature bank (knn), the principal space (vim), the clip threshold (react), "
              "the class-wise Gram bounds (gram). Its 'train' split is used when it holds several.")
HELP_TEMPERATURE = ("Softmax temperature T for msp and energy: a number (e.g. the T that 'calibscope temperature' "
                    "fitted on validation data, Guo et al. 2017), or 'fit' for the NLL-optimal T on the labelled "
                    "--data itself (optimistic: it sees the test labels) [default: 1].")
HELP_SHRINKAGE = ("Covariance shrinkage of the mahalanobis score towards a scaled identity: ledoit-wolf "
                  "(Ledoit & Wolf 2004, data-driven) or a fixed δ in [0, 1] (0: none, may be singular).")
HELP_LAYER = "Feature layer for mahalanobis (default: the input of the last linear layer with K outputs)."


# The options every model-running command shares, declared once (Typer reads them from the annotations).
ArchOpt = Annotated[str | None, typer.Option("--arch", help=HELP["arch"], show_default=False)]
ArchKwargsOpt = Annotated[str | None, typer.Option("--arch-kwargs", help=HELP["arch_kwargs"], show_default=False)]
TrustOpt = Annotated[bool, typer.Option("--trust", help=HELP["trust"])]
DeviceOpt = Annotated[str | None, typer.Option("--device", help=HELP["device"] + " \\[default: auto]",
                                               show_default=False)]
PrecisionOpt = Annotated[str | None, typer.Option("--precision", help=HELP["precision"], show_default=False)]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", "-b", help=HELP["batch_size"],
                                                  show_default=False)]
LimitOpt = Annotated[int | None, typer.Option("--limit", help=HELP["limit"], show_default=False)]
MeanOpt = Annotated[str | None, typer.Option("--mean", help=HELP["mean"], show_default=False)]
StdOpt = Annotated[str | None, typer.Option("--std", help=HELP["std"], show_default=False)]
SplitOpt = Annotated[str | None, typer.Option("--split", help=HELP["split"], show_default=False)]
LabelColumnOpt = Annotated[str | None, typer.Option("--label-column", help=HELP["label_column"], show_default=False)]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help=HELP["no_cache"])]
OutputOpt = Annotated[str | None, typer.Option("--output", help=HELP["output"], show_default=False)]
LabelsOpt = Annotated[Path | None, typer.Option("--labels", help=HELP["labels"], show_default=False)]
PrefixOpt = Annotated[str | None, typer.Option("--prefix", help=HELP["prefix"], show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help=HELP["json"])]
# Where results go besides the terminal (declared once; the commands that produce results take them).
FORMATS = ("text", "json", "markdown")
FormatOpt = Annotated[str | None, typer.Option("--format", help="Output on stdout: text (tables, the default), json "
                                               "(as --json) or markdown (for CI job summaries, e.g. "
                                               "$GITHUB_STEP_SUMMARY).", show_default=False)]
LogOpt = Annotated[list[str] | None, typer.Option(
    "--log", help="Also log the numbers, figures and JSON to an experiment tracker: tensorboard:DIR (event files) "
                  "or mlflow (the active or a new run in MLflow's configured store; mlflow:URI for another). "
                  "Repeatable.", show_default=False)]


# Option groups: the same options on every command that takes them, declared once. A group is a function whose
# signature lists the options (its body is never run); ``with_options`` appends groups to a command.
def checkpoint_options(arch: ArchOpt = None, arch_kwargs: ArchKwargsOpt = None, trust: TrustOpt = False,
                       prefix: PrefixOpt = None, output: OutputOpt = None) -> None:
    """How a checkpoint is turned into a model."""


def labels_option(labels: LabelsOpt = None) -> None:
    """Labels for a logits file that holds none (commands that read logits files)."""


def device_option(device: DeviceOpt = None) -> None:
    """Where the model runs."""


def inference_options(precision: PrecisionOpt = None, batch_size: BatchSizeOpt = None) -> None:
    """How the model runs (batched inference)."""


def cache_option(no_cache: NoCacheOpt = False) -> None:
    """The output cache (commands whose model outputs are cached)."""


def data_options(limit: Annotated[int | None, typer.Option(
                     "--limit", help="Use only the first N examples of each dataset the command reads.",
                     show_default=False)] = None,
                 mean: MeanOpt = None, std: StdOpt = None, split: SplitOpt = None,
                 label_column: LabelColumnOpt = None) -> None:
    """How the datasets are read and normalised."""


MODEL_OPTIONS = (checkpoint_options, labels_option, device_option, inference_options, data_options,
                 cache_option)


def option_names(*groups: Any) -> tuple[str, ...]:
    """The parameter names of option groups (to take them out of a command's ``options``)."""
    import inspect

    return tuple(name for g in groups for name in inspect.signature(g).parameters)


def with_options(*groups: Any) -> Any:
    """Decorator: give ``command(..., **options)`` the parameters of ``groups`` after its own, so Typer shows and
    parses them and the command receives them in ``options`` (e.g. passed on to :func:`session_from_options`).

    Example::

        @with_options(*MODEL_OPTIONS)
        def ece(checkpoints: list[Path] = typer.Argument(...), **options: Any) -> None: ...
    """
    import inspect

    def decorate(command: Any) -> Any:
        own = [q for q in inspect.signature(command, eval_str=True).parameters.values()
               if q.kind is not q.VAR_KEYWORD]
        added = [q for g in groups for q in inspect.signature(g, eval_str=True).parameters.values()]
        clash = {q.name for q in own} & {q.name for q in added}
        if clash:
            raise TypeError(f"{command.__name__} declares {sorted(clash)} itself and through an option group")
        command.__signature__ = inspect.Signature(own + added)
        command.__annotations__ = {q.name: q.annotation for q in own + added}
        return command

    return decorate


def output_format(format_: str | None, json_: bool) -> str:
    """The one output format of --format and --json (refuses a contradiction)."""
    if format_ is not None and format_ not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got '{format_}'")
    if json_ and format_ not in (None, "json"):
        raise InputError(f"--json and --format {format_} contradict each other: pass one")
    return "json" if json_ else (format_ or "text")


def echo_err(message: str) -> None:
    print(f"calibscope: {message}", file=sys.stderr)


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Map calibscope's typed errors to exit codes: InputError → 2, GateFailed → 1, anything else → 3.

    Under ``torchrun`` (``WORLD_SIZE > 1``) it also joins the process group, runs the command on every rank
    with stdout, stderr and file writes silenced on all ranks but 0, and at the end settles the ranks'
    outcomes: every rank exits with the first failing rank's code, and rank 0 prints that rank's message.
    """
    import warnings

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        echo_err(f"warning: {_one_line(message)}")

    previous = warnings.showwarning
    if not STATE["debug"]:
        warnings.showwarning = one_line_warning
    try:
        with _output_set():
            if _launched_by_torchrun():
                with _distributed_errors():
                    yield
                return
            yield
    except typer.Exit:
        raise
    except InputError as exc:
        if STATE["debug"]:
            raise
        echo_err(f"error: {_one_line(exc)}")
        raise typer.Exit(2) from None
    except GateFailed as exc:
        echo_err(f"gate failed: {_one_line(exc)}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt as exc:
        from calibscope.render.atomic import Terminated

        echo_err("terminated" if isinstance(exc, Terminated) else "interrupted")
        raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
    except Exception as exc:  # noqa: BLE001
        if STATE["debug"]:
            raise
        echo_err(f"internal error: {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)")
        raise typer.Exit(3) from None
    finally:
        warnings.showwarning = previous


def _output_set():
    """Every file a command writes is published when it succeeds (or its gate fails: the report is wanted), and
    none when it fails or is interrupted (see :func:`calibscope.render.atomic.transactional_outputs`)."""
    from calibscope.render.atomic import transactional_outputs

    def publish(exc: BaseException) -> bool:
        if isinstance(exc, GateFailed):
            return True
        return isinstance(exc, typer.Exit) and int(exc.exit_code or 0) in (0, 1)

    return transactional_outputs(commit_if=publish)


def check_outputs(*, files: dict[str, Any] | None = None, folders: dict[str, Any] | None = None) -> None:
    """Before anything is computed: every file option names a writable file (not a directory), every folder
    option a folder that exists and is writable or can be made (one-line InputError otherwise)."""
    from calibscope.render.atomic import check_destination, check_folder

    for option, path in (files or {}).items():
        check_destination(path, option)
    for option, path in (folders or {}).items():
        check_folder(path, option)


def _launched_by_torchrun() -> bool:
    from calibscope.inference.distributed import launched_by_torchrun

    return launched_by_torchrun()


def _classify(exc: BaseException) -> tuple[int, str, str]:
    """(exit code, kind, one-line message) of an exception that ended a command."""
    if isinstance(exc, typer.Exit):
        return int(exc.exit_code or 0), "exit", ""
    if isinstance(exc, InputError):
        return 2, "error", _one_line(exc)
    if isinstance(exc, GateFailed):
        return 1, "gate failed", _one_line(exc)
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted", ""
    return 3, "internal error", f"{type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)"


@contextlib.contextmanager
def _distributed_errors() -> Iterator[None]:
    """One rank of a ``torchrun`` job: see :func:`cli_errors`."""
    import calibscope.inference.distributed as distributed

    joined_before = distributed.current() is not None  # e.g. a script running several commands in one group
    try:
        group = distributed.init_from_environment()
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - rendezvous failures: one line, not a traceback
        raise InputError(f"could not join the torchrun process group ({type(exc).__name__}: "
                         f"{_one_line(exc)})") from None
    rank = group.rank
    error: BaseException | None = None
    failure = None
    try:
        try:
            with _silenced(not group.is_main):
                yield
        except distributed.RankFailed as exc:  # another rank failed first: every rank already knows
            failure = exc.failure
        except BaseException as exc:  # noqa: BLE001 - settled with the other ranks below
            code, kind, message = _classify(exc)
            if code != 0:
                error = exc
                failure = distributed.Failure(group.rank, code, kind, message)
        if not isinstance(error, KeyboardInterrupt) and not (failure is not None and failure.rank != group.rank):
            try:
                failure = group.settle(failure)
            except Exception as exc:  # noqa: BLE001 - the group itself broke (a rank died): say so locally
                failure = failure or distributed.Failure(group.rank, 3, "internal error",
                                                         f"the ranks lost contact ({_one_line(exc)})")
                group = None
    finally:
        if group is not None and not joined_before:
            distributed.shutdown()
    if failure is None:
        return
    own = error is not None and failure.rank == rank
    if STATE["debug"] and own:
        raise error
    if group is None or group.is_main:
        where = "" if failure.rank == rank else f"rank {failure.rank}: "
        if failure.kind == "interrupted":
            echo_err("interrupted")
        elif failure.message:
            echo_err(f"{failure.kind}: {where}{failure.message}")
    raise typer.Exit(failure.exit_code)


@contextlib.contextmanager
def _silenced(silent: bool) -> Iterator[None]:
    """stdout, stderr and atomic file writes thrown away (ranks other than 0)."""
    if not silent:
        yield
        return
    from calibscope.render.atomic import discarding_writes

    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
            discarding_writes():
        yield


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return as_flags(text, prefix=getattr(exc, "flag_prefix", "")) if isinstance(exc, InputError) else text


# library argument → command-line option, where the two names differ
ARGUMENT_OPTIONS = {"n_bins": "bins", "tpr_level": "tpr"}
_ARGUMENT = re.compile(r"`([a-z][a-z0-9_]*)`")


def _current_context():
    """The running command's context (Typer vendors Click since 0.26; older versions use Click itself)."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - Typer < 0.26
        from click import get_current_context
    return get_current_context(silent=True)


def as_flags(message: str, *, prefix: str = "") -> str:
    """A library message worded for the command line: every ```argument``` that is an option of the running
    command becomes its flag (``n_bins`` → ``--bins``, ``ood_data`` → ``--ood-data``); ``prefix`` first tries
    the prefixed option (``mi_`` + ``examples`` → ``--mi-examples``, as ``calibscope report`` names them)."""
    ctx = _current_context()
    params = {p.name: p for p in ctx.command.params} if ctx is not None else {}

    def flag(match: re.Match) -> str:
        name = ARGUMENT_OPTIONS.get(match.group(1), match.group(1))
        for candidate in ((prefix + name) if prefix else None, name):
            param = params.get(candidate)
            if param is None:
                continue
            if getattr(param, "param_type_name", "") == "argument":
                return param.human_readable_name
            longs = [o for o in param.opts if o.startswith("--")]
            return (longs or param.opts)[0]
        return match.group(0)

    return _ARGUMENT.sub(flag, message)


def parse_floats(text: str | None, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise InputError(f"--{name} expects comma-separated numbers like 0.5,0.5,0.5, got '{text}'") from None
    if not values:
        raise InputError(f"--{name} expects at least one number")
    return values


def parse_shrinkage(text: str) -> float | str:
    """``--shrinkage``: ``ledoit-wolf`` (or ``lw``) or a number in [0, 1]."""
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


def parse_temperature(text: str) -> float | str:
    """``--temperature``: a positive number, or ``fit``."""
    import math

    if text.strip().lower() == "fit":
        return "fit"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"--temperature must be a positive number or 'fit', got '{text}'")
    return value


def parse_json_object(text: str | None, name: str) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--{name} is not valid JSON ({exc.msg} at character {exc.pos}): {text}") from None
    if not isinstance(value, dict):
        raise InputError(f"--{name} must be a JSON object like '{{\"num_classes\": 10}}', got {text}")
    return value


def project_defaults():
    """``[tool.calibscope]`` / ``calibscope.toml`` of the working directory, or None."""
    from calibscope.workflows.session import project_defaults as find

    return find(Path.cwd())


def resolve_data_path(data: Path | None, defaults) -> Path | None:
    if data is not None:
        return data
    if defaults is not None and getattr(defaults, "data", None) is not None:
        return Path(defaults.data)
    return None


def pick(value, defaults, name: str, fallback):
    """The command-line value, else the project default, else the built-in fallback."""
    if value is not None:
        return value
    if defaults is not None and getattr(defaults, name, None) is not None:
        return getattr(defaults, name)
    return fallback


def session_from_options(*, data: Path | None, split: str | None = None, label_column: str | None = None,
                         limit: int | None = None, arch: str | None = None, arch_kwargs: str | None = None,
                         trust: bool = False, device: str | None = None, precision: str | None = None,
                         batch_size: int | None = None, mean: str | None = None, std: str | None = None,
                         no_cache: bool = False, defaults=None, capture_features: bool = False,
                         layer: str | None = None, output: str | None = None, labels: Path | None = None,
                         prefix: str | None = None):
    """A :class:`~calibscope.workflows.session.Session` from the command-line strings: the option if given,
    else the project default (``[tool.calibscope]`` / ``calibscope.toml``), else the built-in one."""
    from calibscope.workflows.session import Session

    mean_t = parse_floats(mean, "mean") if mean is not None else _tuple(pick(None, defaults, "mean", None))
    std_t = parse_floats(std, "std") if std is not None else _tuple(pick(None, defaults, "std", None))
    return Session(resolve_data_path(data, defaults), split=split, label_column=label_column,
                   limit=pick(limit, defaults, "limit", None), arch=arch,
                   arch_kwargs=parse_json_object(arch_kwargs, "arch-kwargs"), trust=trust, prefix=prefix,
                   output=output, labels=labels,
                   device=pick(device, defaults, "device", "auto"),
                   precision=pick(precision, defaults, "precision", "fp32"),
                   batch_size=pick(batch_size, defaults, "batch_size", None), mean=mean_t, std=std_t,
                   use_cache=not no_cache, capture_features=capture_features, layer=layer, auto_threads=True)


ModelInputs = session_from_options  # the former name (other branches may still call it)


def _tuple(value):
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return (float(value),)
    return tuple(float(v) for v in value)


def display_names(paths):
    from calibscope.workflows.session import display_names as names

    return names(paths)


# ---- post-hoc OOD detectors (calibscope ood, calibscope selective; defaults: the papers', docs/ood.md) ----

HELP_VAL_GRAM = ("Validation data for the gram detector's normalisers (mean deviation per layer); without it 10 % "
                 "of each class of --train is held out (seeded by --gram-seed), as pytorch-ood does.")
ValOpt = Annotated[Path | None, typer.Option("--val", help=HELP_VAL_GRAM, show_default=False)]
KnnKOpt = Annotated[int, typer.Option("--knn-k", help="knn: the k-th nearest normalised training feature "
                                      "(Sun et al. 2022).")]
VimDimOpt = Annotated[int | None, typer.Option("--vim-dim", help="vim: principal dimension [default: the paper's "
                                               "rule, 1000 for D >= 2048, 512 for D >= 768, else D/2].",
                                               show_default=False)]
ReactPercentileOpt = Annotated[float, typer.Option("--react-percentile", help="react: clip the features at this "
                                                   "quantile of the training activations.")]
AshVariantOpt = Annotated[str, typer.Option("--ash-variant", help="ash: ash-p (prune), ash-b (binarise) or ash-s "
                                            "(scale).")]
AshPercentileOpt = Annotated[float, typer.Option("--ash-percentile", help="ash: share of the activations pruned.")]
OdinTemperatureOpt = Annotated[float, typer.Option("--odin-temperature", help="odin: softmax temperature T.")]
OdinEpsilonOpt = Annotated[float, typer.Option("--odin-epsilon", help="odin: input perturbation ε, on the [0, 1] "
                                               "input scale.")]
GradnormTemperatureOpt = Annotated[float, typer.Option("--gradnorm-temperature", help="gradnorm: temperature T.")]
GramPolesOpt = Annotated[int, typer.Option("--gram-poles", help="gram: Gram orders p = 1..P.")]
GramLayersOpt = Annotated[str | None, typer.Option("--gram-layers", help="gram: comma-separated module names whose "
                                                   "outputs are read [default: every activation module].",
                                                   show_default=False)]
GramSeedOpt = Annotated[int, typer.Option("--gram-seed", help="gram: seed of the held-out split (without --val).")]


def detector_options(
    knn_k: KnnKOpt = DEFAULT_KNN_K, vim_dim: VimDimOpt = None,
    react_percentile: ReactPercentileOpt = DEFAULT_REACT_PERCENTILE, ash_variant: AshVariantOpt = DEFAULT_ASH_VARIANT,
    ash_percentile: AshPercentileOpt = DEFAULT_ASH_PERCENTILE,
    odin_temperature: OdinTemperatureOpt = DEFAULT_ODIN_TEMPERATURE,
    odin_epsilon: OdinEpsilonOpt = DEFAULT_ODIN_EPSILON,
    gradnorm_temperature: GradnormTemperatureOpt = DEFAULT_GRADNORM_TEMPERATURE,
    gram_poles: GramPolesOpt = DEFAULT_GRAM_POLES, gram_layers: GramLayersOpt = None, gram_seed: GramSeedOpt = 0,
) -> None:
    """The post-hoc detectors' hyper-parameters (an option group of ood and selective)."""


def detector_settings(options: dict[str, Any]):
    """Take the :func:`detector_options` out of a command's ``options`` as
    :class:`~calibscope.workflows.ood_scores.DetectorSettings` (the rest stays for the session)."""

    from calibscope.workflows.ood_scores import DetectorSettings

    o = {name: options.pop(name) for name in option_names(detector_options)}
    gram_layers = o["gram_layers"]
    layers = None if gram_layers is None else tuple(x.strip() for x in gram_layers.split(",") if x.strip())
    return DetectorSettings(knn_k=o["knn_k"], vim_dim=o["vim_dim"], react_percentile=o["react_percentile"],
                            ash_variant=o["ash_variant"].strip().lower(), ash_percentile=o["ash_percentile"],
                            odin_temperature=o["odin_temperature"], odin_epsilon=o["odin_epsilon"],
                            gradnorm_temperature=o["gradnorm_temperature"], gram_poles=o["gram_poles"],
                            gram_layers=layers, seed=o["gram_seed"])
