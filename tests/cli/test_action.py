"""The composite GitHub Action (action.yml) run locally: its shell steps, with the inputs as GitHub would pass
them, on the shipped sample model; outputs read back from $GITHUB_OUTPUT, JUnit and the job summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

yaml = pytest.importorskip("yaml") if not os.environ.get("CI") else __import__("yaml")

REPO = Path(__file__).resolve().parents[2]
S = REPO / "sample_checkpoints"
EXPRESSION = re.compile(r"\$\{\{\s*(inputs|github)\.([\w-]+)\s*\}\}")


def numpy_ece(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Independent reference: Guo et al.'s ECE, right-closed bins, float64 softmax."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, correct = p.max(1), (p.argmax(1) == labels).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for m in range(n_bins):
        mask = bins == m
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return ece


def run_action(tmp: Path, **given: str) -> tuple[int, dict[str, str], str]:
    """Every step of action.yml as the runner would: ``uses`` steps skipped (setup-python), ``if`` evaluated
    for the ``inputs.X == 'v'`` form it uses, ``${{ inputs.* }}`` / ``${{ github.action_path }}`` substituted
    into the step's env, ``run`` executed by ``bash --noprofile --norc -eo pipefail``."""
    action = yaml.safe_load((REPO / "action.yml").read_text())
    inputs = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()}
    missing = [n for n, spec in action["inputs"].items() if spec.get("required") and n not in given]
    assert not missing, missing
    inputs.update(given)
    output, summary = tmp / "github_output", tmp / "step_summary"
    output.write_text("")
    summary.write_text("")
    values = {"inputs": inputs, "github": {"action_path": str(REPO)}}
    env = {**os.environ, "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary), "RUNNER_TEMP": str(tmp),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "CALIBSCOPE_CACHE_DIR":
           str(tmp / "cache")}
    code = 0
    for step in action["runs"]["steps"]:
        condition = step.get("if")
        if condition:
            name, value = re.fullmatch(r"inputs\.([\w-]+) == '(.*)'", condition).groups()
            if inputs[name] != value:
                continue
        if "uses" in step:
            continue
        assert step["shell"] == "bash" and "${{" not in step["run"]  # inputs only through env
        step_env = {k: EXPRESSION.sub(lambda m: values[m[1]][m[2]], str(v)) for k, v in step.get("env", {}).items()}
        job = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=tmp,
                             env={**env, **step_env}, capture_output=True, text=True, timeout=300)
        code = job.returncode
        if code != 0:
            break
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return code, outputs, summary.read_text()


def test_action_passes_on_the_sample_model(tmp_path):
    code, outputs, summary = run_action(tmp_path, checkpoint=str(S / "digits_hard.pt2"),
                                        data=str(S / "digits_test.npz"), **{"max-ece": "0.2", "install": "false"})
    with np.load(S / "digits_hard_test_logits.npz") as f:  # the same model's logits, shipped beside it
        reference = numpy_ece(f["logits"], f["labels"])
    assert code == 0 and outputs["passed"] == "true"
    assert float(outputs["ece"]) == pytest.approx(reference, abs=1e-6)
    assert "| digits_hard.pt2 |" in summary and "**Gate passed**" in summary
    suite = ET.parse(tmp_path / outputs["junit"]).getroot()
    assert suite.find(".//failure") is None and suite.find(".//testcase") is not None


def test_action_fails_the_gate_and_reports_it(tmp_path):
    logits = S / "digits_hard_test_logits.npz"
    code, outputs, summary = run_action(tmp_path, checkpoint=str(logits), **{"max-ece": "0.01", "install": "false"})
    assert code == 1 and outputs["passed"] == "false"
    assert float(outputs["ece"]) > 0.01
    assert "❌" in summary and "**Gate failed**" in summary
    assert ET.parse(tmp_path / outputs["junit"]).getroot().find(".//failure") is not None
    code, outputs, _ = run_action(tmp_path, checkpoint=str(tmp_path / "missing.pt2"), install="false")
    assert code == 2 and outputs == {}
