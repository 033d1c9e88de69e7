"""Shared command-line plumbing: option parsing helpers, input loading, and errors → exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from calibscope.errors import GateFailed, InputError

STATE: dict[str, Any] = {"debug": bool(os.environ.get("CALIBSCOPE_DEBUG"))}

# Help texts shared by every command that runs a model.
HELP = {
    "data": "Dataset: .npz/.pt/.safetensors (x/y or images/labels), image folder, CIFAR batches, MNIST IDX, "
            "CSV. Optional for logits files that carry labels, or when pyproject.toml \\[tool.calibscope] / "
            "calibscope.toml names one.",
    "arch": "Architecture for a state_dict/safetensors file: package.module:callable, path/to/file.py:Callable, "
            "torchvision:NAME or timm:NAME.",
    "arch_kwargs": "JSON keyword arguments for --arch, e.g. '{\"num_classes\": 10}'.",
    "trust": "Allow loading files that contain pickled Python code (runs code from the file!).",
    "device": "auto (cuda → mps → cpu), cpu, cuda, cuda:N or mps.",
    "precision": "fp32 (default; calibration numbers must not move with hardware), bf16 or fp16 (autocast).",
    "batch_size": "Examples per batch (halved automatically on CUDA out-of-memory).",
    "limit": "Use only the first N examples of the dataset.",
    "mean": "Per-channel mean after uint8 → [0, 1], e.g. 0.485,0.456,0.406 (default: from the checkpoint).",
    "std": "Per-channel std, e.g. 0.229,0.224,0.225 (default: from the checkpoint).",
    "no_cache": "Do not read or write the output cache (.calibscope/cache/).",
    "split": "Which split of a multi-split dataset (e.g. train/test for CIFAR or MNIST directories).",
    "label_column": "Label column of a CSV dataset (default: label/labels/y/target/class).",
    "json": "Print a versioned JSON document to stdout instead of tables.",
    "out": "Write figures (PNG + SVG) and JSON into this directory.",
}


# The options every model-running command shares, declared once (Typer reads them from the annotations).
ArchOpt = Annotated[str | None, typer.Option("--arch", help=HELP["arch"], show_default=False)]
ArchKwargsOpt = Annotated[str | None, typer.Option("--arch-kwargs", help=HELP["arch_kwargs"], show_default=False)]
TrustOpt = Annotated[bool, typer.Option("--trust", help=HELP["trust"])]
DeviceOpt = Annotated[str | None, typer.Option("--device", help=HELP["device"] + " \\[default: auto]",
                                               show_default=False)]
PrecisionOpt = Annotated[str | None, typer.Option("--precision", help=HELP["precision"], show_default=False)]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", "-b", help=HELP["batch_size"] + " \\[default: 1024]",
                                                  show_default=False)]
LimitOpt = Annotated[int | None, typer.Option("--limit", help=HELP["limit"], show_default=False)]
MeanOpt = Annotated[str | None, typer.Option("--mean", help=HELP["mean"], show_default=False)]
StdOpt = Annotated[str | None, typer.Option("--std", help=HELP["std"], show_default=False)]
SplitOpt = Annotated[str | None, typer.Option("--split", help=HELP["split"], show_default=False)]
LabelColumnOpt = Annotated[str | None, typer.Option("--label-column", help=HELP["label_column"], show_default=False)]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help=HELP["no_cache"])]
JsonOpt = Annotated[bool, typer.Option("--json", help=HELP["json"])]


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
    except KeyboardInterrupt:
        echo_err("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001
        if STATE["debug"]:
            raise
        echo_err(f"internal error: {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)")
        raise typer.Exit(3) from None
    finally:
        warnings.showwarning = previous


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
    from calibscope.inference import distributed

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
    return " ".join(str(exc).split()) or type(exc).__name__


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
    from calibscope.loading.config import find_defaults

    return find_defaults(Path.cwd())


def resolve_data_path(data: Path | None, defaults) -> Path | None:
    if data is not None:
        return data
    if defaults is not None and getattr(defaults, "data", None) is not None:
        return Path(defaults.data)
    return None


def no_data_error(checkpoint: Path) -> InputError:
    return InputError(f"no dataset for '{checkpoint}': pass --data FILE, or set data = \"path\" under "
                      "[tool.calibscope] in pyproject.toml or in calibscope.toml")


def pick(value, defaults, name: str, fallback):
    """The command-line value, else the project default, else the built-in fallback."""
    if value is not None:
        return value
    if defaults is not None and getattr(defaults, name, None) is not None:
        return getattr(defaults, name)
    return fallback


class ModelInputs:
    """Loads the dataset once and each checkpoint on demand, and turns them into validated Outputs."""

    def __init__(self, *, data: Path | None, split: str | None, label_column: str | None, limit: int | None,
                 arch: str | None, arch_kwargs: str | None, trust: bool, device: str | None,
                 precision: str | None, batch_size: int | None, mean: str | None, std: str | None,
                 no_cache: bool, defaults=None, capture_features: bool = False, layer: str | None = None):
        from calibscope.inference.engine import DEFAULT_BATCH_SIZE, InferenceOptions

        self.defaults = defaults
        self.data_path = resolve_data_path(data, defaults)
        self.split, self.label_column = split, label_column
        self.limit = pick(limit, defaults, "limit", None)
        self.arch = arch
        self.arch_kwargs = parse_json_object(arch_kwargs, "arch-kwargs")
        self.trust = trust
        mean_t = parse_floats(mean, "mean") if mean is not None else _tuple(pick(None, defaults, "mean", None))
        std_t = parse_floats(std, "std") if std is not None else _tuple(pick(None, defaults, "std", None))
        self.options = InferenceOptions(
            device=pick(device, defaults, "device", "auto"),
            precision=pick(precision, defaults, "precision", "fp32"),
            batch_size=pick(batch_size, defaults, "batch_size", DEFAULT_BATCH_SIZE),
            mean=mean_t, std=std_t, capture_features=capture_features, layer=layer)
        self.use_cache = not no_cache
        self._dataset = None

    @property
    def dataset(self):
        if self._dataset is None and self.data_path is not None:
            from calibscope.loading.dataset import load_dataset

            self._dataset = load_dataset(self.data_path, limit=self.limit, split=self.split,
                                         label_column=self.label_column)
        return self._dataset

    def outputs(self, checkpoint_path: Path):
        """(Outputs, checkpoint) for one checkpoint on the dataset."""
        from calibscope.inference.pipeline import compute_outputs
        from calibscope.loading.checkpoint import load_checkpoint
        from calibscope.loading.types import LogitsCheckpoint

        checkpoint = load_checkpoint(checkpoint_path, arch=self.arch, arch_kwargs=self.arch_kwargs,
                                     trust=self.trust)
        needs_data = not (isinstance(checkpoint, LogitsCheckpoint) and checkpoint.labels is not None)
        if needs_data and self.data_path is None:
            raise no_data_error(checkpoint_path)
        dataset = self.dataset if (needs_data or self.data_path is not None) else None
        if isinstance(checkpoint, LogitsCheckpoint) and self.limit is not None:
            import dataclasses

            checkpoint = dataclasses.replace(
                checkpoint, logits=checkpoint.logits[: self.limit],
                labels=None if checkpoint.labels is None else checkpoint.labels[: self.limit])
        return compute_outputs(checkpoint, dataset, self.options, use_cache=self.use_cache), checkpoint

    def output_shard(self, checkpoint_path: Path):
        """(OutputShard, checkpoint): this process's rows of the outputs (all rows for one process).

        A logits file whose logits are big (≥ ``$CALIBSCOPE_STREAM_MIN_BYTES``, default 256 MiB), or any size
        under ``torchrun``, is read by rows from disk when its format allows (``.npy``, ``numpy.savez``
        ``.npz``, safetensors), so memory stays bounded whatever the file's size.
        """
        from calibscope.inference import distributed
        from calibscope.inference.pipeline import output_shard
        from calibscope.loading.checkpoint import load_checkpoint, open_logits_rows
        from calibscope.loading.types import LogitsCheckpoint, LogitsRows

        threshold = 0 if distributed.current() is not None else _stream_min_bytes()
        checkpoint = open_logits_rows(checkpoint_path, min_bytes=threshold)
        if checkpoint is None:
            checkpoint = load_checkpoint(checkpoint_path, arch=self.arch, arch_kwargs=self.arch_kwargs,
                                         trust=self.trust)
        has_labels = isinstance(checkpoint, (LogitsCheckpoint, LogitsRows)) and checkpoint.labels is not None
        if not has_labels and self.data_path is None:
            raise no_data_error(checkpoint_path)
        dataset = self.dataset if (not has_labels or self.data_path is not None) else None
        if self.limit is not None:
            import dataclasses

            if isinstance(checkpoint, LogitsRows):
                checkpoint = dataclasses.replace(checkpoint, limit=self.limit)
            elif isinstance(checkpoint, LogitsCheckpoint):
                checkpoint = dataclasses.replace(
                    checkpoint, logits=checkpoint.logits[: self.limit],
                    labels=None if checkpoint.labels is None else checkpoint.labels[: self.limit])
        return output_shard(checkpoint, dataset, self.options, use_cache=self.use_cache), checkpoint


STREAM_MIN_BYTES_ENV = "CALIBSCOPE_STREAM_MIN_BYTES"


def _stream_min_bytes() -> int:
    text = os.environ.get(STREAM_MIN_BYTES_ENV, "").strip()
    try:
        return int(text) if text else 256 << 20
    except ValueError:
        raise InputError(f"{STREAM_MIN_BYTES_ENV} must be a number of bytes, got '{text}'") from None


def _tuple(value):
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return (float(value),)
    return tuple(float(v) for v in value)


def display_names(paths: list[Path]) -> list[str]:
    """Short unique names for checkpoints: the file name, with parents added only where needed."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in paths]
