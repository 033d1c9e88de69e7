"""Doctest collection over calibscope/ (``pytest --doctest-modules calibscope tests``): modules whose optional
dependency is not installed are not collected (their import is the documented one-line error), and doctests
get their own output cache, as the tests do."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

# module (relative to this folder) → the optional package it needs at import time
OPTIONAL = {
    "calibscope/integrations/lightning.py": "lightning",
    "calibscope/integrations/huggingface.py": "transformers",
}


def pytest_ignore_collect(collection_path: Path, config):
    rel = collection_path.resolve().relative_to(Path(__file__).resolve().parent).as_posix() \
        if collection_path.resolve().is_relative_to(Path(__file__).resolve().parent) else ""
    package = OPTIONAL.get(rel)
    if package is not None and importlib.util.find_spec(package) is None:
        return True
    return None


def pytest_configure(config):
    if config.getoption("doctestmodules", False) and "CALIBSCOPE_CACHE_DIR" not in os.environ:
        os.environ["CALIBSCOPE_CACHE_DIR"] = tempfile.mkdtemp(prefix="calibscope-doctest-cache-")
