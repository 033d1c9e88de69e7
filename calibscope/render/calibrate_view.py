"""What ``calibscope calibrate`` shows: the methods side by side (ECE, classwise ECE, NLL, Brier, accuracy
change, each with its bootstrap interval), which is best and by how much, the figure, the JSON document.
Reads a :class:`~calibscope.workflows.calibrate.CalibrateResult`; computes nothing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

TABLE = (("ece", "ECE"), ("sce", "classwise ECE"), ("nll", "NLL"), ("brier", "Brier"),
         ("accuracy_change", "Δ accuracy"))


def _value(score, key: str) -> float:
    return score.accuracy_change if key == "accuracy_change" else score.metrics.value(key)


def _cell(score, key: str) -> str:
    if score.metrics is None:
        return "—"
    value = _value(score, key)
    text = f"{100 * value:+.2f} pp" if key == "accuracy_change" else f"{value:.4f}"
    if score.intervals and key in score.intervals:
        lo, hi = score.intervals[key]
        text += (f" [{100 * lo:+.2f}, {100 * hi:+.2f}]" if key == "accuracy_change" else f" [{lo:.4f}, {hi:.4f}]")
    return text


def summary_rows(result) -> tuple[list[str], list[list[str]]]:
    c = result.comparison
    header = ["method", *(label for _, label in TABLE)]
    rows = []
    for score in c.scores:
        name = score.method + (" *" if score.method == c.best else "")
        rows.append([name, *(_cell(score, key) for key, _ in TABLE)] if score.metrics is not None
                    else [name, "not fitted", *(["—"] * (len(TABLE) - 1))])
    return header, rows


def verdict(result) -> str:
    """One sentence derived from the numbers: the best method, its criterion, and whether its lead over the
    runner-up survives the paired bootstrap."""
    c = result.comparison
    best = c.score(c.best).metrics.value(c.criterion)
    text = f"best by {c.criterion.upper() if c.criterion != 'sce' else 'classwise ECE'}: {c.best} ({best:.4f})"
    if c.runner_up is None or c.margin is None:
        return text
    point, low, high = c.margin
    text += f", ahead of {c.runner_up} by {point:.4f}"
    if math.isfinite(low):
        stable = low > 0
        text += (f" (95 % paired bootstrap [{low:.4f}, {high:.4f}]: "
                 + ("the lead holds under resampling)" if stable else "within resampling noise — the two are "
                    "not distinguishable on these data)"))
    return text


def payload(result) -> dict[str, Any]:
    from calibscope.diagnostics.calibrators import calibrator_to_dict
    from calibscope.render.json_doc import to_jsonable

    c = result.comparison
    methods = []
    for score in c.scores:
        entry: dict[str, Any] = {"method": score.method, "skipped": score.skipped}
        if score.metrics is not None:
            entry["metrics"] = {key: _value(score, key) for key, _ in TABLE} | {
                "accuracy": score.metrics.value("accuracy")}
            entry["intervals"] = score.intervals
        if score.calibrator is not None:
            entry["fit"] = score.calibrator.fit
            entry["parameters_count"] = sum(int(v.numel()) for v in score.calibrator.parameters.values())
        methods.append(entry)
    return to_jsonable({
        "name": result.name, "checkpoint": str(result.path), "format": result.format,
        "criterion": c.criterion, "best": c.best, "runner_up": c.runner_up,
        "margin": None if c.margin is None else dict(zip(("value", "low", "high"), c.margin, strict=True)),
        "verdict": verdict(result), "fit_data": result.fit_data, "evaluation": result.evaluation,
        "bootstrap": c.bootstrap, "seed": c.seed, "n_bins": c.n_bins, "methods": methods,
        "calibrator": calibrator_to_dict(result.chosen), "written": list(result.written),
        "notes": list(result.notes), "definition": c.definition})


def document(result) -> dict[str, Any]:
    """The ``calibscope/calibrate`` v1 document (``docs/calibrate.md``)."""
    from calibscope.render.json_doc import json_document

    return json_document("calibrate", payload(result), meta={"command": "calibrate"})


def print_json(doc: dict[str, Any]) -> None:
    from calibscope.render.json_doc import dumps

    print(dumps(doc))


def print_tables(result, *, written: list[Path] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    c = result.comparison
    header, rows = summary_rows(result)
    table = Table(title=f"{result.name}: calibrators on {result.evaluation['source']} (n = {c.n_eval:,})",
                  title_justify="left", header_style="bold")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"  {verdict(result)}")
    console.print(f"  [dim]fitted on {c.n_fit:,} examples; \\[low, high] = 95 % bootstrap ({c.bootstrap} resamples, "
                  f"seed {c.seed}); ECE with {c.n_bins} bins; * = best[/dim]")
    for note in result.notes:
        console.print(f"  [dim]note: {note}[/dim]")
    chosen = result.chosen
    console.print(f"  calibrator: {chosen.method} (NLL on its fit data {chosen.fit['nll_before']:.4f} → "
                  f"{chosen.fit['nll_after']:.4f})")
    for path in written or ():
        console.print(f"[dim]wrote {path}[/dim]")


def comparison_figure(result):
    """The criterion and ECE of each method with their 95 % intervals (horizontal bars, best highlighted)."""
    from matplotlib.figure import Figure

    c = result.comparison
    scores = [s for s in c.scores if s.metrics is not None]
    keys = [c.criterion] + (["ece"] if c.criterion != "ece" else ["nll"])
    fig = Figure(figsize=(8.0, 0.45 * len(scores) + 1.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key in zip(axes, keys, strict=True):
        values = [s.metrics.value(key) for s in scores]
        ys = list(range(len(scores)))
        colors = ["#d62728" if s.method == c.best else "#1f77b4" for s in scores]
        ax.barh(ys, values, color=colors, alpha=0.8)
        if all(s.intervals for s in scores):
            lo = [v - s.intervals[key][0] for v, s in zip(values, scores, strict=True)]
            hi = [s.intervals[key][1] - v for v, s in zip(values, scores, strict=True)]
            ax.errorbar(values, ys, xerr=[lo, hi], fmt="none", ecolor="black", capsize=3, lw=1)
        ax.set_yticks(ys, [s.method for s in scores])
        ax.invert_yaxis()
        ax.set_xlabel(f"{key} on {result.evaluation['source']} (lower is better)")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{result.name}: calibrators (red: best by {c.criterion})", fontsize=10)
    return fig


def write_outputs(out: Path, result, doc: dict[str, Any]) -> list[Path]:
    """``out/calibrate.json`` and ``out/calibrators.png|svg`` (atomic writes)."""
    from calibscope.render.figures import write_output_set

    return write_output_set(out, {"calibrators": comparison_figure(result)}, "calibrate.json", doc)
