"""`calibscope ood --positive ood|in`: the default is OOD positive and says so in the table and the JSON; both
conventions equal a direct sklearn roc_curve computation on the energy scores of two logits files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from calibscope.cli import ood as ood_cli

sklearn_metrics = pytest.importorskip("sklearn.metrics")
app = typer.Typer(pretty_exceptions_enable=False)
app.command(name="ood")(ood_cli.ood)
app.command(name="other")(lambda: None)
runner = CliRunner()


def fpr_at(y, s, level=0.95):
    fpr, tpr, _ = sklearn_metrics.roc_curve(y, s, drop_intermediate=False)
    return float(fpr[np.flatnonzero(tpr >= level)[0]])


def test_positive_conventions_end_to_end(samples, tmp_path):
    z = np.random.default_rng(1).normal(0, 2.5, (400, 10)).astype(np.float32)
    np.savez(tmp_path / "ood_logits.npz", logits=z)
    z_in = np.load(samples / "digits_hard_test_logits.npz")["logits"].astype(np.float64)
    s = np.r_[np.logaddexp.reduce(z_in, axis=1), np.logaddexp.reduce(z.astype(np.float64), axis=1)]
    is_in = np.r_[np.ones(len(z_in)), np.zeros(len(z))]
    docs = {}
    for positive in (None, "ood", "in"):
        extra = [] if positive is None else ["--positive", positive]
        r = runner.invoke(app, ["ood", str(samples / "digits_hard_test_logits.npz"), "--ood-data",
                                str(tmp_path / "ood_logits.npz"), "--score", "energy", "--json", *extra])
        assert r.exit_code == 0, r.stderr
        docs[positive] = json.loads(r.stdout)
    assert docs[None]["definition"]["positive"] == "ood" and docs["in"]["definition"]["positive"] == "in-distribution"
    m_ood, m_in = docs["ood"]["results"][0]["metrics"], docs["in"]["results"][0]["metrics"]
    assert docs[None]["results"][0]["metrics"] == m_ood and m_ood["positive"] == "ood"
    assert m_ood["fpr_at_tpr"] == pytest.approx(fpr_at(1 - is_in, -s), abs=1e-12)
    assert m_in["fpr_at_tpr"] == pytest.approx(fpr_at(is_in, s), abs=1e-12)
    assert m_ood["auroc"] == m_in["auroc"]
    table = runner.invoke(app, ["ood", str(samples / "digits_hard_test_logits.npz"), "--ood-data",
                                str(tmp_path / "ood_logits.npz"), "--score", "energy"])
    assert "OOD = positive" in table.stdout
    bad = runner.invoke(app, ["ood", str(samples / "digits_hard_test_logits.npz"), "--ood-data",
                              str(tmp_path / "ood_logits.npz"), "--positive", "both"])
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1 and "positive" in bad.stderr
