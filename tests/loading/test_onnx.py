"""ONNX models written by torch.onnx.export, run by onnxruntime: the logits equal the torch model's (1e-4), the
output-based commands run, and the commands that need gradients or features refuse in one line."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from calibscope.cli import app
from calibscope.errors import InputError
from calibscope.inference.engine import InferenceOptions, run_inference
from calibscope.loading.checkpoint import load_checkpoint

if os.environ.get("CI"):
    import onnxruntime
else:
    onnxruntime = pytest.importorskip("onnxruntime")

runner = CliRunner()


class Net(nn.Module):
    def __init__(self, two_outputs: bool = False):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 16),
                                  nn.ReLU())
        self.classifier = nn.Linear(16, 10)
        self.two_outputs = two_outputs

    def forward(self, x):
        f = self.body(x)
        return (f, self.classifier(f)) if self.two_outputs else self.classifier(f)


def _export(model: nn.Module, path, *, dynamic: bool, names=("logits",)):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(8, 1, 8, 8),), str(path), dynamo=False, input_names=["input"],
                          output_names=list(names),
                          dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}} if dynamic
                          else None)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = Net().eval()
    _export(model, root / "model.onnx", dynamic=True)
    _export(model, root / "static.onnx", dynamic=False)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (45, 1, 8, 8), dtype=torch.uint8, generator=gen)
    with torch.no_grad():
        logits = model(x.float() / 255)
    y = torch.where(torch.rand(45, generator=gen) < 0.7, logits.argmax(1), torch.randint(0, 10, (45,), generator=gen))
    np.savez(root / "test.npz", images=x.numpy(), labels=y.numpy())  # labels the model mostly gets right
    np.savez(root / "ood.npz", images=(255 - x).numpy(), labels=y.numpy())
    return root, model, x, logits


@pytest.mark.parametrize("name", ["model.onnx", "static.onnx"])
def test_onnx_logits_equal_the_torch_model(exported, name):
    root, _, x, logits = exported
    ckpt = load_checkpoint(root / name)
    assert ckpt.format == "onnx"
    out = run_inference(ckpt.module, x, options=InferenceOptions(batch_size=16), progress=False)
    torch.testing.assert_close(out.logits, logits, atol=1e-4, rtol=0)


def test_onnx_is_recognised_by_content_not_by_name(exported, tmp_path):
    root, _, x, logits = exported
    (tmp_path / "weights.bin").write_bytes((root / "model.onnx").read_bytes())
    ckpt = load_checkpoint(tmp_path / "weights.bin")
    torch.testing.assert_close(run_inference(ckpt.module, x, progress=False).logits, logits, atol=1e-4, rtol=0)


def test_onnx_with_two_named_outputs_takes_the_logits(exported, tmp_path):
    root, _, x, _ = exported
    torch.manual_seed(2)
    model = Net(two_outputs=True).eval()
    _export(model, tmp_path / "two.onnx", dynamic=True, names=("features", "logits"))
    out = run_inference(load_checkpoint(tmp_path / "two.onnx").module, x, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(x.float() / 255)[1], atol=1e-4, rtol=0)
    assert out.meta["output"] == "logits"


@pytest.mark.parametrize("command", [["ece"], ["temperature"], ["selective"],
                                     ["ood", "--ood-data", "{root}/ood.npz"]])
def test_onnx_output_based_commands(exported, command):
    root, *_ = exported
    args = [c.format(root=root) for c in command]
    result = runner.invoke(app, [args[0], str(root / "model.onnx"), "--data", str(root / "test.npz"), *args[1:],
                                 "--json", "--no-cache"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)


@pytest.mark.parametrize("command", [["hessian"], ["landscape"], ["project"], ["ood", "--ood-data", "{root}/ood.npz",
                                                                 "--train", "{root}/test.npz"]])
def test_onnx_refuses_what_needs_a_torch_graph_in_one_line(exported, command):
    root, *_ = exported
    args = [c.format(root=root) for c in command]
    result = runner.invoke(app, [args[0], str(root / "model.onnx"), "--data", str(root / "test.npz"), *args[1:]])
    assert result.exit_code == 2, result.output
    assert "ONNX model run by onnxruntime" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_onnx_wrong_input_shape_is_one_line(exported, tmp_path):
    root, *_ = exported
    ckpt = load_checkpoint(root / "model.onnx")
    with pytest.raises(InputError, match="refused inputs input"):
        run_inference(ckpt.module, torch.zeros(2, 3, 8, 8), progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_onnx_on_cuda_gives_the_same_logits(exported):
    root, _, x, logits = exported
    out = run_inference(load_checkpoint(root / "model.onnx").module, x,
                        options=InferenceOptions(device="cuda"), progress=False)
    torch.testing.assert_close(out.logits, logits, atol=1e-4, rtol=0)
