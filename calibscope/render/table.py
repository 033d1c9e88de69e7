"""Human-readable tables of calibration results (rich). They format numbers; they never compute metrics.

Rates are printed with 4 decimals, accuracy and confidence as percentages. ``rich`` is imported inside the
functions so that importing this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console
    from rich.table import Table

    from calibscope.diagnostics.calibration import CalibrationReport

__all__ = ["bins_table", "calibration_table", "comparison_table", "print_tables"]

_MISSING = "—"


def _rate(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else _MISSING if math.isnan(value) else str(value)


def _percent(value: float) -> str:
    return f"{100 * value:.2f} %" if math.isfinite(value) else _MISSING


def _headline_rows(report: CalibrationReport) -> list[tuple[str, str]]:
    """(label, formatted value) of the numbers shown for one report, in display order."""
    return [
        ("Examples", f"{report.n:,}"),
        ("Classes", str(report.num_classes)),
        ("Accuracy", _percent(report.accuracy)),
        ("Mean confidence", _percent(report.mean_confidence)),
        (f"ECE ({report.n_bins} bins)", _rate(report.ece)),
        ("MCE", _rate(report.mce)),
        ("NLL", _rate(report.nll)),
        ("Brier", _rate(report.brier)),
    ]


def calibration_table(report: CalibrationReport, title: str | None = None) -> Table:
    """Two-column table of the headline numbers: n, accuracy, mean confidence, ECE, MCE, NLL, Brier."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=True, header_style="bold")
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    for label, value in _headline_rows(report):
        table.add_row(label, value)
    return table


def bins_table(report: CalibrationReport, title: str | None = None) -> Table:
    """One row per confidence bin: range ``(lower, upper]``, count, mean confidence, accuracy, gap.

    ``gap`` = confidence − accuracy (positive: over-confident). Empty bins show ``—``.
    """
    from rich.table import Table

    bins = report.bins
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("Bin (conf.)")
    table.add_column("Count", justify="right")
    table.add_column("Confidence", justify="right")
    table.add_column("Accuracy", justify="right")
    table.add_column("Gap", justify="right")
    for m in range(report.n_bins):
        lower, upper = bins.lower[m], bins.upper[m]
        opening = "[" if m == 0 else "("  # conf = 0 joins the first bin
        gap = bins.gap[m]
        table.add_row(
            f"{opening}{lower:.3f}, {upper:.3f}]",
            f"{bins.count[m]:,}",
            _percent(bins.mean_confidence[m]),
            _percent(bins.accuracy[m]),
            f"{gap:+.4f}" if math.isfinite(gap) else _MISSING,
        )
    return table


def comparison_table(reports: Mapping[str, CalibrationReport], title: str | None = None) -> Table:
    """Side by side: one row per metric, one column per model (``{"hard targets": r1, "LS 0.1": r2}``)."""
    from rich.table import Table

    if not reports:
        raise ValueError("Expected at least one report to compare, but got none")
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("Metric")
    for name in reports:
        table.add_column(name, justify="right")
    columns = [_headline_rows(report) for report in reports.values()]
    for i, (label, _) in enumerate(columns[0]):
        if label.startswith("ECE") and len({r.n_bins for r in reports.values()}) > 1:
            label = "ECE (bins differ!)"
        table.add_row(label, *(rows[i][1] for rows in columns))
    return table


def print_tables(console: Console, report: CalibrationReport, *, title: str | None = None, bins: bool = False) -> None:
    """Print the headline table (and, with ``bins=True``, the per-bin table) to a rich ``Console``."""
    console.print(calibration_table(report, title=title))
    if bins:
        console.print(bins_table(report))
