"""The Gram-matrix detector (Sastry & Oore 2020) equals pytorch-ood 0.4's ``Gram`` on the same model and data.

Model: the shipped digits_hard CNN in float64; layers: its three ReLU outputs (pytorch-ood gets the same three
maps as the outputs of three sequential blocks); scored: 200 test digits and the same digits inverted; fit
data: the 150 training digits. pytorch-ood draws its held-out split with the global ``torch.randperm``; we give
ours a generator seeded the same way, so both hold out the same examples. pytorch-ood's outlier score is Δ; ours is
−Δ. Run under float64 default dtype so that pytorch-ood's accumulators are float64 too.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from calibscope.diagnostics.gram import default_poles, fit_gram, gram_score, gram_statistics
from calibscope.errors import InputError
from calibscope.inference.layers import default_feature_layers, layer_statistics
from tests.reference_libs import pytorch_ood_detector

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"


@pytest.fixture(scope="module")
def setup():
    from calibscope.loading.checkpoint import load_checkpoint
    from calibscope.loading.dataset import load_dataset

    ckpt = load_checkpoint(SAMPLES / "digits_hard.safetensors")
    model = copy.deepcopy(ckpt.module).eval().double()
    mean, std = ckpt.metadata["mean"], ckpt.metadata["std"]
    train = load_dataset(SAMPLES / "digits_train.npz")
    test = load_dataset(SAMPLES / "digits_test.npz")
    x_train, y_train = train.inputs, train.labels
    x_test = test.inputs[:200].double() / 255
    x_test = torch.cat([x_test, 1 - x_test])
    return model, mean, std, x_train, y_train, x_test


def _normalised(x, mean, std):
    x = x.double() / 255 if x.dtype == torch.uint8 else x.double()
    return (x - torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)) / torch.tensor(
        std, dtype=torch.float64).view(1, -1, 1, 1)


@pytest.mark.parametrize("poles", [None, [1, 2, 3, 5]])
def test_gram_equals_pytorch_ood(setup, poles):
    gram = pytorch_ood_detector("gram")
    model, mean, std, x_train, y_train, x_test = setup
    f = model.features
    blocks = [nn.Sequential(f[0], f[1]), nn.Sequential(f[2], f[3]), nn.Sequential(f[4], f[5], f[6], f[7])]
    layers = default_feature_layers(model)
    assert layers == ("features.1", "features.3", "features.7")
    orders = list(poles) if poles is not None else list(range(1, len(blocks) + 1))  # pytorch-ood's default 1..L
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ref = gram.Gram(model.classifier, blocks, num_classes=10, num_poles_list=poles)
        loader = [(_normalised(x_train[i:i + 64], mean, std), y_train[i:i + 64]) for i in range(0, len(y_train), 64)]
        torch.manual_seed(123)
        ref.fit(loader)
        theirs = ref.predict(_normalised(x_test, mean, std))
    finally:
        torch.set_default_dtype(previous)

    def stats(x):
        return layer_statistics(model, x, layers=layers, reduce=lambda m: gram_statistics(m, orders), mean=mean,
                                std=std, batch_size=64, dtype=torch.float64)

    _, train_stats = stats(x_train)
    fit = fit_gram(train_stats, y_train, num_classes=10, poles=orders,
                   generator=torch.Generator().manual_seed(123))
    np.testing.assert_allclose(fit.layer_norms.numpy(), ref.layer_norm.numpy(), rtol=1e-12)
    logits, test_stats = stats(x_test)
    ours = gram_score(test_stats, logits, fit)
    np.testing.assert_allclose(ours.numpy(), -theirs.numpy(), atol=1e-5, rtol=1e-9)
    assert fit.n_val == sum(int(0.1 * int((y_train == k).sum())) for k in range(10))


def test_gram_statistics_equal_the_explicit_gram_matrix():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64)
    stats = gram_statistics(maps, (1, 2, 3))
    for i, p in enumerate((1, 2, 3)):
        t = maps.reshape(5, 4, 9) ** p
        s = (t @ t.transpose(1, 2)).sum(dim=2)
        np.testing.assert_allclose(stats[:, i].numpy(), (s.sign() * s.abs() ** (1 / p)).numpy(), rtol=1e-12)


def test_separate_validation_set_and_the_direction(setup):
    from calibscope.diagnostics.ood import detection_metrics

    model, mean, std, x_train, y_train, x_test = setup
    layers = default_feature_layers(model)
    orders = default_poles()

    def stats(x):
        return layer_statistics(model, x, layers=layers, reduce=lambda m: gram_statistics(m, orders), mean=mean,
                                std=std, dtype=torch.float64)

    from calibscope.loading.dataset import load_dataset

    val = load_dataset(SAMPLES / "digits_val.npz")
    _, s_fit = stats(x_train)
    _, s_val = stats(val.inputs)
    fit = fit_gram(s_fit, y_train, num_classes=10, poles=orders, val_stats=s_val, val_labels=val.labels)
    assert fit.split == "separate" and fit.n_val == len(val.labels) and fit.n_fit == len(y_train)
    logits, s_test = stats(x_test)
    score = gram_score(s_test, logits, fit)
    auroc = detection_metrics(score[:200], score[200:]).auroc
    assert auroc > 0.9  # inverted digits deviate from every class's Gram bounds (measured 1.0)


def test_gram_refuses_what_it_cannot_do(setup):
    model = setup[0]
    with pytest.raises(InputError, match="every class"):
        fit_gram([torch.zeros(4, 1, 2, dtype=torch.float64)], torch.tensor([0, 0, 1, 1]), num_classes=3, poles=[1])
    with pytest.raises(InputError, match="eager"):
        default_feature_layers(torch.jit.script(nn.Sequential(nn.Linear(2, 2), nn.ReLU())))
    with pytest.raises(InputError, match="no module named"):
        layer_statistics(model, torch.zeros(2, 1, 8, 8), layers=["nope"], reduce=lambda m: m)
