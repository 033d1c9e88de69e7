"""The HTML report's renderer on synthetic results: figures inline without references, unique SVG ids, exact
values in ``data-value``, escaping, skipped sections, the JSON twin, and where the page may be written."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from calibscope.diagnostics.calibration import calibration_metrics
from calibscope.errors import InputError
from calibscope.render import ece_view
from calibscope.render.json_doc import dumps
from calibscope.render.report_html import (
    Check,
    FigureEmbedder,
    ModelInfo,
    Report,
    Section,
    document,
    render_html,
    write_report,
)


def _line_figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    ax.plot([0, 1, 2], [1, 0, 1], marker="o", label="a & <b>")
    ax.set_title("λ1 & <title>")
    ax.legend()
    return fig


def _scatter_figure(n: int):
    from matplotlib.figure import Figure

    g = torch.Generator().manual_seed(0)
    xy = torch.randn(n, 2, generator=g)
    fig = Figure(figsize=(3, 3))
    fig.subplots().scatter(xy[:, 0], xy[:, 1], s=4)
    return fig


def _ece_result(name: str, scale: float, seed: int) -> ece_view.EceResult:
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(600, 5, generator=g)
    labels = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    m = calibration_metrics(scale * logits, labels)
    return ece_view.EceResult(name, Path(f"{name}.npz"), "npz", m.report, {"device": "cpu", "precision": "fp32"},
                              metrics=m)


def _report(names=("model <b>&amp;", "other"), checks=()) -> Report:
    results = [_ece_result(n, 1.0 + i, i) for i, n in enumerate(names)]
    sections = (
        Section("calibration", "ok", results=results, document=ece_view.document(results, gate=None)),
        Section("hessian", "skipped", note="no --train given (the Hessian is that of the training loss)"),
    )
    return Report(command="compare", title="calibscope compare: <test>", sections=sections, checks=tuple(checks),
                  models=tuple(ModelInfo(n, Path(f"{n}.npz"), "npz", "ab" * 32) for n in names),
                  thresholds={"max_ece": 0.05 if checks else None, "ece_metric": "ece", "max_lambda1": None},
                  data={"test": {"path": "test.npz", "n": 600, "sha256": "cd" * 32}},
                  provenance={"versions": {"calibscope": "0"}, "inputs": [], "models": [], "seeds": {}},
                  generated="2025-01-01 00:00 UTC")


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.values, self.sections, self.meta = {}, {}, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-value" in a:
            self.values[(a["data-key"], a.get("data-model"))] = float(a["data-value"])
        if tag == "section":
            self.sections[a["id"]] = a["data-status"]
        if tag == "meta":
            self.meta.append(a)


def test_svg_is_inline_with_unique_ids_and_no_reference():
    embed = FigureEmbedder("svg")
    html = embed.html(_line_figure(), alt="first") + embed.html(_line_figure(), alt="second <x>")
    assert "http" not in html and "<?xml" not in html and "<metadata" not in html and "DOCTYPE" not in html
    assert html.count("<svg ") == 2 and 'aria-label="second &lt;x&gt;"' in html
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)) and all(i.startswith(("fig1", "fig2")) for i in ids)
    referenced = re.findall(r'(?:href="#|url\(#)([^")]+)', html)
    assert referenced and set(referenced) <= set(ids)
    assert "&lt;title&gt;" in html and "<title>" not in html  # text from the figure is escaped
    assert "#fig1 *{" in html  # matplotlib's global `*{...}` rule is scoped to its own figure


def test_png_data_uri_and_auto_takes_the_smaller():
    png = FigureEmbedder("png").html(_line_figure(), alt="p")
    uri = re.search(r'src="data:image/png;base64,([^"]+)"', png).group(1)
    assert base64.b64decode(uri).startswith(b"\x89PNG") and 'data-format="png"' in png
    assert 'width="288"' in png  # shown at the figure's own size (3 in × 96 px)
    auto = FigureEmbedder("auto")
    assert 'data-format="svg"' in auto.html(_line_figure(), alt="small")
    big = auto.html(_scatter_figure(6_000), alt="big")
    svg_only = FigureEmbedder("svg").html(_scatter_figure(6_000), alt="big")
    assert 'data-format="png"' in big and len(big) < len(svg_only)
    with pytest.raises(ValueError):
        FigureEmbedder("gif")


def test_auto_draws_dense_figures_as_png_only(monkeypatch):
    """Dense figures (many scatter markers, long filled bands) go straight to PNG; others are drawn as SVG, and
    a large SVG the rule did not foresee (markers of a line) still gets the PNG tried and the smaller kept."""
    from matplotlib.figure import Figure

    assert not FigureEmbedder.dense(_scatter_figure(FigureEmbedder.DENSE_MARKERS - 1))
    assert FigureEmbedder.dense(_scatter_figure(FigureEmbedder.DENSE_MARKERS))
    band, line = Figure(figsize=(3, 3)), Figure(figsize=(3, 3))
    x = torch.linspace(0, 1, 600)
    band.subplots().fill_between(x, x**2, x)  # 2 × 600 vertices + closing ones
    line.subplots().plot(torch.linspace(0, 1, 5000), torch.rand(5000, generator=torch.Generator().manual_seed(0)))
    assert FigureEmbedder.dense(band) and not FigureEmbedder.dense(line)

    drawn = []
    monkeypatch.setattr(FigureEmbedder, "_svg", lambda self, fig, prefix: drawn.append("svg") or "<svg " + "x" * 10)
    monkeypatch.setattr(FigureEmbedder, "_png", lambda self, fig: drawn.append("png") or "data:image/png;base64,")
    assert 'data-format="png"' in FigureEmbedder("auto").html(band, alt="band") and drawn == ["png"]
    drawn.clear()
    assert 'data-format="svg"' in FigureEmbedder("auto").html(line, alt="line") and drawn == ["svg"]
    monkeypatch.undo()
    markers = Figure(figsize=(3, 3))
    markers.subplots().plot(*torch.randn(2, 6_000, generator=torch.Generator().manual_seed(1)), "o", ms=2)
    assert not FigureEmbedder.dense(markers)  # Line2D markers: not foreseen, caught by the size check
    assert 'data-format="png"' in FigureEmbedder("auto").html(markers, alt="markers")


def test_page_is_self_contained_escaped_and_carries_exact_values():
    report = _report()
    html = render_html(report, figures="svg")
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "<title>calibscope compare: &lt;test&gt;</title>" in html
    assert "model &lt;b&gt;&amp;amp;" in html and "model <b>" not in html
    parsed = _Collect()
    parsed.feed(html)
    csp = next(m for m in parsed.meta if m.get("http-equiv") == "Content-Security-Policy")["content"]
    assert "default-src 'none'" in csp and "img-src data:" in csp
    assert parsed.sections == {"summary": "ok", "calibration": "ok", "hessian": "skipped", "provenance": "ok"}
    assert "Skipped: no --train given (the Hessian is that of the training loss)" in html
    for r in report.section("calibration").results:
        for name, metric in r.metrics.metrics.items():
            assert parsed.values[(f"calibration.{name}", r.name)] == metric.value  # exact, not rounded
        assert parsed.values[("summary.ece", r.name)] == r.metrics.value("ece")
        assert parsed.values[("calibration.bins.count.15", r.name)] == r.report.bins.count[14]
    assert "@media print" in html and "break-inside:avoid" in html
    assert "no thresholds configured" in html


def test_verdicts_and_the_json_twin():
    report = _report(checks=[Check("model <b>&amp;", "max_ece", "ece", 0.01, 0.05, True, "ok message"),
                             Check("other", "max_ece", "ece", 0.09, 0.05, False, "other ECE 0.0900 > 0.05")])
    html = render_html(report, figures="svg")
    parsed = _Collect()
    parsed.feed(html)
    assert parsed.values[("summary.verdict", "other")] == 0 and parsed.values[("summary.passed", None)] == 0
    assert 'class="verdict fail"' in html and "other ECE 0.0900 &gt; 0.05" in html
    doc = json.loads(dumps(document(report)))  # standard JSON: no NaN
    assert doc["schema"] == "calibscope/report" and doc["meta"] == {"command": "compare", "n_checkpoints": 2}
    assert doc["verdict"]["passed"] is False and len(doc["verdict"]["checks"]) == 2
    rows = {row["key"]: row for row in doc["summary"]["rows"]}
    assert list(rows) == ["accuracy", "ece", "signed_ce", "nll", "verdict"]  # only computed sections' rows
    assert rows["ece"]["values"] == [r.metrics.value("ece") for r in report.section("calibration").results]
    sections = {s["key"]: s for s in doc["sections"]}
    assert sections["calibration"]["document"]["schema"] == "calibscope/ece"
    assert sections["hessian"] == {"key": "hessian", "title": "Top Hessian eigenvalues", "status": "skipped",
                                   "note": report.section("hessian").note, "notes": [], "document": None}


def test_write_report_needs_a_file_in_an_existing_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        write_report(tmp_path / "missing" / "r.html", _report())
    with pytest.raises(InputError, match="is a folder"):
        write_report(tmp_path, _report())
    path = write_report(tmp_path / "r.html", _report(), figures="svg")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>") and list(tmp_path.iterdir()) == [path]
