"""What ``calibscope selective`` shows: the AURC / accuracy-at-coverage table, the risk–coverage plot, the
``calibscope/selective`` JSON document.

Everything here reads a :class:`SelectiveResult` (one checkpoint, one
:class:`~calibscope.diagnostics.selective.SelectiveReport` per confidence score); nothing computes a metric.
For the HTML report: :func:`summary_rows` (plain strings), :func:`summary_table` (rich), :func:`figures`
(name → Figure), :func:`payload` (the JSON fields without the header).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.results import SelectiveResult  # noqa: F401 - re-exported (the result types)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from rich.table import Table

    from calibscope.diagnostics.selective import SelectiveReport

__all__ = [
    "SelectiveResult",
    "document",
    "figures",
    "payload",
    "print_json",
    "print_tables",
    "risk_coverage_figure",
    "summary_rows",
    "summary_table",
    "write_outputs",
]

OPTIMAL_LABEL = "Optimal ranking"


# ------------------------------------------------------------------------------------------------ JSON


def payload(result: SelectiveResult) -> dict[str, Any]:
    """The document's fields after the header."""
    from calibscope.render.json_doc import report_to_dict

    return {"name": result.name, "checkpoint": str(result.path), "format": result.format, "data": result.data,
            "inference": result.inference,
            "temperature_fit": result.temperature_fit, "results": [report_to_dict(r) for r in result.reports]}


def document(result: SelectiveResult) -> dict[str, Any]:
    """The ``calibscope/selective`` v1 document (``docs/ood.md``)."""
    from calibscope.render.json_doc import json_document

    return json_document("selective", payload(result), meta={"command": "selective"})


def print_json(doc: dict[str, Any]) -> None:
    from calibscope.render.json_doc import dumps

    print(dumps(doc))


# ------------------------------------------------------------------------------------------------ tables


def _pct(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.2f} %"


def summary_rows(reports: tuple[SelectiveReport, ...] | list[SelectiveReport]) -> tuple[list[str], list[list[str]]]:
    """Header (``Metric`` and one column per score) and rows: accuracy, AURC, E-AURC, AURC*, AUGRC, AUGRC*, the
    accuracy at each fixed coverage and, with a target risk, the coverage reachable and its threshold."""
    first = reports[0]
    header = ["Metric", *(r.score for r in reports)]
    rows = [
        ["Accuracy (all kept)", *(_pct(r.accuracy) for r in reports)],
        ["AURC (lower is better)", *(f"{r.aurc:.4f}" for r in reports)],
        ["E-AURC = AURC − AURC*", *(f"{r.excess_aurc:.4f}" for r in reports)],
        ["AURC* (optimal ranking)", *(f"{r.aurc_optimal:.4f}" for r in reports)],
        ["AUGRC (lower is better)", *(f"{r.augrc:.4f}" for r in reports)],
        ["AUGRC* (optimal ranking)", *(f"{r.augrc_optimal:.4f}" for r in reports)],
    ]
    for i, point in enumerate(first.at_coverage):
        rows.append([f"Accuracy @ {100 * point.target_coverage:g} % coverage",
                     *(_pct(r.at_coverage[i].accuracy) for r in reports)])
    if first.at_risk is not None:
        label = f"{100 * first.at_risk.target_risk:g} %"
        rows.append([f"Coverage @ risk ≤ {label}",
                     *(_pct(r.at_risk.coverage) if r.at_risk.reachable else "unreachable" for r in reports)])
        rows.append(["  threshold (keep score ≥)",
                     *(f"{r.at_risk.threshold:.6g}" if r.at_risk.reachable else "—" for r in reports)])
    return header, rows


def summary_table(reports, title: str | None = None) -> Table:
    from rich.table import Table

    header, rows = summary_rows(reports)
    table = Table(title=title, title_justify="left", header_style="bold")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def print_tables(result: SelectiveResult, *, written: list[Path] | None = None) -> None:
    from rich.console import Console

    console = Console()
    first = result.reports[0]
    temperatures = {r.temperature for r in result.reports if r.temperature is not None}
    note = f", T = {temperatures.pop():.4g}" if len(temperatures) == 1 and 1.0 not in temperatures else ""
    if note and result.temperature_fit is not None:
        note += " (fitted: NLL-optimal on these data)"
    console.print(f"[bold]{result.name}: selective classification[/bold]")
    console.print(summary_table(result.reports))
    console.print(f"  [dim]{first.n:,} examples of {result.data.get('test') or result.path}{note}[/dim]")
    console.print("  [dim]risk = error rate of the kept examples; AURC = mean risk over the coverages 1/n..1 "
                  "(Geifman et al. 2019); E-AURC = AURC − AURC* of the optimal ranking; AUGRC = area under "
                  "errors kept / n (Traub et al. 2024)[/dim]")
    if written:
        console.print(f"[dim]wrote {len(written)} files to {written[0].parent}/[/dim]")


# ------------------------------------------------------------------------------------------------ figures


def risk_coverage_figure(reports, *, title: str | None = None,
                         figsize: tuple[float, float] = (4.8, 3.8)) -> Figure:
    """Selective risk against coverage for every score, with the optimal ranking's curve (dashed), markers at
    the fixed coverages and, when asked for, the target risk (dotted).

    ``fig.axes[0].lines``: one curve per report in order, then the optimal curve.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    from calibscope.render.ood_view import _color, _label

    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    for r in reports:
        color = _color(r.score)
        ax.plot(r.curve.coverage, r.curve.risk, color=color, linewidth=1.5,
                label=f"{_label(r.score)} (AURC {r.aurc:.4f})")
        ax.plot([p.coverage for p in r.at_coverage], [p.risk for p in r.at_coverage], linestyle="none",
                marker="o", markersize=4, color=color)
    first = reports[0]
    ax.plot(first.optimal_curve.coverage, first.optimal_curve.risk, color="0.3", linestyle="--", linewidth=1.0,
            label=f"{OPTIMAL_LABEL} (AURC* {first.aurc_optimal:.4f})")
    if first.at_risk is not None:
        ax.axhline(first.at_risk.target_risk, color="0.45", linestyle=":", linewidth=0.9,
                   label=f"Target risk {100 * first.at_risk.target_risk:g} %")
    top = max([1 - first.accuracy] + [max(r.curve.risk[len(r.curve.risk) // 20:] or (0,)) for r in reports])
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, max(top * 1.15, 0.01))
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("Coverage (share of inputs kept)")
    ax.set_ylabel("Selective risk (error rate)")
    ax.grid(True, linewidth=0.5, alpha=0.35)
    ax.legend(loc="upper left", fontsize="x-small", framealpha=0.9)
    ax.set_title(title if title is not None else f"Risk–coverage, {first.n:,} examples", fontsize="medium")
    return fig


def figures(result: SelectiveResult) -> dict[str, Figure]:
    """The figures of a run by file stem: ``risk_coverage``."""
    return {"risk_coverage": risk_coverage_figure(result.reports, title=f"{result.name}: risk–coverage")}


def write_outputs(out: Path, result: SelectiveResult, doc: dict[str, Any]) -> list[Path]:
    """``out/selective.json`` and ``out/risk_coverage.png|svg`` (atomic writes)."""
    from calibscope.render.figures import write_output_set

    return write_output_set(out, figures(result), "selective.json", doc)
