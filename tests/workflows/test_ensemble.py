"""Ensembles and MC-dropout through the workflows, checked against numpy on the members' own outputs.

Acceptance (issue 20): an ensemble of one checkpoint is that checkpoint; MC-dropout with p = 0 is the
deterministic model; the MC-dropout passes are the model with only its dropout layers in train mode, seeded.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from calibscope import Session
from calibscope.errors import InputError
from calibscope.inference.mc_dropout import batch_seed
from calibscope.workflows.calibration import CalibrationSettings, run_calibration
from calibscope.workflows.ensemble import Predictive

NET = textwrap.dedent('''
    from torch import nn

    class Net(nn.Module):
        """64 inputs -> 32 (BatchNorm, ReLU, dropout p) -> 10; ``dropout=None``: no dropout layer at all."""

        def __init__(self, p=0.0, dropout="Dropout"):
            super().__init__()
            layers = [nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU()]
            if dropout is not None:
                layers.append(getattr(nn, dropout)(p))
            self.body = nn.Sequential(*layers)
            self.classifier = nn.Linear(32, 10)

        def forward(self, x):
            return self.classifier(self.body(x))
''')


def _np_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_ece(p, y, bins=15):
    conf, pred = p.max(1), p.argmax(1)
    acc = (pred == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)  # right-closed bins ((m-1)/M, m/M]
    total = 0.0
    for m in range(bins):
        sel = idx == m
        if sel.any():
            total += sel.sum() / len(p) * abs(acc[sel].mean() - conf[sel].mean())
    return total


@pytest.fixture(scope="module")
def net_files(tmp_path_factory):
    """Arch file + state_dicts: with dropout p = 0, p = 0.3 and without any dropout layer; BatchNorm running
    statistics far from (0, 1), so a BatchNorm left in train mode would change every output."""
    folder = tmp_path_factory.mktemp("mcnet")
    (folder / "mcnet.py").write_text(NET)
    namespace: dict = {}
    exec(NET, namespace)
    files = {}
    for key, kwargs in (("p0", {"p": 0.0}), ("p3", {"p": 0.3}), ("none", {"dropout": None})):
        torch.manual_seed(0)
        net = namespace["Net"](**kwargs)
        bn = net.body[2]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.2, 3.0)
        torch.save(net.state_dict(), folder / f"{key}.pt")
        files[key] = (folder / f"{key}.pt", kwargs, net)
    return folder, files


def _session(samples, folder, kwargs, **options):
    return Session(samples / "digits_test.npz", arch=f"{folder / 'mcnet.py'}:Net", arch_kwargs=kwargs, limit=300,
                   batch_size=1024, **options)


def test_ensemble_of_one_checkpoint_is_that_checkpoint(samples):
    s = Session(samples / "digits_test.npz")
    path = samples / "digits_hard.safetensors"
    single, _ = s.outputs(path)
    ens, ckpt = s.outputs(Predictive((path,)))
    shift = ens.logits - single.logits.double()  # log p̄ = z - logsumexp(z): a constant per row
    assert float((shift - shift[:, :1]).abs().max()) < 1e-5
    diff = (ens.logits.softmax(1) - single.logits.double().softmax(1)).abs().max()
    assert float(diff) < 1e-12
    settings = CalibrationSettings()
    a, b = run_calibration(s, path, settings), run_calibration(s, Predictive((path,)), settings)
    for key in ("ece", "mce", "nll", "brier", "accuracy"):
        assert b.metrics.metrics[key].value == pytest.approx(a.metrics.metrics[key].value, abs=1e-12)
    assert b.name == "ensemble(digits_hard.safetensors)" and ckpt.format == "ensemble(safetensors)"


def test_ensemble_is_the_mean_softmax_of_its_members(samples):
    s = Session(samples / "digits_test.npz")
    paths = [samples / f"digits_{k}.pt2" for k in ("hard", "ls", "sam")]
    members = [s.outputs(p)[0].logits.numpy() for p in paths]
    ens, _ = s.outputs(Predictive(tuple(paths)))
    mean = _np_softmax(np.stack(members)).mean(axis=0)
    np.testing.assert_allclose(ens.logits.exp().numpy(), mean, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(ens.member_logits.numpy(), np.stack(members))
    y = ens.labels.numpy()
    result = run_calibration(s, Predictive(tuple(paths)), CalibrationSettings())
    assert result.value == pytest.approx(_np_ece(mean, y), abs=1e-12)
    assert result.metrics.metrics["accuracy"].value == pytest.approx((mean.argmax(1) == y).mean(), abs=1e-15)
    nll = -np.log(mean[np.arange(len(y)), y]).mean()
    assert result.metrics.metrics["nll"].value == pytest.approx(nll, rel=1e-12)


def test_members_must_agree(samples, tmp_path):
    z = np.random.default_rng(0).normal(size=(1347, 5)).astype(np.float32)
    np.savez(tmp_path / "five.npz", logits=z, labels=np.zeros(1347, dtype=np.int64))
    s = Session(None)
    with pytest.raises(InputError, match="5 classes|10 classes"):
        s.outputs(Predictive((samples / "digits_hard_test_logits.npz", tmp_path / "five.npz")))


def test_mc_dropout_with_p0_is_the_deterministic_model(samples, net_files):
    folder, files = net_files
    path, kwargs, _ = files["p0"]
    s = _session(samples, folder, kwargs)
    deterministic, _ = s.outputs(path)
    mc, ckpt = s.outputs(Predictive((path,), mc_dropout=4, seed=1))
    assert ckpt.format == "mc-dropout(state_dict)" and tuple(mc.member_logits.shape) == (4, 300, 10)
    for member in mc.member_logits:
        torch.testing.assert_close(member, deterministic.logits, rtol=0, atol=0)
    assert float((mc.logits.softmax(1) - deterministic.logits.double().softmax(1)).abs().max()) < 1e-12
    assert mc.meta["dropout_layers"] == ["body.4"]


def test_mc_dropout_passes_are_the_model_with_only_dropout_in_train_mode(samples, net_files):
    folder, files = net_files
    path, kwargs, net = files["p3"]
    s = _session(samples, folder, kwargs, use_cache=False)
    mc, _ = s.outputs(Predictive((path,), mc_dropout=3, seed=5))
    x = s.dataset.inputs.float() / 255
    net.eval()
    net.body[4].train()
    for i in range(3):
        torch.manual_seed(batch_seed(5, i, 0))
        with torch.no_grad():
            expected = net(x)
        torch.testing.assert_close(mc.member_logits[i], expected, rtol=0, atol=1e-6)
    assert not torch.equal(mc.member_logits[0], mc.member_logits[1])  # the passes differ
    mean = _np_softmax(mc.member_logits.numpy()).mean(axis=0)
    np.testing.assert_allclose(mc.logits.exp().numpy(), mean, rtol=0, atol=1e-13)
    net.eval()


def test_mc_dropout_is_reproducible_and_seeded(samples, net_files):
    folder, files = net_files
    path, kwargs, _ = files["p3"]
    first = _session(samples, folder, kwargs, use_cache=False).outputs(Predictive((path,), mc_dropout=3, seed=2))[0]
    again = _session(samples, folder, kwargs, use_cache=False).outputs(Predictive((path,), mc_dropout=3, seed=2))[0]
    other = _session(samples, folder, kwargs, use_cache=False).outputs(Predictive((path,), mc_dropout=3, seed=3))[0]
    cached = _session(samples, folder, kwargs).outputs(Predictive((path,), mc_dropout=3, seed=2))[0]
    hit = _session(samples, folder, kwargs).outputs(Predictive((path,), mc_dropout=3, seed=2))[0]
    assert torch.equal(first.member_logits, again.member_logits)
    assert torch.equal(first.member_logits, cached.member_logits)
    assert torch.equal(hit.member_logits, first.member_logits)
    assert hit.meta["member_cache"] == ["hit"] * 3
    assert not torch.equal(first.member_logits, other.member_logits)
    session = _session(samples, folder, kwargs, use_cache=False)
    session.checkpoint(path)  # building the module from --arch draws initial weights; the passes must not draw
    rng_state = torch.get_rng_state()
    session.outputs(Predictive((path,), mc_dropout=1, seed=9))
    assert torch.equal(torch.get_rng_state(), rng_state)  # the caller's random state is untouched


def test_mc_dropout_refuses_what_it_cannot_switch(samples, net_files):
    folder, files = net_files
    path, kwargs, _ = files["none"]
    with pytest.raises(InputError, match="has none"):
        _session(samples, folder, kwargs).outputs(Predictive((path,), mc_dropout=2))
    s = Session(samples / "digits_test.npz", limit=50)
    for frozen, what in (("digits_hard.pt2", "torch.export"), ("digits_hard.ts", "TorchScript"),
                         ("digits_hard_test_logits.npz", "logits")):
        with pytest.raises(InputError, match=what):
            s.outputs(Predictive((samples / frozen,), mc_dropout=2))


def test_shipped_dropout_sample(samples):
    path = samples / "digits_dropout.safetensors"
    assert path.stat().st_size < 200_000
    s = Session(samples / "digits_test.npz", limit=200)
    module = s.checkpoint(path).module
    assert isinstance(module.dropout, torch.nn.Dropout) and module.dropout.p == 0.5
    mc, ckpt = s.outputs(Predictive((path,), mc_dropout=2))
    assert mc.meta["dropout_layers"] == ["dropout"] and not torch.equal(mc.member_logits[0], mc.member_logits[1])
    assert not module.dropout.training  # back in eval mode after the passes


def test_conformal_on_an_ensemble_is_lac_on_the_mean_softmax(samples):
    from calibscope.workflows.conformal import ConformalSettings, run_conformal

    paths = (samples / "digits_hard.pt2", samples / "digits_sam.pt2")
    test = Session(samples / "digits_test.npz")
    result = run_conformal(test, Predictive(paths), ConformalSettings(alpha=0.1, method="lac"),
                           val=samples / "digits_val.npz")
    val = Session(samples / "digits_val.npz")
    p_val = _np_softmax(np.stack([val.outputs(p)[0].logits.numpy() for p in paths])).mean(0)
    p_test = _np_softmax(np.stack([test.outputs(p)[0].logits.numpy() for p in paths])).mean(0)
    y_val, y_test = val.dataset.labels.numpy(), test.dataset.labels.numpy()
    scores = np.sort(1 - p_val[np.arange(len(y_val)), y_val])
    n = len(scores)
    q_hat = scores[int(np.ceil((n + 1) * 0.9)) - 1]  # the ⌈(n+1)(1−α)⌉-th smallest score
    assert result.report.calibration.q_hat == pytest.approx(q_hat, abs=1e-12)
    sets = 1 - p_test <= q_hat + 1e-12
    sets[np.arange(len(sets)), p_test.argmax(1)] = True  # no empty sets: the top class joins them
    assert result.report.coverage == pytest.approx(sets[np.arange(len(y_test)), y_test].mean(), abs=1e-15)
    assert result.report.mean_size == pytest.approx(sets.sum(1).mean(), abs=1e-15)


def test_a_second_data_set_needs_model_members(samples):
    from calibscope.workflows.temperature import run_temperature

    ens = Predictive((samples / "digits_hard_test_logits.npz", samples / "digits_hard.pt2"))
    with pytest.raises(InputError, match="must be models"):
        run_temperature(Session(samples / "digits_test.npz"), ens, apply=samples / "digits_val.npz")
