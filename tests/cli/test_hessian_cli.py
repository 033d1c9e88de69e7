"""``calibscope hessian`` through typer's CliRunner: exit codes, tables, JSON, files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from calibscope.cli import hessian as hessian_cli

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"
TRAIN = str(SAMPLES / "digits_train.npz")


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    """The real app if the command is registered there, else a local app with just this command."""
    from calibscope.cli import app as real

    if any(c.name == "hessian" for c in real.registered_commands):
        return real
    local = typer.Typer()
    local.command(name="hessian", no_args_is_help=True)(hessian_cli.hessian)

    @local.callback()
    def _root() -> None:  # keeps "hessian" as a sub-command name
        pass

    return local


def _run(app, *args):
    return CliRunner().invoke(app, ["hessian", *args])


def test_sgd_vs_sam_side_by_side_as_json(app):
    result = _run(app, str(SAMPLES / "digits_hard.pt2"), str(SAMPLES / "digits_sam.pt2"), "--data", TRAIN,
                  "--examples", "40", "--top", "3", "--trace-samples", "2", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == "calibscope/hessian" and doc["schema_version"] == 1
    hard, sam = doc["results"]
    assert [hard["name"], sam["name"]] == ["digits_hard.pt2", "digits_sam.pt2"]
    for entry in (hard, sam):
        assert entry["converged"] and len(entry["eigenvalues"]) == 3 and entry["n_hvp"] <= 40
        assert entry["eigenvalues"] == sorted(entry["eigenvalues"], reverse=True)
        assert entry["ratio"] == pytest.approx(entry["eigenvalues"][0] / entry["eigenvalues"][2])
        assert entry["trace"]["samples"] == 2 and entry["trace"]["standard_error"] >= 0
        settings = entry["settings"]
        assert settings["bn"] == "eval" and settings["dtype"] == "float32" and settings["tf32"] is False
        assert settings["examples"] == 40 and settings["dataset_size"] == 150 and settings["seed"] == 0
        assert settings["params"] == "all"
        assert len(settings["subset_sha256"]) == 64 and entry["normalisation"]["mean"] is not None
    assert hard["settings"]["subset_sha256"] == sam["settings"]["subset_sha256"]  # same examples for both


def test_table_repeats_and_files(app, tmp_path):
    out = tmp_path / "figs"
    result = _run(app, str(SAMPLES / "digits_sam.safetensors"), "--data", TRAIN, "--top", "3", "--examples", "50",
                  "--repeats", "2", "--trace-samples", "0", "--params", "last", "--per-layer", "--density",
                  "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "λ1/λ3" in result.stdout and "±" in result.stdout and "classifier" in result.stdout
    assert {p.name for p in out.iterdir()} == {
        "hessian.json", "hessian_eigenvalues.png", "hessian_eigenvalues.svg",
        "hessian_density.png", "hessian_density.svg"}
    entry = json.loads((out / "hessian.json").read_text())["results"][0]
    rep = entry["repeats"]
    assert rep["count"] == 2 and len(rep["subsets"]) == 2
    assert rep["subsets"][0]["settings"]["subset_sha256"] != rep["subsets"][1]["settings"]["subset_sha256"]
    first = np.asarray([s["eigenvalues"] for s in rep["subsets"]])
    np.testing.assert_allclose(rep["eigenvalues_mean"], first.mean(0))
    assert entry["settings"]["parameter_names"] == ["classifier.weight", "classifier.bias"]
    assert [x["layer"] for x in entry["per_layer"]] == ["classifier"]
    # the block of the only layer is the whole (selected) Hessian: same top eigenvalue
    assert entry["per_layer"][0]["eigenvalue"] == pytest.approx(entry["eigenvalues"][0], rel=1e-4)
    assert entry["density"]["steps"] == 64 and len(entry["density"]["grid"]) == len(entry["density"]["density"])


@pytest.mark.parametrize("args, message", [
    (["--limit", "1"], "at least 2 examples"),
    (["--top", "2000000"], "larger than the number of chosen parameters"),
    (["--bn", "batch"], "--bn"),
    (["--params", "no_such_layer"], "matches no parameter"),
    (["--tol", "0"], "--tol"),
])
def test_bad_input_exits_2_with_one_line(app, args, message):
    result = _run(app, str(SAMPLES / "digits_hard.pt2"), "--data", TRAIN, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output


def test_logits_file_is_not_a_model(app):
    result = _run(app, str(SAMPLES / "digits_hard_test_logits.npz"), "--data", TRAIN)
    assert result.exit_code == 2 and "not a model" in result.stderr


def test_help_does_not_import_torch():
    code = (
        "import sys, typer\n"
        "from calibscope.cli import hessian\n"
        "app = typer.Typer()\n"
        "app.command(name='hessian')(hessian.hessian)\n"
        "app.callback()(lambda: None)\n"
        "try:\n    app(['hessian', '--help'])\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'numpy', 'scipy', 'matplotlib') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("HEAVY="), result.stdout[-300:]
