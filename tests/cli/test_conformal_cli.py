"""`calibscope conformal` end to end on the shipped digits model: the JSON equals the library on the same
logits (computed here by the model), the coverage gate exits 1, bad input exits 2 with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from calibscope.cli import conformal as conformal_cli

app = typer.Typer(pretty_exceptions_enable=False)
app.command(name="conformal")(conformal_cli.conformal)
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def logits_files(tmp_path_factory, samples):
    """Validation and test logits of digits_hard, from the model, as logits files."""
    import torch

    from calibscope.loading.checkpoint import load_checkpoint
    from calibscope.loading.dataset import load_dataset

    ckpt = load_checkpoint(samples / "digits_hard.safetensors")
    mean, std = ckpt.metadata["mean"][0], ckpt.metadata["std"][0]
    root = tmp_path_factory.mktemp("conformal")
    out = {}
    for split in ("val", "test"):
        d = load_dataset(samples / f"digits_{split}.npz")
        with torch.no_grad():
            logits = ckpt.module.eval()((d.inputs.float() / 255 - mean) / std)
        np.savez(root / f"{split}_logits.npz", logits=logits.numpy(), labels=d.labels.numpy())
        out[split] = (logits, d.labels)
    return root, out


@pytest.mark.parametrize("method", ["lac", "aps", "raps"])
def test_json_equals_the_library(logits_files, method):
    from calibscope.diagnostics.conformal import conformal_report

    root, data = logits_files
    result = invoke(root / "test_logits.npz", "--val", root / "val_logits.npz", "--method", method,
                    "--alpha", "0.05", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == "calibscope/conformal"
    ref = conformal_report(*data["val"], *data["test"], method=method, alpha=0.05)
    got = doc["result"]
    assert got["coverage"] == pytest.approx(ref.coverage, abs=1e-6)
    assert got["mean_size"] == pytest.approx(ref.mean_size, abs=1e-6)
    assert got["calibration"]["q_hat"] == pytest.approx(ref.calibration.q_hat, abs=1e-6)
    assert got["size_histogram"] == list(ref.size_histogram)


def test_gate_and_outputs(logits_files, tmp_path):
    root, _ = logits_files
    ok = invoke(root / "test_logits.npz", "--val", root / "val_logits.npz", "--min-coverage", "0.5",
                "--out", tmp_path / "figs")
    assert ok.exit_code == 0, ok.output
    assert "Empirical coverage" in ok.stdout and "gate --min-coverage 0.5: passed" in ok.stdout
    assert {p.name for p in (tmp_path / "figs").iterdir()} >= {"conformal.json", "conformal_coverage.png",
                                                                 "conformal_coverage.svg"}
    failed = invoke(root / "test_logits.npz", "--val", root / "val_logits.npz", "--min-coverage",
                    "0.999")
    assert failed.exit_code == 1 and "FAILED" in failed.stdout


@pytest.mark.parametrize(("args", "needle"), [(["--alpha", "1.5"], "alpha"), (["--method", "thr2"], "method"),
                                              (["--min-coverage", "2"], "min-coverage")])
def test_bad_input_is_one_line_exit_2(logits_files, args, needle):
    root, _ = logits_files
    result = invoke(root / "test_logits.npz", "--val", root / "val_logits.npz", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr
