"""Sentences follow numbers: fed results with the opposite ordering, the text flips."""

from __future__ import annotations

from types import SimpleNamespace as NS

from calibscope.render.findings import hessian_finding, mi_finding, projection_finding


def _mi(name, nats, spread=0.05, agreement=1.0):
    check = NS(agreement=agreement, premise_holds=agreement >= 0.9)
    return NS(name=name, estimate=NS(nats=nats, spread_nats=spread), check=check)


def _hs(name, l1, loss):
    return NS(name=name, spectrum=NS(eigenvalues=(l1, l1 / 2), loss=loss))


def _pj(name, spread):
    return NS(name=name, splits=[NS(split="train", projection=NS(statistics=NS(relative_spread_plane=spread)))])


def test_mi_text_flips_with_the_numbers():
    a = mi_finding([_mi("hard", 1.9), _mi("ls", 0.9)])
    b = mi_finding([_mi("hard", 0.9), _mi("ls", 1.9)])
    assert a.startswith("Î is lowest for ls") and b.startswith("Î is lowest for hard")
    assert "not clearly" not in a
    assert "not clearly more than the noise" in mi_finding([_mi("hard", 1.0), _mi("ls", 1.05)])
    assert "measures the augmentation" in mi_finding([_mi("hard", 1.0, agreement=0.5), _mi("ls", 0.4)])
    assert mi_finding([_mi("hard", 1.0)]) is None


def test_hessian_text_flips_and_names_the_training_loss():
    a = hessian_finding([_hs("sgd", 0.43, 1e-4), _hs("sam", 0.05, 4e-5)])
    b = hessian_finding([_hs("sgd", 0.05, 1e-4), _hs("sam", 0.43, 4e-5)])
    assert a.startswith("sam has the lower λ1") and b.startswith("sgd has the lower λ1")
    assert "training loss 4e-05" in a and "not a like-for-like" in a
    assert "like-for-like" not in hessian_finding([_hs("sgd", 0.4, 1e-4), _hs("sam", 0.1, 1.1e-4)])


def test_projection_text_flips():
    assert projection_finding([_pj("hard", 0.5), _pj("ls", 0.2)], "train").startswith("On train, ls's clusters")
    assert projection_finding([_pj("hard", 0.2), _pj("ls", 0.5)], "train").startswith("On train, hard's clusters")
