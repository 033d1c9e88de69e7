"""Logit-gap mutual information (Müller et al. 2019 App. A.2) against a direct numpy implementation and cases
whose answer is known: one shared mean (Î → 0), well separated examples (Î = log N), two clusters (Î → log 2);
with L = 5 draws the estimator is biased upwards by about 0.1 nats."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from calibscope.diagnostics.mutual_information import (
    LogitGapMutualInformation,
    class_pair_examples,
    logit_gap_mutual_information,
    logit_gaps,
)
from calibscope.errors import InputError

LOG2 = math.log(2.0)


def reference_mi(y: np.ndarray) -> float:
    """The formula of Müller et al. App. A.2 written out term by term (float64, one draw at a time)."""
    n, draws = y.shape
    mu = y.mean(axis=1)
    sigma2 = ((y - mu[:, None]) ** 2).sum() / (n * (draws - 1))
    total = 0.0
    for x in range(n):
        for l_ in range(draws):
            exponents = -((y[x, l_] - mu) ** 2) / (2 * sigma2)  # over x'
            top = exponents.max()
            log_p_y = top + np.log(np.exp(exponents - top).sum()) - np.log(n)
            total += -((y[x, l_] - mu[x]) ** 2) / (2 * sigma2) - log_p_y
    return total / (n * draws)


def shared_mean(n=600, draws=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, draws))


def separated(n=600, draws=5, seed=0):
    rng = np.random.default_rng(seed)
    return np.arange(n)[:, None] * 10.0 + 1e-3 * rng.normal(size=(n, draws))


def two_groups(n=600, draws=5, seed=0):
    rng = np.random.default_rng(seed)
    means = np.where(np.arange(n) < n // 2, 0.0, 100.0)
    return means[:, None] + rng.normal(size=(n, draws))


@pytest.mark.parametrize("make", [shared_mean, separated, two_groups])
def test_matches_numpy_reference(make):
    y = make()
    result = logit_gap_mutual_information(torch.from_numpy(y))
    assert isinstance(result, LogitGapMutualInformation)
    assert result.nats == pytest.approx(reference_mi(y), abs=1e-9, rel=0)
    assert result.bits == pytest.approx(result.nats / LOG2, abs=1e-12)
    assert result.ceiling_nats == pytest.approx(math.log(600), abs=1e-15)
    assert (result.n_examples, result.n_draws, result.n_repetitions) == (600, 5, 1)
    mu = y.mean(axis=1, keepdims=True)
    assert result.sigma2 == pytest.approx(((y - mu) ** 2).sum() / (600 * 4), rel=1e-12)
    assert result.spread_nats is None


def test_unstructured_gaps_and_chunking_match_reference():
    rng = np.random.default_rng(3)
    y = rng.normal(size=(37, 4)) * rng.uniform(0.5, 3, size=(37, 1)) + rng.normal(scale=2, size=(37, 1))
    expected = reference_mi(y)
    for chunk in (None, 1, 5, 1000):
        assert logit_gap_mutual_information(torch.from_numpy(y), chunk_size=chunk).nats == pytest.approx(
            expected, abs=1e-9, rel=0)
    # float32 input and numpy input are accepted; the estimate is computed in float64
    assert logit_gap_mutual_information(y).nats == pytest.approx(expected, abs=1e-9, rel=0)
    y32 = y.astype(np.float32)
    assert logit_gap_mutual_information(torch.from_numpy(y32)).nats == pytest.approx(
        reference_mi(y32.astype(np.float64)), abs=1e-9, rel=0)


def test_shared_mean_is_near_zero_with_the_documented_upward_bias():
    # (a) every example has the same mean: the true MI is 0; with L = 5 the estimate is ~ +0.1 nats
    values = [logit_gap_mutual_information(shared_mean(seed=s)).nats for s in range(3)]
    for v in values:
        assert 0.07 < v < 0.14
    # the large-N approximation of the bias from the module docstring: ½log(1+1/L) + L/(2(L+1)) − (L−1)/(2L)
    L = 5
    approx = 0.5 * math.log(1 + 1 / L) + L / (2 * (L + 1)) - (L - 1) / (2 * L)
    assert np.mean(values) == pytest.approx(approx, abs=0.01)
    # the bias shrinks like 1/(2L) with more draws
    assert 0.0 < logit_gap_mutual_information(shared_mean(n=300, draws=50)).nats < 0.02


def test_well_separated_examples_reach_log_n():
    # (b) every example its own far-away mean, little noise: Î = log N to 1e-6
    result = logit_gap_mutual_information(torch.from_numpy(separated()))
    assert result.nats == pytest.approx(math.log(600), abs=1e-6)
    assert result.nats <= result.ceiling_nats + 1e-12


def test_two_groups_are_near_log_two_with_the_same_bias():
    # (c) N/2 examples around each of two far-apart means, unit noise: Î ≈ log 2 + ~0.1
    for s in range(3):
        excess = logit_gap_mutual_information(two_groups(seed=s)).nats - LOG2
        assert 0.07 < excess < 0.14


def test_repetitions_give_mean_and_spread():
    rng = np.random.default_rng(5)
    means = rng.normal(scale=2.0, size=(50, 1))
    reps = np.stack([means + rng.normal(size=(50, 5)) for _ in range(4)])  # [R, N, L]
    result = logit_gap_mutual_information(torch.from_numpy(reps))
    per = [reference_mi(r) for r in reps]
    assert result.n_repetitions == 4
    assert result.per_repetition_nats == pytest.approx(per, abs=1e-9)
    assert result.nats == pytest.approx(np.mean(per), abs=1e-9)
    assert result.spread_nats == pytest.approx(np.std(per, ddof=1), abs=1e-9)
    assert result.spread_bits == pytest.approx(result.spread_nats / LOG2)


def test_invariant_to_affine_changes_of_the_gap():
    y = two_groups(n=60, seed=1) * 0.01
    base = logit_gap_mutual_information(y).nats
    assert logit_gap_mutual_information(-3.0 * y + 7.0).nats == pytest.approx(base, abs=1e-9)


@pytest.mark.parametrize(
    ("gaps", "message"),
    [
        (np.zeros((1, 5)), "at least 2 examples"),
        (np.random.default_rng(0).normal(size=(10, 1)), "at least 2 augmented draws"),
        (np.tile(np.arange(10.0)[:, None], (1, 5)), "within-example variance σ² of the logit gap is 0"),
        (np.full((4, 3), np.nan), "finite"),
        (np.zeros(5), "shape [N, L]"),
        ("gaps", "tensor or array"),
    ],
)
def test_bad_input_is_one_line_input_error(gaps, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        logit_gap_mutual_information(gaps)
    assert "\n" not in str(info.value)


def test_zero_variance_message_explains_the_augmentation():
    with pytest.raises(InputError, match="the augmentation does not change the model's output"):
        logit_gap_mutual_information(torch.ones(8, 5))


def test_chunk_size_is_validated():
    with pytest.raises(InputError, match="`chunk_size` to be an integer larger than 0"):
        logit_gap_mutual_information(shared_mean(n=10), chunk_size=0)


# ---------------------------------------------------------------------------------------- helpers


def test_class_pair_examples_are_seeded_and_capped():
    labels = torch.tensor([0, 1, 2] * 20 + [1] * 5)  # 20 of class 0, 25 of class 1, 20 of class 2
    index = class_pair_examples(labels, (1, 2), per_class=10, seed=4)
    assert index.dtype == torch.int64 and index.shape == (20,)
    assert (labels[index[:10]] == 1).all() and (labels[index[10:]] == 2).all()
    assert torch.equal(index, class_pair_examples(labels, (1, 2), per_class=10, seed=4))
    assert not torch.equal(index, class_pair_examples(labels, (1, 2), per_class=10, seed=5))
    assert len(set(index.tolist())) == 20
    capped = class_pair_examples(labels, (0, 1), per_class=300)
    assert int((labels[capped] == 0).sum()) == 20 and int((labels[capped] == 1).sum()) == 25


@pytest.mark.parametrize(
    ("classes", "message"),
    [((3, 3), "two different classes"), ((1,), "exactly two class indices"), ((1, 7), "class 7 has no examples")],
)
def test_class_pair_errors(classes, message):
    with pytest.raises(InputError, match=message):
        class_pair_examples(torch.tensor([0, 1, 2, 1]), classes)


def test_logit_gaps():
    logits = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(logit_gaps(logits, (3, 1)), logits[..., 3] - logits[..., 1])
    with pytest.raises(InputError, match="out of range"):
        logit_gaps(logits, (0, 4))
