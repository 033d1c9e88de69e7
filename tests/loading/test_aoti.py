"""AOTInductor packages (torch._inductor.aoti_compile_and_package): named as such and refused without --trust,
loaded with it; a package compiled for a static batch is padded; logits equal the torch model's (1e-5).

Compiling takes one to two minutes on two cores, so this runs in CI (CI set) or with CALIBSCOPE_SLOW_TESTS=1.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from calibscope.cli import app
from calibscope.errors import UntrustedFileError
from calibscope.inference.engine import InferenceOptions, run_inference
from calibscope.loading.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(
    not (os.environ.get("CI") or os.environ.get("CALIBSCOPE_SLOW_TESTS")) or shutil.which("g++") is None,
    reason="compiles an AOTInductor package (slow): set CALIBSCOPE_SLOW_TESTS=1 (CI runs it); needs g++")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    root = tmp_path_factory.mktemp("aoti")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    program = torch.export.export(model, (torch.randn(8, 1, 8, 8),))  # static batch 8
    torch._inductor.aoti_compile_and_package(program, package_path=str(root / "model.pt2"))
    x = torch.randint(0, 256, (21, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    np.savez(root / "data.npz", images=x.numpy(), labels=np.arange(21) % 4)
    return root, model, x


def test_aoti_package_is_named_and_needs_trust(package):
    root, *_ = package
    with pytest.raises(UntrustedFileError, match="is an AOTInductor package .*--trust"):
        load_checkpoint(root / "model.pt2")
    result = CliRunner().invoke(app, ["ece", str(root / "model.pt2"), "--data", str(root / "data.npz")])
    assert result.exit_code == 2 and "AOTInductor package" in result.output


def test_aoti_static_batch_is_padded_and_logits_match(package):
    root, model, x = package
    ckpt = load_checkpoint(root / "model.pt2", trust=True)
    assert ckpt.format == "aoti" and ckpt.module.static_batch == 8
    out = run_inference(ckpt.module, x, options=InferenceOptions(batch_size=16), progress=False)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(x.float() / 255), atol=1e-5, rtol=0)
    result = CliRunner().invoke(app, ["ece", str(root / "model.pt2"), "--data", str(root / "data.npz"), "--trust",
                                      "--no-cache"])
    assert result.exit_code == 0, result.output
