"""--labels, --output and --prefix end to end (exit codes, one-line messages, numbers against numpy)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from calibscope.cli import app

runner = CliRunner()


def _numpy_ece(z: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, acc = p.max(1), (p.argmax(1) == y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.mean() * abs(acc[sel].mean() - conf[sel].mean())
    return total


def test_logits_npy_with_labels_file(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(80, 5)).astype(np.float32) * 3
    y = np.where(rng.random(80) < 0.6, logits.argmax(1), rng.integers(0, 5, 80))
    np.save(tmp_path / "logits.npy", logits)  # e.g. np.save("logits.npy", np.asarray(jax_logits))
    bare = runner.invoke(app, ["ece", str(tmp_path / "logits.npy")])
    assert bare.exit_code == 2 and "--labels FILE" in bare.output and "Traceback" not in bare.output
    np.save(tmp_path / "onehot.npy", np.eye(5, dtype=np.float32)[y])  # keras.utils.to_categorical
    result = runner.invoke(app, ["ece", str(tmp_path / "logits.npy"), "--labels", str(tmp_path / "onehot.npy"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["results"][0]
    assert entry["ece"] == pytest.approx(_numpy_ece(logits.astype(np.float64), y), abs=1e-6)
    for command in (["temperature"], ["selective"]):
        result = runner.invoke(app, [*command, str(tmp_path / "logits.npy"), "--labels", str(tmp_path / "onehot.npy")])
        assert result.exit_code == 0, result.output
    np.save(tmp_path / "short.npy", y[:-3])
    short = runner.invoke(app, ["ece", str(tmp_path / "logits.npy"), "--labels", str(tmp_path / "short.npy")])
    assert short.exit_code == 2 and "77 labels but there are 80 rows" in short.output


MODEL = textwrap.dedent('''
    from torch import nn

    class Heads(nn.Module):
        def __init__(self, same_width=False):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 10 if same_width else 32), nn.ReLU())
            self.head = nn.Linear(10 if same_width else 32, 10)

        def forward(self, x):
            f = self.body(x)
            return {"embedding": f, "scores": self.head(f)}
''')


def test_output_option_and_labels_refused_for_a_model(tmp_path):
    (tmp_path / "heads.py").write_text(MODEL)
    namespace: dict = {}
    exec(MODEL, namespace)
    torch.manual_seed(0)
    model = namespace["Heads"](same_width=True).eval()
    torch.save(model.state_dict(), tmp_path / "heads.pt")
    x = torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        z = model(x.float() / 255)["scores"].double().numpy()
    y = z.argmax(1)
    np.savez(tmp_path / "data.npz", images=x.numpy(), labels=y)
    common = ["ece", str(tmp_path / "heads.pt"), "--arch", f"{tmp_path / 'heads.py'}:Heads", "--arch-kwargs",
              '{"same_width": true}', "--data", str(tmp_path / "data.npz"), "--no-cache"]
    ambiguous = runner.invoke(app, common)
    assert ambiguous.exit_code == 2 and "--output KEY|INDEX" in ambiguous.output
    chosen = runner.invoke(app, [*common, "--output", "scores", "--json"])
    assert chosen.exit_code == 0, chosen.output
    assert json.loads(chosen.stdout)["results"][0]["ece"] == pytest.approx(_numpy_ece(z, y), abs=1e-6)
    np.save(tmp_path / "y.npy", y)
    refused = runner.invoke(app, [*common, "--output", "scores", "--labels", str(tmp_path / "y.npy")])
    assert refused.exit_code == 2 and "--labels goes with a logits" in refused.output


def test_prefix_option_picks_one_copy(tmp_path):
    from calibscope.models import DigitsCNN

    torch.manual_seed(0)
    net, ema = DigitsCNN(), DigitsCNN()
    state = {**{f"model.{k}": v for k, v in net.state_dict().items()},
             **{f"model_ema.{k}": v for k, v in ema.state_dict().items()}, "criterion.weight": torch.ones(10)}
    torch.save({"epoch": 1, "state_dict": state, "pytorch-lightning_version": "2.4.0"}, tmp_path / "last.ckpt")
    x = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8)
    np.savez(tmp_path / "data.npz", images=x.numpy(), labels=np.arange(20) % 10)
    common = ["ece", str(tmp_path / "last.ckpt"), "--arch", "calibscope.models:DigitsCNN", "--data",
              str(tmp_path / "data.npz"), "--no-cache"]
    ambiguous = runner.invoke(app, common)
    assert ambiguous.exit_code == 2 and "--prefix" in ambiguous.output
    result = runner.invoke(app, [*common, "--prefix", "model_ema.", "--json"])
    assert result.exit_code == 0, result.output
    with torch.no_grad():
        z = ema.eval()(x.float() / 255).double().numpy()
    assert json.loads(result.stdout)["results"][0]["ece"] == pytest.approx(_numpy_ece(z, np.arange(20) % 10),
                                                                            abs=1e-6)
    assert "other entries" in result.stderr
