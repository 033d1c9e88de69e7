"""`calibscope ood` and `calibscope selective` end to end on the sample digits models, with an OOD set made here
(the test digits with their pixels shuffled, image by image). Numbers are checked against scikit-learn on
logits computed by hand from the safetensors weights; bad input must give one line on stderr and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from safetensors.torch import load_file
from typer.testing import CliRunner

from calibscope.cli import ood as ood_cli
from calibscope.cli import selective as selective_cli
from calibscope.models import DigitsCNN

sklearn_metrics = pytest.importorskip("sklearn.metrics")

# The commands on a local app, so that the tests do not depend on their registration in calibscope.cli.
app = typer.Typer(pretty_exceptions_enable=False)
app.command(name="ood")(ood_cli.ood)
app.command(name="selective")(selective_cli.selective)
runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("calibscope: error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def ood_sets(tmp_path_factory, samples):
    """shuffled.npz: every test image with its 64 pixels permuted (same intensities, no digit shape);
    plus a set of another image size, an empty set, and a tiny training set."""
    root = tmp_path_factory.mktemp("ood_sets")
    images = np.load(samples / "digits_test.npz")["images"]
    g = np.random.default_rng(0)
    flat = images.reshape(len(images), -1)
    shuffled = np.stack([row[g.permutation(flat.shape[1])] for row in flat]).reshape(images.shape)
    np.savez(root / "shuffled.npz", images=shuffled, labels=np.full(len(images), 77))  # foreign labels
    np.savez(root / "big.npz", images=np.zeros((5, 1, 16, 16), np.uint8))
    np.savez(root / "empty.npz", images=np.zeros((0, 1, 8, 8), np.uint8))
    train = np.load(samples / "digits_train.npz")
    np.savez(root / "train_tiny.npz", images=train["images"][:20], labels=train["labels"][:20])
    return root


def hand_logits(samples: Path, images: np.ndarray) -> np.ndarray:
    """The hard model rebuilt from its safetensors weights and normalisation metadata, run by hand."""
    from safetensors import safe_open

    path = samples / "digits_hard.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    model = DigitsCNN(**json.loads(meta["calibscope.arch_kwargs"]))
    model.load_state_dict(load_file(str(path)))
    model.eval()
    mean, std = json.loads(meta["calibscope.mean"])[0], json.loads(meta["calibscope.std"])[0]
    with torch.no_grad():
        return model((torch.from_numpy(images).float() / 255 - mean) / std).double().numpy()


def test_ood_json_matches_sklearn_on_hand_computed_scores(samples, ood_sets):
    result = invoke("ood", samples / "digits_hard.safetensors", "--data", samples / "digits_test.npz",
                    "--ood-data", ood_sets / "shuffled.npz", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "calibscope/ood" and doc["schema_version"] == 1
    assert [r["score"] for r in doc["results"]] == ["msp", "max-logit", "energy"]
    z_in = hand_logits(samples, np.load(samples / "digits_test.npz")["images"])
    z_out = hand_logits(samples, np.load(ood_sets / "shuffled.npz")["images"])
    y = np.r_[np.ones(len(z_in)), np.zeros(len(z_out))]
    for entry, score in zip(doc["results"], (lambda z: np.exp(z.max(1) - np.logaddexp.reduce(z, axis=1)),
                                              lambda z: z.max(1),
                                              lambda z: np.logaddexp.reduce(z, axis=1)), strict=True):
        s = np.r_[score(z_in), score(z_out)]
        # float32 model outputs: the engine's batches may differ from the hand loop in the last bits
        assert entry["metrics"]["auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=2e-4)
        assert entry["metrics"]["aupr_in"] == pytest.approx(sklearn_metrics.average_precision_score(y, s), abs=2e-3)
    assert doc["data"]["ood"].endswith("shuffled.npz") and doc["inference"]["ood"]["role"] == "ood"


def test_ood_table_figures_and_mahalanobis(samples, ood_sets, tmp_path):
    out = tmp_path / "figs"
    result = invoke("ood", samples / "digits_hard.safetensors", "--data", samples / "digits_test.npz",
                    "--ood-data", ood_sets / "shuffled.npz", "--train", samples / "digits_train.npz", "--out", out)
    assert result.exit_code == 0, result.stderr
    for name in ("msp", "max-logit", "energy", "mahalanobis", "AUROC", "FPR@95TPR", "ledoit-wolf"):
        assert name in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["ood.json", "ood_roc.png", "ood_roc.svg", "ood_scores.png",
                                                     "ood_scores.svg"]
    doc = json.loads((out / "ood.json").read_text())
    maha = doc["results"][3]
    assert maha["score"] == "mahalanobis" and maha["metrics"]["auroc"] > 0.9
    assert doc["mahalanobis"]["n_train"] == 150 and 0 < doc["mahalanobis"]["shrinkage"] < 1
    assert doc["results"][0]["roc"]["thresholds"][0] is None  # +inf → null


def test_ood_with_logits_files_on_both_sides(samples, tmp_path):
    z = np.random.default_rng(1).normal(0, 1, (300, 10)).astype(np.float32)
    np.savez(tmp_path / "ood_logits.npz", logits=z)
    result = invoke("ood", samples / "digits_hard_test_logits.npz", "--ood-data", tmp_path / "ood_logits.npz",
                    "--score", "energy", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    z_in = np.load(samples / "digits_hard_test_logits.npz")["logits"].astype(np.float64)
    s = np.r_[np.logaddexp.reduce(z_in, axis=1), np.logaddexp.reduce(z.astype(np.float64), axis=1)]
    y = np.r_[np.ones(len(z_in)), np.zeros(len(z))]
    assert doc["results"][0]["metrics"]["auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=1e-9)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ood-data", "{sets}/big.npz"], "shape [1, 16, 16]"),
        (["--ood-data", "{sets}/empty.npz"], "0 examples"),
        (["--ood-data", "{sets}/shuffled.npz", "--score", "mahalanobis"], "needs --train"),
        (["--ood-data", "{sets}/shuffled.npz", "--train", "{sets}/train_tiny.npz", "--shrinkage", "0"], "singular"),
        (["--ood-data", "{sets}/shuffled.npz", "--shrinkage", "lots"], "--shrinkage"),
        (["--ood-data", "{sets}/shuffled.npz", "--score", "msp,nope"], "nope"),
        (["--ood-data", "{sets}/shuffled.npz", "--temperature", "-1"], "--temperature"),
        (["--ood-data", "{sets}/missing.npz"], "does not exist"),
    ],
)
def test_ood_bad_input_is_one_line_exit_2(samples, ood_sets, extra, message):
    args = [a.format(sets=ood_sets) for a in extra]
    result = invoke("ood", samples / "digits_hard.safetensors", "--data", samples / "digits_test.npz", *args)
    assert message in one_line_error(result)


def test_ood_mahalanobis_needs_a_model_not_logits(samples, ood_sets):
    result = invoke("ood", samples / "digits_hard_test_logits.npz", "--ood-data", ood_sets / "shuffled.npz",
                    "--train", samples / "digits_train.npz")
    assert "logits file" in one_line_error(result)


# --------------------------------------------------------------------------------------------------------
# selective
# --------------------------------------------------------------------------------------------------------


def test_selective_table_json_and_figure(samples, tmp_path):
    out = tmp_path / "sel"
    result = invoke("selective", samples / "digits_hard_test_logits.npz", "--score", "msp,energy",
                    "--target-risk", "0.01", "--out", out)
    assert result.exit_code == 0, result.stderr
    for text in ("AURC", "E-AURC", "Accuracy @ 90 % coverage", "Coverage @ risk ≤ 1 %", "msp", "energy"):
        assert text in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["risk_coverage.png", "risk_coverage.svg", "selective.json"]
    doc = json.loads((out / "selective.json").read_text())
    assert doc["schema"] == "calibscope/selective"
    d = np.load(samples / "digits_hard_test_logits.npz")
    z, labels = d["logits"].astype(np.float64), d["labels"]
    msp = np.exp(z.max(1) - np.logaddexp.reduce(z, axis=1))
    errors = (z.argmax(1) != labels)[np.argsort(-msp, kind="stable")]
    assert len(np.unique(msp)) == len(msp)  # no ties here: the plain definition applies
    aurc = np.mean(np.cumsum(errors) / np.arange(1, len(errors) + 1))
    entry = doc["results"][0]
    assert entry["score"] == "msp" and entry["aurc"] == pytest.approx(aurc, abs=1e-6)
    assert entry["at_risk"]["risk"] <= 0.01 and entry["n"] == len(labels)


def test_selective_mahalanobis_and_bad_input(samples):
    ok = invoke("selective", samples / "digits_hard.safetensors", "--data", samples / "digits_test.npz",
                "--score", "mahalanobis", "--train", samples / "digits_train.npz", "--json")
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["results"][0]["score"] == "mahalanobis"
    bad = invoke("selective", samples / "digits_hard_test_logits.npz", "--coverage", "0.5,1.5")
    assert "coverage" in one_line_error(bad)
    no_train = invoke("selective", samples / "digits_hard_test_logits.npz", "--score", "mahalanobis")
    assert "--train" in one_line_error(no_train)


@pytest.mark.parametrize("command", ["ood", "selective"])
def test_help_imports_no_heavy_module(command):
    code = (
        "import sys, typer\n"
        "from calibscope.cli import ood, selective\n"
        "app = typer.Typer()\n"
        "app.command(name='ood')(ood.ood)\n"
        "app.command(name='selective')(selective.selective)\n"
        f"try:\n    app([{command!r}, '--help'])\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'matplotlib', 'scipy', 'numpy') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("HEAVY="), result.stdout[-300:]
