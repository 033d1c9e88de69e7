"""``calibscope landscape A [B]``: every loss it prints equals the cross-entropy of the model evaluated here, at
perturbed weights built independently (numpy filter normalisation, ``torch.func.functional_call``); line
endpoints are each model's own training loss; seeds reproduce; bad inputs exit 2 in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call
from typer.testing import CliRunner

from calibscope.cli import app
from calibscope.workflows.landscape import LandscapeSettings, run_landscape
from calibscope.workflows.session import Session

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"
TRAIN = SAMPLES / "digits_train.npz"
HARD, SAM = SAMPLES / "digits_hard.pt2", SAMPLES / "digits_sam.pt2"
runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, ["landscape", *map(str, args)])


def _json(*args) -> dict:
    result = _invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ---- an independent evaluation: the exported program loaded with torch, inputs normalised by hand -------


@pytest.fixture(scope="module")
def data():
    from safetensors import safe_open

    meta = safe_open(str(SAMPLES / "digits_hard.safetensors"), "pt").metadata()
    mean, std = json.loads(meta["calibscope.mean"])[0], json.loads(meta["calibscope.std"])[0]
    npz = np.load(TRAIN)
    x = (torch.from_numpy(npz["images"]).float() / 255 - mean) / std  # ToTensor, then Normalize
    return x, torch.from_numpy(npz["labels"])


def _module(path: Path):
    return torch.export.load(str(path)).module()


def _loss(module, params: dict[str, torch.Tensor], x, y) -> float:
    with torch.no_grad():
        logits = functional_call(module, params, (x,)).double()
    return float(torch.nn.functional.cross_entropy(logits, y))


def _directions(module, seed: int, count: int) -> list[dict[str, np.ndarray]]:
    """Li et al.'s filter normalisation in numpy on the same Gaussian draws (one torch.Generator, parameters
    in order, a draw also for the 1-D ones, which get 0)."""
    gen = torch.Generator().manual_seed(seed)
    named = list(module.named_parameters())
    out = []
    for _ in range(count):
        d = {}
        for name, p in named:
            z = torch.randn(p.shape, generator=gen, dtype=torch.float32).numpy().astype(np.float64)
            if p.ndim <= 1:
                d[name] = np.zeros(p.shape)
                continue
            w = p.detach().numpy().astype(np.float64)
            zf, wf = z.reshape(z.shape[0], -1), w.reshape(w.shape[0], -1)
            scale = np.linalg.norm(wf, axis=1) / np.linalg.norm(zf, axis=1)
            d[name] = (zf * scale[:, None]).reshape(z.shape)
        out.append(d)
    return out


def _perturbed(module, shift: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {n: p.detach() + torch.from_numpy(shift[n]).float() for n, p in module.named_parameters()}


def test_1d_surface_equals_direct_evaluation(data):
    x, y = data
    doc = _json(HARD, "--data", TRAIN, "--steps", "5", "--span", "0.8", "--seed", "3")
    s = doc["surface"]
    assert s["alphas"] == pytest.approx(list(np.linspace(-0.8, 0.8, 5)), abs=1e-15)
    assert s["n_examples"] == 150 and s["dimensions"] == 1
    module = _module(HARD)
    (d,) = _directions(module, 3, 1)
    for alpha, loss in zip(s["alphas"], s["loss"], strict=True):
        expected = _loss(module, _perturbed(module, {n: alpha * v for n, v in d.items()}), x, y)
        assert loss == pytest.approx(expected, abs=1e-6)
    assert s["center_loss"] == pytest.approx(_loss(module, dict(module.named_parameters()), x, y), abs=1e-6)


def test_2d_surface_equals_direct_evaluation(data):
    x, y = data
    doc = _json(HARD, "--data", TRAIN, "--dimensions", "2", "--steps", "3", "--span", "0.5", "--seed", "1")
    s = doc["surface"]
    module = _module(HARD)
    d1, d2 = _directions(module, 1, 2)
    assert s["betas"] == s["alphas"] == [-0.5, 0.0, 0.5]
    for i, a in enumerate(s["alphas"]):
        for j, b in enumerate(s["betas"]):
            expected = _loss(module, _perturbed(module, {n: a * d1[n] + b * d2[n] for n in d1}), x, y)
            assert s["loss"][i][j] == pytest.approx(expected, abs=1e-6)


def test_line_endpoints_are_each_models_training_loss_and_midpoint_the_averaged_weights(data):
    x, y = data
    doc = _json(HARD, SAM, "--data", TRAIN, "--steps", "1", "--line-steps", "3")
    line = doc["line"]
    a, b = _module(HARD), _module(SAM)
    wa, wb = dict(a.named_parameters()), dict(b.named_parameters())
    assert line["ts"] == [0.0, 0.5, 1.0]
    assert line["loss"][0] == pytest.approx(_loss(a, wa, x, y), abs=1e-6)
    assert line["loss"][2] == pytest.approx(_loss(b, wb, x, y), abs=1e-6)
    middle = {n: 0.5 * wa[n].detach() + 0.5 * wb[n].detach() for n in wa}
    assert line["loss"][1] == pytest.approx(_loss(a, middle, x, y), abs=1e-6)
    distance = math.sqrt(sum(float((wb[n].detach().double() - wa[n].detach().double()).square().sum()) for n in wa))
    assert line["distance"] == pytest.approx(distance, rel=1e-9)
    chord = line["loss"][0] + 0.5 * (line["loss"][2] - line["loss"][0])
    assert line["barrier"] == pytest.approx(max(0.0, line["loss"][1] - chord), abs=1e-15)


def test_same_seed_same_numbers_other_seed_differs():
    args = (HARD, "--data", TRAIN, "--steps", "3", "--examples", "60")
    first, again, other = _json(*args, "--seed", "5"), _json(*args, "--seed", "5"), _json(*args, "--seed", "6")
    assert first["surface"]["loss"] == again["surface"]["loss"]
    assert first["surface"]["n_examples"] == 60
    assert other["surface"]["loss"] != first["surface"]["loss"]


def test_progress_is_reported_for_every_evaluation():
    seen: list[tuple[str, int, int]] = []
    run_landscape(Session(TRAIN), HARD, SAM, LandscapeSettings(dimensions=2, steps=2, line_steps=2, examples=20),
                  on_progress=lambda *a: seen.append(a))
    assert seen == [("line", 1, 2), ("line", 2, 2)] + [("surface", i, 4) for i in range(1, 5)]


def test_out_writes_figures_and_json(tmp_path):
    result = _invoke(HARD, SAM, "--data", TRAIN, "--steps", "3", "--line-steps", "3", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == ["landscape.json", "landscape.png", "landscape.svg", "landscape_line.png", "landscape_line.svg"]
    assert "barrier above the chord" in result.stdout and "training loss L(w)" in result.stdout
    doc = json.loads((tmp_path / "o" / "landscape.json").read_text())
    assert doc["schema"] == "calibscope/landscape" and len(doc["line"]["loss"]) == 3


def test_surface_figure_draws_the_numbers():
    from calibscope.render.landscape_view import line_figure, surface_figure

    r = run_landscape(Session(TRAIN), HARD, SAM, LandscapeSettings(steps=5, line_steps=3, examples=30))
    (curve,) = [ln for ln in surface_figure(r).axes[0].get_lines() if len(ln.get_xdata()) == 5]
    assert list(curve.get_ydata()) == list(r.surface.loss)
    assert list(line_figure(r).axes[0].get_lines()[0].get_ydata()) == list(r.line.loss)


# ---- bad input: exit 2, one line ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_arch(tmp_path_factory) -> Path:
    """A DigitsCNN with a narrower hidden layer, same normalisation: the line has no meaning."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from calibscope.models import DigitsCNN

    meta = dict(safe_open(str(SAMPLES / "digits_hard.safetensors"), "pt").metadata())
    meta["calibscope.arch_kwargs"] = json.dumps({"num_classes": 10, "channels": 32, "hidden": 64, "in_channels": 1})
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("arch") / "narrow.safetensors"
    save_file(DigitsCNN(num_classes=10, channels=32, hidden=64, in_channels=1).state_dict(), str(path), metadata=meta)
    return path


@pytest.mark.parametrize(("args", "message"), [
    (("{logits}", "--data", "{train}"), "holds precomputed logits, not a model"),
    (("{hard}", "{narrow}", "--data", "{train}"), "differ in the shape of"),
    (("{hard}", "--data", "{train}", "--dimensions", "3"), "dimensions"),
    (("{hard}", "--data", "{train}", "--steps", "0"), "steps"),
    (("{hard}", "--data", "{train}", "--span", "-1"), "span"),
    (("{hard}", "--data", "{train}", "--seed", "-1"), "seed"),
    (("{hard}",), "data"),
])
def test_bad_input_exits_2_in_one_line(other_arch, args, message):
    paths = {"logits": SAMPLES / "digits_hard_test_logits.npz", "train": TRAIN, "hard": HARD, "narrow": other_arch}
    result = _invoke(*(a.format(**paths) for a in args))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
