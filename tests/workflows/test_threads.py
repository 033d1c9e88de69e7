"""The command line's thread policy: one intra-op thread while every model is tiny work, torch's setting back
when one is not, and nothing changed when the user chose (environment variables) or for library sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from calibscope.workflows import threads
from calibscope.workflows.session import Session

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"


@pytest.fixture
def two_threads(monkeypatch):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CALIBSCOPE_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_estimates():
    assert threads.is_tiny(10_000, 64, 1_347)
    assert not threads.is_tiny(270_000, 3 * 32 * 32, 10_000)  # CIFAR ResNet-20: keeps torch's threads
    assert not threads.is_tiny(1_000, 64, threads.SMALL_ROWS + 1)
    path = SAMPLES / "digits_hard.pt2"
    assert threads.checkpoint_parameters(path) == path.stat().st_size // 4
    assert threads.checkpoint_parameters(SAMPLES) == sum(
        f.stat().st_size for f in SAMPLES.rglob("*") if f.is_file()) // 4


def test_tiny_models_run_on_one_thread_and_a_large_one_restores(two_threads, tmp_path):
    session = Session(SAMPLES / "digits_test.npz", auto_threads=True, use_cache=False)
    session.outputs(SAMPLES / "digits_hard.pt2")
    assert torch.get_num_threads() == 1
    big = tmp_path / "big_logits.npz"  # a logits file above SMALL_LOGITS elements
    rng = np.random.default_rng(0)
    n, k = 1 << 12, (threads.SMALL_LOGITS >> 12) + 1
    np.savez(big, logits=rng.standard_normal((n, k), dtype=np.float32), labels=rng.integers(0, k, n))
    Session(None, auto_threads=True, _shared=session._shared).outputs(big)
    assert torch.get_num_threads() == 2
    session.outputs(SAMPLES / "digits_ls.pt2")  # once a large one was seen, the default stays
    assert torch.get_num_threads() == 2


def test_user_choice_and_library_sessions_are_left_alone(two_threads, monkeypatch):
    Session(SAMPLES / "digits_test.npz", use_cache=False).outputs(SAMPLES / "digits_hard.pt2")
    assert torch.get_num_threads() == 2  # no auto_threads: the library never changes torch's setting
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    Session(SAMPLES / "digits_test.npz", auto_threads=True, use_cache=False).outputs(SAMPLES / "digits_hard.pt2")
    assert torch.get_num_threads() == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("CALIBSCOPE_THREADS", "3")
    Session(SAMPLES / "digits_test.npz", auto_threads=True, use_cache=False).outputs(SAMPLES / "digits_hard.pt2")
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_a_bad_thread_count_is_one_line_and_exit_2(two_threads, monkeypatch, tmp_path, value):
    from typer.testing import CliRunner

    from calibscope.cli import app

    monkeypatch.setenv("CALIBSCOPE_THREADS", value)
    out = tmp_path / "ece-out"
    result = CliRunner().invoke(app, ["ece", str(SAMPLES / "digits_hard.pt2"), "--data",
                                      str(SAMPLES / "digits_test.npz"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "CALIBSCOPE_THREADS must be a whole number" in result.output and "Traceback" not in result.output
    assert not out.exists()
    assert torch.get_num_threads() == 2
