"""`calibscope temperature` end to end: the fitted T equals the library's (itself checked against scipy),
--apply, --save-temperature → `ece --temperature-from`, --out, the same-data warning, and bad input (exit 2,
one line)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from calibscope.cli import app
from calibscope.cli import temperature as temperature_command
from calibscope.diagnostics.calibration import expected_calibration_error
from calibscope.diagnostics.temperature import fit_temperature

if not any(c.name == "temperature" for c in app.registered_commands):  # until calibscope.cli registers it
    app.command(name="temperature", no_args_is_help=True)(temperature_command.temperature)

runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def split_logits(samples, tmp_path_factory):
    """The shipped test logits split in two files: 400 rows to fit on, 947 held out."""
    folder = tmp_path_factory.mktemp("logits")
    with np.load(samples / "digits_hard_test_logits.npz") as d:
        logits, labels = d["logits"], d["labels"]
    np.savez(folder / "fit.npz", logits=logits[:400], labels=labels[:400])
    np.savez(folder / "held_out.npz", logits=logits[400:], labels=labels[400:])
    return folder / "fit.npz", folder / "held_out.npz", torch.from_numpy(logits), torch.from_numpy(labels)


def test_fit_apply_json(split_logits):
    fit_file, held_out, logits, labels = split_logits
    result = invoke("temperature", fit_file, "--apply", held_out, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "calibscope/temperature" and doc["objective"] == "nll"
    expected = fit_temperature(logits[:400], labels[:400])
    assert doc["temperature"] == pytest.approx(expected.temperature, rel=1e-12)
    assert doc["fits"]["nll"]["n_passes"] == expected.n_passes
    assert doc["fits"]["ece"]["objective"] == "ece"
    after = expected_calibration_error(logits[400:] / expected.temperature, labels[400:])
    assert doc["apply"]["after"]["ece"]["value"] == pytest.approx(after, abs=1e-12)
    assert doc["apply"]["before"]["ece"]["value"] == pytest.approx(
        expected_calibration_error(logits[400:], labels[400:]), abs=1e-12)
    assert doc["apply"]["after"]["ece"]["definition"]["n"] == 947
    assert len(doc["sweep"]["temperatures"]) == len(doc["sweep"]["fit"]["ece"]) == len(doc["sweep"]["apply"]["nll"])
    assert doc["warnings"] == []


def test_objective_ece_and_table(split_logits):
    fit_file, held_out, logits, labels = split_logits
    doc = json.loads(invoke("temperature", fit_file, "--objective", "ece", "--json").stdout)
    assert doc["temperature"] == pytest.approx(
        fit_temperature(logits[:400], labels[:400], objective="ece").temperature, rel=1e-12)
    table = invoke("temperature", fit_file, "--apply", held_out)
    assert table.exit_code == 0 and "NLL-optimal T" in table.stdout and "apply: T = 1" in table.stdout
    assert invoke("temperature", fit_file, "--objective", "brier").exit_code == 2


def test_save_then_ece_temperature_from_and_same_data_warning(split_logits, tmp_path):
    fit_file, held_out, logits, labels = split_logits
    saved = tmp_path / "t.json"
    assert invoke("temperature", fit_file, "--save-temperature", saved).exit_code == 0
    t = json.loads(saved.read_text())["temperature"]
    held = invoke("ece", held_out, "--temperature-from", saved, "--json")
    assert held.exit_code == 0 and "same data" not in held.stderr
    entry = json.loads(held.stdout)["results"][0]
    assert entry["ece"] == pytest.approx(expected_calibration_error(logits[400:] / t, labels[400:]), abs=1e-12)
    same = invoke("ece", fit_file, "--temperature-from", saved, "--json")
    assert same.exit_code == 0 and "fitted on this same data" in same.stderr
    assert any("same data" in w for w in json.loads(same.stdout)["results"][0]["warnings"])
    again = invoke("temperature", fit_file, "--apply", fit_file, "--json")
    assert "not held-out" in again.stderr


def test_out_writes_the_sweep_and_reliability_figures(split_logits, tmp_path):
    fit_file, held_out, _, _ = split_logits
    out = tmp_path / "out"
    result = invoke("temperature", fit_file, "--apply", held_out, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "reliability_after.png", "reliability_after.svg", "reliability_before.png", "reliability_before.svg",
        "temperature.json", "temperature_sweep.png", "temperature_sweep.svg"]


def test_model_checkpoint_under_confident_label_smoothing(samples):
    result = invoke("temperature", samples / "digits_ls.pt2", "--data", samples / "digits_val.npz", "--apply",
                    samples / "digits_test.npz", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["temperature"] < 1  # under-confident: sharpen
    assert doc["apply"]["after"]["ece"]["value"] < doc["apply"]["before"]["ece"]["value"]


def _bad(tmp_path: Path, split_logits) -> dict[str, tuple[list, str]]:
    fit_file, _, logits, labels = split_logits
    np.savez(tmp_path / "nine.npz", logits=np.zeros((5, 9), np.float32) + np.arange(9, dtype=np.float32),
             labels=np.arange(5))
    nan = logits[:50].clone()
    nan[3, 2] = float("nan")
    np.savez(tmp_path / "nan.npz", logits=nan.numpy(), labels=labels[:50].numpy())
    right = torch.full((30, 10), -20.0)
    right[torch.arange(30), torch.arange(30) % 10] = 20.0
    np.savez(tmp_path / "all_right.npz", logits=right.numpy(), labels=(torch.arange(30) % 10).numpy())
    return {
        "class count": ([fit_file, "--apply", tmp_path / "nine.npz"], "9 classes"),
        "nan logits": ([tmp_path / "nan.npz"], "NaN"),
        "all correct": ([tmp_path / "all_right.npz"], "T → 0"),
        "missing file": ([tmp_path / "nope.npz"], "nope.npz"),
    }


@pytest.mark.parametrize("case", ["class count", "nan logits", "all correct", "missing file"])
def test_bad_input_is_one_line_exit_2(case, tmp_path, split_logits):
    args, phrase = _bad(tmp_path, split_logits)[case]
    result = invoke("temperature", *args, "--out", tmp_path / "out")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("calibscope: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert phrase in result.stderr
    assert not (tmp_path / "out").exists()
