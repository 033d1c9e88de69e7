"""The report's conformal section: split conformal prediction sets (LAC, APS, RAPS) of every model at one α,
calibrated on ``--val`` and measured on ``--data`` — coverage and mean set size per method, and a sentence that
says only what those numbers show (:func:`conformal_finding`).

It reads :class:`~calibscope.results.ConformalResult` (one per model and method, as ``calibscope conformal``
prints them); nothing here computes a metric. Kept apart from :mod:`calibscope.render.report_sections` (which
registers it) and imports only the HTML primitives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from calibscope.render.html import Cell, Row, esc, table_html

__all__ = ["conformal_body", "conformal_finding", "set_size_figure"]

_METHOD_NAMES = {"lac": "LAC", "aps": "APS", "raps": "RAPS"}
_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")  # Okabe–Ito


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %" if math.isfinite(value) else "—"


def _tolerance(result: Any) -> float:
    """3 standard errors of a coverage of 1 − α measured on n test examples."""
    r = result.report
    return 3 * math.sqrt(r.target * (1 - r.target) / r.n_test)


def conformal_finding(results: Sequence[Any]) -> str | None:
    """One model's methods at one α: which gives the smallest and the largest sets (with their coverage), and
    which, if any, miss the target by more than 3 s.e. None for no results."""
    if not results:
        return None
    first = results[0].report
    target = first.target
    text = f"At α = {first.calibration.alpha:g} (target coverage {_pct(target)})"
    ordered = sorted(results, key=lambda r: r.report.mean_size)
    low, high = ordered[0], ordered[-1]
    if len(results) > 1 and high.report.mean_size > low.report.mean_size:
        text += (f", {_METHOD_NAMES[low.report.calibration.method]} gives the smallest sets (mean "
                 f"{low.report.mean_size:.3f}, coverage {_pct(low.report.coverage)}) and "
                 f"{_METHOD_NAMES[high.report.calibration.method]} the largest (mean {high.report.mean_size:.3f}, "
                 f"coverage {_pct(high.report.coverage)})")
    elif len(results) > 1:
        text += f", every method gives sets of mean size {low.report.mean_size:.3f}"
    else:
        text += (f", {_METHOD_NAMES[low.report.calibration.method]} gives sets of mean size "
                 f"{low.report.mean_size:.3f} at coverage {_pct(low.report.coverage)}")
    below = [r for r in results if r.report.coverage < target - _tolerance(r)]
    above = [r for r in results if r.report.coverage > target + _tolerance(r)]
    if below:
        text += ("; below the target by more than 3 s.e.: "
                 + ", ".join(f"{_METHOD_NAMES[r.report.calibration.method]} ({_pct(r.report.coverage)})"
                             for r in below) + " — the test data may not be exchangeable with the validation data")
    elif above:
        text += ("; above the target by more than 3 s.e. (conservative sets): "
                 + ", ".join(_METHOD_NAMES[r.report.calibration.method] for r in above))
    else:
        text += (f"; every method's coverage is within 3 s.e. (±{100 * _tolerance(results[0]):.2f} pt) of the "
                 "target")
    return text + "."


def set_size_figure(results: Sequence[Any], names: Sequence[str], *, panel: float = 2.6):
    """One panel per method: the share of test sets of each size, one bar group per model; the title gives
    each model's coverage. ``fig.axes[i].patches`` hold the bars of method i, model by model."""
    from matplotlib.figure import Figure

    methods: list[str] = []
    for r in results:
        if r.report.calibration.method not in methods:
            methods.append(r.report.calibration.method)
    largest = max((s for r in results for s, c in enumerate(r.report.size_histogram) if c), default=1)
    sizes = list(range(0, largest + 1))
    fig = Figure(figsize=(panel * len(methods) + 0.4, panel + 0.6), layout="constrained")
    axes = fig.subplots(1, len(methods), squeeze=False, sharey=True).ravel()
    width = 0.8 / max(1, len(names))
    for ax, method in zip(axes, methods, strict=True):
        covered = []
        for i, name in enumerate(names):
            hit = next((r for r in results if r.name == name and r.report.calibration.method == method), None)
            if hit is None:
                continue
            hist = hit.report.size_histogram
            total = max(1, sum(hist))
            shares = [hist[s] / total if s < len(hist) else 0.0 for s in sizes]
            ax.bar([s - 0.4 + width * (i + 0.5) for s in sizes], shares, width=width, color=_COLORS[i % len(_COLORS)],
                   label=name)
            covered.append(_pct(hit.report.coverage))
        ax.set_title(f"{_METHOD_NAMES[method]}: coverage {' / '.join(covered)}", fontsize="small")
        ax.set_xticks(sizes)
        ax.set_xlabel("set size", fontsize="small")
        ax.tick_params(labelsize="x-small")
        ax.grid(True, axis="y", linewidth=0.4, alpha=0.35)
        ax.set_axisbelow(True)
    axes[0].set_ylabel("share of test sets", fontsize="small")
    if len(names) > 1:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(names), 4), fontsize="x-small",
                   frameon=False)
    return fig


def _grouped(results: Sequence[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in results:
        out.setdefault(r.name, []).append(r)
    return out


def conformal_body(section: Any, report: Any, embed: Any) -> str:
    """Lead, one table (rows: method × coverage / mean set size / worst class; columns: models) and the
    finding of each model."""
    by = _grouped(section.results)
    names = [m.name for m in report.models if m.name in by]
    first = section.results[0]
    cal = first.report.calibration
    out = ['<p class="lead">' + esc(
        f"Split conformal prediction sets (Vovk et al. 2005; Angelopoulos et al. 2021) at α = {cal.alpha:g}: "
        f"calibrated on {first.data.get('val')}, the set of each test example holds every class whose score is "
        "within the ⌈(n+1)(1−α)⌉-th smallest calibration score. LAC thresholds the softmax probability, APS "
        f"the cumulative probability ({'randomised' if cal.randomized else 'not randomised'}), RAPS adds a rank "
        "penalty. Sets are "
        + ("allowed to be empty" if cal.allow_empty else "never empty (the top class joins an empty set), so "
           "coverage cannot fall below the accuracy")
        + ". Coverage is guaranteed on average, not per class.") + "</p>"]
    methods: list[str] = []
    for r in section.results:
        if r.report.calibration.method not in methods:
            methods.append(r.report.calibration.method)
    rows = []
    for method in methods:
        for attr, label in (("coverage", "coverage"), ("mean_size", "mean set size"),
                            ("worst_class_coverage", "worst class coverage")):
            key = f"conformal.{method}.{attr}"
            cells = []
            for n in names:
                hit = next((r for r in by[n] if r.report.calibration.method == method), None)
                if hit is None:
                    cells.append(Cell("—", None, key, n, "na"))
                    continue
                value = getattr(hit.report, attr)
                text = f"{value:.3f}" if attr == "mean_size" else _pct(value)
                cells.append(Cell(text, value if math.isfinite(value) else None, key, n))
            rows.append(Row(key, f"{_METHOD_NAMES[method]} · {label}", tuple(cells)))
    out.append('<div class="duo"><div class="duo-table">' + table_html(["", *names], rows) + "</div>"
               '<div class="figures">' + embed.html(
                   set_size_figure(section.results, names), alt="Prediction set sizes",
                   caption=f"Share of test sets of each size per method at α = {cal.alpha:g}; the titles give the "
                           "coverage of each model.") + "</div></div>")
    for n in names:
        finding = conformal_finding(by[n])
        if finding:
            out.append("<p>" + esc((f"{n}: " if len(names) > 1 else "") + finding) + "</p>")
    return "\n".join(out)
