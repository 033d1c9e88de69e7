"""What every dataset reader hands back (:class:`Loaded`) and the small rules they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibscope.errors import InputError
from calibscope.loading.files import display

DEFAULT_SPLIT = "test"


@dataclass
class Loaded:
    """What a format reader hands back before the shared checks and conversions."""

    inputs: Any  # np.ndarray
    labels: Any | None  # np.ndarray | None
    format: str
    files: list[Path]  # the files read, for the content hash
    split: str | None = None  # the split actually used
    class_names: tuple[str, ...] | None = None
    tensor_like: bool = False  # inputs came from a tensor container: apply the layout heuristics
    n_source: int | None = None  # examples in the source when the reader already applied the limit
    metadata: dict[str, Any] = field(default_factory=dict)


def single_split(p: Path, requested: str | None, own: str | None) -> str | None:
    """For sources holding one split: a requested split must be that one (when known)."""
    if requested is None or requested == own:
        return own
    if own is None:
        raise InputError(f"{display(p)} holds a single split, so --split {requested} cannot be applied; "
                         "omit --split")
    raise InputError(f"{display(p)} is the {own!r} split, not {requested!r}; pass the {requested!r} file "
                     "or the folder holding both")



def class_names_of(value: Any, p: Path) -> tuple[str, ...]:
    if type(value).__module__ == "numpy":
        value = np.asarray(value).tolist()
    if isinstance(value, (list, tuple)):
        out = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
        if all(isinstance(v, str) for v in out):
            return tuple(out)
    raise InputError(f"{display(p)}: 'class_names' must be a list of strings")



def listing(items: list[str], most: int = 12) -> str:
    shown = ", ".join(str(i) for i in items[:most])
    return shown + (f", … ({len(items)} in all)" if len(items) > most else "") if items else "none"
