"""The sections of the HTML report: the summary, one body per diagnostic, the provenance, and the figures that
put several models on shared axes (``calibscope compare``).

Each diagnostic body is drawn from the same view-level results its own command prints (``EceResult``,
``TemperatureResult``, ``SelectiveResult``, ``OodResult``, ``ProjectionResult``, ``MiResult``,
``HessianResult``): tables have one column per model, and every number carries its exact value (see
:class:`~calibscope.render.html.Cell`). Nothing here computes a metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.render.html import Cell, FigureEmbedder, Row, esc, note_html, table_html
from calibscope.render.report_model import Report, Section

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "MODEL_COLORS",
    "provenance_html",
    "risk_coverage_comparison_figure",
    "roc_comparison_figure",
    "section_html",
    "summary_html",
    "summary_table",
    "temperature_comparison_figure",
]

# Okabe–Ito: distinguishable for colour-blind readers and in greyscale print
MODEL_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
MISSING = "—"


def _color(i: int) -> str:
    return MODEL_COLORS[i % len(MODEL_COLORS)]


# --------------------------------------------------------------------------------------------------------
# number formats (the text shown; the exact value goes into data-value)
# --------------------------------------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def rate(value: float | None) -> str:
    return f"{value:.4f}" if _finite(value) else MISSING


def pct(value: float | None) -> str:
    return f"{100 * value:.2f} %" if _finite(value) else MISSING


def sig(value: float | None, digits: int = 5) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:.{digits}g}" if _finite(value) else MISSING


def signed(value: float | None) -> str:
    return f"{value:+.4f}" if _finite(value) else MISSING


def _num(text: str, value: float | int | None, key: str, model: str, css: str = "") -> Cell:
    return Cell(text, value if _finite(value) else None, key, model, css)


def _na(model: str, key: str) -> Cell:
    return Cell(MISSING, None, key, model, "na")


# --------------------------------------------------------------------------------------------------------
# the summary
# --------------------------------------------------------------------------------------------------------


def _by_model(results: Sequence[Any]) -> dict[str, Any]:
    return {r.name: r for r in results}


def summary_table(report: Report) -> tuple[list[str], list[Row]]:
    """Header and rows of the summary: accuracy, ECE with its bootstrap interval, confidence bias, NLL, the
    optimal temperature and the ECE after it, λ1 and λ1/λk, the MSP AUROC and the verdict, one column per
    model (rows whose section was not computed are left out)."""
    names = [m.name for m in report.models]
    rows: list[Row] = []
    calibration = report.section("calibration")
    if calibration is not None and calibration.status == "ok":
        by = _by_model(calibration.results)
        first = calibration.results[0]
        n_bins = first.report.n_bins
        interval = next((r.metrics["ece"].interval for r in calibration.results
                         if r.metrics is not None and r.metrics["ece"].interval is not None), None)
        rows.append(Row("accuracy", "Accuracy", tuple(
            _num(pct(by[n].metrics.value("accuracy")), by[n].metrics.value("accuracy"), "summary.accuracy", n)
            if n in by else _na(n, "summary.accuracy") for n in names)))
        cells = []
        for n in names:
            if n not in by:
                cells.append(_na(n, "summary.ece"))
                continue
            m = by[n].metrics["ece"]
            text = rate(m.value)
            if m.interval is not None:
                text += f" [{rate(m.interval.low)}, {rate(m.interval.high)}]"
            cells.append(_num(text, m.value, "summary.ece", n))
        hint = (f"[{100 * interval.level:g} % bootstrap interval, {interval.replicates} resamples]"
                if interval is not None else "no bootstrap interval (--bootstrap 0)")
        rows.append(Row("ece", f"ECE ({n_bins} bins)", tuple(cells), hint=hint))
        cells = []
        for n in names:
            if n not in by:
                cells.append(_na(n, "summary.signed_ce"))
                continue
            m = by[n].metrics["signed_ce"]
            lo_hi = m.interval
            if lo_hi is not None and lo_hi.low <= 0 <= lo_hi.high:
                word = "no clear bias"
            else:
                word = "over-confident" if m.value > 0 else "under-confident" if m.value < 0 else "unbiased"
            cells.append(_num(f"{signed(m.value)} {word}", m.value, "summary.signed_ce", n))
        rows.append(Row("signed_ce", "Mean conf. − acc.", tuple(cells), hint="mean confidence minus accuracy"))
        rows.append(Row("nll", "NLL", tuple(
            _num(rate(by[n].metrics.value("nll")), by[n].metrics.value("nll"), "summary.nll", n)
            if n in by else _na(n, "summary.nll") for n in names)))
    temperature = report.section("temperature")
    if temperature is not None and temperature.status == "ok":
        by = _by_model(temperature.results)
        first = temperature.results[0]
        fit_on = "validation data" if first.apply is not None else "the test data itself"
        rows.append(Row("temperature", "Temperature T*", tuple(
            _num(sig(by[n].temperature, 4), by[n].temperature, "summary.temperature", n)
            if n in by else _na(n, "summary.temperature") for n in names),
            hint=f"NLL-optimal temperature, fitted on {fit_on}"))
        cells = []
        for n in names:
            if n not in by:
                cells.append(_na(n, "summary.ece_after_temperature"))
                continue
            e = by[n].apply if by[n].apply is not None else by[n].fit
            cells.append(_num(rate(e.after.value("ece")), e.after.value("ece"), "summary.ece_after_temperature", n))
        rows.append(Row("ece_after_temperature", "ECE at T*", tuple(cells), hint="test data, logits / T*"))
    hessian = report.section("hessian")
    if hessian is not None and hessian.status == "ok":
        by = _by_model(hessian.results)
        k = max(len(r.spectrum.eigenvalues) for r in hessian.results)
        rows.append(Row("lambda1", "Hessian λ1", tuple(
            _num(sig(by[n].spectrum.eigenvalues[0]), by[n].spectrum.eigenvalues[0], "summary.lambda1", n)
            if n in by else _na(n, "summary.lambda1") for n in names),
            hint="top eigenvalue of the training loss; compare at matched training loss"))
        rows.append(Row("ratio", f"λ1/λ{k}", tuple(
            _num(sig(by[n].spectrum.ratio, 4), by[n].spectrum.ratio, "summary.ratio", n)
            if n in by else _na(n, "summary.ratio") for n in names)))
    ood = report.section("ood")
    if ood is not None and ood.status == "ok":
        by = _by_model(ood.results)
        cells = []
        for n in names:
            msp = next((r for r in by[n].report.results if r.score == "msp"), None) if n in by else None
            cells.append(_na(n, "summary.ood_auroc") if msp is None else
                         _num(rate(msp.metrics.auroc), msp.metrics.auroc, "summary.ood_auroc", n))
        rows.append(Row("ood_auroc", "OOD AUROC (MSP)", tuple(cells), hint="max softmax probability; higher = better"))
    if report.checks:
        cells = []
        for n in names:
            mine = [c for c in report.checks if c.model == n]
            if not mine:
                cells.append(Cell("no check", None, "summary.verdict", n, "na"))
            else:
                ok = all(c.passed for c in mine)
                cells.append(Cell("pass" if ok else "FAIL", int(ok), "summary.verdict", n, "pass" if ok else "fail"))
        rows.append(Row("verdict", "Verdict", tuple(cells), hint=_thresholds_text(report)))
    return ["", *names], rows


def _thresholds_text(report: Report) -> str:
    parts = []
    if report.thresholds.get("max_ece") is not None:
        metric = report.thresholds.get("ece_metric") or "ece"
        label = {"ece": "ECE", "ece_l2": "ECE ℓ2", "mce": "MCE"}.get(metric, metric)
        parts.append(f"{label} ≤ {report.thresholds['max_ece']:g}")
    if report.thresholds.get("max_lambda1") is not None:
        parts.append(f"λ1 ≤ {report.thresholds['max_lambda1']:g}")
    return ", ".join(parts)


def summary_html(report: Report) -> str:
    header, rows = summary_table(report)
    out = ['<section id="summary" class="report-section" data-section="summary" data-status="ok">',
           "<h2>Summary</h2>"]
    passed = report.passed
    if passed is None:
        out.append('<p><span class="verdict none">no thresholds configured</span> Pass <code>--max-ece</code> or '
                   "<code>--max-lambda1</code> (or set <code>max_ece</code> under <code>[tool.calibscope]</code>) "
                   "for pass/fail verdicts.</p>")
    else:
        word = "all checks passed" if passed else "a check failed"
        out.append(f'<p><span class="verdict {"pass" if passed else "fail"}" data-key="summary.passed" '
                   f'data-value="{int(passed)}">{esc(word)}</span> {esc(_thresholds_text(report))}</p>')
    if rows:
        out.append(table_html(header, rows, css="summary"))
    else:
        out.append(note_html("No section with summary numbers was computed.", kind="skipped"))
    if report.checks:
        out.append('<ul class="checks">' + "".join(
            f'<li class="{"pass" if c.passed else "fail"}">{"✔" if c.passed else "✘"} {esc(c.message)}</li>'
            for c in report.checks) + "</ul>")
    skipped = [s for s in report.sections if s.status == "skipped"]
    done = [s for s in report.sections if s.status == "ok"]
    line = f"{len(done)} of {len(report.sections)} sections computed"
    if skipped:
        line += "; skipped: " + "; ".join(f"{s.title.lower()} ({s.note})" for s in skipped)
    out.append(f'<p class="lead">{esc(line)}.</p>')
    out.append("</section>")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------------------


def section_html(section: Section, report: Report, embed: FigureEmbedder,
                 bodies: dict[str, Callable[[Section, Report, FigureEmbedder], str]] | None = None) -> str:
    """The ``<section>`` of one diagnostic: its body (from ``bodies`` first, e.g. the sections of
    :mod:`~calibscope.render.report_sections_calibration`), or the visible note of why it was skipped."""
    out = [f'<section id="{esc(section.key)}" class="report-section" data-section="{esc(section.key)}" '
           f'data-status="{esc(section.status)}">', f"<h2>{esc(section.title)}</h2>"]
    if section.status == "skipped":
        out.append(note_html(f"Skipped: {section.note}", kind="skipped"))
    else:
        out.append({**_BODIES, **(bodies or {})}[section.key](section, report, embed))
        for note in section.notes:
            out.append(note_html(note))
    out.append("</section>")
    return "\n".join(out)


def _figures(*items: str) -> str:
    return '<div class="figures">' + "".join(items) + "</div>"


def _duo(table: str, *figures: str) -> str:
    """A table and its figures side by side where the page is wide enough, else one below the other."""
    return f'<div class="duo"><div class="duo-table">{table}</div>{_figures(*figures)}</div>'


def _model_rows(names: Sequence[str], spec: Sequence[tuple[str, str, Callable[[Any], Cell | None]]],
                by: dict[str, Any], *, hints: dict[str, str] | None = None) -> list[Row]:
    """One row per (key, label, cell function); models without a result get a dash."""
    rows = []
    for key, label, fn in spec:
        cells = []
        for n in names:
            cell = fn(by[n]) if n in by else None
            cells.append(cell if cell is not None else _na(n, key))
        rows.append(Row(key, label, tuple(cells), hint=(hints or {}).get(key, "")))
    return rows


def _names(section_results: Sequence[Any], report: Report) -> list[str]:
    present = {r.name for r in section_results}
    return [m.name for m in report.models if m.name in present]


# ---- calibration ---------------------------------------------------------------------------------------

_METRIC_LABELS = {
    "accuracy": "Accuracy",
    "ece": "ECE",
    "mce": "MCE (max over bins)",
    "signed_ce": "Confidence − accuracy",
    "nll": "NLL (nats)",
    "brier": "Brier",
    "ece_l2": "ECE ℓ2",
    "ece_l2_debiased": "ECE ℓ2, debiased (Kumar 2019)",
    "ace": "ACE (equal-mass bins)",
    "sce": "Classwise ECE (SCE)",
    "smooth_ece": "Smooth ECE (Błasiok 2023)",
}


def _metric_text(name: str, value: float) -> str:
    return pct(value) if name == "accuracy" else signed(value) if name == "signed_ce" else rate(value)


def _calibration(section: Section, report: Report, embed: FigureEmbedder) -> str:
    from calibscope.diagnostics.calibration import ALL_METRICS
    from calibscope.render.figures import reliability_diagram

    results = section.results
    names = _names(results, report)
    by = _by_model(results)
    first = results[0]
    n_bins = first.report.n_bins
    interval = next((r.metrics["ece"].interval for r in results if r.metrics["ece"].interval is not None), None)
    out = [f'<p class="lead">Top-label confidence p̂ = max softmax(z), {n_bins} equal-width bins '
           "B_m = ((m−1)/M, m/M]; ECE = Σ_m |B_m|/n · |acc(B_m) − conf(B_m)| (Guo et al. 2017), computed in "
           "float64. "
           + (esc(f"Brackets: {100 * interval.level:g} % percentile bootstrap intervals over "
                  f"{interval.replicates} resamples of the examples (seed {interval.seed}).")
              if interval is not None else "No bootstrap intervals (--bootstrap 0).") + "</p>"]

    def metric_cell(name: str) -> Callable[[Any], Cell]:
        def fn(r: Any) -> Cell:
            m = r.metrics[name]
            text = _metric_text(name, m.value)
            if m.interval is not None:
                text += f" [{_metric_text(name, m.interval.low)}, {_metric_text(name, m.interval.high)}]"
            return _num(text, m.value, f"calibration.{name}", r.name)
        return fn

    spec: list[tuple[str, str, Callable[[Any], Cell | None]]] = [
        ("calibration.n", "Examples", lambda r: _num(f"{r.report.n:,}", r.report.n, "calibration.n", r.name)),
        ("calibration.mean_confidence", "Mean confidence",
         lambda r: _num(pct(r.report.mean_confidence), r.report.mean_confidence, "calibration.mean_confidence",
                        r.name)),
    ]
    spec += [(f"calibration.{name}", _METRIC_LABELS.get(name, name) + (f" ({n_bins} bins)" if name == "ece" else ""),
              metric_cell(name)) for name in ALL_METRICS]
    table = table_html(["Metric", *names], _model_rows(names, spec, by))

    figs = [reliability_diagram(by[n].report, title=n) for n in names]
    if len(figs) > 1:  # shared axes: the histograms get one count scale
        top = max(max(by[n].report.bins.count) for n in names)
        for fig in figs:  # the same limits reliability_diagram draws, for the largest count of all models
            hist = fig.axes[1]
            if hist.get_yscale() == "log":
                hist.set_ylim(0.7, max(top, 1) * 12)
            else:
                hist.set_ylim(0, max(top, 1) * 1.25)
    out.append(_duo(table, *(embed.html(fig, alt=f"Reliability diagram of {n}",
                                     caption=f"{n}: accuracy per confidence bin (bars), the gap to the bin's mean "
                                             "confidence (hatched), examples per bin below.")
                          for fig, n in zip(figs, names, strict=True))))
    for n in names:
        out.append(_bins_details(by[n]))
    for r in results:
        for w in (*r.warnings, *r.notes):
            out.append(note_html(f"{r.name}: {w}"))
    return "\n".join(out)


def _bins_details(r: Any) -> str:
    b = r.report.bins
    rows = []
    for m in range(len(b.count)):
        opening = "[" if m == 0 else "("
        rows.append(Row(f"bin{m + 1}", f"{opening}{b.lower[m]:.3f}, {b.upper[m]:.3f}]", (
            _num(f"{b.count[m]:,}", b.count[m], f"calibration.bins.count.{m + 1}", r.name),
            _num(pct(b.mean_confidence[m]), b.mean_confidence[m], f"calibration.bins.confidence.{m + 1}", r.name),
            _num(pct(b.accuracy[m]), b.accuracy[m], f"calibration.bins.accuracy.{m + 1}", r.name),
            _num(signed(b.gap[m]), b.gap[m], f"calibration.bins.gap.{m + 1}", r.name))))
    return (f"<details><summary>Per-bin table of {esc(r.name)}</summary>"
            + table_html(["Bin (confidence)", "Count", "Confidence", "Accuracy", "Gap"], rows) + "</details>")


# ---- temperature ---------------------------------------------------------------------------------------


def _temperature(section: Section, report: Report, embed: FigureEmbedder) -> str:
    from calibscope.render import temperature_view

    results = section.results
    names = _names(results, report)
    by = _by_model(results)
    first = results[0]
    held_out = first.apply is not None
    fit_on = Path(first.fit.source).name
    evaluated_on = Path((first.apply or first.fit).source).name
    out = ['<p class="lead">' + esc(
        f"softmax(z / T) with one scalar T > 0 (Guo et al. 2017 §4.2; Hinton et al. 2015). T* minimises the "
        f"NLL on {fit_on} exactly (safeguarded Newton on β = 1/T); the ECE-optimal T comes from a search over "
        f"log T. Accuracy does not change. Numbers before and after scaling are on {evaluated_on}"
        + (" (held out from the fit)." if held_out else
           " — the data T was fitted on, so the numbers after scaling are optimistic (pass --val).")) + "</p>"]

    def evaluation(r: Any) -> Any:
        return r.apply if r.apply is not None else r.fit

    spec: list[tuple[str, str, Callable[[Any], Cell | None]]] = [
        ("temperature.temperature", "T* (NLL-optimal)",
         lambda r: _num(sig(r.temperature, 6), r.temperature, "temperature.temperature", r.name)),
        ("temperature.ece_temperature", "ECE-optimal T",
         lambda r: _num(sig(r.ece_fit.temperature, 6), r.ece_fit.temperature, "temperature.ece_temperature",
                        r.name)),
    ]
    for metric in ("ece", "nll", "brier", "signed_ce"):
        label = {"ece": "ECE", "nll": "NLL", "brier": "Brier", "signed_ce": "Confidence − accuracy"}[metric]
        for when, title in (("before", "T = 1"), ("after", "T = T*")):
            def fn(r: Any, metric: str = metric, when: str = when) -> Cell:
                value = getattr(evaluation(r), when).value(metric)
                return _num(_metric_text(metric, value), value, f"temperature.{when}.{metric}", r.name)
            spec.append((f"temperature.{when}.{metric}", f"{label}, {title}", fn))
    table = table_html(["", *names], _model_rows(names, spec, by))
    if len(results) == 1:
        fig = temperature_view.sweep_figure(first)
        caption = ("ECE (top) and NLL (bottom) against T, fit data solid"
                   + (", held-out data dashed" if held_out else "") + "; vertical lines: T = 1, T*, ECE-optimal T.")
    else:
        fig = temperature_comparison_figure(results)
        caption = (f"ECE and NLL of softmax(z / T) on {evaluated_on} against T, one colour per model; dashed: each "
                   "model's T*; dotted: T = 1.")
    out.append(_duo(table, embed.html(fig, alt="Temperature sweep", caption=caption)))
    for r in results:
        for w in r.warnings:
            out.append(note_html(f"{r.name}: {w}"))
    return "\n".join(out)


def temperature_comparison_figure(results: Sequence[Any], *, figsize: tuple[float, float] = (5.4, 5.6)) -> Figure:
    """ECE (top) and NLL (bottom, log scale with labelled 1-2-3-5 ticks) of every model against T on shared
    axes, from each result's sweep on its evaluation data (held-out when there is one), with each model's T*
    dashed and T = 1 dotted; the legend below the axes (inside, it covered curves)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from calibscope.render.figures import label_log_axis

    fig = Figure(figsize=figsize, layout="constrained")
    ax_ece, ax_nll = fig.subplots(2, 1, sharex=True)
    for i, r in enumerate(results):
        e = r.apply if r.apply is not None and r.apply.sweep is not None else r.fit
        sweep = e.sweep
        color = _color(i)
        ax_ece.plot(sweep.temperatures, sweep.ece, color=color, linewidth=1.5,
                    label=f"{r.name} (T* {r.temperature:.3g})")
        ax_nll.plot(sweep.temperatures, sweep.nll, color=color, linewidth=1.5)
        for ax in (ax_ece, ax_nll):
            ax.axvline(r.temperature, color=color, linestyle="--", linewidth=0.9)
    for ax in (ax_ece, ax_nll):
        ax.axvline(1.0, color="0.5", linestyle=":", linewidth=1.0)
        ax.set_xscale("log")
        ax.grid(True, which="both", linewidth=0.4, alpha=0.35)
    ax_nll.set_yscale("log")
    label_log_axis(ax_nll, "y")
    label_log_axis(ax_nll, "x")  # shared with the ECE panel
    ax_ece.set_ylabel(f"ECE ({results[0].fit.sweep.n_bins} bins)")
    ax_nll.set_ylabel("NLL (nats, log scale)")
    ax_nll.set_xlabel("Temperature T (log scale)")
    handles, labels = ax_ece.get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", linestyle="--", linewidth=0.9),
                Line2D([], [], color="0.5", linestyle=":", linewidth=1.0)]
    labels += ["each model's T* (dashed)", "T = 1"]
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="x-small", frameon=False,
               columnspacing=1.0, handlelength=1.8)
    ax_ece.set_title("Temperature sweep", fontsize="medium")
    return fig


# ---- selective -----------------------------------------------------------------------------------------


def _selective(section: Section, report: Report, embed: FigureEmbedder) -> str:
    from calibscope.render import selective_view

    results = section.results
    names = _names(results, report)
    by = _by_model(results)
    first = results[0].reports[0]
    out = ['<p class="lead">' + esc(
        f"Keep the most confident examples (score: {first.score}) and measure the error rate among them (the "
        "selective risk) at every coverage. AURC = mean risk over all coverages; E-AURC subtracts the AURC of "
        "the best possible ranking, so it measures the ranking alone (Geifman et al. 2019). AUGRC = area under "
        "the errors kept over all examples (Traub et al. 2024).") + "</p>"]

    def report_of(r: Any) -> Any:
        return r.reports[0]

    spec: list[tuple[str, str, Callable[[Any], Cell | None]]] = [
        ("selective.accuracy", "Accuracy (all kept)",
         lambda r: _num(pct(report_of(r).accuracy), report_of(r).accuracy, "selective.accuracy", r.name)),
        ("selective.aurc", "AURC (lower is better)",
         lambda r: _num(rate(report_of(r).aurc), report_of(r).aurc, "selective.aurc", r.name)),
        ("selective.excess_aurc", "E-AURC = AURC − AURC*",
         lambda r: _num(rate(report_of(r).excess_aurc), report_of(r).excess_aurc, "selective.excess_aurc", r.name)),
        ("selective.aurc_optimal", "AURC* (optimal ranking)",
         lambda r: _num(rate(report_of(r).aurc_optimal), report_of(r).aurc_optimal, "selective.aurc_optimal",
                        r.name)),
        ("selective.augrc", "AUGRC (lower is better)",
         lambda r: _num(rate(report_of(r).augrc), report_of(r).augrc, "selective.augrc", r.name)),
    ]
    for i, point in enumerate(first.at_coverage):
        key = f"selective.accuracy_at.{point.target_coverage:g}"

        def fn(r: Any, i: int = i, key: str = key) -> Cell | None:
            points = report_of(r).at_coverage
            return _num(pct(points[i].accuracy), points[i].accuracy, key, r.name) if i < len(points) else None
        spec.append((key, f"Accuracy at {100 * point.target_coverage:g} % coverage", fn))
    table = table_html(["", *names], _model_rows(names, spec, by))
    if len(results) == 1:
        fig = selective_view.figures(results[0])["risk_coverage"]
    else:
        fig = risk_coverage_comparison_figure(results)
    out.append(_duo(table, embed.html(fig, alt="Risk–coverage curves",
                                   caption="Selective risk against coverage; dotted/dashed: the optimal ranking's "
                                           "curve; dots: the fixed coverages of the table.")))
    return "\n".join(out)


def risk_coverage_comparison_figure(results: Sequence[Any], *, figsize: tuple[float, float] = (5.2, 3.9)) -> Figure:
    """Every model's risk–coverage curve (first score) on one axes, each with its optimal ranking dotted."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    top = 0.0
    for i, r in enumerate(results):
        rep = r.reports[0]
        color = _color(i)
        ax.plot(rep.curve.coverage, rep.curve.risk, color=color, linewidth=1.5,
                label=f"{r.name} (AURC {rep.aurc:.4f})")
        ax.plot(rep.optimal_curve.coverage, rep.optimal_curve.risk, color=color, linestyle=":", linewidth=1.0)
        ax.plot([p.coverage for p in rep.at_coverage], [p.risk for p in rep.at_coverage], linestyle="none",
                marker="o", markersize=3.5, color=color)
        risks = rep.curve.risk[len(rep.curve.risk) // 20:]
        top = max(top, 1 - rep.accuracy, max(risks) if risks else 0.0)
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, max(top * 1.15, 0.01))
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("Coverage (share of inputs kept)")
    ax.set_ylabel("Selective risk (error rate)")
    ax.grid(True, linewidth=0.5, alpha=0.35)
    ax.legend(loc="upper left", fontsize="x-small", framealpha=0.9)
    ax.set_title(f"Risk–coverage ({results[0].reports[0].score})", fontsize="medium")
    return fig


# ---- OOD -----------------------------------------------------------------------------------------------

_OOD_METRICS = (("auroc", "AUROC"), ("aupr_in", "AUPR-In"), ("aupr_out", "AUPR-Out"), ("fpr_at_tpr", "FPR@95TPR"))


def _threshold_words(ood_report: Any, level: float) -> str:
    from calibscope.render.ood_view import positive_of

    if positive_of(ood_report) == "ood":
        return f"flags {100 * level:g} % of the OOD inputs"
    return f"keeps {100 * level:g} % of the in-distribution inputs"


def _ood(section: Section, report: Report, embed: FigureEmbedder) -> str:
    from calibscope.render import ood_view

    results = section.results
    names = _names(results, report)
    by = _by_model(results)
    first = results[0]
    scores: list[str] = []
    for r in results:
        scores += [s.score for s in r.report.results if s.score not in scores]
    level = first.report.results[0].metrics.tpr_level
    out = ['<p class="lead">' + esc(
        f"In-distribution test inputs ({first.report.n_in:,}) against {Path(str(first.data.get('ood'))).name} "
        f"({first.report.n_out:,}); every score is higher for inputs that look more in-distribution; "
        f"{ood_view.convention_line(first.report)}. AUROC and "
        f"AUPR: higher is better; FPR at {100 * level:g} % TPR: lower is better. Scores: max softmax probability "
        "(Hendrycks & Gimpel 2017), max logit, energy (Liu et al. 2020)"
        + (", Mahalanobis distance of the penultimate features (Lee et al. 2018)." if "mahalanobis" in scores
           else ".")) + "</p>"]
    spec: list[tuple[str, str, Callable[[Any], Cell | None]]] = []
    for score in scores:
        for attr, label in _OOD_METRICS:
            key = f"ood.{score}.{attr}"
            if attr == "fpr_at_tpr":
                label = f"FPR@{100 * level:g}TPR"

            def fn(r: Any, score: str = score, attr: str = attr, key: str = key) -> Cell | None:
                hit = next((s for s in r.report.results if s.score == score), None)
                if hit is None:
                    return None
                value = getattr(hit.metrics, attr)
                return _num(rate(value), value, key, r.name)
            spec.append((key, f"{label} · {score}", fn))
    table = table_html(["", *names], _model_rows(names, spec, by))
    if len(results) == 1:
        figs = ood_view.figures(first)
        out.append(_duo(table, embed.html(figs["ood_roc"], alt="ROC curves",
                                          caption="ROC of each score (AUROC in the legend).")))
        out.append(_figures(embed.html(figs["ood_scores"], alt="Score histograms", wide=True,
                                       caption="Share of in-distribution and OOD inputs per score bin; dashed: the "
                                               f"threshold that {_threshold_words(first.report, level)}.")))
    else:
        out.append(table)
        out.append(_figures(embed.html(roc_comparison_figure(results, scores), alt="ROC curves per score",
                                       caption="ROC curves, one panel per score, one colour per model.", wide=True)))
    for r in results:
        if r.report.mahalanobis is not None:
            m = r.report.mahalanobis
            out.append(f'<p class="lead">{esc(r.name)}: Mahalanobis class Gaussians fitted on {m["n_train"]} '
                       f'training examples, {m["feature_dim"]} features, {esc(m["shrinkage_method"])} shrinkage '
                       f'δ = {m["shrinkage"]:.3g}.</p>')
    return "\n".join(out)


def roc_comparison_figure(results: Sequence[Any], scores: Sequence[str], *,
                          panel: float = 3.0) -> Figure:
    """One panel per score, every model's ROC curve on it (shared, square axes)."""
    from matplotlib.figure import Figure

    from calibscope.render.ood_view import SCORE_LABELS

    ncols = min(len(scores), 4)
    nrows = math.ceil(len(scores) / ncols)
    fig = Figure(figsize=(panel * ncols + 0.3, panel * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    for ax, score in zip(axes, scores, strict=False):
        for i, r in enumerate(results):
            hit = next((s for s in r.report.results if s.score == score), None)
            if hit is None:
                continue
            ax.plot(hit.roc.fpr, hit.roc.tpr, color=_color(i), linewidth=1.4,
                    label=f"{r.name} ({hit.metrics.auroc:.3f})")
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=0.8)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_title(SCORE_LABELS.get(score, score), fontsize="small")
        ax.tick_params(labelsize="x-small")
        ax.grid(True, linewidth=0.4, alpha=0.35)
        ax.legend(loc="lower right", fontsize="xx-small", framealpha=0.9)
    for ax in axes[len(scores):]:
        ax.set_visible(False)
    from calibscope.render.ood_view import positive_of, roc_axis_labels

    xlabel, ylabel = roc_axis_labels(positive_of(results[0].report))
    fig.supxlabel(xlabel, fontsize="small")
    fig.supylabel(ylabel, fontsize="small")
    return fig


# ---- projection ----------------------------------------------------------------------------------------


def _projection(section: Section, report: Report, embed: FigureEmbedder) -> str:
    from calibscope.render.projection_view import class_label, projection_figure

    results, choice = section.results
    names = _names(results, report)
    by = _by_model(results)
    labels = ", ".join(class_label(i, n) for i, n in zip(choice.indices, choice.names, strict=True))
    how = ("chosen with --classes" if choice.picked_on is None
           else f"the three classes with most mutual confusion on {Path(choice.picked_on.split(',')[0]).name}")
    out = ['<p class="lead">' + esc(
        f"Classes {labels} ({how}). Penultimate activations x̃ = [x; 1] projected onto the plane through the "
        "three class templates w̃_k = [w_k; b_k] of the final layer (Müller et al. 2019 §2). Relative spread = "
        "mean distance to the class centre / mean distance between centres: smaller = tighter clusters; "
        "equidistance = min/max centre distance (1 = equilateral).") + "</p>"]
    splits: list[str] = []
    for r in results:
        splits += [s.split for s in r.splits if s.split not in splits]
    spec: list[tuple[str, str, Callable[[Any], Cell | None]]] = []
    for split in splits:
        for attr, label in (("relative_spread_plane", "Relative spread, plane"),
                            ("relative_spread_full", "Relative spread, full space"),
                            ("equidistance_plane", "Equidistance, plane")):
            key = f"projection.{split}.{attr}"

            def fn(r: Any, split: str = split, attr: str = attr, key: str = key) -> Cell | None:
                hit = next((s for s in r.splits if s.split == split), None)
                if hit is None:
                    return None
                value = getattr(hit.projection.statistics, attr)
                return _num(f"{value:.4f}", value, key, r.name)
            spec.append((key, f"{label} ({split})", fn))
    from calibscope.render.findings import projection_finding

    findings = [projection_finding(results, split) for split in splits]
    if any(findings):
        out.append("<p>" + esc(" ".join(f for f in findings if f)) + "</p>")
    table = table_html(["", *names], _model_rows(names, spec, by))
    fig = projection_figure(results, choice, panel_size=2.6)
    out.append(_duo(table, embed.html(fig, alt="Penultimate-layer plane projections",
                                   caption="One row per model, one column per data set; stars: the class templates. "
                                           "Axes are shared within a row; rows keep their own scale (feature "
                                           "scales differ between models: compare them by the relative spread).")))
    return "\n".join(out)


# ---- MI ------------------------------------------------------------------------------------------------


def _mi(section: Section, report: Report, embed: FigureEmbedder) -> str:
    from calibscope.render.mi_view import _class_text, mi_figure

    results, settings = section.results
    names = _names(results, report)
    by = _by_model(results)
    a, b = settings.classes
    n = sum(settings.examples)
    ceiling = results[0].estimate.ceiling_nats
    out = ['<p class="lead">' + esc(
        f"Mutual information between the training example and the logit gap z_a − z_b of classes "
        f"{_class_text(a, settings.class_names[0])} and {_class_text(b, settings.class_names[1])} under "
        f"augmentation (Müller et al. 2019 §4, App. A.2): N = {n} examples ({settings.examples[0]} + "
        f"{settings.examples[1]}) × L = {settings.draws} draws × "
        f"{settings.repetitions} repetitions; augmentation: {settings.augmentation}; seed {settings.seed}. "
        f"Between 0 and log N = {ceiling:.3f} nats: log N when every example keeps its own gap, log 2 when only "
        "the class is left. With L = "
        f"{settings.draws} the estimate is biased upwards by about {1 / (2 * settings.draws):.2f} nats.") + "</p>"]
    spec: list[tuple[str, str, Callable[[Any], Cell | None]]] = [
        ("mi.nats", "Î (nats)", lambda r: _num(f"{r.estimate.nats:.4f}", r.estimate.nats, "mi.nats", r.name)),
        ("mi.spread_nats", "spread (std over repetitions)",
         lambda r: None if r.estimate.spread_nats is None else
         _num(f"± {r.estimate.spread_nats:.3f}", r.estimate.spread_nats, "mi.spread_nats", r.name)),
        ("mi.bits", "Î (bits)", lambda r: _num(f"{r.estimate.bits:.4f}", r.estimate.bits, "mi.bits", r.name)),
        ("mi.fraction", "Î / log N",
         lambda r: _num(f"{r.estimate.nats / r.estimate.ceiling_nats:.3f}",
                        r.estimate.nats / r.estimate.ceiling_nats, "mi.fraction", r.name)),
        ("mi.sigma2", "σ² of the gap", lambda r: _num(sig(r.estimate.sigma2, 4), r.estimate.sigma2, "mi.sigma2",
                                                     r.name)),
    ]
    from calibscope.render.findings import mi_finding

    finding = mi_finding(results)
    if finding:
        out.append("<p>" + esc(finding) + "</p>")
    for r in results:
        if getattr(r, "check", None) is not None and not r.check.premise_holds:
            out.append(note_html(f"{r.name}: under {settings.augmentation} only {100 * r.check.agreement:.1f} % of "
                                 "the draws keep the unaugmented prediction; use an augmentation the model was "
                                 "trained with, or a weaker one"))
    table = table_html(["", *names], _model_rows(names, spec, by))
    fig = mi_figure(results, settings)
    out.append(_duo(table, embed.html(fig, alt="Logit-gap mutual information",
                                   caption="Î per model (error bars: spread over repetitions), with the ceiling "
                                           "log N (dashed) and log 2 (dotted: only the class is known).")))
    return "\n".join(out)


# ---- Hessian -------------------------------------------------------------------------------------------


def _hessian(section: Section, report: Report, embed: FigureEmbedder) -> str:
    from calibscope.render.hessian_view import eigenvalue_figure

    results = section.results
    names = _names(results, report)
    by = _by_model(results)
    st = results[0].spectrum.settings
    k = max(len(r.spectrum.eigenvalues) for r in results)
    out = ['<p class="lead">' + esc(
        f"Largest eigenvalues of the Hessian of the training loss (mean cross-entropy over {st.examples:,} "
        f"seeded examples, seed {st.seed}, model in eval mode, fp32 with TF32 off), by Lanczos with full "
        f"reorthogonalisation until every residual ≤ {st.tol:g}·|λ|. SAM (Foret et al. 2021) reports λ1 and "
        "λ1/λ5; both depend on the training loss they are measured at, given in the table.") + "</p>"]
    from calibscope.render.findings import hessian_finding

    finding = hessian_finding(results)
    if finding:
        out.append("<p>" + esc(finding) + "</p>")
    spec: list[tuple[str, str, Callable[[Any], Cell | None]]] = []
    for i in range(k):
        def fn(r: Any, i: int = i) -> Cell | None:
            values = r.spectrum.eigenvalues
            return _num(sig(values[i]), values[i], f"hessian.lambda{i + 1}", r.name) if i < len(values) else None
        spec.append((f"hessian.lambda{i + 1}", f"λ{i + 1}", fn))
    spec += [
        ("hessian.ratio", f"λ1/λ{k}", lambda r: _num(sig(r.spectrum.ratio), r.spectrum.ratio, "hessian.ratio", r.name)),
        ("hessian.trace", "trace (Hutchinson, ± s.e.)",
         lambda r: None if r.spectrum.trace is None else
         _num(f"{sig(r.spectrum.trace.trace)} ± {sig(r.spectrum.trace.standard_error, 3)}", r.spectrum.trace.trace,
              "hessian.trace", r.name)),
        ("hessian.residual", "max residual / |λ|",
         lambda r: _num(f"{_max_relative_residual(r.spectrum):.1e}" + ("" if r.spectrum.converged
                                                                        else " (not converged)"),
                        _max_relative_residual(r.spectrum), "hessian.residual", r.name)),
        ("hessian.loss", "loss (mean CE)", lambda r: _num(sig(r.spectrum.loss), r.spectrum.loss, "hessian.loss",
                                                          r.name)),
        ("hessian.n_hvp", "Hessian-vector products",
         lambda r: _num(str(r.spectrum.n_hvp), r.spectrum.n_hvp, "hessian.n_hvp", r.name)),
        ("hessian.n_params", "parameters",
         lambda r: _num(f"{r.spectrum.settings.n_params:,}", r.spectrum.settings.n_params, "hessian.n_params",
                        r.name)),
    ]
    table = table_html(["", *names], _model_rows(names, spec, by))
    out.append(_duo(table, embed.html(eigenvalue_figure(results), alt="Top Hessian eigenvalues",
                                   caption="λ1…λk per model (log scale when they span more than 20×).")))
    for r in results:
        if not r.spectrum.converged:
            out.append(note_html(f"{r.name}: not converged after {r.spectrum.n_hvp} Hessian-vector products; the "
                                 "residuals bound the error"))
    return "\n".join(out)


def _max_relative_residual(spectrum: Any) -> float:
    rel = [res / abs(ev) if ev else math.inf for res, ev in zip(spectrum.residuals, spectrum.eigenvalues, strict=True)]
    return max(rel) if rel else math.nan


def _conformal_body(section: Section, report: Report, embed: FigureEmbedder) -> str:
    from calibscope.render.conformal_section import conformal_body

    return conformal_body(section, report, embed)


_BODIES: dict[str, Callable[[Section, Report, FigureEmbedder], str]] = {
    "calibration": _calibration,
    "temperature": _temperature,
    "selective": _selective,
    "conformal": _conformal_body,
    "ood": _ood,
    "projection": _projection,
    "mi": _mi,
    "hessian": _hessian,
}


# --------------------------------------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------------------------------------


def _kv(items: Sequence[tuple[str, Any]]) -> str:
    return '<dl class="kv">' + "".join(
        f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items if v is not None and v != "") + "</dl>"


def provenance_html(report: Report) -> str:
    p = report.provenance
    out = ['<section id="provenance" class="report-section" data-section="provenance" data-status="ok">',
           "<h2>Provenance</h2>"]
    versions = p.get("versions", {})
    out.append("<h3>Software</h3>" + _kv([(k, v) for k, v in versions.items()]))

    rows = []
    for item in p.get("inputs", []):
        n = item.get("n")
        rows.append(Row(f"input.{item['role']}", item["role"], (
            Cell(str(item.get("path")), css="text mono"),
            Cell(str(item.get("format") or MISSING), css="text"),
            Cell(f"{n:,}" if isinstance(n, int) else MISSING, n if isinstance(n, int) else None),
            Cell(str(item.get("sha256") or MISSING), css="text mono hash"))))
    out.append("<h3>Inputs</h3>" + table_html(["Role", "File", "Format", "Examples", "SHA-256"], rows,
                                              text_columns=(1, 2, 4)))

    rows = []
    for m in p.get("models", []):
        inf = m.get("inference", {}) or {}
        device = inf.get("device")
        name = inf.get("device_name")
        device_text = str(device) + (f" ({name})" if name and name != device else "")
        seconds = inf.get("seconds")
        rows.append(Row(f"model.{m['name']}", m["name"], (
            Cell(device_text, css="text"),
            Cell(str(inf.get("precision") or MISSING), css="text"),
            Cell(str(inf.get("batch_size") or MISSING)),
            Cell(str(inf.get("cache") or MISSING), css="text"),
            Cell(f"{seconds:.2f} s" if isinstance(seconds, (int, float)) else MISSING),
            Cell(str(inf.get("feature_layer") or MISSING), css="text mono"))))
    out.append("<h3>Inference (test data)</h3>"
               + table_html(["Model", "Device", "Precision", "Batch", "Cache", "Time", "Feature layer"], rows,
                            text_columns=(1, 2, 4, 6)))
    seeds = p.get("seeds", {})
    if seeds:
        out.append("<h3>Seeds</h3>" + _kv([(k, v) for k, v in seeds.items()]))
    settings = report.settings
    if settings:
        out.append("<h3>Settings</h3>" + _kv([("--" + k.replace("_", "-"), _setting_text(v))
                                               for k, v in settings.items()]))
    out.append("</section>")
    return "\n".join(out)


def _setting_text(value: Any) -> str:
    if value is None:
        return "default"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)
