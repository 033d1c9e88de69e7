"""What ``calibscope ece`` shows: tables on the terminal, the ``calibscope/ece`` JSON document, figures, the
per-bin CSV and JUnit XML for CI systems.

``results`` is a list of :class:`EceResult` (one per checkpoint) and ``gate`` a :class:`Gate`; nothing here
computes a metric.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibscope.results import EceResult, Gate, GateCheck  # noqa: F401 - re-exported (the result types)

if TYPE_CHECKING:  # pragma: no cover
    pass

# the metric that `ece` and the gates mean, for each --norm
HEADLINE = {"l1": "ece", "l2": "ece_l2", "max": "mce"}


def _entry(r: EceResult) -> dict[str, Any]:
    from calibscope.render.json_doc import report_to_dict, to_jsonable

    entry = {"name": r.name, "checkpoint": str(r.path), "format": r.format, "inference": r.inference,
             **report_to_dict(r.report)}
    if r.metrics is not None:
        entry["ece"] = r.value
        entry["definition"] = to_jsonable(r.metrics[r.headline].definition)
        entry["headline"] = r.headline
        entry["metrics"] = {name: to_jsonable(m) for name, m in r.metrics.metrics.items()}
    entry["temperature"] = to_jsonable(r.temperature)
    entry["baseline"] = to_jsonable(r.baseline)
    entry["warnings"] = list(r.warnings) + list(r.notes)
    if r.corp is not None:  # only with --corp (docs/json-schema.md)
        entry["corp"] = to_jsonable(r.corp)
    return entry


def document(results: list[EceResult], *, gate: float | Gate | None) -> dict[str, Any]:
    """The ``calibscope/ece`` v1 document (``docs/json-schema.md``).

    ``gate``: a :class:`Gate`, or (older form) just the ``--max-ece`` threshold, or None.
    """
    from calibscope.render.json_doc import json_document, to_jsonable

    if gate is not None and not isinstance(gate, Gate):
        gate = Gate(max_ece=float(gate), checks=tuple(
            GateCheck(r.name, "max_ece", r.headline, r.value, float(gate), not r.value > gate, "")
            for r in results))
    gate_doc = None
    if gate is not None and gate.active:
        gate_doc = {"max_ece": gate.max_ece, "passed": gate.passed, "failing": gate.failing}
        if gate.baseline is not None:  # the baseline gate's fields (absent with --max-ece alone)
            gate_doc.update(max_increase=gate.max_increase, baseline=gate.baseline,
                            checks=[to_jsonable(c) for c in gate.checks])
    payload = {"results": [_entry(r) for r in results], "gate": gate_doc}
    return json_document("ece", payload, meta={"command": "ece", "n_checkpoints": len(results)})


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _ensure_dir(out: Path) -> None:
    from calibscope.render.atomic import output_folder

    output_folder(out)


def _parent_dir(path: Path) -> None:
    from calibscope.errors import InputError

    if not path.parent.is_dir():
        raise InputError(f"cannot write '{path}': the folder '{path.parent}' does not exist")


def reliability_figures(results: list[EceResult]) -> list[tuple[str, Any]]:
    """``(reliability_NAME, Figure)`` for each checkpoint (the diagrams ``--out`` saves and ``--log`` logs)."""
    from calibscope.render.figures import reliability_diagram

    figures = []
    for r in results:
        title = r.name if r.temperature is None else f"{r.name} (T = {r.temperature['value']:.4g})"
        figures.append((f"reliability_{_slug(r.name)}", reliability_diagram(r.report, title=title)))
    return figures


def corp_figures(results: list[EceResult]) -> list[tuple[str, Any]]:
    """``(corp_NAME, Figure)``: the CORP reliability diagram of each checkpoint measured with ``--corp``."""
    from calibscope.render.corp_view import corp_figure

    figures = []
    for r in results:
        if r.corp is not None:
            title = (f"{r.name}: CORP" if r.temperature is None
                     else f"{r.name} (T = {r.temperature['value']:.4g}): CORP")
            figures.append((f"corp_{_slug(r.name)}", corp_figure(r.corp, title=title)))
    return figures


def write_outputs(out: Path, results: list[EceResult], doc: dict[str, Any]) -> list[Path]:
    """``out/ece.json``, ``out/reliability_<name>.png|svg`` for each checkpoint (and ``out/corp_<name>.png|svg``
    with ``--corp``) and, for several, ``out/reliability_overlay.png|svg`` with all curves on one axis (atomic
    writes)."""
    from calibscope.render.atomic import atomic_write_text
    from calibscope.render.figures import save_figure
    from calibscope.render.json_doc import dumps

    _ensure_dir(out)
    written = []
    for r, (_, fig) in zip(results, reliability_figures(results), strict=True):
        written += save_figure(fig, out / f"reliability_{_slug(r.name)}")
    for stem, fig in corp_figures(results):
        written += save_figure(fig, out / stem)
    if len(results) > 1:  # Müller et al. Fig. 2: every model's curve on one axis
        from calibscope.render.figures import reliability_curves

        written += save_figure(reliability_curves({r.name: r.report for r in results}), out / "reliability_overlay")
    written.append(atomic_write_text(out / "ece.json", dumps(doc) + "\n"))
    return written


def print_json(doc: dict[str, Any]) -> None:
    from calibscope.render.json_doc import dumps

    print(dumps(doc))


# --------------------------------------------------------------------------------------------------------
# CSV and JUnit XML
# --------------------------------------------------------------------------------------------------------

CSV_COLUMNS = ("checkpoint", "bin", "lower", "upper", "count", "mean_confidence", "accuracy", "gap")


def bins_csv(results: list[EceResult]) -> str:
    """The reliability bins of every checkpoint, one row per bin (``gap`` = confidence − accuracy; empty
    bins have empty confidence/accuracy/gap cells). Numbers with full float64 precision (``repr``)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in results:
        b = r.report.bins
        for m in range(len(b.count)):
            cells = [b.mean_confidence[m], b.accuracy[m], b.gap[m]]
            writer.writerow([r.name, m + 1, repr(b.lower[m]), repr(b.upper[m]), b.count[m],
                             *("" if not math.isfinite(v) else repr(v) for v in cells)])
    return buffer.getvalue()


def write_bins_csv(path: Path, results: list[EceResult]) -> Path:
    from calibscope.render.atomic import atomic_write_text

    _parent_dir(path)
    return atomic_write_text(path, bins_csv(results))


def junit_xml(results: list[EceResult], gate: Gate) -> str:
    """JUnit XML (the format CI systems display): one ``<testcase>`` per check, with ``<failure>`` when it
    failed; without any gate, one passing test case per checkpoint recording its numbers."""
    import xml.etree.ElementTree as ET

    cases = []
    for c in gate.checks:
        label = (f"{c.metric} <= {c.threshold:g}" if c.check == "max_ece"
                 else f"{c.metric} increase over baseline <= {c.threshold:g}")
        cases.append((c.checkpoint, label, None if c.passed else c.message, f"{c.metric} = {c.value:.6g}"))
    if not gate.checks:
        for r in results:
            cases.append((r.name, "calibration measured", None, f"{r.headline} = {r.value:.6g}"))
    failures = sum(1 for case in cases if case[2] is not None)
    suites = ET.Element("testsuites", name="calibscope", tests=str(len(cases)), failures=str(failures), errors="0")
    suite = ET.SubElement(suites, "testsuite", name="calibscope ece", tests=str(len(cases)),
                          failures=str(failures), errors="0", skipped="0")
    by_name = {r.name: r for r in results}
    for checkpoint, label, failure, summary in cases:
        case = ET.SubElement(suite, "testcase", classname=f"calibscope.ece.{_slug(checkpoint)}", name=label,
                             time="0")
        if failure is not None:
            ET.SubElement(case, "failure", message=failure, type="GateFailed").text = failure
        r = by_name.get(checkpoint)
        lines = [summary]
        if r is not None:
            lines.append(f"n = {r.report.n}, accuracy = {r.report.accuracy:.6g}, bins = {r.report.n_bins}")
            lines += [f"warning: {w}" for w in (*r.warnings, *r.notes)]
        ET.SubElement(case, "system-out").text = "\n".join(lines)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def write_junit(path: Path, results: list[EceResult], gate: Gate) -> Path:
    from calibscope.render.atomic import atomic_write_text

    _parent_dir(path)
    return atomic_write_text(path, junit_xml(results, gate))


# --------------------------------------------------------------------------------------------------------
# terminal tables
# --------------------------------------------------------------------------------------------------------

_MISSING = "—"


def _rate(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else _MISSING


def _percent(value: float) -> str:
    return f"{100 * value:.2f} %" if math.isfinite(value) else _MISSING


def _label(name: str, r: EceResult) -> str:
    m = r.report.n_bins
    labels = {
        "ece": f"ECE ({m} bins)",
        "ece_l2": f"ECE ℓ2 ({m} bins)",
        "mce": "MCE",
        "signed_ce": "Signed CE (+ = over-confident)",
        "nll": "NLL",
        "brier": "Brier",
        "accuracy": "Accuracy",
        "ece_l2_debiased": "ECE ℓ2 debiased (Kumar 2019)",
        "ace": "ACE (equal-mass bins)",
        "sce": "Classwise ECE (SCE)",
        "smooth_ece": "Smooth ECE",
    }
    return labels.get(name, name)


def _cell(r: EceResult, name: str) -> str:
    assert r.metrics is not None
    metric = r.metrics[name]
    fmt = _percent if name == "accuracy" else (lambda v: f"{v:+.4f}") if name == "signed_ce" else _rate
    text = fmt(metric.value)
    if metric.interval is not None:
        text += f" [{fmt(metric.interval.low)}, {fmt(metric.interval.high)}]"
    if name == "smooth_ece":
        sigma = metric.definition.get("bandwidth_value")
        if sigma is not None:
            text += f" (σ* {sigma:.3g})"
    return text


def metric_names(r: EceResult, show_all: bool) -> list[str]:
    from calibscope.diagnostics.calibration import ALL_METRICS, COMPACT_METRICS

    names = list(ALL_METRICS if show_all else COMPACT_METRICS)
    if r.headline not in names:
        names.insert(1, r.headline)
    return names


def _rows(r: EceResult, show_all: bool) -> list[tuple[str, str]]:
    rows = [("Examples", f"{r.report.n:,}"), ("Classes", str(r.report.num_classes))]
    if r.temperature is not None:
        rows.append(("Temperature", f"{r.temperature['value']:.6g}"))
    if r.metrics is None:
        rows += [("Accuracy", _percent(r.report.accuracy)), ("Mean confidence", _percent(r.report.mean_confidence)),
                 (f"ECE ({r.report.n_bins} bins)", _rate(r.report.ece)), ("MCE", _rate(r.report.mce)),
                 ("NLL", _rate(r.report.nll)), ("Brier", _rate(r.report.brier))]
        return rows
    rows.append(("Mean confidence", _percent(r.report.mean_confidence)))
    for name in metric_names(r, show_all):
        label = _label(name, r) + (" ◆" if name == r.headline else "")
        rows.append((label, _cell(r, name)))
    if r.baseline is not None:
        rows.append((f"Baseline {_label(r.headline, r)}", _rate(r.baseline["value"])))
        rows.append(("Change vs baseline", f"{r.baseline['delta']:+.4f}"))
    if r.corp is not None:
        from calibscope.render.corp_view import corp_rows

        rows += corp_rows(r.corp)
    return rows


def _bins_table(r: EceResult):
    from rich.table import Table

    bins = r.report.bins
    table = Table(title_justify="left", header_style="bold")
    for column, justify in (("Bin (conf.)", "left"), ("Count", "right"), ("Confidence", "right"),
                            ("Accuracy", "right"), ("Gap", "right")):
        table.add_column(column, justify=justify)
    for m in range(r.report.n_bins):
        opening = "[" if m == 0 else "("
        gap = bins.gap[m]
        table.add_row(f"{opening}{bins.lower[m]:.3f}, {bins.upper[m]:.3f}]", f"{bins.count[m]:,}",
                      _percent(bins.mean_confidence[m]), _percent(bins.accuracy[m]),
                      f"{gap:+.4f}" if math.isfinite(gap) else _MISSING)
    return table


def _provenance(r: EceResult) -> str:
    meta = r.inference
    parts = [f"{r.format}", f"{r.report.n} examples"]
    if isinstance(meta.get("predictive"), dict):
        parts.append(f"mean softmax of {meta['predictive'].get('samples')} predictive distributions")
    if meta.get("from_probabilities"):
        parts.append("probabilities → log")
    if meta.get("device", "").startswith("none"):
        parts.append("precomputed logits")
    else:
        parts.append(f"{meta.get('device')} {meta.get('precision')}")
        if meta.get("cache") == "hit":
            parts.append("cached outputs")
        elif meta.get("seconds") is not None:
            parts.append(f"{meta['seconds']:.2f} s")
    if r.temperature is not None:
        parts.append(f"logits / T, T = {r.temperature['value']:.4g}")
    return " · ".join(parts)


def print_tables(results: list[EceResult], *, written: list[Path] | None = None, show_all: bool = False,
                 gate: Gate | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if len(results) == 1:
        r = results[0]
        table = Table(title=r.name, title_justify="left", header_style="bold")
        table.add_column("Metric")
        table.add_column("Value", justify="right")
        for label, value in _rows(r, show_all):
            table.add_row(label, value)
        console.print(table)
        console.print(f"  [dim]{_provenance(r)}[/dim]")
        console.print(_bins_table(r))
    else:
        table = Table(title=f"Calibration, {results[0].report.n_bins} bins", title_justify="left",
                      header_style="bold")
        table.add_column("Metric")
        for r in results:
            table.add_column(r.name, justify="right")
        columns = [dict(_rows(r, show_all)) for r in results]
        labels: list[str] = []
        for column in columns:
            labels += [label for label in column if label not in labels]
        if len({r.report.n_bins for r in results}) > 1:
            console.print("[bold red]warning:[/bold red] the checkpoints were binned differently")
        for label in labels:
            table.add_row(label, *(column.get(label, _MISSING) for column in columns))
        console.print(table)
        for r in results:
            console.print(f"  [dim]{r.name}: {_provenance(r)}[/dim]")
    for r in results:
        for note in r.notes:
            console.print(f"[yellow]note:[/yellow] {r.name}: {note}")
    if results and results[0].metrics is not None:
        console.print(f"  [dim]◆ gated / reported as `ece`; definitions of every number: --json "
                      f"(results[].metrics[].definition){'' if show_all else '; --all for ACE, SCE, smooth ECE, ℓ2'}"
                      "[/dim]")
    if any(r.corp is not None for r in results):
        from calibscope.render.corp_view import findings

        console.print("  [dim]CORP (Dimitriadis et al. 2021): PAV recalibration of correctness on confidence; "
                      "S = MCB − DSC + UNC for the top-label event[/dim]")
        for line in findings([(r.name, r.corp) for r in results if r.corp is not None]):
            console.print(f"  {line}")
    if gate is not None and gate.active:
        verdict = "[green]passed[/green]" if gate.passed else "[bold red]FAILED[/bold red]"
        console.print(f"Gate {verdict}: " + "; ".join(c.message for c in gate.checks))
    if written:
        console.print(f"[dim]wrote {len(written)} files to {written[0].parent}/[/dim]")


# --------------------------------------------------------------------------------------------------------
# markdown (CI job summaries: $GITHUB_STEP_SUMMARY, merge-request notes)
# --------------------------------------------------------------------------------------------------------

_MD_COLUMNS = (("n", "n"), ("accuracy", "accuracy"), ("ece", "ECE"), ("mce", "MCE"), ("nll", "NLL"),
               ("brier", "Brier"))


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(results: list[EceResult], *, gate: Gate | None = None) -> str:
    """GitHub-flavoured markdown: one row per checkpoint (n, accuracy, ECE, MCE, NLL, Brier, and the change
    from the baseline when there is one), then one line per gate check, then the verdict; every sentence is
    made from the numbers above it."""
    with_baseline = any(r.baseline is not None for r in results)
    head = [label for _, label in _MD_COLUMNS] + (["Δ ECE vs baseline"] if with_baseline else [])
    lines = ["### calibscope ece", "", "| checkpoint | " + " | ".join(head) + " |",
             "|---|" + "---:|" * len(head)]
    for r in results:
        values = {"n": str(r.report.n), "accuracy": f"{r.report.accuracy:.4f}", "ece": f"{r.value:.4f}",
                  "mce": f"{r.report.mce:.4f}", "nll": f"{r.report.nll:.4f}", "brier": f"{r.report.brier:.4f}"}
        row = [values[key] for key, _ in _MD_COLUMNS]
        if with_baseline:
            row.append("—" if r.baseline is None else f"{r.baseline['delta']:+.4f}")
        lines.append(f"| {_md_escape(r.name)} | " + " | ".join(row) + " |")
    n_bins = results[0].report.n_bins if results else 15
    lines += ["", f"ECE: top-label, {n_bins} equal-width bins (Guo et al. 2017)."]
    with_corp = [r for r in results if r.corp is not None]
    if with_corp:
        from calibscope.render.corp_view import band_text, findings

        lines += ["", "| checkpoint | Brier | MCB | DSC | UNC | log score | MCB | DSC | UNC | outside band |",
                  "|---|" + "---:|" * 9]
        for r in with_corp:
            b, g = r.corp.brier, r.corp.log
            cells = [f"{v:.4f}" for v in (b.score, b.miscalibration, b.discrimination, b.uncertainty, g.score,
                                           g.miscalibration, g.discrimination, g.uncertainty)]
            lines.append(f"| {_md_escape(r.name)} | " + " | ".join(cells) + f" | {band_text(r.corp)} |")
        lines += ["", "CORP (Dimitriadis, Gneiting & Jordan 2021): S = MCB − DSC + UNC of the top-label event."]
        lines += [f"- {_md_escape(t)}" for t in findings([(r.name, r.corp) for r in with_corp])]
    if gate is not None and gate.checks:
        lines.append("")
        lines += [f"- {'✅' if c.passed else '❌'} {_md_escape(c.message)}" for c in gate.checks]
        failed = [c for c in gate.checks if not c.passed]
        lines += ["", f"**Gate passed**: all {len(gate.checks)} checks hold." if not failed else
                  f"**Gate failed**: {len(failed)} of {len(gate.checks)} checks do not hold "
                  f"({', '.join(_md_escape(n) for n in gate.failing)})."]
    return "\n".join(lines) + "\n"
