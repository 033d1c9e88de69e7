"""Hostile command lines: each ends with exit 2 and one line on stderr that names the problem — never exit 3,
never exit 0 with a wrong number, never a half-written output set."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from calibscope.cli import app
from tests.hostile import SAMPLES

LOGITS = str(SAMPLES / "digits_hard_test_logits.npz")
MODEL = str(SAMPLES / "digits_hard.pt2")
DATA = str(SAMPLES / "digits_test.npz")


def refused(args: list[str], match: str) -> str:
    result = CliRunner().invoke(app, args)
    err = result.stderr.strip()
    assert result.exit_code == 2, f"exit {result.exit_code}: {err[-2000:]}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("calibscope: error:"), err
    assert match in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args, match", [
    (["ece", LOGITS, "--seed", str(2**70), "--bootstrap", "200"], "seed"),
    (["ece", LOGITS, "--temperature", "1e-45"], "temperature 1e-45 is too small"),
    (["ece", LOGITS, "--bins", "10000000"], "at most 10,000"),
    (["ece", LOGITS, "--bootstrap", "10000000"], "at most 100,000"),
    (["temperature", LOGITS, "--bins", "10000000"], "at most 10,000"),
])
def test_numeric_options_beyond_their_bounds(args, match):
    refused(args, match)


def test_dataset_with_inputs_but_no_labels(tmp_path):
    path = tmp_path / "nolabels.npz"
    np.savez(path, x=np.zeros((5, 1, 8, 8), np.float32))
    refused(["ece", MODEL, "--data", str(path), "--no-cache"], "has inputs but no labels")


def test_deeply_nested_baseline(tmp_path):
    path = tmp_path / "baseline.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    refused(["ece", LOGITS, "--baseline", str(path), "--max-increase", "0.01"], "nested")


def test_deeply_nested_temperature_file(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("{\"temperature\": " + "[" * 100_000 + "]" * 100_000 + "}")
    refused(["ece", LOGITS, "--temperature-from", str(path)], "nested")


def test_limit_minus_one_on_a_logits_file():
    refused(["ece", LOGITS, "--limit", "-1"], "--limit")


@pytest.mark.parametrize("command", [["mi", MODEL, "--data", DATA, "--classes", "3,5"],
                                     ["hessian", MODEL, "--data", DATA]])
def test_seed_beyond_64_bits_for_every_command(command):
    refused([*command, "--seed", str(2**70)], "--seed")


def test_destinations_are_checked_before_the_model_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIBSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "adir").mkdir()
    refused(["ece", MODEL, "--data", DATA, "--junit", str(tmp_path / "adir")], "is a directory")
    refused(["ece", MODEL, "--data", DATA, "--out", str(tmp_path / "f"), "--bins-csv", str(tmp_path / "no" / "b")],
            "does not exist")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "f").exists()  # nothing ran, nothing written


def test_config_naming_a_fifo(tmp_path, monkeypatch):
    import os

    os.mkfifo(tmp_path / "data.npz")
    (tmp_path / "calibscope.toml").write_text('data = "data.npz"\n')
    monkeypatch.chdir(tmp_path)
    refused(["ece", MODEL], "FIFO")


def test_config_file_that_is_a_fifo(tmp_path, monkeypatch):
    import os

    os.mkfifo(tmp_path / "calibscope.toml")
    monkeypatch.chdir(tmp_path)
    refused(["ece", LOGITS], "FIFO")
