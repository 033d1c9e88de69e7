"""Renderers: terminal tables, versioned JSON, matplotlib figures, the HTML report, atomic file output.

They read result dataclasses and never compute metrics. Importing this package is cheap: rich and
matplotlib are imported inside the functions that draw.
"""

from __future__ import annotations

from calibscope.render.atomic import atomic_output, atomic_write_bytes, atomic_write_text
from calibscope.render.figures import reliability_diagram, save_figure
from calibscope.render.json_doc import dumps, json_document, report_to_dict, to_jsonable

__all__ = [
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "dumps",
    "json_document",
    "reliability_diagram",
    "report_to_dict",
    "save_figure",
    "to_jsonable",
]
