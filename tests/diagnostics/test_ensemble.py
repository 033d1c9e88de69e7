"""The ensemble / MC-dropout math of calibscope.diagnostics.ensemble against a direct numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibscope.diagnostics.ensemble import (
    disagreement,
    epistemic_confidence,
    epistemic_summary,
    mean_log_probs,
    member_log_probs,
    mutual_information,
)
from calibscope.errors import InputError


def _np_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _np_entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)


@pytest.fixture(scope="module")
def members() -> np.ndarray:
    rng = np.random.default_rng(7)
    z = rng.normal(size=(5, 300, 6)) * rng.uniform(0.5, 6, size=(5, 300, 1))
    z[:, :20] *= 40  # near one-hot members, some disagreeing: saturated probabilities
    return z.astype(np.float32)


def test_mean_log_probs_is_log_of_the_mean_softmax(members):
    p = _np_softmax(members.astype(np.float64))
    got = mean_log_probs(member_log_probs(torch.from_numpy(members)))
    np.testing.assert_allclose(got.exp().numpy(), p.mean(axis=0), rtol=0, atol=1e-14)
    np.testing.assert_allclose(got.numpy(), np.log(p.mean(axis=0)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(torch.logsumexp(got, 1).numpy(), 0.0, atol=1e-14)  # softmax(z̄) = p̄ exactly


def test_mutual_information_and_disagreement_equal_numpy(members):
    p = _np_softmax(members.astype(np.float64))
    mean = p.mean(axis=0)
    mi = _np_entropy(mean) - _np_entropy(p).mean(axis=0)
    lp = member_log_probs(torch.from_numpy(members))
    np.testing.assert_allclose(mutual_information(lp).numpy(), np.maximum(mi, 0), rtol=1e-9, atol=1e-12)
    # the same number as the mean KL of the members to their mean (generalised Jensen–Shannon divergence)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * (np.log(p) - np.log(mean)), 0.0).sum(-1).mean(0)
    np.testing.assert_allclose(mutual_information(lp).numpy(), kl, rtol=1e-9, atol=1e-12)
    top = mean.argmax(axis=1)
    p_top = p[:, np.arange(p.shape[1]), top]
    np.testing.assert_allclose(disagreement(lp).numpy(), p_top.var(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(epistemic_confidence(lp, score="mutual-information").numpy(),
                                  -mutual_information(lp).numpy())
    s = epistemic_summary(lp)
    assert s.members == 5 and s.n == 300
    assert s.total_entropy == pytest.approx(_np_entropy(mean).mean(), rel=1e-12)
    assert s.aleatoric_entropy == pytest.approx(_np_entropy(p).mean(), rel=1e-12)
    assert s.total_entropy - s.aleatoric_entropy == pytest.approx(s.mutual_information, rel=1e-9)


def test_bounds_and_one_member():
    certain = torch.log(torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]], dtype=torch.float64))
    assert mutual_information(certain).item() == pytest.approx(np.log(2), abs=1e-15)  # log min(S, K)
    assert disagreement(certain).item() == pytest.approx(0.25, abs=1e-15)  # the maximum variance
    one = member_log_probs(torch.randn(1, 50, 4))
    assert torch.equal(mutual_information(one), torch.zeros(50, dtype=torch.float64))
    assert torch.equal(disagreement(one), torch.zeros(50, dtype=torch.float64))
    same = member_log_probs(torch.randn(1, 50, 4).expand(3, 50, 4))
    assert float(mutual_information(same).max()) < 1e-15 and float(disagreement(same).max()) < 1e-30


@pytest.mark.parametrize("bad", [torch.zeros(3, 4), torch.zeros(2, 3, 1), torch.full((2, 3, 4), float("nan")),
                                 torch.zeros(2, 3, 4, dtype=torch.int64)])
def test_bad_input_is_an_input_error(bad):
    with pytest.raises(InputError):
        mutual_information(bad)
    with pytest.raises(InputError):
        epistemic_confidence(member_log_probs(torch.zeros(2, 3, 4)), score="entropy")
