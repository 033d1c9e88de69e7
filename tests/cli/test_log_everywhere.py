"""``--log tensorboard:DIR`` on every command that produces results: the scalars in the event files (read back
with TensorBoard's EventAccumulator) equal the numbers of the command's own --json document."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from calibscope.cli import app
from tests.cli.test_action import S
from tests.integrations.conftest import event_scalars, need

LOGITS = str(S / "digits_hard_test_logits.npz")
COMMANDS = ("selective", "ood", "hessian", "landscape", "project", "mi", "conformal", "calibrate", "distill", "report",
            "compare")


@pytest.mark.parametrize("argv, tag, pick", [
    (["selective", LOGITS], "msp/aurc", lambda d: d["results"][0]["aurc"]),
    (["ood", LOGITS, "--ood-data", LOGITS], "msp/metrics/auroc",
     lambda d: next(r for r in d["results"] if r["score"] == "msp")["metrics"]["auroc"]),
    (["conformal", LOGITS, "--val", LOGITS], "result/coverage", lambda d: d["result"]["coverage"]),
    (["landscape", str(S / "digits_hard.pt2"), "--data", str(S / "digits_train.npz"), "--steps", "3"],
     "surface/center_loss", lambda d: d["surface"]["center_loss"]),
])
def test_log_tensorboard_scalars_equal_the_json(tmp_path, argv, tag, pick):
    need("tensorboard")
    result = CliRunner().invoke(app, [*argv, "--json", "--log", f"tensorboard:{tmp_path}"])
    assert result.exit_code == 0, result.output
    scalars, _ = event_scalars(tmp_path)
    assert scalars[tag][0][1] == pytest.approx(pick(json.loads(result.stdout)), rel=1e-6)  # float32 on disk


@pytest.mark.parametrize("command", COMMANDS)
def test_every_result_command_takes_log(command):
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0 and "--log" in result.output, result.output
