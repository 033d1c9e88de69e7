"""Project defaults: ``calibscope.toml`` (a top-level table) or ``[tool.calibscope]`` in ``pyproject.toml``.

Only the working directory is looked at (no search upwards), and ``calibscope.toml`` wins over
``pyproject.toml`` when both exist (the two are not merged). Example ``calibscope.toml``::

    data = "data/cifar-10-batches-py"   # relative to this file's folder
    limit = 1000
    bins = 15
    max_ece = 0.05
    norm = "l1"                         # which ECE --max-ece and --baseline gate: l1, l2 or max (MCE)
    baseline = "ci/ece-baseline.json"   # an earlier `calibscope ece --json` document, relative to this file
    max_increase = 0.005                # gate: fail when ECE rises more than this above the baseline
    mean = [0.4914, 0.4822, 0.4465]
    std = [0.2470, 0.2435, 0.2616]

Command-line options override these values; this module only reads and checks them.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibscope.errors import InputError
from calibscope.loading import limits
from calibscope.loading.files import display

CONFIG_FILE = "calibscope.toml"
PYPROJECT_FILE = "pyproject.toml"
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class ProjectDefaults:
    """Defaults read from a project file. ``None`` means "not set there".

    ``source`` is the file they came from; ``data`` and ``baseline`` are already resolved against that file's
    folder.
    ``mean`` / ``std`` are per-channel, applied after uint8 → [0, 1].
    """

    source: Path
    data: Path | None = None
    split: str | None = None
    label_column: str | None = None
    limit: int | None = None
    batch_size: int | None = None
    bins: int | None = None
    max_ece: float | None = None
    norm: str | None = None
    baseline: Path | None = None
    max_increase: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    device: str | None = None
    precision: str | None = None


ALLOWED_KEYS = ("data", "split", "label_column", "limit", "batch_size", "bins", "max_ece", "mean", "std",
                "device", "precision", "norm", "baseline", "max_increase")
NORMS = ("l1", "l2", "max")


def find_defaults(cwd: Path | None = None) -> ProjectDefaults | None:
    """The project defaults of ``cwd`` (default: the working directory), or None when there are none.

    Raises:
        InputError: malformed TOML (with the file and line), unknown keys (listing the allowed ones), or a
            value of the wrong type.
    """
    folder = Path.cwd() if cwd is None else Path(cwd)
    own = folder / CONFIG_FILE
    for candidate in (own, folder / PYPROJECT_FILE):
        limits.require_regular(candidate, "configuration file")  # a FIFO would block the read forever
    if own.is_file():
        table = _read_toml(own)
        return _parse(table, own, where=display(own))
    pyproject = folder / PYPROJECT_FILE
    if pyproject.is_file():
        tool = _read_toml(pyproject).get("tool", {})
        table = tool.get("calibscope") if isinstance(tool, dict) else None
        if table is None:
            return None
        if not isinstance(table, dict):
            raise InputError(f"{display(pyproject)}: [tool.calibscope] must be a table")
        return _parse(table, pyproject, where=f"{display(pyproject)} [tool.calibscope]")
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{display(path)} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{display(path)} is not UTF-8 text, as TOML must be ({exc.reason} at byte "
                         f"{exc.start})") from None
    except RecursionError:
        raise InputError(f"{display(path)} nests tables or arrays too deeply") from None
    except OSError as exc:
        raise InputError(f"cannot read {display(path)}: {exc.strerror or exc}") from None


def _parse(table: dict[str, Any], source: Path, *, where: str) -> ProjectDefaults:
    unknown = sorted(k for k in table if k not in ALLOWED_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"allowed: {', '.join(ALLOWED_KEYS)}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        values[key] = _check(key, value, where)
    for key in ("data", "baseline"):
        if key in values:
            path = Path(values[key]).expanduser()
            values[key] = path if path.is_absolute() else source.parent / path
    return ProjectDefaults(source=source, **values)


def _check(key: str, value: Any, where: str) -> Any:
    def bad(expected: str) -> InputError:
        return InputError(f"{where}: expected `{key}` to be {expected}, but got {value!r}")

    if key in ("data", "split", "label_column", "device", "baseline"):
        if not isinstance(value, str) or not value.strip():
            raise bad("a non-empty string")
        return value
    if key == "precision":
        if value not in PRECISIONS:
            raise bad(f"one of {', '.join(PRECISIONS)}")
        return value
    if key in ("limit", "batch_size", "bins"):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise bad("an integer larger than 0")
        return value
    if key == "norm":
        if value not in NORMS:
            raise bad(f"one of {', '.join(NORMS)}")
        return value
    if key in ("max_ece", "max_increase"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise bad("a number between 0 and 1")
        return float(value)
    # mean / std: a number (one channel) or a list of numbers, one per channel
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
        raise bad("a number or a list of numbers (one per channel)")
    if key == "std" and any(v <= 0 for v in items):
        raise bad("positive")
    return tuple(float(v) for v in items)
