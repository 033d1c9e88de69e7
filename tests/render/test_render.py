"""Renderers draw and write what the report says: figure bars = per-bin numbers, atomic files, valid JSON,
tables as text."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from calibscope.diagnostics import calibration_report
from calibscope.render import (
    atomic_output,
    atomic_write_bytes,
    atomic_write_text,
    dumps,
    json_document,
    reliability_diagram,
    report_to_dict,
    save_figure,
)
from calibscope.render.figures import ACCURACY_LABEL, COUNT_LABEL, GAP_LABEL, INTERVAL_LABEL, reliability_curves


@pytest.fixture(scope="module")
def report():
    g = torch.Generator().manual_seed(0)
    logits = 2.0 * torch.randn(2000, 10, generator=g)
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    r = calibration_report(3.0 * logits, labels)  # over-confident, with some empty low bins
    assert 0 in r.bins.count and r.bins.count[-1] > 0
    return r


def _container(ax, label):
    (container,) = [c for c in ax.containers if c.get_label() == label]
    return container


# --------------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------------


def test_reliability_bars_equal_report(report):
    fig = reliability_diagram(report, title="test")
    ax, ax_hist = fig.axes
    bins = report.bins
    full = [m for m in range(report.n_bins) if bins.count[m] > 0]

    accuracy = _container(ax, ACCURACY_LABEL).patches
    assert len(accuracy) == len(full)
    for patch, m in zip(accuracy, full, strict=True):
        assert patch.get_height() == pytest.approx(bins.accuracy[m], abs=1e-12)
        assert patch.get_x() == pytest.approx(bins.lower[m], abs=1e-12)
        assert patch.get_x() + patch.get_width() == pytest.approx(bins.upper[m], abs=1e-12)

    gap = _container(ax, GAP_LABEL).patches  # from the accuracy up (or down) to the mean confidence
    for patch, m in zip(gap, full, strict=True):
        assert patch.get_y() == pytest.approx(bins.accuracy[m], abs=1e-12)
        assert patch.get_y() + patch.get_height() == pytest.approx(bins.mean_confidence[m], abs=1e-12)

    assert all(p.get_facecolor()[3] == 0 for p in gap)  # unfilled: hatching never mixes with the blue bars

    counts = [p.get_height() for p in _container(ax_hist, COUNT_LABEL).patches]
    assert counts == list(bins.count)
    shown = [t.get_text() for t in ax_hist.texts]
    assert [c for c in shown if c] == [f"{c:,}" for c in bins.count if c]  # every non-empty bin labelled
    assert ax_hist.get_yscale() == "log"
    assert any(f"{report.ece:.4f}" in t.get_text() for t in ax.texts)
    assert ax.get_title() == "test" and ax_hist.get_xlabel() == "Confidence"


def test_reliability_intervals_are_wilson_as_scipy(report):
    from scipy.stats import binomtest

    fig = reliability_diagram(report)
    ax = fig.axes[0]
    (bars,) = [c for c in ax.containers if c.get_label() == INTERVAL_LABEL]
    segments = bars.lines[2][0].get_segments()
    bins = report.bins
    full = [m for m in range(report.n_bins) if bins.count[m] > 0]
    for seg, m in zip(segments, full, strict=True):
        k = round(bins.accuracy[m] * bins.count[m])
        ci = binomtest(k, bins.count[m]).proportion_ci(confidence_level=0.95, method="wilson")
        assert seg[0][1] == pytest.approx(ci.low, abs=1e-9) and seg[1][1] == pytest.approx(ci.high, abs=1e-9)


def test_reliability_curves_draw_each_models_bins_on_one_axis(report):
    other = calibration_report(torch.zeros(50, 10), torch.zeros(50, dtype=torch.long))
    fig = reliability_curves({"a": report, "b": other})
    (ax,) = fig.axes
    lines = {line.get_label().split(" (")[0]: line for line in ax.lines}
    full = [m for m in range(report.n_bins) if report.bins.count[m] > 0]
    assert list(lines["a"].get_xdata()) == pytest.approx([report.bins.mean_confidence[m] for m in full])
    assert list(lines["a"].get_ydata()) == pytest.approx([report.bins.accuracy[m] for m in full])
    assert f"ECE {other.ece:.3f}" in lines["b"].get_label()


def test_reliability_diagram_uses_no_pyplot_state(report):
    import sys

    before = "matplotlib.pyplot" in sys.modules
    reliability_diagram(report)
    assert ("matplotlib.pyplot" in sys.modules) == before


def test_save_figure_writes_each_format(report, tmp_path):
    fig = reliability_diagram(report)
    paths = save_figure(fig, tmp_path / "reliability.v1", formats=("png", "svg"))
    assert paths == [tmp_path / "reliability.v1.png", tmp_path / "reliability.v1.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in paths[1].read_bytes()[:2000]
    assert sorted(os.listdir(tmp_path)) == ["reliability.v1.png", "reliability.v1.svg"]  # no temp files left


def test_failing_save_leaves_no_file(report, tmp_path):
    fig = reliability_diagram(report)
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "broken", formats=("not-a-format",))
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------------------


def test_atomic_write_text_and_bytes(tmp_path):
    target = tmp_path / "out.json"
    assert atomic_write_text(target, "{}\n") == target
    assert target.read_text() == "{}\n"
    atomic_write_bytes(target, b"replaced")
    assert target.read_bytes() == b"replaced"
    assert os.listdir(tmp_path) == ["out.json"]
    plain = tmp_path / "plain"
    plain.write_text("")  # the mode an ordinary open() gives, not mkstemp's 0600
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_atomic_output_error_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("half-writ")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["result.txt"]


def test_atomic_output_renames_on_success(tmp_path):
    target = tmp_path / "new.txt"
    with atomic_output(target) as tmp:
        tmp.write_text("complete")
        assert not target.exists()
    assert target.read_text() == "complete"
    assert os.listdir(tmp_path) == ["new.txt"]


# --------------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------------


def test_ece_document_is_valid_json(report):
    payload = {"results": [{"name": "model", **report_to_dict(report)}], "gate": None}
    doc = json_document("ece", payload, meta={"checkpoint": "model.pt", "precision": "fp32"})
    text = dumps(doc)  # allow_nan=False: would raise on NaN from empty bins
    back = json.loads(text)
    assert back["gate"] is None and back["results"][0]["name"] == "model"
    result = back["results"][0]
    assert back["schema"] == "calibscope/ece" and back["schema_version"] == 1
    assert isinstance(back["calibscope_version"], str)
    assert back["meta"] == {"checkpoint": "model.pt", "precision": "fp32"}
    assert result["definition"]["binning"] == "equal-width" and result["definition"]["n_bins"] == 15
    assert result["ece"] == report.ece and result["n"] == report.n
    empty = report.bins.count.index(0)
    assert result["bins"]["count"][empty] == 0 and result["bins"]["accuracy"][empty] is None
    assert result["bins"]["accuracy"][-1] == report.bins.accuracy[-1]
    assert list(back)[:4] == ["schema", "schema_version", "calibscope_version", "meta"]


def test_report_to_dict_and_non_finite(report):
    d = report_to_dict(report)
    assert set(d) >= {"n", "accuracy", "ece", "mce", "nll", "brier", "bins", "definition"}
    assert isinstance(d["bins"]["lower"], list)
    doc = json_document("custom", {"x": math.inf, "t": torch.tensor([1.0, math.nan])}, meta={})
    assert json.loads(dumps(doc))["x"] is None and doc["t"] == [1.0, None]
    with pytest.raises(ValueError):
        json.dumps({"x": math.nan}, allow_nan=False)  # what dumps() guards against


def test_json_document_rejects_header_clash():
    with pytest.raises(ValueError, match="reserved"):
        json_document("ece", {"schema": "x"}, meta={})
