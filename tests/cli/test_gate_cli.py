"""`calibscope ece` as a CI gate and its calibration-family options: --max-ece, --baseline/--max-increase,
--junit (parsed with xml.etree), [tool.calibscope] thresholds, --norm, --all, --bootstrap, --bins-csv,
--temperature. Numbers are checked against the library and a numpy ECE, exit codes against the README's table."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from calibscope.cli import app
from calibscope.diagnostics.calibration import calibration_metrics, expected_calibration_error

runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def logits_file(samples) -> Path:
    return samples / "digits_hard_test_logits.npz"


@pytest.fixture(scope="module")
def arrays(logits_file):
    with np.load(logits_file) as d:
        return torch.from_numpy(d["logits"]), torch.from_numpy(d["labels"])


def write_logits(path: Path, logits: torch.Tensor, labels: torch.Tensor) -> Path:
    np.savez(path, logits=logits.numpy(), labels=labels.numpy())
    return path


def ece_json(*args: str | Path) -> dict:
    result = invoke("ece", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


# --------------------------------------------------------------------------------------------------------
# --max-ece
# --------------------------------------------------------------------------------------------------------


def test_max_ece_pass_and_fail(logits_file, arrays):
    value = expected_calibration_error(*arrays)
    passing = invoke("ece", logits_file, "--max-ece", f"{value + 1e-4:.6f}")
    assert passing.exit_code == 0, passing.stderr
    assert "Gate passed" in passing.stdout
    failing = invoke("ece", logits_file, "--max-ece", f"{value - 1e-4:.6f}")
    assert failing.exit_code == 1
    assert failing.stderr.startswith("calibscope: gate failed: digits_hard_test_logits.npz ECE ")
    assert failing.stderr.count("\n") == 1  # the one-line reason


def test_norm_selects_what_ece_and_the_gate_mean(logits_file, arrays):
    doc = ece_json(logits_file, "--norm", "l2", "--max-ece", "0.9")
    entry = doc["results"][0]
    assert entry["ece"] == pytest.approx(expected_calibration_error(*arrays, norm="l2"), abs=1e-12)
    assert entry["definition"]["norm"] == "l2" and entry["headline"] == "ece_l2"
    assert entry["metrics"]["ece"]["value"] == pytest.approx(expected_calibration_error(*arrays), abs=1e-12)
    mce = expected_calibration_error(*arrays, norm="max")
    result = invoke("ece", logits_file, "--norm", "max", "--max-ece", f"{mce - 1e-3:.6f}")
    assert result.exit_code == 1 and "MCE" in result.stderr
    assert invoke("ece", logits_file, "--norm", "l3").exit_code == 2


# --------------------------------------------------------------------------------------------------------
# --baseline / --max-increase
# --------------------------------------------------------------------------------------------------------


@pytest.fixture
def baseline_pair(tmp_path, arrays):
    """A better-calibrated 'old' model (logits / 1.9) as the baseline, the shipped one as the 'new' model,
    under the same file name."""
    logits, labels = arrays
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = write_logits(tmp_path / "old" / "model.npz", logits / 1.9, labels)
    new = write_logits(tmp_path / "new" / "model.npz", logits, labels)
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(ece_json(old)))
    return old, new, baseline


def test_baseline_regression_fails_and_small_change_passes(baseline_pair, arrays):
    _, new, baseline = baseline_pair
    logits, labels = arrays
    delta = expected_calibration_error(logits, labels) - expected_calibration_error(logits / 1.9, labels)
    assert delta > 0.005
    failing = invoke("ece", new, "--baseline", baseline, "--max-increase", "0.005")
    assert failing.exit_code == 1
    assert failing.stderr.count("\n") == 1 and "--max-increase 0.005" in failing.stderr
    assert f"{delta:+.4f}" in failing.stderr
    doc = json.loads(invoke("ece", new, "--baseline", baseline, "--max-increase", "0.005", "--json").stdout)
    assert doc["gate"]["passed"] is False and doc["gate"]["failing"] == ["model.npz"]
    assert doc["gate"]["checks"][0]["check"] == "max_increase"
    assert doc["results"][0]["baseline"]["delta"] == pytest.approx(delta, abs=1e-12)
    passing = invoke("ece", new, "--baseline", baseline, "--max-increase", f"{delta + 1e-3:.6f}")
    assert passing.exit_code == 0, passing.stderr
    # without --max-increase the comparison is shown, nothing is gated
    shown = invoke("ece", new, "--baseline", baseline)
    assert shown.exit_code == 0 and "Change vs baseline" in shown.stdout


def test_baseline_that_is_not_comparable_is_exit_2(baseline_pair, tmp_path):
    _, new, baseline = baseline_pair
    other_bins = invoke("ece", new, "--baseline", baseline, "--max-increase", "0.01", "--bins", "10")
    assert other_bins.exit_code == 2 and "not comparable" in other_bins.stderr
    assert other_bins.stderr.count("\n") == 1
    assert invoke("ece", new, "--max-increase", "0.01").exit_code == 2  # needs --baseline
    (tmp_path / "junk.json").write_text("{not json")
    assert "not valid JSON" in invoke("ece", new, "--baseline", tmp_path / "junk.json").stderr
    (tmp_path / "other.json").write_text(json.dumps({"schema": "calibscope/temperature", "schema_version": 1}))
    assert invoke("ece", new, "--baseline", tmp_path / "other.json").exit_code == 2
    assert invoke("ece", new, "--baseline", tmp_path / "missing.json").exit_code == 2


# --------------------------------------------------------------------------------------------------------
# --junit
# --------------------------------------------------------------------------------------------------------


def test_junit_xml_is_parseable_and_reports_failures(baseline_pair, tmp_path, logits_file):
    _, new, baseline = baseline_pair
    report = tmp_path / "ece.xml"
    result = invoke("ece", new, "--baseline", baseline, "--max-increase", "0.005", "--max-ece", "0.5",
                    "--junit", report)
    assert result.exit_code == 1
    root = ET.parse(report).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "2" and root.get("failures") == "1"
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == ["ece <= 0.5", "ece increase over baseline <= 0.005"]
    assert cases[0].find("failure") is None
    failure = cases[1].find("failure")
    assert failure is not None and "--max-increase 0.005" in failure.get("message")
    # no gate at all: one passing case per checkpoint
    plain = tmp_path / "plain.xml"
    assert invoke("ece", logits_file, "--junit", plain).exit_code == 0
    root = ET.parse(plain).getroot()
    assert root.get("failures") == "0" and len(root.findall("./testsuite/testcase")) == 1


def test_thresholds_from_pyproject(tmp_path, monkeypatch, baseline_pair, arrays):
    _, new, baseline = baseline_pair
    value = expected_calibration_error(*arrays)
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.calibscope]\nmax_ece = {value - 1e-4:.6f}\nbins = 15\nnorm = "l1"\n')
    monkeypatch.chdir(tmp_path)
    assert invoke("ece", new).exit_code == 1
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.calibscope]\nbaseline = "{baseline.name}"\nmax_increase = 0.005\n')
    result = invoke("ece", new)
    assert result.exit_code == 1 and "baseline" in result.stderr
    (tmp_path / "pyproject.toml").write_text('[tool.calibscope]\nmax_increase = 2.0\n')
    assert invoke("ece", new).exit_code == 2  # out of range: one-line config error


# --------------------------------------------------------------------------------------------------------
# the family in the command: --all, --bootstrap, --bins-csv, definitions in JSON
# --------------------------------------------------------------------------------------------------------


def test_json_carries_every_metric_with_its_definition(logits_file, arrays):
    doc = ece_json(logits_file)
    entry = doc["results"][0]
    for key in ("name", "checkpoint", "format", "inference", "ece", "mce", "nll", "brier", "accuracy", "bins",
                "definition"):
        assert key in entry
    assert doc["gate"] is None
    ref = calibration_metrics(*arrays)
    for name, metric in entry["metrics"].items():
        assert metric["value"] == pytest.approx(ref.value(name), abs=1e-12), name
        assert metric["definition"]["n"] == 1347 and metric["interval"] is None
    assert entry["metrics"]["sce"]["definition"]["calibration"] == "classwise"
    assert entry["warnings"] and "fewer than 20 examples" in entry["warnings"][0]


def test_all_and_bootstrap(logits_file):
    compact = invoke("ece", logits_file)
    assert compact.exit_code == 0 and "Smooth ECE" not in compact.stdout and "Signed CE" in compact.stdout
    full = invoke("ece", logits_file, "--all")
    assert full.exit_code == 0, full.stderr
    for label in ("ACE", "Classwise ECE", "Smooth ECE", "debiased"):
        assert label in full.stdout
    doc = ece_json(logits_file, "--bootstrap", "200", "--seed", "1")
    interval = doc["results"][0]["metrics"]["ece"]["interval"]
    assert interval["replicates"] == 200 and interval["seed"] == 1 and interval["low"] < interval["high"]
    bad = invoke("ece", logits_file, "--bootstrap", "20")
    assert bad.exit_code == 2 and "at least 200" in bad.stderr


def test_bins_csv_matches_the_json(logits_file, tmp_path):
    path = tmp_path / "bins.csv"
    doc = ece_json(logits_file, "--bins-csv", path, "--bins", "10")
    rows = list(csv.DictReader(path.open()))
    bins = doc["results"][0]["bins"]
    assert len(rows) == 10 and sum(int(r["count"]) for r in rows) == 1347
    for m, row in enumerate(rows):
        assert float(row["upper"]) == bins["upper"][m] and int(row["count"]) == bins["count"][m]
        if bins["accuracy"][m] is None:
            assert row["accuracy"] == ""
        else:
            assert float(row["accuracy"]) == bins["accuracy"][m]
    assert invoke("ece", logits_file, "--bins-csv", tmp_path / "no" / "dir.csv").exit_code == 2


# --------------------------------------------------------------------------------------------------------
# --temperature
# --------------------------------------------------------------------------------------------------------


def test_temperature_scales_the_logits(logits_file, arrays):
    logits, labels = arrays
    doc = ece_json(logits_file, "--temperature", "1.7")
    entry = doc["results"][0]
    assert entry["ece"] == pytest.approx(expected_calibration_error(logits / 1.7, labels), abs=1e-12)
    assert entry["temperature"]["value"] == 1.7 and "1.7" in entry["definition"]["logits"]
    assert ece_json(logits_file, "--temperature", "1")["results"][0]["ece"] == pytest.approx(
        expected_calibration_error(logits, labels), abs=1e-15)


@pytest.mark.parametrize("value", ["0", "-1.5", "nan", "inf"])
def test_bad_temperature_is_exit_2(logits_file, value):
    result = invoke("ece", logits_file, "--temperature", value)
    assert result.exit_code == 2 and result.stderr.startswith("calibscope: error: --temperature")
    assert result.stderr.count("\n") == 1


def test_temperature_options_exclusive_and_file_checked(logits_file, tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"temperature": -2}))
    assert invoke("ece", logits_file, "-T", "2", "--temperature-from", tmp_path / "t.json").exit_code == 2
    bad = invoke("ece", logits_file, "--temperature-from", tmp_path / "t.json")
    assert bad.exit_code == 2 and "larger than 0" in bad.stderr
    (tmp_path / "t.json").write_text(json.dumps({"temperature": 2.0}))
    assert ece_json(logits_file, "--temperature-from", tmp_path / "t.json")["results"][0]["temperature"][
        "value"] == 2.0
