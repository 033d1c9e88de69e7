"""Projection figure upgrades: named axes, templates drawn (scaled when they would collapse onto p0, never on
top of each other), ``--shared-scale``, and ``--paper-layout`` whose classes equal a direct confusion-matrix
computation (scikit-learn + numpy, brute force over all triples)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.metrics import confusion_matrix
from typer.testing import CliRunner

from calibscope.cli import app
from calibscope.render.projection_view import paper_layout_figure, projection_figure, template_scale
from calibscope.workflows.projection import ProjectionSettings, run_projection
from calibscope.workflows.session import Session

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"
MODELS = [SAMPLES / "digits_hard.pt2", SAMPLES / "digits_ls.pt2"]
TRAIN, VAL = SAMPLES / "digits_train.npz", SAMPLES / "digits_val.npz"


@pytest.fixture(scope="module")
def paper_run():
    return run_projection(Session(TRAIN), MODELS, ProjectionSettings(paper_layout=True), val=VAL)


def _reference_projection(features, labels, weight, bias, classes):
    """Müller et al. §2 in numpy: Gram–Schmidt basis of (w̃_b − w̃_a, w̃_c − w̃_a), origin the mean template."""
    wt = np.concatenate([weight, bias[:, None]], axis=1)[list(classes)]
    e1 = (wt[1] - wt[0]) / np.linalg.norm(wt[1] - wt[0])
    v = wt[2] - wt[0] - (wt[2] - wt[0]) @ e1 * e1
    basis = np.stack([e1, v / np.linalg.norm(v)], axis=1)
    origin = wt.mean(axis=0)
    keep = np.isin(labels, classes)
    x = np.concatenate([features[keep], np.ones((keep.sum(), 1))], axis=1)
    return (x - origin) @ basis, labels[keep], (wt - origin) @ basis


def _pooled_val_logits():
    session = Session(VAL)
    outs = [session.run(session.model(m, why="test")) for m in MODELS]
    return (np.concatenate([o.logits.double().numpy() for o in outs]),
            np.concatenate([o.labels.numpy() for o in outs]))


def test_paper_layout_classes_equal_a_direct_confusion_matrix_computation(paper_run):
    z, y = _pooled_val_logits()
    k = z.shape[1]
    c = confusion_matrix(y, z.argmax(axis=1), labels=list(range(k))).astype(float)
    p = softmax(z, axis=1)
    soft = np.zeros((k, k))
    np.add.at(soft, y, p)
    m = c + c.T + (soft + soft.T) / (len(y) + 1)
    np.fill_diagonal(m, 0)
    triples = list(itertools.combinations(range(k), 3))
    dissimilar = min(triples, key=lambda t: (m[t[0], t[1]] + m[t[0], t[2]] + m[t[1], t[2]], t))
    a, b = max(itertools.combinations(range(k), 2), key=lambda ab: (m[ab], -ab[0], -ab[1]))
    third = min((j for j in range(k) if j not in (a, b)), key=lambda j: (m[a, j] + m[b, j], j))
    roles = {row.role: row.choice.indices for row in paper_run.rows}
    assert roles == {"dissimilar": dissimilar, "similar": (a, b, third)}
    assert c[a, b] + c[b, a] == max(c[i, j] + c[j, i] for i, j in itertools.combinations(range(k), 2))


def test_paper_layout_figure_draws_the_reference_coordinates_and_templates(paper_run):
    fig = paper_layout_figure(paper_run.rows)
    n_cols = 4  # 2 models × (train, val)
    assert len(fig.axes) == 2 * n_cols
    for r, row in enumerate(paper_run.rows):
        for j, result in enumerate(row.results):
            for s_i, split in enumerate(result.splits):
                ax = fig.axes[r * n_cols + 2 * j + s_i]
                session = Session(TRAIN if split.split == "train" else VAL).with_options(capture_features=True)
                out = session.run(session.model(result.path, why="test"))
                coords, labels, templates = _reference_projection(
                    out.features.double().numpy(), out.labels.numpy(), out.weight.double().numpy(),
                    out.bias.double().numpy(), row.choice.indices)
                drawn = ax.collections[:3]
                for i, k in enumerate(row.choice.indices):
                    want = coords[labels == k][: split.projection.counts[i]]
                    np.testing.assert_allclose(drawn[i].get_offsets(), want, rtol=1e-9, atol=1e-9)
                stars = ax.collections[3:6]
                (scale,) = {float(st.get_gid().split("=")[1]) for st in stars}
                tips = np.vstack([st.get_offsets() for st in stars])
                np.testing.assert_allclose(tips / scale, templates, rtol=1e-9, atol=1e-12)
                _templates_stand_apart(ax, tips)
                assert "u_1" in ax.get_xlabel() and "u_2" in ax.get_ylabel()
                a, b, c = row.choice.indices
                assert f"tilde w_{{{b}}} - \\tilde w_{{{a}}}" in ax.get_xlabel()
                assert f"tilde w_{{{c}}}" in ax.get_ylabel()
    # one model's panels share limits within a row; models differ (their feature scales do)
    assert fig.axes[0].get_xlim() == fig.axes[1].get_xlim() != fig.axes[2].get_xlim()


def _templates_stand_apart(ax, tips) -> None:
    """No template star on another, and none within 10 % of the half-width from p0 (the old collapse)."""
    half = (ax.get_xlim()[1] - ax.get_xlim()[0]) / 2
    for i, j in itertools.combinations(range(3), 2):
        assert np.linalg.norm(tips[i] - tips[j]) > 0.1 * half
    assert np.linalg.norm(tips, axis=1).max() > 0.1 * half


def test_shared_scale_gives_every_panel_one_scale(paper_run):
    fig = projection_figure(paper_run.results, paper_run.choice, shared_scale=True)
    assert len({ax.get_xlim() for ax in fig.axes}) == 1 and len({ax.get_ylim() for ax in fig.axes}) == 1
    for ax in fig.axes:
        xlim, ylim = ax.get_xlim(), ax.get_ylim()
        pts = np.vstack([col.get_offsets() for col in ax.collections])
        assert (pts[:, 0] >= xlim[0]).all() and (pts[:, 0] <= xlim[1]).all()
        assert (pts[:, 1] >= ylim[0]).all() and (pts[:, 1] <= ylim[1]).all()
    rows = projection_figure(paper_run.results, paper_run.choice)
    assert rows.axes[0].get_xlim() != rows.axes[2].get_xlim()  # default: one scale per model


def test_template_scale_rule():
    class P:  # templates at distance 1 from p0
        templates = torch.tensor([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]], dtype=torch.float64)

    assert template_scale([P()], 5.0) == 1.0  # 20 % of the half-width: drawn where they are
    assert template_scale([P()], 20.0) == 5.0  # 40 % of 20 = 8 → the largest 1-2-5 factor ≤ 8
    assert template_scale([P()], 300.0) == 100.0  # 120 → 100


def test_cli_paper_layout_and_shared_scale(tmp_path):
    out = tmp_path / "figs"
    result = CliRunner().invoke(app, ["project", *map(str, MODELS), "--data", str(TRAIN), "--val", str(VAL),
                                      "--paper-layout", "--shared-scale", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["layout"] == "paper" and [r["role"] for r in doc["rows"]] == ["dissimilar", "similar"]
    assert doc["classes"] == doc["rows"][0]["classes"]
    assert sorted(p.name for p in out.iterdir()) == ["projection.json", "projection.png", "projection.svg"]


def test_cli_paper_layout_refuses_classes():
    result = CliRunner().invoke(app, ["project", str(MODELS[0]), "--data", str(TRAIN), "--paper-layout",
                                      "--classes", "1,2,3"])
    assert result.exit_code == 2, result.output
    assert "paper" in result.output and len(result.output.strip().splitlines()) == 1
