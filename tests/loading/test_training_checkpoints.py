"""Checkpoints written by training frameworks: a LightningModule's dict with more than the network, timm's
train.py checkpoint (an argparse.Namespace inside), and an --arch file whose sibling modules import.
Each loaded model must give the original network's logits (1e-5)."""

from __future__ import annotations

import argparse
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

from calibscope.errors import InputError, InputNote
from calibscope.loading.checkpoint import load_checkpoint
from calibscope.models import DigitsCNN

ARCH = "calibscope.models:DigitsCNN"
X = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))


class _Accuracy(nn.Module):
    """Stands in for a torchmetrics metric: its states are buffers, so they land in the state_dict."""

    def __init__(self):
        super().__init__()
        self.register_buffer("tp", torch.zeros(10))
        self.register_buffer("total", torch.zeros(()))


class LitClassifier(nn.Module):
    """What a LightningModule's state_dict holds: the network under `model`, the loss's class weights, metrics."""

    def __init__(self, ema: bool = False):
        super().__init__()
        self.model = DigitsCNN()
        self.criterion = nn.CrossEntropyLoss(weight=torch.linspace(0.5, 1.5, 10))
        self.train_acc = _Accuracy()
        if ema:
            self.model_ema = DigitsCNN()


def _lightning_checkpoint(module: nn.Module) -> dict:
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    return {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0", "state_dict": module.state_dict(),
            "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 4}}}}, "callbacks": {},
            "optimizer_states": [opt.state_dict()], "lr_schedulers": [], "hparams_name": "kwargs",
            "hyper_parameters": {"lr": 0.1, "label_smoothing": 0.1}}


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


def test_lightning_checkpoint_with_criterion_and_metrics(tmp_path):
    torch.manual_seed(0)
    lit = LitClassifier()
    torch.save(_lightning_checkpoint(lit), tmp_path / "epoch=3.ckpt")
    with pytest.warns(InputNote, match=r"keys under 'model.'; 3 other entries .*criterion.weight"):
        ckpt = load_checkpoint(tmp_path / "epoch=3.ckpt", arch=ARCH)
    torch.testing.assert_close(_logits(ckpt.module), _logits(lit.model), atol=1e-5, rtol=0)


def test_two_copies_of_the_network_need_prefix(tmp_path):
    torch.manual_seed(1)
    lit = LitClassifier(ema=True)
    torch.save(_lightning_checkpoint(lit), tmp_path / "ema.ckpt")
    with pytest.raises(InputError, match=r"'model\.' and 'model_ema\.' each fit the architecture.*--prefix"):
        load_checkpoint(tmp_path / "ema.ckpt", arch=ARCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputNote)
        ckpt = load_checkpoint(tmp_path / "ema.ckpt", arch=ARCH, prefix="model_ema")
    torch.testing.assert_close(_logits(ckpt.module), _logits(lit.model_ema), atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="no key .* starts with it"):
        load_checkpoint(tmp_path / "ema.ckpt", arch=ARCH, prefix="net.")


def test_timm_training_checkpoint_with_a_namespace_loads_without_trust(tmp_path):
    torch.manual_seed(2)
    net = DigitsCNN()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    args = argparse.Namespace(model="digits_cnn", lr=0.1, epochs=10, smoothing=0.1, data_dir="/data", amp=False)
    # the dict of timm.utils.CheckpointSaver._save
    torch.save({"epoch": 9, "arch": "digits_cnn", "state_dict": net.state_dict(), "optimizer": opt.state_dict(),
                "version": 2, "args": args, "metric": 97.5}, tmp_path / "model_best.pth.tar")
    ckpt = load_checkpoint(tmp_path / "model_best.pth.tar", arch=ARCH)
    torch.testing.assert_close(_logits(ckpt.module), _logits(net), atol=1e-5, rtol=0)


def test_arch_file_sibling_imports(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "blocks_i13.py").write_text(textwrap.dedent('''
        from torch import nn

        def head(width, classes):
            return nn.Linear(width, classes)
    '''))
    (project / "net_i13.py").write_text(textwrap.dedent('''
        from torch import nn
        from blocks_i13 import head  # a sibling module, as in `python train.py`

        class Net(nn.Module):
            def __init__(self, classes=3):
                super().__init__()
                self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
                self.classifier = head(16, classes)

            def forward(self, x):
                return self.classifier(self.body(x))
    '''))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the folder goes on sys.path: undo it after the test
    namespace: dict = {}
    sys.path.insert(0, str(project))
    exec((project / "net_i13.py").read_text(), namespace)
    sys.path.remove(str(project))
    torch.manual_seed(3)
    net = namespace["Net"]()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    monkeypatch.chdir(tmp_path)  # the file is named relative to the working directory, not its own folder
    ckpt = load_checkpoint(tmp_path / "net.pt", arch="project/net_i13.py:Net")
    torch.testing.assert_close(_logits(ckpt.module), _logits(net), atol=1e-5, rtol=0)
