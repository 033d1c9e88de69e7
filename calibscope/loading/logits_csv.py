"""CSV files of logits or probabilities, as other tools write them (pandas, spreadsheets, R, sklearn users).

Layout: a header row; one column per class (the header gives the class names); optionally one label column
(``label``/``labels``/``y``/``target``, case-insensitive) holding class indices or class *names*.

* **pandas' index column.** ``DataFrame.to_csv`` writes the row index first, under an empty header (or
  ``Unnamed: 0`` when the file went through pandas twice, or ``index``/``id`` when the index was named). Such a
  first column is not a class: an unnamed one holding integers, or an ``index``/``id`` one holding exactly
  0..N−1, is dropped, and a note says so once. An unnamed column of anything else is refused (it is no class
  either).
* **string labels** (``"cat"``) are mapped to the class whose column header is that name; a label that names no
  column is refused with the columns listed.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibscope.errors import InputError
from calibscope.loading.files import display

__all__ = ["INDEX_HEADERS", "LABEL_COLUMNS", "CsvLogits", "index_column_note", "read_logits_csv"]

LABEL_COLUMNS = ("label", "labels", "y", "target")
_UNNAMED_INDEX = ("", "unnamed: 0")
_NAMED_INDEX = ("index", "id")
INDEX_HEADERS = _UNNAMED_INDEX + _NAMED_INDEX  # first-column headers that may name a row index


@dataclass(frozen=True)
class CsvLogits:
    """What a logits CSV holds: ``values`` float64 ``[N, K]``, ``labels`` int64 ``[N]`` or None, the class
    columns' names, and notes about what was dropped or mapped (each to be said once)."""

    values: Any
    labels: Any | None
    class_names: list[str]
    notes: tuple[str, ...] = ()


def read_logits_csv(p: Path) -> CsvLogits:
    """Read ``p`` (see the module docstring); :class:`InputError` naming the line and column otherwise."""
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {display(p)} as text ({exc})") from None
    lines = text.splitlines()
    header_index = next((i for i, line in enumerate(lines) if line.strip()), None)
    if header_index is None:
        raise InputError(f"{display(p)} is empty; expected a CSV with a header row")
    delimiter = _delimiter(lines[header_index])
    header = [h.strip() for h in next(csv.reader([lines[header_index]], delimiter=delimiter))]
    if all(is_number(h) for h in header):
        raise InputError(f"{display(p)} has no header row; add one naming the columns, e.g. "
                         "'logit_0,logit_1,…,label' (a label/labels/y/target column holds the labels)")
    label_columns = [i for i, h in enumerate(header) if h.lower() in LABEL_COLUMNS]
    if len(label_columns) > 1:
        raise InputError(f"{display(p)} has several label columns "
                         f"({', '.join(repr(header[i]) for i in label_columns)}); keep one")
    label = label_columns[0] if label_columns else None

    values, raw_labels = _cells(p, text, lines, header_index, header, delimiter, label)
    if values.shape[0] == 0:
        raise InputError(f"{display(p)} has a header but no data rows")
    notes: list[str] = []
    columns = [i for i in range(len(header)) if i != label]
    if columns and header[columns[0]].lower() in INDEX_HEADERS:
        first = columns[0]
        dropped = index_column_note(p, header[first], values[:, first])
        if dropped:
            notes.append(dropped)
            columns = columns[1:]
    if not columns:
        raise InputError(f"{display(p)} has only a label column; add one column of logits (or probabilities) "
                         "per class")
    unnamed = [i for i in columns if not header[i]]
    if unnamed:
        raise InputError(f"{display(p)}: column {unnamed[0] + 1} has no name; every class column needs its "
                         "class name in the header")
    class_names = [header[i] for i in columns]
    labels = None if label is None else _labels(p, raw_labels, class_names, header[label], notes)
    return CsvLogits(np.ascontiguousarray(values[:, columns]), labels, class_names, tuple(notes))


def index_column_note(p: Path, name: str, column: Any) -> str | None:
    """A note when the first column is an index (then dropped), None when it is an ordinary class column."""
    n = column.shape[0]
    whole = bool(np.all(np.isfinite(column)) and np.all(column == np.round(column)))
    counting = whole and bool(np.array_equal(column, np.arange(n, dtype=np.float64)))
    shown = repr(name) if name else "unnamed"
    if counting:
        return (f"{display(p)}: the first column ({shown}, 0..{n - 1}) is a row index such as pandas' to_csv "
                "writes; it was ignored")
    if name.lower() in _UNNAMED_INDEX:
        if whole:
            return (f"{display(p)}: the unnamed first column holds integers, a row index such as pandas' to_csv "
                    "writes; it was ignored")
        raise InputError(f"{display(p)}: the first column has no name and holds non-integers; it is neither a "
                         "row index nor a named class: name it after its class or drop it (to_csv(index=False))")
    return None


def _labels(p: Path, raw: Any, class_names: list[str], column: str, notes: list[str]) -> Any:
    if raw.dtype.kind == "f":
        return raw  # numbers: checked as class indices by the caller
    lookup = {name: k for k, name in enumerate(class_names)}
    unknown = sorted({str(v) for v in raw.tolist() if str(v) not in lookup})
    if unknown:
        listed = ", ".join(repr(u) for u in unknown[:5]) + (", …" if len(unknown) > 5 else "")
        raise InputError(f"{display(p)}: column {column!r} holds class names ({listed}) that are not among the "
                         f"class columns' names ({', '.join(repr(c) for c in class_names[:8])}); name each "
                         "probability column after its class, or store class indices 0..K−1")
    notes.append(f"{display(p)}: the labels in column {column!r} are class names, mapped to the columns of the "
                 "same name")
    return np.asarray([lookup[str(v)] for v in raw.tolist()], dtype=np.int64)


def _delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _cells(p: Path, text: str, lines: list[str], header_index: int, header: list[str], delimiter: str,
           label: int | None) -> tuple[Any, Any]:
    """(float64 ``[N, columns]`` with NaN in the label column when it holds names, the label column as float64
    or as str). numpy's fast reader first; a precise message on failure."""
    try:
        values = np.loadtxt(io.StringIO(text), delimiter=delimiter, skiprows=header_index + 1, ndmin=2,
                            dtype=np.float64, comments=None, quotechar='"', encoding=None)
        if values.shape[0] == 0 or values.shape[1] == len(header):
            values = values.reshape(values.shape[0], len(header))
            return values, (values[:, label] if label is not None else None)
    except ValueError:
        pass
    rows: list[list[float]] = []
    names: list[str] = []
    textual = False
    for line_no, row in enumerate(csv.reader(lines[header_index + 1:], delimiter=delimiter),
                                  start=header_index + 2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InputError(f"{display(p)} line {line_no} (data row {len(rows) + 1}) has {len(row)} cells "
                             f"but the header has {len(header)} columns")
        numbers = []
        for i, (column, cell) in enumerate(zip(header, row, strict=True)):
            try:
                numbers.append(float(cell.strip()))
            except ValueError:
                if i != label:
                    raise InputError(f"{display(p)} line {line_no} (data row {len(rows) + 1}), column "
                                     f"{column!r}: {cell.strip()!r} is not a number") from None
                numbers.append(float("nan"))
                textual = True
            if i == label:
                names.append(cell.strip())
        rows.append(numbers)
    values = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(header))
    if label is None:
        return values, None
    return values, (np.asarray(names, dtype=str) if textual else values[:, label])


def is_number(text: str) -> bool:
    """Whether a CSV cell reads as a float."""
    try:
        float(text)
    except ValueError:
        return False
    return True
