"""What ``calibscope temperature`` shows and writes: the before/after table, the ``calibscope/temperature``
JSON document (also the ``--save-temperature`` file that ``calibscope ece --temperature-from`` reads), the
temperature sweep figure (Müller et al. 2019, Figs. 3–5: ECE against T in Figs. 3–4, NLL in Fig. 5), and the
same-data warning.

Nothing here computes a metric: the numbers come from :mod:`calibscope.diagnostics`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.results import Evaluation, TemperatureResult  # noqa: F401 - re-exported (the result types)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from calibscope.diagnostics.calibration import CalibrationMetrics
    from calibscope.diagnostics.temperature import TemperatureFit

SUMMARY_METRICS = ("ece", "mce", "signed_ce", "nll", "brier", "accuracy")


# --------------------------------------------------------------------------------------------------------
# the result of `calibscope temperature`
# --------------------------------------------------------------------------------------------------------


def _summary(metrics: CalibrationMetrics) -> dict[str, Any]:
    from calibscope.render.json_doc import to_jsonable

    return {name: to_jsonable(metrics[name]) for name in SUMMARY_METRICS}


def _evaluation_doc(e: Evaluation | None) -> dict[str, Any] | None:
    if e is None:
        return None
    return {"data": e.source, "fingerprint": e.fingerprint, "n": e.before.n,
            "before": _summary(e.before), "after": _summary(e.after)}


def document(r: TemperatureResult) -> dict[str, Any]:
    """The ``calibscope/temperature`` v1 document (``docs/json-schema.md``)."""
    from calibscope.render.json_doc import json_document, to_jsonable

    sweep = r.fit.sweep
    payload = {
        "temperature": r.temperature,
        "objective": r.objective,
        "name": r.name,
        "checkpoint": str(r.path),
        "format": r.format,
        "checkpoint_sha256": r.checkpoint_sha256,
        "inference": r.inference,
        "fits": {"nll": to_jsonable(r.nll_fit), "ece": to_jsonable(r.ece_fit)},
        "fit": _evaluation_doc(r.fit),
        "apply": _evaluation_doc(r.apply),
        "sweep": None if sweep is None else {
            "temperatures": list(sweep.temperatures),
            "n_bins": sweep.n_bins,
            "fit": {"nll": list(sweep.nll), "ece": list(sweep.ece), "accuracy": sweep.accuracy},
            "apply": None if r.apply is None or r.apply.sweep is None else {
                "nll": list(r.apply.sweep.nll), "ece": list(r.apply.sweep.ece), "accuracy": r.apply.sweep.accuracy},
            "definition": "NLL (nats) and top-label l1 ECE of softmax(z / T) at each T; accuracy does not depend "
                          "on T",
        },
        "definition": {
            "temperature": "T > 0; calibrated probabilities are softmax(z / T) (Guo et al. 2017, Section 4.2)",
            "objective": "nll: exact minimiser of the mean NLL on the fit data; ece: minimiser of the top-label "
                         "ECE found by search",
        },
        "warnings": list(r.warnings),
    }
    return json_document("temperature", payload, meta={"command": "temperature"})


# --------------------------------------------------------------------------------------------------------
# the sweep figure
# --------------------------------------------------------------------------------------------------------


def sweep_figure(r: TemperatureResult, *, figsize: tuple[float, float] = (4.5, 5.4)) -> Figure:
    """ECE (top) and NLL (bottom, log scale with labelled 1-2-3-5 ticks) against T on a log axis, fit data
    solid and ``--apply`` data dashed, with the NLL-optimal (solid) and ECE-optimal (dashed) temperatures and
    T = 1 (dotted) marked; one legend below the axes (inside, it covered the curves)."""
    from matplotlib.figure import Figure

    from calibscope.render.figures import label_log_axis

    sweep = r.fit.sweep
    assert sweep is not None
    fig = Figure(figsize=figsize, layout="constrained")
    ax_ece, ax_nll = fig.subplots(2, 1, sharex=True)
    t = list(sweep.temperatures)
    ax_ece.plot(t, sweep.ece, color="#3b6fb6", label=f"fit data ({r.fit.before.n:,})")
    ax_nll.plot(t, sweep.nll, color="#3b6fb6")
    if r.apply is not None and r.apply.sweep is not None:
        ax_ece.plot(t, r.apply.sweep.ece, color="#d62728", linestyle="--",
                    label=f"apply data ({r.apply.before.n:,})")
        ax_nll.plot(t, r.apply.sweep.nll, color="#d62728", linestyle="--")
    for ax in (ax_ece, ax_nll):
        labelled = ax is ax_ece  # one entry per marker in the shared legend
        ax.axvline(1.0, color="0.5", linestyle=":", linewidth=1.0, label="T = 1" if labelled else None)
        if r.nll_fit is not None:
            ax.axvline(r.nll_fit.temperature, color="black", linewidth=1.0,
                       label="NLL-optimal T" if labelled else None)
        ax.axvline(r.ece_fit.temperature, color="black", linestyle="--", linewidth=1.0,
                   label="ECE-optimal T" if labelled else None)
        ax.set_xscale("log")
        ax.grid(True, which="both", linewidth=0.4, alpha=0.35)
    ax_nll.set_yscale("log")
    label_log_axis(ax_nll, "y")
    label_log_axis(ax_nll, "x")  # shared with the ECE panel
    marks = []
    if r.nll_fit is not None:
        marks.append(f"NLL-opt. T = {r.nll_fit.temperature:.3g}")
    marks.append(f"ECE-opt. T = {r.ece_fit.temperature:.3g}")
    ax_ece.set_title(f"{r.name}: " + ", ".join(marks), fontsize="small")
    ax_ece.set_ylabel(f"ECE ({sweep.n_bins} bins)")
    ax_nll.set_ylabel("NLL (nats, log scale)")
    ax_nll.set_xlabel("Temperature T (log scale)")
    fig.legend(*ax_ece.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize="x-small",
               frameon=False, columnspacing=1.0, handlelength=1.8)
    return fig


def write_outputs(out: Path, r: TemperatureResult, doc: dict[str, Any]) -> list[Path]:
    """``out/temperature.json``, ``out/temperature_sweep.png|svg`` and reliability diagrams of the
    evaluation data (``--apply`` data if given, else the fit data) before and after scaling."""
    from calibscope.render.atomic import atomic_write_text
    from calibscope.render.ece_view import _ensure_dir
    from calibscope.render.figures import reliability_diagram, save_figure
    from calibscope.render.json_doc import dumps

    _ensure_dir(out)
    written = save_figure(sweep_figure(r), out / "temperature_sweep")
    e = r.apply if r.apply is not None else r.fit
    written += save_figure(reliability_diagram(e.before.report, title=f"{r.name}, T = 1"),
                           out / "reliability_before")
    written += save_figure(reliability_diagram(e.after.report, title=f"{r.name}, T = {r.temperature:.4g}"),
                           out / "reliability_after")
    written.append(atomic_write_text(out / "temperature.json", dumps(doc) + "\n"))
    return written


def save_temperature(path: Path, doc: dict[str, Any]) -> Path:
    from calibscope.render.atomic import atomic_write_text
    from calibscope.render.ece_view import _parent_dir
    from calibscope.render.json_doc import dumps

    _parent_dir(path)
    return atomic_write_text(path, dumps(doc) + "\n")


def print_json(doc: dict[str, Any]) -> None:
    from calibscope.render.json_doc import dumps

    print(dumps(doc))


# --------------------------------------------------------------------------------------------------------
# terminal
# --------------------------------------------------------------------------------------------------------


def _fmt(name: str, value: float) -> str:
    if not math.isfinite(value):
        return "—"
    if name == "accuracy":
        return f"{100 * value:.2f} %"
    if name == "signed_ce":
        return f"{value:+.4f}"
    return f"{value:.4f}"


def _fit_line(fit: TemperatureFit) -> str:
    if fit.objective == "nll":
        how = (f"exact: |dNLL/dβ| = {abs(fit.gradient):.1e} after {fit.n_passes} passes"
               + (f" (+{fit.warm_start_passes} on a {fit.warm_start_rows:,}-row subsample)"
                  if fit.warm_start_rows else ""))
        return f"NLL-optimal T = {fit.temperature:.6g} (β = {fit.beta:.6g}), NLL {fit.value:.4f}; {how}"
    where = "at the edge of the searched range!" if fit.stop_reason == "bound" else "grid + golden section"
    return f"ECE-optimal T = {fit.temperature:.6g}, ECE {fit.value:.4f}; {where}, {fit.n_passes} passes"


def print_tables(r: TemperatureResult, *, written: list[Path] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{r.name}[/bold]: temperature fitted on {r.fit.source} ({r.fit.before.n:,} examples)")
    if r.nll_fit is not None:
        console.print("  " + _fit_line(r.nll_fit))
    console.print("  " + _fit_line(r.ece_fit))
    console.print(f"  chosen ({r.objective}): [bold]T = {r.temperature:.6g}[/bold]"
                  + ("  (T < 1: the model was under-confident)" if r.temperature < 1 else
                     "  (T > 1: the model was over-confident)" if r.temperature > 1 else ""))
    table = Table(title_justify="left", header_style="bold")
    table.add_column("Metric")
    evaluations = [("fit", r.fit)] + ([("apply", r.apply)] if r.apply is not None else [])
    for label, _ in evaluations:
        table.add_column(f"{label}: T = 1", justify="right")
        table.add_column(f"{label}: T = {r.temperature:.4g}", justify="right")
    n_bins = r.fit.before.n_bins
    labels = {"ece": f"ECE ({n_bins} bins)", "mce": "MCE", "signed_ce": "Signed CE (+ over-conf.)",
              "nll": "NLL", "brier": "Brier", "accuracy": "Accuracy"}
    for name in SUMMARY_METRICS:
        cells = []
        for _, e in evaluations:
            cells += [_fmt(name, e.before.value(name)), _fmt(name, e.after.value(name))]
        table.add_row(labels[name], *cells)
    console.print(table)
    if r.apply is not None:
        console.print(f"  [dim]apply: {r.apply.source} ({r.apply.before.n:,} examples)[/dim]")
    if written:
        console.print(f"[dim]wrote {len(written)} files to {written[0].parent}/[/dim]")
