"""What ``calibscope ood`` shows: the score × metric table, ROC curves, score histograms, the ``calibscope/ood``
JSON document.

Everything here reads an :class:`OodResult` (one checkpoint, its :class:`~calibscope.diagnostics.ood.OodReport`
and where the numbers came from); nothing computes a metric. The pieces are separate so that the HTML report
can embed them: :func:`metrics_rows` (plain strings for any table), :func:`metrics_table` (rich),
:func:`figures` (name → :class:`matplotlib.figure.Figure`), :func:`payload` (the JSON fields without the
header).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.results import OodResult  # noqa: F401 - re-exported (the result types)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from rich.table import Table

    from calibscope.diagnostics.ood import OodReport

__all__ = [
    "OodResult",
    "document",
    "figures",
    "metrics_rows",
    "metrics_table",
    "payload",
    "print_json",
    "print_tables",
    "roc_figure",
    "score_histogram_figure",
    "write_outputs",
]

SCORE_COLORS = {"msp": "#3b6fb6", "max-logit": "#2ca02c", "energy": "#d62728", "mahalanobis": "#9467bd",
                "odin": "#8c564b", "knn": "#e377c2", "vim": "#17becf", "react": "#bcbd22", "ash": "#ff7f0e",
                "gradnorm": "#7f7f7f", "gram": "#1a1a1a"}
SCORE_LABELS = {"msp": "Max softmax prob.", "max-logit": "Max logit", "energy": "Energy (−E)",
                "mahalanobis": "Mahalanobis (−d²)", "odin": "ODIN", "knn": "KNN (−distance)",
                "vim": "ViM", "react": "ReAct (energy)", "ash": "ASH (energy)", "gradnorm": "GradNorm",
                "gram": "Gram (−deviation)"}
IN_COLOR, OUT_COLOR = "#3b6fb6", "#ff7f0e"
IN_LABEL, OUT_LABEL = "In-distribution", "OOD"


def positive_of(report: OodReport) -> str:
    """``"ood"`` or ``"in"``: the positive class of the report's FPR metric and ROC curves."""
    return report.results[0].metrics.positive if report.results else "ood"


def convention_line(report: OodReport) -> str:
    """One sentence saying which class is positive and what the FPR metric counts."""
    level = f"{100 * report.results[0].metrics.tpr_level:g} %" if report.results else "95 %"
    if positive_of(report) == "ood":
        return (f"OOD = positive (as pytorch-ood, torch-uncertainty): FPR = share of in-distribution inputs flagged "
                f"at the threshold that catches {level} of the OOD inputs; --positive in for the other convention")
    return (f"in-distribution = positive: FPR = share of OOD inputs accepted at the threshold that keeps {level} "
            "of the in-distribution inputs; --positive ood for pytorch-ood's convention")


def roc_axis_labels(positive: str) -> tuple[str, str]:
    if positive == "ood":
        return "False positive rate (in-dist. flagged)", "True positive rate (OOD flagged)"
    return "False positive rate (OOD accepted)", "True positive rate (in-dist. accepted)"


def _color(score: str) -> str:
    return SCORE_COLORS.get(score, "0.3")


def _label(score: str) -> str:
    return SCORE_LABELS.get(score, score)


# ------------------------------------------------------------------------------------------------ JSON


def payload(result: OodResult) -> dict[str, Any]:
    """The document's fields after the header (also what an HTML section would carry)."""
    from calibscope.render.json_doc import report_to_dict

    return {"name": result.name, "checkpoint": str(result.path), "format": result.format, "data": result.data,
            "inference": result.inference,
            "temperature_fit": result.temperature_fit, **report_to_dict(result.report)}


def document(result: OodResult) -> dict[str, Any]:
    """The ``calibscope/ood`` v1 document (``docs/ood.md``)."""
    from calibscope.render.json_doc import json_document

    return json_document("ood", payload(result), meta={"command": "ood"})


def print_json(doc: dict[str, Any]) -> None:
    from calibscope.render.json_doc import dumps

    print(dumps(doc))


# ------------------------------------------------------------------------------------------------ tables


def _rate(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "—"


def metrics_rows(report: OodReport) -> tuple[list[str], list[list[str]]]:
    """Header and rows (formatted strings) of the score × metric table: AUROC, AUPR-In, AUPR-Out (higher is
    better) and FPR at the TPR level (lower is better)."""
    level = report.results[0].metrics.tpr_level if report.results else 0.95
    header = ["Score", "AUROC", "AUPR-In", "AUPR-Out", f"FPR@{100 * level:g}TPR"]
    rows = [[r.score, _rate(r.metrics.auroc), _rate(r.metrics.aupr_in), _rate(r.metrics.aupr_out),
             _rate(r.metrics.fpr_at_tpr)] for r in report.results]
    return header, rows


def metrics_table(report: OodReport, title: str | None = None) -> Table:
    from rich.table import Table

    header, rows = metrics_rows(report)
    table = Table(title=title, title_justify="left", header_style="bold")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def _side(meta: dict[str, Any]) -> str:
    if str(meta.get("device", "")).startswith("none"):
        return "precomputed logits"
    parts = [f"{meta.get('device')} {meta.get('precision')}"]
    if meta.get("cache") == "hit":
        parts.append("cached")
    return " ".join(parts)


def print_tables(result: OodResult, *, written: list[Path] | None = None) -> None:
    from rich.console import Console

    r = result.report
    console = Console()
    console.print(f"[bold]{result.name}: OOD detection[/bold]")
    console.print(metrics_table(r))
    sides = [f"in: {r.n_in:,} examples of {result.data.get('in') or result.path} "
             f"({_side(result.inference.get('in', {}))})",
             f"OOD: {r.n_out:,} examples of {result.data.get('ood')} ({_side(result.inference.get('ood', {}))})"]
    if r.temperature != 1 or result.temperature_fit is not None:
        how = " (fitted: NLL-optimal on the in-distribution data)" if result.temperature_fit is not None else ""
        sides.append(f"temperature T = {r.temperature:.4g} for msp and energy{how}")
    if r.mahalanobis is not None:
        m = r.mahalanobis
        sides.append(f"Mahalanobis: {m['n_train']} training examples from {result.data.get('train')}, "
                     f"{m['feature_dim']} features, {m['shrinkage_method']} shrinkage δ = {m['shrinkage']:.3g}")
    for line in sides:
        console.print(f"  [dim]{line}[/dim]")
    console.print(f"  [dim]{convention_line(r)}; scores higher for more in-distribution inputs; FPR: lower is "
                  "better[/dim]")
    if written:
        console.print(f"[dim]wrote {len(written)} files to {written[0].parent}/[/dim]")


# ------------------------------------------------------------------------------------------------ figures


def roc_figure(report: OodReport, *, title: str | None = None, figsize: tuple[float, float] = (4.2, 4.2)) -> Figure:
    """ROC curves of every score on one axes: FPR (OOD accepted) against TPR (in-distribution accepted).

    Each line is labelled with its score and AUROC; the dotted line marks the TPR level of the FPR metric.
    ``fig.axes[0].lines`` holds the curves in the order of ``report.results``, then the chance diagonal.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    for r in report.results:
        ax.plot(r.roc.fpr, r.roc.tpr, color=_color(r.score), linewidth=1.6,
                label=f"{_label(r.score)} ({r.metrics.auroc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=0.9, label="Chance (0.5)")
    if report.results:
        level = report.results[0].metrics.tpr_level
        ax.axhline(level, color="0.45", linestyle=":", linewidth=0.9)
        ax.text(0.98, level - 0.015, f"TPR {100 * level:g} %", ha="right", va="top", fontsize="x-small", color="0.35")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    xlabel, ylabel = roc_axis_labels(positive_of(report))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, linewidth=0.5, alpha=0.35)
    ax.legend(loc="lower right", fontsize="x-small", title="Score (AUROC)", title_fontsize="x-small",
              framealpha=0.9)
    ax.set_title(title if title is not None else f"ROC, {report.n_in:,} in vs {report.n_out:,} OOD",
                 fontsize="medium")
    return fig


def score_histogram_figure(report: OodReport, *, title: str | None = None,
                           panel_size: tuple[float, float] = (3.2, 2.6)) -> Figure:
    """One panel per score: the share of in-distribution and of OOD inputs in each score bin (so unequal set
    sizes compare), with the threshold of the FPR metric as a dashed line."""
    from matplotlib.figure import Figure

    results = report.results
    ncols = 2 if len(results) == 4 else min(len(results), 3) or 1
    nrows = max(1, math.ceil(len(results) / ncols))
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, r in zip(axes, results, strict=False):
        h = r.histogram
        n_in, n_out = max(sum(h.in_counts), 1), max(sum(h.out_counts), 1)
        ax.stairs([c / n_in for c in h.in_counts], h.edges, fill=True, color=IN_COLOR, alpha=0.45, label=IN_LABEL)
        ax.stairs([c / n_out for c in h.out_counts], h.edges, fill=True, color=OUT_COLOR, alpha=0.45,
                  label=OUT_LABEL)
        ax.stairs([c / n_in for c in h.in_counts], h.edges, color=IN_COLOR, linewidth=0.9)
        ax.stairs([c / n_out for c in h.out_counts], h.edges, color=OUT_COLOR, linewidth=0.9)
        m = r.metrics
        ax.axvline(m.threshold_at_tpr, color="0.2", linestyle="--", linewidth=0.9,
                   label=f"TPR {100 * m.tpr_level:g} % threshold")
        ax.set_title(f"{_label(r.score)}: AUROC {m.auroc:.3f}, FPR {m.fpr_at_tpr:.3f}", fontsize="small")
        if h.scale == "symlog":  # heavy tails (e.g. Gram deviations): equal-width bins on this axis
            ax.set_xscale("symlog", linthresh=h.linthresh, linscale=1.0, base=10)
            ax.set_xlim(h.edges[0], h.edges[-1])
            ax.text(0.02, 0.97, f"symlog axis (linear within ±{h.linthresh:.3g}): heavy tail", transform=ax.transAxes,
                    ha="left", va="top", fontsize="xx-small", color="0.3")
        ax.set_xlabel("score (higher = more in-distribution)", fontsize="small")
        ax.set_ylabel("share of examples", fontsize="small")
        ax.tick_params(labelsize="x-small")
        ax.grid(True, axis="y", linewidth=0.5, alpha=0.35)
        ax.set_axisbelow(True)
    for ax in axes[len(results):]:
        ax.set_visible(False)
    fig.suptitle(title if title is not None else "Score distributions: in-distribution vs OOD", fontsize="medium")
    if results:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize="small", frameon=False)
    return fig


def figures(result: OodResult) -> dict[str, Figure]:
    """The figures of a run by file stem: ``ood_roc`` and ``ood_scores`` (for ``--out`` and the HTML report)."""
    return {
        "ood_roc": roc_figure(result.report, title=f"{result.name}: ROC, in vs OOD"),
        "ood_scores": score_histogram_figure(result.report, title=f"{result.name}: scores, in-distribution vs OOD"),
    }


def write_outputs(out: Path, result: OodResult, doc: dict[str, Any]) -> list[Path]:
    """``out/ood.json``, ``out/ood_roc.png|svg`` and ``out/ood_scores.png|svg`` (atomic writes)."""
    from calibscope.render.figures import write_output_set

    return write_output_set(out, figures(result), "ood.json", doc)
