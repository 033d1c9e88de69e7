"""Figures for papers: the reliability diagram (Guo et al. 2017, Fig. 1) and an atomic ``save_figure``.

Built on :class:`matplotlib.figure.Figure` directly: no pyplot, no global state, no backend switch and no
rcParams changes, so embedding code keeps its own style. matplotlib is imported inside the functions.
Figures draw the numbers of a result; they never compute metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from calibscope.render.atomic import atomic_output

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from calibscope.diagnostics.calibration import CalibrationReport

__all__ = ["reliability_diagram", "save_figure"]

_ACCURACY_COLOR = "#3b6fb6"
_GAP_COLOR = "#d62728"
_HIST_COLOR = "#8c8c8c"

# labels of the artists, also used by tests to find them again
ACCURACY_LABEL = "Accuracy"
GAP_LABEL = "Gap"
COUNT_LABEL = "Count"


def reliability_diagram(
    report: CalibrationReport,
    *,
    title: str | None = None,
    figsize: tuple[float, float] = (4.0, 5.0),
) -> Figure:
    """Reliability diagram with a confidence histogram below it, from a :class:`CalibrationReport`.

    Top: per-bin accuracy :math:`\\operatorname{acc}(B_m)` as bars (non-empty bins only), red hatched "gap"
    bars from the accuracy to the bin's mean confidence :math:`\\operatorname{conf}(B_m)`, the diagonal of
    perfect calibration, and a box with ECE, MCE and n. Bottom: number of examples per bin, with vertical
    lines at the overall accuracy and the mean confidence. Axes: ``fig.axes[0]`` (reliability),
    ``fig.axes[1]`` (histogram); the accuracy bars are the container labelled ``"Accuracy"``.

    The default size fits one column of a two-column paper; save as SVG/PDF for vector output.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MultipleLocator, StrMethodFormatter

    bins = report.bins
    n_bins = len(bins.count)
    centers = [(lo + hi) / 2 for lo, hi in zip(bins.lower, bins.upper, strict=True)]
    widths = [hi - lo for lo, hi in zip(bins.lower, bins.upper, strict=True)]
    full = [m for m in range(n_bins) if bins.count[m] > 0 and math.isfinite(bins.accuracy[m])]

    fig = Figure(figsize=figsize, layout="constrained")
    ax, ax_hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})

    # --- reliability panel ------------------------------------------------------------------------------
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.35", linewidth=1.0, label="Perfect calibration", zorder=3)
    ax.bar(
        [centers[m] for m in full],
        [bins.accuracy[m] for m in full],
        width=[widths[m] for m in full],
        color=_ACCURACY_COLOR,
        edgecolor="black",
        linewidth=0.6,
        label=ACCURACY_LABEL,
        zorder=2,
    )
    ax.bar(
        [centers[m] for m in full],
        [bins.mean_confidence[m] - bins.accuracy[m] for m in full],
        bottom=[bins.accuracy[m] for m in full],
        width=[widths[m] for m in full],
        facecolor=(*_rgb(_GAP_COLOR), 0.22),
        edgecolor=_GAP_COLOR,
        hatch="///",
        linewidth=0.6,
        label=GAP_LABEL,
        zorder=2,
    )
    ax.text(
        0.96,
        0.04,
        f"ECE = {report.ece:.4f}\nMCE = {report.mce:.4f}\n$n$ = {report.n:,}",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize="small",
        bbox={"boxstyle": "round,pad=0.35", "facecolor": "white", "edgecolor": "0.7", "alpha": 0.9},
        zorder=4,
    )
    ax.legend(loc="upper left", fontsize="small", frameon=True, framealpha=0.9)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("Accuracy")
    ax.yaxis.set_major_locator(MultipleLocator(0.2))
    ax.grid(True, linewidth=0.5, alpha=0.35)
    ax.set_axisbelow(True)
    ax.set_title(title if title is not None else f"Reliability diagram ({report.n_bins} bins)", fontsize="medium")

    # --- confidence histogram ---------------------------------------------------------------------------
    ax_hist.bar(
        centers,
        list(bins.count),
        width=widths,
        color=_HIST_COLOR,
        edgecolor="black",
        linewidth=0.6,
        label=COUNT_LABEL,
        zorder=2,
    )
    ax_hist.axvline(
        report.accuracy, color=_ACCURACY_COLOR, linewidth=1.6, label=f"Accuracy ({100 * report.accuracy:.1f} %)"
    )
    ax_hist.axvline(
        report.mean_confidence,
        color=_GAP_COLOR,
        linewidth=1.6,
        linestyle="--",
        label=f"Avg. confidence ({100 * report.mean_confidence:.1f} %)",
    )
    ax_hist.legend(loc="upper left", fontsize="x-small", frameon=True, framealpha=0.9)
    ax_hist.set_xlabel("Confidence")
    ax_hist.set_ylabel("Count")
    ax_hist.set_ylim(0, max(max(bins.count), 1) * 1.08)
    ax_hist.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax_hist.xaxis.set_major_locator(MultipleLocator(0.2))
    ax_hist.grid(True, axis="y", linewidth=0.5, alpha=0.35)
    ax_hist.set_axisbelow(True)
    return fig


def _rgb(color: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(color)


# metadata that would make output differ from run to run
_STABLE_METADATA = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}


def save_figure(
    fig: Figure, stem: str | Path, formats: Iterable[str] = ("png", "svg"), *, dpi: int = 200
) -> list[Path]:
    """Save ``fig`` as ``<stem>.<format>`` for each format, each file written atomically.

    ``stem`` is a path without extension (``out / "reliability"``); its directory must exist.
    Returns the written paths, in the order of ``formats``.
    """
    stem = Path(stem)
    written = []
    for fmt in formats:
        fmt = fmt.lower().lstrip(".")
        path = stem.parent / f"{stem.name}.{fmt}"
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=_STABLE_METADATA.get(fmt))
        written.append(path)
    return written
