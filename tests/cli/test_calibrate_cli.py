"""`calibscope calibrate` end to end on the shipped hard-target model: the exported .pt2 is the model followed
by the calibrator (to 1e-6), loads through calibscope's .pt2 checks, and its test ECE is the number
`--methods` printed for it; a logits file gets a JSON calibrator; bad output names are exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from calibscope.cli import app

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibrate")
    out = folder / "calibrated.pt2"
    result = invoke("calibrate", SAMPLES / "digits_hard.pt2", "--val", SAMPLES / "digits_val.npz", "--test",
                    SAMPLES / "digits_test.npz", "--methods", "all", "--bootstrap", "0",
                    "-o", out, "--json")
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_exported_model_is_model_then_calibrator(calibrated):
    from calibscope.diagnostics.calibrators import apply_calibrator, calibrator_from_dict
    from calibscope.loading.checkpoint import load_checkpoint

    out, doc = calibrated
    exported = load_checkpoint(out)  # through the .pt2 safety checks, no --trust
    base = load_checkpoint(SAMPLES / "digits_hard.pt2")
    meta = base.metadata
    x = torch.from_numpy(__import__("numpy").load(SAMPLES / "digits_test.npz")["images"][:200]).float() / 255
    x = (x - meta["mean"][0]) / meta["std"][0]
    calibrator = calibrator_from_dict(exported.metadata["calibrator"])
    assert calibrator.method == doc["best"] == doc["calibrator"]["method"]
    with torch.no_grad():
        expected = apply_calibrator(calibrator, base.module(x))
        torch.testing.assert_close(exported.module(x), expected, rtol=0, atol=1e-6)
    assert exported.metadata["mean"] == meta["mean"]
    assert exported.metadata["calibrator"]["fit"]["data"]["logits_labels_sha256"] == doc["fit_data"][
        "logits_labels_sha256"]


def test_calibrated_models_test_ece_is_what_the_comparison_printed(calibrated):
    out, doc = calibrated
    result = invoke("ece", out, "--data", SAMPLES / "digits_test.npz", "--json", "--no-cache")
    assert result.exit_code == 0, result.output
    ece = json.loads(result.stdout)["results"][0]["metrics"]["ece"]["value"]
    printed = next(m for m in doc["methods"] if m["method"] == doc["best"])["metrics"]["ece"]
    assert ece == pytest.approx(printed, abs=1e-6)


def test_a_logits_file_gets_a_json_calibrator(tmp_path):
    from calibscope.diagnostics.calibrators import apply_calibrator
    from calibscope.diagnostics.temperature import fit_temperature
    from calibscope.workflows.calibrate import read_calibrator

    out = tmp_path / "cal.json"
    logits = SAMPLES / "digits_hard_test_logits.npz"
    result = invoke("calibrate", logits, "--method", "temperature", "-o", out, "--bootstrap", "0")
    assert result.exit_code == 0, result.output
    cal = read_calibrator(out)
    data = __import__("numpy").load(logits)
    z, y = torch.from_numpy(data["logits"]), torch.from_numpy(data["labels"])
    t = fit_temperature(z, y).temperature
    torch.testing.assert_close(apply_calibrator(cal, z), (z.double() / t).float())
    bad = invoke("calibrate", logits, "-o", tmp_path / "model.pt2")
    assert bad.exit_code == 2 and "logits file has no model" in bad.output
    bad = invoke("calibrate", logits, "-o", tmp_path / "model.onnx")
    assert bad.exit_code == 2


def test_ece_with_a_calibrator_file_equals_what_calibrate_printed(tmp_path):
    out = tmp_path / "vector.json"
    logits = SAMPLES / "digits_hard_test_logits.npz"
    result = invoke("calibrate", logits, "--method", "vector", "-o", out, "--bootstrap", "0", "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)["methods"][1]["metrics"]["ece"]
    result = invoke("ece", logits, "--calibrator", out, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["results"][0]["metrics"]
    assert metrics["ece"]["value"] == pytest.approx(printed, abs=1e-9)
    assert "vector calibrator" in metrics["ece"]["definition"]["logits"]
    bad = invoke("ece", logits, "--calibrator", out, "--temperature", "2")
    assert bad.exit_code == 2
