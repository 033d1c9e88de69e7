"""``--log tensorboard:DIR`` / ``--log mlflow`` and ``--format markdown``: what reaches the trackers is read back
with TensorBoard's EventAccumulator and MLflow's client and checked against a numpy ECE."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from calibscope.cli import app
from tests.cli.test_action import S, numpy_ece
from tests.integrations.conftest import event_scalars, mlflow_run, need

LOGITS = S / "digits_hard_test_logits.npz"
KEY = "digits_hard_test_logits.npz/ece"


def test_ece_logs_to_tensorboard_and_mlflow(tmp_path, monkeypatch):
    need("tensorboard")
    need("mlflow")
    monkeypatch.chdir(tmp_path)  # MLflow puts a SQL store's artifacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(app, ["ece", str(LOGITS), "--json", "--log", f"tensorboard:{tmp_path / 'tb'}",
                                      "--log", f"mlflow:{uri}"])
    assert result.exit_code == 0, result.output
    with np.load(LOGITS) as f:
        reference = numpy_ece(f["logits"], f["labels"])
    scalars, images = event_scalars(tmp_path / "tb")
    assert scalars[KEY][0][1] == pytest.approx(reference, rel=1e-6)  # float32 in event files
    assert "reliability_digits_hard_test_logits.npz" in images
    run, history, artifacts = mlflow_run(uri)
    assert history[KEY] == [pytest.approx(reference, abs=1e-12)]
    assert {"ece.json", "reliability_digits_hard_test_logits.npz.png"} <= set(artifacts)
    assert run.info.status == "FINISHED"  # the run calibscope started is ended
    assert json.loads(result.stdout)["results"][0]["ece"] == pytest.approx(reference, abs=1e-12)


def test_missing_tracker_package_and_bad_options(monkeypatch):
    import calibscope.optional as optional

    real = optional.importlib.import_module

    def no_mlflow(name, *args):
        if name.split(".")[0] == "mlflow":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(optional.importlib, "import_module", no_mlflow)
    runner = CliRunner()
    for argv, message in (
        (["--log", "mlflow"], "--log mlflow needs the package `mlflow`, which is not installed"),
        (["--log", "wandb"], "--log must be tensorboard:DIR or mlflow"),
        (["--log", "tensorboard"], "--log tensorboard needs a folder"),
        (["--format", "html"], "--format must be one of text, json, markdown"),
        (["--format", "markdown", "--json"], "contradict"),
    ):
        result = runner.invoke(app, ["ece", str(LOGITS), *argv])
        assert result.exit_code == 2 and message in result.output, (argv, result.output)
        assert "Traceback" not in result.output


def test_markdown_summary_numbers():
    result = CliRunner().invoke(app, ["ece", str(LOGITS), "--format", "markdown", "--max-ece", "0.5"])
    assert result.exit_code == 0, result.output
    with np.load(LOGITS) as f:
        reference = numpy_ece(f["logits"], f["labels"])
    row = next(line for line in result.stdout.splitlines() if line.startswith("| digits_hard_test_logits.npz"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "1347" and float(cells[3]) == pytest.approx(reference, abs=5e-5)
    assert "**Gate passed**: all 1 checks hold." in result.stdout


def test_temperature_logs_its_fit(tmp_path):
    need("tensorboard")
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    result = CliRunner().invoke(app, ["temperature", str(LOGITS), "--log", f"tensorboard:{tmp_path}"])
    assert result.exit_code == 0, result.output
    with np.load(LOGITS) as f:
        z, y = f["logits"].astype(np.float64), f["labels"]
    nll = minimize_scalar(lambda t: -log_softmax(z / t, axis=1)[np.arange(len(y)), y].mean(), bounds=(0.05, 20),
                          method="bounded", options={"xatol": 1e-9})
    scalars, _ = event_scalars(tmp_path)
    assert scalars["temperature"][0][1] == pytest.approx(nll.x, rel=1e-5)
