"""Versioned JSON documents built from result dataclasses (schema: ``docs/json-schema.md``).

Every document starts with ``schema`` (``"calibscope/<kind>"``), ``schema_version``, ``calibscope_version``
and ``meta`` (how the numbers were produced); the result's own fields follow. Values JSON cannot carry
(NaN, ±inf — e.g. an empty bin's accuracy) become ``null``, so :func:`dumps` with ``allow_nan=False``
always produces standard JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["SCHEMA_VERSION", "dumps", "json_document", "report_to_dict", "to_jsonable"]

SCHEMA_VERSION = 1
_RESERVED = ("schema", "schema_version", "calibscope_version", "meta")


def to_jsonable(value: Any) -> Any:
    """Plain JSON types from dataclasses, mappings, sequences, paths, numpy/torch scalars and arrays.

    Non-finite floats become ``None``. Nothing heavy is imported: arrays and tensors are recognised by
    their ``tolist`` method.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy arrays / scalars, torch tensors
        return to_jsonable(value.tolist())
    raise TypeError(f"Cannot represent {type(value).__name__} in JSON")


def report_to_dict(report: Any) -> dict[str, Any]:
    """A result dataclass (e.g. :class:`~calibscope.diagnostics.calibration.CalibrationReport`) as JSON-ready
    dict: its fields in order, nested dataclasses as objects, tuples as lists, NaN/inf as ``None``."""
    if not dataclasses.is_dataclass(report) or isinstance(report, type):
        raise TypeError(f"Expected a dataclass instance, but got {type(report).__name__}")
    return to_jsonable(report)


def json_document(kind: str, payload: Mapping[str, Any], *, meta: Mapping[str, Any]) -> dict[str, Any]:
    """``{"schema": "calibscope/<kind>", "schema_version": 1, "calibscope_version": ..., "meta": ..., **payload}``."""
    from calibscope import __version__

    if not kind or "/" in kind:
        raise ValueError(f"Expected a document kind such as 'ece', but got {kind!r}")
    clash = [key for key in payload if key in _RESERVED]
    if clash:
        raise ValueError(f"Payload keys {clash} are reserved for the document header")
    return {
        "schema": f"calibscope/{kind}",
        "schema_version": SCHEMA_VERSION,
        "calibscope_version": __version__,
        "meta": to_jsonable(dict(meta)),
        **to_jsonable(dict(payload)),
    }


def dumps(document: Mapping[str, Any]) -> str:
    """Standard JSON text (indent 2, UTF-8 characters kept, NaN/inf refused), without a trailing newline."""
    return json.dumps(document, indent=2, allow_nan=False, ensure_ascii=False)
