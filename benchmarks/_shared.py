"""Pieces the benchmark scripts share: ResNet-18 (CIFAR or ImageNet stem) and the CPU-then-CUDA device loop.

Scripts run as ``python benchmarks/NAME.py``, so this module is imported as ``_shared``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(y)) + self.skip(x))


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016): widths w, 2w, 4w, 8w; 11.2 M parameters at w = 64. ``stem="cifar"``: a 3×3
    stride-1 stem (CIFAR layout); ``stem="imagenet"``: 7×7 stride 2 + 3×3 max-pool, torchvision's resnet18
    layout (same FLOPs at 224², 1.8 GFLOPs per image), built here so that no benchmark needs torchvision."""

    def __init__(self, num_classes: int = 10, width: int = 64, stem: str = "cifar"):
        super().__init__()
        w = width
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        layers, cin = [], w
        for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
            layers += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


def devices(choice: str) -> Iterator[torch.device]:
    """``auto`` → CPU, then CUDA when present; ``cpu``/``cuda`` → that one. Says so when CUDA is missing."""
    for name in (["cpu", "cuda"] if choice in ("auto", "all") else [choice]):
        if name == "cuda" and not torch.cuda.is_available():
            print("--- cuda: not available, skipped")
            continue
        yield torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device: torch.device, repeats: int) -> float:
    """Best of ``repeats`` timings after a warm-up (robust to other processes on a shared machine)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def torch_uncertainty_module(name: str):
    """``torch_uncertainty.<name>`` without the package's ``__init__`` (which imports torchvision and Lightning
    helpers): the packages above ``name`` are entered as bare namespaces, as tests/reference_libs.py does.
    Raises ImportError when torch-uncertainty (or a module ``name`` needs) is not installed."""
    import importlib
    import importlib.util
    import sys
    import types

    entered = sys.modules.get("torch_uncertainty")
    if entered is not None and getattr(entered, "__path__", None):
        root = list(entered.__path__)[0]
    else:
        spec = importlib.util.find_spec("torch_uncertainty")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("torch-uncertainty is not installed (pip install --no-deps torch-uncertainty==0.13.0)")
        root = spec.submodule_search_locations[0]
    parts = name.split(".")
    for depth in range(len(parts)):
        package = ".".join(["torch_uncertainty", *parts[:depth]])
        if package not in sys.modules:
            module = types.ModuleType(package)
            module.__path__ = [f"{root}/{'/'.join(parts[:depth])}".rstrip("/")]
            sys.modules[package] = module
    post = sys.modules.get("torch_uncertainty.post_processing")
    if name.startswith("post_processing.") and post is not None and not hasattr(post, "PostProcessing"):
        post.PostProcessing = importlib.import_module("torch_uncertainty.post_processing.abstract").PostProcessing
    return importlib.import_module(f"torch_uncertainty.{name}")
