"""What ``calibscope ece --corp`` shows: the CORP reliability diagram (Dimitriadis, Gneiting & Jordan 2021) with
its consistency band, the Brier and log score decompositions S = MCB − DSC + UNC as table rows, and the
sentences the numbers support. Reads a :class:`~calibscope.diagnostics.corp.CorpReliability`; computes
nothing (the histogram below the curve is matplotlib's drawing of the stored counts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from calibscope.diagnostics.corp import CorpReliability

__all__ = ["CURVE_LABEL", "corp_figure", "corp_rows", "decomposition_rows"]

CURVE_LABEL = "CORP (PAV) recalibration"
BAND_LABEL = "consistency band"
_CURVE_COLOR = "#d62728"
_BAND_COLOR = "#9ecae1"
_HIST_COLOR = "#8c8c8c"
_HIST_BINS = 40  # display only: how finely the confidence histogram below the curve is drawn


def decomposition_rows(corp: CorpReliability) -> list[tuple[str, str]]:
    """(label, value) rows: for the Brier and the log score, S, MCB, DSC and UNC (S = MCB − DSC + UNC)."""
    rows = []
    for d, label in ((corp.brier, "Brier"), (corp.log, "log")):
        rows += [(f"CORP {label} score S", f"{d.score:.4f}"),
                 (f"  {label} MCB (miscalibration)", f"{d.miscalibration:.4f}"),
                 (f"  {label} DSC (discrimination)", f"{d.discrimination:.4f}"),
                 (f"  {label} UNC (uncertainty)", f"{d.uncertainty:.4f}")]
    return rows


def band_text(corp: CorpReliability) -> str:
    """How much of the data lies where the CORP curve leaves its consistency band (or that there is none)."""
    if not corp.band_resamples:
        return "no band (--corp-resamples 0)"
    share = corp.outside_band / corp.n if corp.n else 0.0
    return f"{corp.outside_band:,} of {corp.n:,} examples ({100 * share:.1f} %)"


def corp_rows(corp: CorpReliability) -> list[tuple[str, str]]:
    """The table rows of one checkpoint: the decompositions and the examples outside the band."""
    return [*decomposition_rows(corp), (f"Outside the {100 * corp.band_level:g} % band", band_text(corp))]


def corp_figure(corp: CorpReliability, *, title: str | None = None,
                figsize: tuple[float, float] = (4.0, 5.0)) -> Figure:
    """The CORP reliability diagram of one result.

    Top: the PAV-recalibrated probability against the confidence (red, points at the distinct confidences
    joined linearly), its consistency band (blue, shaded: where a calibrated model's curve would lie at
    ``band_level``), the diagonal, and a box with the Brier and log decompositions. Bottom: examples per
    confidence (log scale). Axes: ``fig.axes[0]`` (reliability), ``fig.axes[1]`` (histogram); the curve's
    line is labelled :data:`CURVE_LABEL`.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MultipleLocator

    from calibscope.render.figures import finish_reliability_axes

    fig = Figure(figsize=figsize, layout="constrained")
    ax, ax_hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.35", linewidth=1.0, label="Perfect calibration", zorder=2)
    if corp.band_low:
        ax.fill_between(corp.x, corp.band_low, corp.band_high, color=_BAND_COLOR, alpha=0.7, linewidth=0,
                        label=f"{100 * corp.band_level:g} % {BAND_LABEL} ({corp.band_resamples} resamples)",
                        zorder=1)
    ax.plot(corp.x, corp.recalibrated, color=_CURVE_COLOR, linewidth=1.6, marker="o", markersize=2.0,
            label=CURVE_LABEL, zorder=3)
    b, g = corp.brier, corp.log
    finish_reliability_axes(ax, f"Brier {b.score:.4f} = MCB {b.miscalibration:.4f}\n − DSC {b.discrimination:.4f}"
                                f" + UNC {b.uncertainty:.4f}\nlog {g.score:.4f} = MCB {g.miscalibration:.4f}\n"
                                f" − DSC {g.discrimination:.4f} + UNC {g.uncertainty:.4f}\n$n$ = {corp.n:,}",
                            ylabel="Recalibrated probability of correct", box_fontsize="x-small",
                            box_family="monospace",
                            title=title if title is not None else "CORP reliability diagram")
    ax_hist.hist(corp.x, bins=_HIST_BINS, range=(0.0, 1.0), weights=corp.count, color=_HIST_COLOR,
                 edgecolor="black", linewidth=0.5)
    ax_hist.set_yscale("log")
    ax_hist.set_ylabel("Count (log)")
    ax_hist.set_xlabel("Confidence (max softmax)")
    ax_hist.xaxis.set_major_locator(MultipleLocator(0.2))
    ax_hist.grid(True, axis="y", linewidth=0.5, alpha=0.35)
    ax_hist.set_axisbelow(True)
    return fig


def findings(named: Sequence[tuple[str, Any]]) -> list[str]:
    """Sentences from the numbers of (name, CorpReliability) pairs: per model whether the CORP curve leaves its
    band; with several, who is the least and the most miscalibrated (Brier MCB) and who discriminates best
    (Brier DSC)."""
    lines = []
    for name, c in named:
        if c.band_resamples:
            lines.append(f"{name}: the CORP curve leaves the {100 * c.band_level:g} % consistency band at "
                         f"{band_text(c)}" + ("; the miscalibration there is more than chance." if c.outside_band
                                              else "; no miscalibration beyond chance is visible."))
    if len(named) >= 2:
        by_mcb = sorted(named, key=lambda t: t[1].brier.miscalibration)
        by_dsc = sorted(named, key=lambda t: t[1].brier.discrimination)
        (lo, a), (hi, b) = by_mcb[0], by_mcb[-1]
        lines.append(f"Brier MCB is lowest for {lo} ({a.brier.miscalibration:.4f}) and highest for {hi} "
                     f"({b.brier.miscalibration:.4f}); {by_dsc[-1][0]} discriminates best (DSC "
                     f"{by_dsc[-1][1].brier.discrimination:.4f}) and {by_dsc[0][0]} least "
                     f"({by_dsc[0][1].brier.discrimination:.4f}).")
    return lines
