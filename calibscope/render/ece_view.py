"""What ``calibscope ece`` shows: tables on the terminal, the ``calibscope/ece`` JSON document, figures.

``results`` is a list of :class:`EceResult` (one per checkpoint); nothing here computes a metric.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from calibscope.diagnostics.calibration import CalibrationReport


@dataclass(frozen=True)
class EceResult:
    name: str  # display name of the checkpoint
    path: Path
    format: str  # checkpoint format (export, torchscript, safetensors, npz, ...)
    report: CalibrationReport
    inference: dict[str, Any]  # Outputs.meta: device, precision, batch size, hashes, cache, timings


def document(results: list[EceResult], *, gate: float | None) -> dict[str, Any]:
    """The ``calibscope/ece`` v1 document (``docs/json-schema.md``)."""
    from calibscope.render.json_doc import json_document, report_to_dict

    entries = [
        {"name": r.name, "checkpoint": str(r.path), "format": r.format, "inference": r.inference,
         **report_to_dict(r.report)}
        for r in results
    ]
    failing = [r.name for r in results if gate is not None and r.report.ece > gate]
    payload = {
        "results": entries,
        "gate": None if gate is None else {"max_ece": gate, "passed": not failing, "failing": failing},
    }
    return json_document("ece", payload, meta={"command": "ece", "n_checkpoints": len(results)})


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def write_outputs(out: Path, results: list[EceResult], doc: dict[str, Any]) -> list[Path]:
    """``out/ece.json`` and ``out/reliability_<name>.png|svg`` for each checkpoint (atomic writes)."""
    from calibscope.errors import InputError
    from calibscope.render.atomic import atomic_write_text
    from calibscope.render.figures import reliability_diagram, save_figure
    from calibscope.render.json_doc import dumps

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output directory '{out}': {exc.strerror or exc}") from None
    written = []
    for r in results:
        fig = reliability_diagram(r.report, title=r.name)
        written += save_figure(fig, out / f"reliability_{_slug(r.name)}")
    written.append(atomic_write_text(out / "ece.json", dumps(doc) + "\n"))
    return written


def print_json(doc: dict[str, Any]) -> None:
    from calibscope.render.json_doc import dumps

    print(dumps(doc))


def _provenance(r: EceResult) -> str:
    meta = r.inference
    parts = [f"{r.format}", f"{r.report.n} examples"]
    if meta.get("from_probabilities"):
        parts.append("probabilities → log")
    if meta.get("device", "").startswith("none"):
        parts.append("precomputed logits")
    else:
        parts.append(f"{meta.get('device')} {meta.get('precision')}")
        if meta.get("cache") == "hit":
            parts.append("cached outputs")
        elif meta.get("seconds") is not None:
            parts.append(f"{meta['seconds']:.2f} s")
    return " · ".join(parts)


def print_tables(results: list[EceResult], *, written: list[Path] | None = None) -> None:
    from rich.console import Console

    from calibscope.render.table import bins_table, calibration_table, comparison_table

    console = Console()
    if len(results) == 1:
        r = results[0]
        console.print(calibration_table(r.report, title=r.name))
        console.print(f"  [dim]{_provenance(r)}[/dim]")
        console.print(bins_table(r.report))
    else:
        console.print(comparison_table({r.name: r.report for r in results},
                                       title=f"Calibration, {results[0].report.n_bins} bins"))
        for r in results:
            console.print(f"  [dim]{r.name}: {_provenance(r)}[/dim]")
    if written:
        console.print(f"[dim]wrote {len(written)} files to {written[0].parent}/[/dim]")
