"""`calibscope distill` end to end on the shipped logits: a teacher distilled against itself gives KL 0 and
agreement 1, and the JSON numbers are the library's (itself checked against numpy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from calibscope.cli import app
from calibscope.diagnostics.distillation import soft_targets

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"


def test_teacher_against_itself_and_numbers_equal_the_library(tmp_path):
    logits = SAMPLES / "digits_hard_test_logits.npz"
    result = CliRunner().invoke(app, ["distill", str(logits), str(logits), "--json", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (student,) = doc["students"]
    assert student["distillation_loss"] == 0.0 and student["kl_at_1"] == 0.0 and student["agreement"] == 1.0
    data = np.load(logits)
    expected = soft_targets(torch.from_numpy(data["logits"]), torch.from_numpy(data["labels"]))
    (teacher,) = doc["teachers"].values()
    for got, want in zip(teacher["profiles"], expected.profiles, strict=True):
        assert got["non_target_entropy"] == pytest.approx(want.non_target_entropy, abs=1e-12)
    assert (tmp_path / "distill.json").exists() and (tmp_path / "non_target_entropy.png").exists()


def test_more_teachers_than_checkpoints_is_exit_2():
    logits = SAMPLES / "digits_hard_test_logits.npz"
    result = CliRunner().invoke(app, ["distill", str(logits), "--teachers", "2"])
    assert result.exit_code == 2
