"""``--labels FILE``: the true classes of a logits/probabilities file that does not hold them.

What other frameworks leave beside their predictions: ``np.save("labels.npy", y)`` (class indices, or Keras'
one-hot ``to_categorical`` rows), ``np.savetxt("labels.txt", y, fmt="%d")``, a one-column CSV with or without
a header (``pd.Series(y).to_csv(...)``, whose index column is dropped), or ``np.savez(..., labels=y)``.

* class indices ``[N]`` (integers, or floats that are whole numbers), ``[N, 1]`` columns included;
* one-hot rows ``[N, K]`` (every row one 1 and K−1 zeros) → their argmax;
* class names (strings in a text file) → the index of that name among ``class_names`` (the logits file's
  column header or ``class_names``), refused when there are none or a name is unknown.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from calibscope.errors import InputError
from calibscope.loading import files
from calibscope.loading.logits_csv import is_number as _is_number

__all__ = ["load_labels"]

_KEYS = ("labels", "label", "y", "targets", "target")
_HELP = ("expected class indices (one integer per example), one-hot rows, or class names: e.g. "
         "np.save('labels.npy', y) or np.savetxt('labels.txt', y, fmt='%d')")


def load_labels(path: Path | str, *, num_rows: int | None = None,
                class_names: list[str] | tuple[str, ...] | None = None) -> Any:
    """The labels in ``path`` as an int64 tensor ``[N]`` (see the module docstring).

    ``num_rows``: how many rows of logits they go with (a different count is refused); ``class_names``: maps
    string labels to indices. Raises :class:`InputError` (one line, naming the file).
    """
    import torch

    p = files.require_exists(path)
    kind = files.sniff(p)
    if kind == "npy":
        array = files.read_numpy(p)[""]
    elif kind == "npz":
        arrays = files.read_numpy(p)
        key = next((k for k in _KEYS if k in arrays), None)
        if key is None and len(arrays) == 1:
            key = next(iter(arrays))
        if key is None:
            raise InputError(f"{files.display(p)} has arrays {', '.join(map(repr, sorted(arrays)))} but none named "
                             f"{'/'.join(_KEYS)}; save the labels under 'labels'")
        array = arrays[key]
    elif kind == "text":
        array = _read_text(p)
    else:
        raise InputError(f"--labels {files.display(p)} is not a .npy, .npz, .csv or .txt file; {_HELP}")
    labels = _as_indices(p, np.asarray(array), class_names)
    if num_rows is not None and labels.shape[0] != num_rows:
        raise InputError(f"--labels {files.display(p)} holds {labels.shape[0]} labels but there are {num_rows} "
                         "rows of logits; they must be the same examples in the same order")
    return torch.from_numpy(np.ascontiguousarray(labels))


def _read_text(p: Path) -> Any:
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {files.display(p)} as text ({exc})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"--labels {files.display(p)} is empty; {_HELP}")
    first = lines[0]
    delimiter = next((d for d in (",", ";", "\t") if d in first), None)  # None: whitespace (np.savetxt)
    rows = [[c.strip() for c in (line.split() if delimiter is None else next(csv.reader([line], delimiter=delimiter)))]
            for line in lines]
    head = rows[0]
    is_header = any(c == "" or c.lower() in _KEYS + ("class", "unnamed: 0") for c in head) or (
        any(not _is_number(c) for c in head) and len(rows) > 1 and all(_is_number(c) for c in rows[1]))
    if is_header:
        rows = rows[1:]
        if len(head) > 1 and head[0].lower() in ("", "unnamed: 0"):  # pandas' index column
            rows, head = [r[1:] for r in rows], head[1:]
        key = next((i for i, h in enumerate(head) if h.lower() in _KEYS), None)
        if len(head) > 1 and key is not None:
            rows = [[r[key]] for r in rows]
    if not rows:
        raise InputError(f"--labels {files.display(p)} has a header but no labels; {_HELP}")
    width = {len(r) for r in rows}
    if len(width) != 1:
        raise InputError(f"--labels {files.display(p)}: rows have different numbers of cells ({sorted(width)})")
    if all(_is_number(c) for r in rows for c in r):
        return np.asarray([[float(c) for c in r] for r in rows], dtype=np.float64)
    if width != {1}:
        raise InputError(f"--labels {files.display(p)}: several columns holding text; {_HELP}")
    return np.asarray([r[0] for r in rows], dtype=str)


def _as_indices(p: Path, a: Any, class_names: Any) -> Any:
    where = f"--labels {files.display(p)}"
    if a.dtype.kind in "US":
        if not class_names:
            raise InputError(f"{where} holds class names ({a[0]!r}, …) but the logits file names no classes; store "
                             "class indices 0..K−1, or give the logits' columns the class names")
        lookup = {str(c): k for k, c in enumerate(class_names)}
        unknown = sorted({str(v) for v in a.ravel().tolist() if str(v) not in lookup})
        if unknown:
            raise InputError(f"{where}: {', '.join(map(repr, unknown[:5]))} are not among the class names "
                             f"({', '.join(map(repr, list(class_names)[:8]))})")
        return np.asarray([lookup[str(v)] for v in a.ravel().tolist()], dtype=np.int64)
    if a.dtype.kind not in "biuf":
        raise InputError(f"{where} holds {a.dtype} values; {_HELP}")
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 2:
        ones, zeros = (a == 1).sum(axis=1), (a == 0).sum(axis=1)
        if not bool(np.all((ones == 1) & (zeros == a.shape[1] - 1))):
            bad = int(np.flatnonzero(~((ones == 1) & (zeros == a.shape[1] - 1)))[0])
            raise InputError(f"{where} has shape {list(a.shape)} but row {bad} is not one-hot (one 1, the rest 0); "
                             f"{_HELP}")
        return a.argmax(axis=1).astype(np.int64)
    if a.ndim != 1 or a.shape[0] == 0:
        raise InputError(f"{where} has shape {list(a.shape)}; {_HELP}")
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"{where}: label {i} is {a[i].item()!r}, not a class index; {_HELP}")
    if a.dtype.kind != "u" and bool((a < 0).any()):
        i = int(np.flatnonzero(a < 0)[0])
        raise InputError(f"{where}: label {i} is {a[i].item()!r}; class indices are ≥ 0")
    return a.astype(np.int64)
