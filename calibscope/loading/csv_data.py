"""CSV/TSV datasets: a header row, one label column, every other column a float32 feature; a first column that
is a row index (pandas' `to_csv` writes one) is dropped with a warning, as for logits CSVs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calibscope.errors import InputError
from calibscope.loading._loaded import Loaded, listing
from calibscope.loading.files import display
from calibscope.loading.logits_csv import INDEX_HEADERS, index_column_note

CSV_LABEL_COLUMNS = ("label", "labels", "y", "target", "class")




def read_csv(p: Path, *, label_column: str | None, limit: int | None) -> Loaded:
    import csv

    try:
        fh = p.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"cannot read {display(p)}: {exc.strerror or exc}") from None
    with fh:
        try:
            first = fh.readline()
        except UnicodeDecodeError as exc:
            raise InputError(f"{display(p)} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        fh.seek(0)
        delimiter = "\t" if p.suffix.lower() == ".tsv" or ("\t" in first and "," not in first) else ","
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = [h.strip() for h in next(reader, [])]
            if not header or all(not h for h in header):
                raise InputError(f"{display(p)} holds 0 examples (no header row)")
            if all(_is_number(h) for h in header):
                raise InputError(f"{display(p)}: the first row must be a header naming the columns, but it "
                                 f"holds numbers ({listing(header)})")
            y_col = _csv_label_index(header, label_column, p)
            x_cols = [j for j in range(len(header)) if j != y_col]
            if not x_cols:
                raise InputError(f"{display(p)} has no feature columns besides {header[y_col]!r}")
            rows: list[list[str]] = []
            ys: list[str] = []
            lines: list[int] = []
            n_source = 0
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise InputError(f"{display(p)} line {reader.line_num} has {len(row)} cells but the header "
                                     f"has {len(header)} columns")
                n_source += 1
                ys.append(row[y_col].strip())  # every label, so that --limit cannot change class indices
                lines.append(reader.line_num)
                if limit is None or n_source <= limit:
                    rows.append([row[j] for j in x_cols])
        except csv.Error as exc:
            raise InputError(f"{display(p)} line {reader.line_num} is not valid CSV ({exc})") from None
        except UnicodeDecodeError as exc:
            raise InputError(f"{display(p)} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not rows:
        raise InputError(f"{display(p)} holds 0 examples (only a header row)")
    try:
        features = np.array(rows, dtype=np.float32)
    except ValueError as exc:
        for r, row in enumerate(rows):
            for k, cell in enumerate(row):
                if not _is_float32(cell):
                    raise InputError(f"{display(p)} row {r + 1} (line {lines[r]}), column "
                                     f"{header[x_cols[k]]!r}: {cell!r} is not a number") from None
        raise InputError(f"{display(p)}: the features are not numbers ({exc})") from None
    if len(x_cols) > 1 and header[x_cols[0]].lower() in INDEX_HEADERS:  # pandas' to_csv writes the index first
        note = index_column_note(p, header[x_cols[0]], np.array([row[0] for row in rows], dtype=np.float64))
        if note:
            import warnings

            warnings.warn(note, UserWarning, stacklevel=2)
            features, x_cols = np.ascontiguousarray(features[:, 1:]), x_cols[1:]
    labels, class_names = _csv_labels(ys, lines, header[y_col], p)
    labels = labels[: len(rows)]
    return Loaded(features, labels, "csv", [p], class_names=class_names, n_source=n_source,
                   metadata={"label_column": header[y_col], "feature_columns": len(x_cols)})


def _is_float32(text: str) -> bool:
    try:
        np.float32(text)
    except ValueError:
        return False
    return True


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_label_index(header: list[str], label_column: str | None, p: Path) -> int:
    if label_column is not None:
        if label_column in header:
            return header.index(label_column)
        folded = [h.lower() for h in header]
        if folded.count(label_column.lower()) == 1:
            return folded.index(label_column.lower())
        raise InputError(f"{display(p)} has no column {label_column!r} (columns: {listing(header)})")
    for name in CSV_LABEL_COLUMNS:
        for j, h in enumerate(header):
            if h.lower() == name:
                return j
    raise InputError(f"{display(p)} has no label column (columns: {listing(header)}); name it with "
                     f"--label-column or call it one of {', '.join(CSV_LABEL_COLUMNS)}")


def _csv_labels(ys: list[str], lines: list[int], column: str, p: Path) -> tuple[Any, tuple[str, ...] | None]:
    for r, y in enumerate(ys):
        if not y:
            raise InputError(f"{display(p)} row {r + 1} (line {lines[r]}), column {column!r}: the label is empty")
    if all(_is_number(y) for y in ys):
        return np.array([float(y) for y in ys], dtype=np.float64), None  # whole numbers checked in _finish
    names = tuple(sorted(set(ys)))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[y] for y in ys], dtype=np.int64), names


