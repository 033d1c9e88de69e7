"""The report's conformal section: its numbers equal a direct numpy LAC on logits computed by hand (the shared
sample pages of tests/cli/test_report_cli.py: the LS model, --val = the 300 validation digits), and its sentence
follows the numbers (fed the opposite ordering, it flips)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from calibscope.models import DigitsCNN
from calibscope.render.conformal_section import conformal_finding
from tests.cli.test_report_cli import MODELS, TEST, VAL, page, sample_pages


def hand_probs(path, images):
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    model = DigitsCNN(**json.loads(meta["calibscope.arch_kwargs"]))
    model.load_state_dict(load_file(str(path)))
    model.eval()
    mean, std = json.loads(meta["calibscope.mean"])[0], json.loads(meta["calibscope.std"])[0]
    with torch.no_grad():
        z = model((torch.from_numpy(images).float() / 255 - mean) / std).double().numpy()
    z = z - z.max(1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


def numpy_lac(p_cal, y_cal, p_test, y_test, alpha=0.1):
    n = len(y_cal)
    scores = np.sort(1 - p_cal[np.arange(n), y_cal])
    q = scores[math.ceil((n + 1) * (1 - alpha)) - 1]
    sets = (1 - p_test) <= q
    sets[np.arange(len(sets)), p_test.argmax(1)] |= ~sets.any(1)  # never empty: the top class joins
    return sets[np.arange(len(y_test)), y_test].mean(), sets.sum(1).mean()


def test_section_numbers_equal_numpy_lac(tmp_path_factory):
    pages = sample_pages(tmp_path_factory)
    p = page(pages["report"])
    assert p.sections["conformal"] == "ok"
    val, test = np.load(VAL), np.load(TEST)
    model = MODELS["ls"]
    coverage, size = numpy_lac(hand_probs(model, val["images"]), val["labels"], hand_probs(model, test["images"]),
                               test["labels"])
    name = Path(model).name
    n_test = len(test["labels"])
    assert p.values[("conformal.lac.coverage", name)] == pytest.approx(coverage, abs=1 / n_test)
    assert p.values[("conformal.lac.mean_size", name)] == pytest.approx(size, abs=1 / n_test)
    for method in ("aps", "raps"):
        assert 0 < p.values[(f"conformal.{method}.coverage", name)] <= 1
    doc = {s["key"]: s for s in pages["report_doc"]["sections"]}["conformal"]
    assert [d["result"]["calibration"]["method"] for d in doc["document"]] == ["lac", "aps", "raps"]


def _fake(method, coverage, size, n=1000, alpha=0.1):
    cal = SimpleNamespace(method=method, alpha=alpha)
    return SimpleNamespace(name="m", report=SimpleNamespace(calibration=cal, coverage=coverage, mean_size=size,
                                                            n_test=n, target=1 - alpha))


def test_finding_flips_with_the_numbers():
    a = conformal_finding([_fake("lac", 0.90, 1.2), _fake("aps", 0.91, 1.8)])
    b = conformal_finding([_fake("lac", 0.91, 1.8), _fake("aps", 0.90, 1.2)])
    assert "LAC gives the smallest sets (mean 1.200" in a and "APS the largest (mean 1.800" in a
    assert "APS gives the smallest sets (mean 1.200" in b and "LAC the largest (mean 1.800" in b
    assert "within 3 s.e." in a
    low = conformal_finding([_fake("lac", 0.85, 1.0), _fake("aps", 0.90, 1.5)])
    assert "below the target by more than 3 s.e.: LAC (85.00 %)" in low
    high = conformal_finding([_fake("lac", 0.95, 1.0), _fake("aps", 0.90, 1.5)])
    assert "above the target by more than 3 s.e. (conservative sets): LAC" in high


def test_set_size_figure_draws_the_shares():
    from calibscope.render.conformal_section import set_size_figure

    a = _fake("lac", 0.9, 1.2)
    a.report.size_histogram = (0, 8, 2, 0)
    b = _fake("aps", 0.92, 1.5)
    b.report.size_histogram = (0, 5, 5, 0)
    fig = set_size_figure([a, b], ["m"])
    assert [p.get_height() for p in fig.axes[0].patches] == [0.0, 0.8, 0.2]
    assert [p.get_height() for p in fig.axes[1].patches] == [0.0, 0.5, 0.5]
    assert "LAC: coverage 90.00 %" in fig.axes[0].get_title()
