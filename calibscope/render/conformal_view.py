"""What ``calibscope conformal`` shows: the coverage / set-size table, coverage by set size and by class, the
coverage and mean set size against α, and the ``calibscope/conformal`` JSON document. Reads a
:class:`~calibscope.results.ConformalResult`; computes nothing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.results import ConformalResult  # noqa: F401 - re-exported (the result type)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["coverage_curve_figure", "document", "figures", "payload", "print_json", "print_tables",
           "summary_rows", "write_outputs"]

_METHOD_NAMES = {"lac": "LAC / THR", "aps": "APS", "raps": "RAPS"}


def payload(result: ConformalResult) -> dict[str, Any]:
    from calibscope.render.json_doc import report_to_dict

    return {"name": result.name, "checkpoint": str(result.path), "format": result.format, "data": result.data,
            "inference": result.inference, "result": report_to_dict(result.report), "gate": result.gate}


def document(result: ConformalResult) -> dict[str, Any]:
    """The ``calibscope/conformal`` v1 document."""
    from calibscope.render.json_doc import json_document

    return json_document("conformal", payload(result), meta={"command": "conformal"})


def print_json(doc: dict[str, Any]) -> None:
    from calibscope.render.json_doc import dumps

    print(dumps(doc))


def _pct(value: float) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.2f} %"


def _method(cal) -> str:
    name = _METHOD_NAMES[cal.method]
    if cal.method != "lac":
        name += " (randomised)" if cal.randomized else " (not randomised)"
    if cal.method == "raps":
        name += f", k_reg = {cal.k_reg}, λ = {cal.lam:g}"
    return name


def summary_rows(result: ConformalResult) -> list[list[str]]:
    r = result.report
    cal = r.calibration
    q = "+inf (α < 1/(n+1): every class)" if not math.isfinite(cal.q_hat) else f"{cal.q_hat:.6g}"
    rows = [["Method", _method(cal)],
            ["Target coverage 1 − α", _pct(r.target)],
            ["Calibration examples", f"{cal.n_calibration:,}" + (f" (+{cal.n_tune:,} to choose k_reg, λ)"
                                                                 if cal.n_tune else "")],
            ["q̂ (⌈(n+1)(1−α)⌉-th smallest score)", q],
            ["Empirical coverage", _pct(r.coverage)],
            ["Mean set size", f"{r.mean_size:.3f}"],
            ["Median set size", f"{r.median_size:g}"],
            ["Singleton sets", _pct(r.singleton_fraction)],
            ["Empty sets", _pct(r.empty_fraction)],
            ["Worst class coverage", _pct(r.worst_class_coverage)]]
    return rows


def _verdict(result: ConformalResult) -> str:
    """One sentence derived from the numbers: coverage against the target and its sampling tolerance."""
    r = result.report
    tolerance = 3 * math.sqrt(r.target * (1 - r.target) / r.n_test)
    gap = r.coverage - r.target
    if abs(gap) <= tolerance:
        verdict = f"coverage {_pct(r.coverage)} is within ±{100 * tolerance:.2f} pt (3 s.e. at n = {r.n_test:,}) " \
                  f"of the target {_pct(r.target)}"
    elif gap > 0:
        verdict = f"coverage {_pct(r.coverage)} exceeds the target {_pct(r.target)} by more than 3 s.e. " \
                  f"(conservative sets: never-empty rule or a non-randomised score)"
    else:
        verdict = f"coverage {_pct(r.coverage)} is below the target {_pct(r.target)} by more than 3 s.e.: " \
                  f"the test data may not be exchangeable with --val"
    return verdict


def print_tables(result: ConformalResult, *, written: list[Path] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    r = result.report
    console.print(f"[bold]{result.name}: split conformal prediction sets[/bold]")
    table = Table(header_style="bold", show_header=False)
    table.add_column("", justify="left")
    table.add_column("", justify="right")
    for row in summary_rows(result):
        table.add_row(*row)
    console.print(table)
    sizes = Table(title="Coverage by set size", title_justify="left", header_style="bold")
    for col in ("Size", "Sets", "Coverage"):
        sizes.add_column(col, justify="right")
    for size, count, cov in r.coverage_by_size:
        sizes.add_row(str(size), f"{count:,}", _pct(cov))
    console.print(sizes)
    classes = Table(title="Coverage by class (not guaranteed by split conformal)", title_justify="left",
                    header_style="bold")
    for col in ("Class", "Examples", "Coverage"):
        classes.add_column(col, justify="right")
    for c, count, cov in r.coverage_by_class:
        classes.add_row(str(c), f"{count:,}", _pct(cov))
    console.print(classes)
    console.print(f"  [dim]{_verdict(result)}; calibrated on {result.data['val']}, "
                  f"measured on {r.n_test:,} examples of {result.data.get('test') or result.path}[/dim]")
    if result.gate is not None:
        state = "passed" if result.gate["passed"] else "FAILED"
        console.print(f"gate --min-coverage {result.gate['min_coverage']:g}: {state} "
                      f"(coverage {_pct(result.gate['coverage'])})")
    if written:
        console.print(f"[dim]wrote {len(written)} files to {written[0].parent}/[/dim]")


def coverage_curve_figure(result: ConformalResult, *, figsize: tuple[float, float] = (7.6, 3.4)) -> Figure:
    """Left: empirical coverage against 1 − α with the diagonal; right: mean set size against α."""
    from matplotlib.figure import Figure

    curve = result.report.curve
    alphas = [p.alpha for p in curve]
    fig = Figure(figsize=figsize, layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot([1 - a for a in alphas], [p.coverage for p in curve], marker="o", markersize=3, label="empirical")
    lo, hi = 1 - max(alphas), 1 - min(alphas)
    left.plot([lo, hi], [lo, hi], color="0.4", linestyle="--", linewidth=1, label="target 1 − α")
    left.set_xlabel("target coverage 1 − α")
    left.set_ylabel("coverage on test data")
    left.legend(frameon=False, fontsize=8)
    right.plot(alphas, [p.mean_size for p in curve], marker="o", markersize=3)
    right.set_xlabel("α")
    right.set_ylabel("mean set size")
    fig.suptitle(f"{result.name}: {_method(result.report.calibration)}", fontsize=9)
    return fig


def figures(result: ConformalResult) -> dict[str, Figure]:
    return {"conformal_coverage": coverage_curve_figure(result)}


def write_outputs(out: Path, result: ConformalResult, doc: dict[str, Any]) -> list[Path]:
    """``out/conformal.json`` and ``out/conformal_coverage.png|svg`` (atomic writes)."""
    from calibscope.render.figures import write_output_set

    return write_output_set(out, figures(result), "conformal.json", doc)
