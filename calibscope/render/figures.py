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

__all__ = ["log_axis_ticks", "reliability_curves", "reliability_diagram", "save_figure", "series_colors"]

_ACCURACY_COLOR = "#3b6fb6"
_GAP_COLOR = "#d62728"
_HIST_COLOR = "#8c8c8c"

# labels of the artists, also used by tests to find them again
ACCURACY_LABEL = "Accuracy"
GAP_LABEL = "Gap"
COUNT_LABEL = "Count"
CONFIDENCE_LABEL = "Mean confidence"
INTERVAL_LABEL = "95 % Wilson interval"


def finish_reliability_axes(ax, box: str, *, ylabel: str, title: str, box_fontsize: str = "small",
                            box_family: str | None = None) -> None:
    """The upper panel of a reliability diagram (binned or CORP): the numbers in a box at the lower right, the
    legend at the upper left, [0, 1]² with ticks every 0.2, a light grid and the title."""
    from matplotlib.ticker import MultipleLocator

    ax.text(0.96, 0.04, box, transform=ax.transAxes, ha="right", va="bottom", fontsize=box_fontsize,
            family=box_family,
            bbox={"boxstyle": "round,pad=0.35", "facecolor": "white", "edgecolor": "0.7", "alpha": 0.9}, zorder=5)
    ax.legend(loc="upper left", fontsize="x-small", frameon=True, framealpha=0.9)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel(ylabel)
    ax.yaxis.set_major_locator(MultipleLocator(0.2))
    ax.grid(True, linewidth=0.5, alpha=0.35)
    ax.set_axisbelow(True)
    ax.set_title(title, fontsize="medium")


def reliability_diagram(
    report: CalibrationReport,
    *,
    title: str | None = None,
    figsize: tuple[float, float] = (4.0, 5.0),
    log_counts: bool = True,
) -> Figure:
    """Reliability diagram with a confidence histogram below it, from a :class:`CalibrationReport`.

    Top: per-bin accuracy :math:`\\operatorname{acc}(B_m)` as blue bars (non-empty bins only) with 95 % Wilson
    score intervals (black; :func:`calibscope.diagnostics.intervals.wilson_interval`), the bin's mean
    confidence :math:`\\operatorname{conf}(B_m)` as a red tick, and the gap between them as an unfilled red
    hatched bar — red hatching *above* a blue bar is over-confidence, *inside* it under-confidence, and the
    colours never mix. The diagonal of perfect calibration and a box with ECE, MCE and n. Bottom: examples
    per bin (log scale by default, so the sparse low-confidence bins stay visible), each bar labelled with its
    count, and vertical lines at the overall accuracy and mean confidence. Axes: ``fig.axes[0]`` (reliability),
    ``fig.axes[1]`` (histogram); the containers are labelled ``"Accuracy"``, ``"Gap"`` and ``"Count"``.

    The default size fits one column of a two-column paper; save as SVG/PDF for vector output.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MultipleLocator, StrMethodFormatter

    from calibscope.diagnostics.intervals import wilson_interval

    bins = report.bins
    n_bins = len(bins.count)
    centers = [(lo + hi) / 2 for lo, hi in zip(bins.lower, bins.upper, strict=True)]
    widths = [hi - lo for lo, hi in zip(bins.lower, bins.upper, strict=True)]
    full = [m for m in range(n_bins) if bins.count[m] > 0 and math.isfinite(bins.accuracy[m])]
    lo, hi = wilson_interval([bins.accuracy[m] * bins.count[m] for m in full], [bins.count[m] for m in full])

    fig = Figure(figsize=figsize, layout="constrained")
    ax, ax_hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})

    # --- reliability panel ------------------------------------------------------------------------------
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.35", linewidth=1.0, label="Perfect calibration", zorder=3)
    ax.bar([centers[m] for m in full], [bins.accuracy[m] for m in full], width=[widths[m] for m in full],
           color=_ACCURACY_COLOR, edgecolor="black", linewidth=0.6, label=ACCURACY_LABEL, zorder=2)
    ax.bar([centers[m] for m in full], [bins.mean_confidence[m] - bins.accuracy[m] for m in full],
           bottom=[bins.accuracy[m] for m in full], width=[widths[m] for m in full], facecolor="none",
           edgecolor=_GAP_COLOR, hatch="////", linewidth=0.8, label=GAP_LABEL, zorder=2.5)
    ax.hlines([bins.mean_confidence[m] for m in full], [bins.lower[m] for m in full],
              [bins.upper[m] for m in full], color=_GAP_COLOR, linewidth=1.8, label=CONFIDENCE_LABEL, zorder=3.5)
    acc = [bins.accuracy[m] for m in full]
    ax.errorbar([centers[m] for m in full], acc, yerr=[[max(a - v, 0.0) for a, v in zip(acc, lo, strict=True)],
                                                       [max(v - a, 0.0) for a, v in zip(acc, hi, strict=True)]],
                fmt="none", ecolor="black", elinewidth=0.9, capsize=2, label=INTERVAL_LABEL, zorder=4)
    finish_reliability_axes(ax, f"ECE = {report.ece:.4f}\nMCE = {report.mce:.4f}\n$n$ = {report.n:,}",
                            ylabel="Accuracy",
                            title=title if title is not None else f"Reliability diagram ({report.n_bins} bins)")

    # --- confidence histogram ---------------------------------------------------------------------------
    counts = list(bins.count)
    bars = ax_hist.bar(centers, counts, width=widths, color=_HIST_COLOR, edgecolor="black", linewidth=0.6,
                       label=COUNT_LABEL, zorder=2)
    ax_hist.bar_label(bars, labels=[f"{c:,}" if c else "" for c in counts], fontsize=5.5, padding=1, rotation=90)
    ax_hist.axvline(report.accuracy, color=_ACCURACY_COLOR, linewidth=1.6,
                    label=f"Accuracy ({100 * report.accuracy:.1f} %)")
    ax_hist.axvline(report.mean_confidence, color=_GAP_COLOR, linewidth=1.6, linestyle="--",
                    label=f"Avg. confidence ({100 * report.mean_confidence:.1f} %)")
    ax_hist.legend(loc="upper left", fontsize="x-small", frameon=True, framealpha=0.9)
    ax_hist.set_xlabel("Confidence")
    top = max(max(counts), 1)
    if log_counts:
        ax_hist.set_yscale("log")
        ax_hist.set_ylim(0.7, top * 12)
        ax_hist.set_ylabel("Count (log)")
    else:
        ax_hist.set_ylim(0, top * 1.25)
        ax_hist.set_ylabel("Count")
        ax_hist.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax_hist.xaxis.set_major_locator(MultipleLocator(0.2))
    ax_hist.grid(True, axis="y", linewidth=0.5, alpha=0.35)
    ax_hist.set_axisbelow(True)
    return fig


# colour-blind-safe (Okabe & Ito 2008), one per model on shared axes
SERIES_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
SERIES_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def series_colors(n: int) -> list[tuple[str, str]]:
    """(colour, marker) for the i-th of ``n`` models drawn on one axis."""
    return [(SERIES_COLORS[i % len(SERIES_COLORS)], SERIES_MARKERS[i % len(SERIES_MARKERS)]) for i in range(n)]


def reliability_curves(
    reports: dict[str, CalibrationReport],
    *,
    title: str | None = None,
    figsize: tuple[float, float] = (4.2, 4.0),
) -> Figure:
    """Several models' reliability curves on one axis (Müller et al. 2019, Fig. 2).

    For each model: accuracy :math:`\\operatorname{acc}(B_m)` against mean confidence
    :math:`\\operatorname{conf}(B_m)` of its non-empty bins, joined by a line, its ECE in the legend; the
    diagonal is perfect calibration (above it: under-confident, below: over-confident). A marker's area grows
    with its bin's count, so a bin of one example does not look like a trend. Each model's line is the artist
    labelled with its name (then `` (ECE …)``).
    """
    from matplotlib.figure import Figure

    if not reports:
        raise ValueError("Expected at least one report to plot, but got none")
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.35", linewidth=1.0, label="Perfect calibration")
    for (name, report), (color, marker) in zip(reports.items(), series_colors(len(reports)), strict=True):
        bins = report.bins
        full = [m for m in range(len(bins.count)) if bins.count[m] > 0 and math.isfinite(bins.accuracy[m])]
        xs, ys = [bins.mean_confidence[m] for m in full], [bins.accuracy[m] for m in full]
        ax.plot(xs, ys, color=color, linewidth=1.2, alpha=0.8, label=f"{name} (ECE {report.ece:.3f})")
        most = max(bins.count[m] for m in full)
        ax.scatter(xs, ys, s=[8 + 72 * bins.count[m] / most for m in full], color=color, marker=marker,
                   edgecolors="white", linewidths=0.5, zorder=3)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("Confidence (mean of bin)")
    ax.set_ylabel("Accuracy")
    ax.text(0.04, 0.96, "under-confident", transform=ax.transAxes, ha="left", va="top", fontsize="x-small",
            color="0.4")
    ax.text(0.96, 0.04, "over-confident (marker area ∝ bin count)", transform=ax.transAxes, ha="right",
            va="bottom", fontsize="x-small",
            color="0.4")
    ax.grid(True, linewidth=0.5, alpha=0.35)
    ax.set_axisbelow(True)
    # below the axes: inside, it hid the points of whichever model ran through that corner
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=2, fontsize="x-small", frameon=False)
    n_bins = next(iter(reports.values())).n_bins
    ax.set_title(title if title is not None else f"Reliability ({n_bins} bins)", fontsize="medium")
    return fig


# mantissas of the labelled ticks of a log axis, coarsest first (see log_axis_ticks)
_LOG_MANTISSAS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0), (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0))
_LOG_LEAST_LABELS = 4


def log_axis_ticks(lo: float, hi: float) -> list[float]:
    """Labelled ticks of a log axis showing values in ``[lo, hi]``: the coarsest of 1 · 10^e, 1-2-5, 1-2-3-5
    and 1-1.5-2-3-4-5-6-8 that puts at least four labels inside the range (all of the finest otherwise).

    Matplotlib's default labels only the decades (and, through a ``2``/``5`` formatter, 1-2-5), so an NLL axis
    from 0.3 to 3 read "1, 2" and nothing else.
    """
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"Expected 0 < lo <= hi (finite) for a log axis, but got {lo!r} and {hi!r}")
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks: list[float] = []
    for mantissas in _LOG_MANTISSAS:
        ticks = [float(f"{m * 10.0 ** e:.12g}") for e in range(first, last + 1) for m in mantissas]
        ticks = [t for t in ticks if lo * (1 - 1e-12) <= t <= hi * (1 + 1e-12)]
        if len(ticks) >= _LOG_LEAST_LABELS:
            break
    return ticks


def label_log_axis(ax, which: str = "y") -> list[float]:
    """Put :func:`log_axis_ticks` of the current view limits of the log-scaled ``x`` or ``y`` axis of ``ax``
    as labelled major ticks (``0.3``, ``2``, ``15``), with unlabelled minor ticks; returns them. Call it
    after everything is drawn (the limits are the autoscaled ones)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    ax.autoscale_view()
    lo, hi = ax.get_ylim() if which == "y" else ax.get_xlim()
    axis = ax.yaxis if which == "y" else ax.xaxis
    ticks = log_axis_ticks(min(lo, hi), max(lo, hi))
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(LogLocator(subs="all"))
    axis.set_minor_formatter(NullFormatter())
    return ticks


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


def write_output_set(out: Path, figures: dict[str, Figure], json_name: str, doc: dict) -> list[Path]:
    """A command's ``--out`` folder: each figure as ``out/<stem>.png|svg`` and the JSON document as
    ``out/<json_name>``, every file written atomically; returns the paths written."""
    from calibscope.render.atomic import atomic_write_text, output_folder
    from calibscope.render.json_doc import dumps

    output_folder(out)
    written: list[Path] = []
    for stem, fig in figures.items():
        written += save_figure(fig, out / stem)
    written.append(atomic_write_text(out / json_name, dumps(doc) + "\n"))
    return written
