"""Import the reference libraries the tests compare against, without the torchvision they declare.

torch-uncertainty and pytorch-ood are installed with ``pip install --no-deps`` (the ``reference`` extra; see
the Makefile): both list torchvision, which does not import against this torch, but the modules compared
against (``post_processing/conformal/{thr,aps,raps}.py``; ``detector/*.py``) need only torch, numpy and scipy.
Their package ``__init__`` files import everything (torchvision included), so the packages are entered as bare
namespaces and only those modules are imported. Absent packages skip the test unless ``CI`` is set.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

import pytest


def _namespace(name: str, path: str) -> None:
    if name not in sys.modules or not getattr(sys.modules[name], "_calibscope_namespace", False):
        module = types.ModuleType(name)
        module.__path__ = [path]
        module._calibscope_namespace = True
        sys.modules[name] = module


def _root(package: str):
    entered = sys.modules.get(package)
    if getattr(entered, "_calibscope_namespace", False):
        return entered.__path__[0]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        if os.environ.get("CI"):
            pytest.fail(f"{package} (the `reference` test extra) is not installed, and CI is set")
        pytest.skip(f"{package} is not installed (pip install --no-deps {package})")
    return spec.submodule_search_locations[0]


def torch_uncertainty_conformal():
    """(ConformalClsTHR, ConformalClsAPS, ConformalClsRAPS) of torch-uncertainty."""
    root = _root("torch_uncertainty")
    _namespace("torch_uncertainty", root)
    _namespace("torch_uncertainty.post_processing", f"{root}/post_processing")
    _namespace("torch_uncertainty.post_processing.conformal", f"{root}/post_processing/conformal")
    post = sys.modules["torch_uncertainty.post_processing"]
    post.PostProcessing = importlib.import_module("torch_uncertainty.post_processing.abstract").PostProcessing
    post.TemperatureScaler = None  # used only with enable_ts=True; the tests pass enable_ts=False
    thr = importlib.import_module("torch_uncertainty.post_processing.conformal.thr")
    aps = importlib.import_module("torch_uncertainty.post_processing.conformal.aps")
    raps = importlib.import_module("torch_uncertainty.post_processing.conformal.raps")
    return thr.ConformalClsTHR, aps.ConformalClsAPS, raps.ConformalClsRAPS


def pytorch_ood_detector(module: str):
    """The module ``pytorch_ood.detector.<module>``."""
    root = _root("pytorch_ood")
    _namespace("pytorch_ood", root)
    _namespace("pytorch_ood.detector", f"{root}/detector")
    return importlib.import_module(f"pytorch_ood.detector.{module}")


def torch_uncertainty_risk_coverage():
    """The module ``torch_uncertainty.metrics.classification.risk_coverage`` (AURC, AUGRC)."""
    root = _root("torch_uncertainty")
    _namespace("torch_uncertainty", root)
    _namespace("torch_uncertainty.metrics", f"{root}/metrics")
    _namespace("torch_uncertainty.metrics.classification", f"{root}/metrics/classification")
    return importlib.import_module("torch_uncertainty.metrics.classification.risk_coverage")
