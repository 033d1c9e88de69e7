from __future__ import annotations

from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own output cache, never the user's ./.calibscope."""
    monkeypatch.setenv("CALIBSCOPE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    import sys

    common = sys.modules.get("calibscope.cli._common")
    if common is not None:  # an earlier `--debug` run must not leak into commands invoked without the root app
        monkeypatch.setitem(common.STATE, "debug", False)


@pytest.fixture(autouse=True)
def _torch_threads():
    """A command run in-process may choose one intra-op thread (calibscope.workflows.threads): not for the
    tests after it."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES
