"""Plane projections (Müller et al. 2019 §2), checked against an independent numpy computation."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from calibscope.diagnostics.projection import (
    confusion_matrix,
    most_confused_classes,
    plane_projection,
    resolve_classes,
)
from calibscope.errors import InputError
from calibscope.inference.engine import InferenceOptions, run_inference

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"


# --------------------------------------------------------------------------------------------------------
# independent reference: Gram–Schmidt in numpy float64
# --------------------------------------------------------------------------------------------------------


def numpy_projection(x: np.ndarray, w: np.ndarray, b: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray]:
    """u = Eᵀ([x; 1] − p0) with E from Gram–Schmidt on (w̃_b − w̃_a, w̃_c − w̃_a); returns (u, template coords)."""
    x, w, b = (np.asarray(v, dtype=np.float64) for v in (x, w, b))
    templates = np.hstack([w, b[:, None]])[list(classes)]  # w̃_a, w̃_b, w̃_c
    v1 = templates[1] - templates[0]
    v2 = templates[2] - templates[0]
    e1 = v1 / np.linalg.norm(v1)
    v2 = v2 - (v2 @ e1) * e1
    e2 = v2 / np.linalg.norm(v2)
    basis = np.stack([e1, e2], axis=1)
    p0 = templates.mean(axis=0)
    x_tilde = np.hstack([x, np.ones((x.shape[0], 1))])
    return (x_tilde - p0) @ basis, (templates - p0) @ basis


class TwoLayer(nn.Module):
    """x → ReLU(W1 x + b1) (the penultimate activation, computable by hand) → W2 h + b2 (the logits)."""

    def __init__(self, w1, b1, w2, b2):
        super().__init__()
        self.hidden = nn.Linear(w1.shape[1], w1.shape[0])
        self.head = nn.Linear(w2.shape[1], w2.shape[0])
        with torch.no_grad():
            self.hidden.weight.copy_(torch.as_tensor(w1))
            self.hidden.bias.copy_(torch.as_tensor(b1))
            self.head.weight.copy_(torch.as_tensor(w2))
            self.head.bias.copy_(torch.as_tensor(b2))

    def forward(self, x):
        return self.head(torch.relu(self.hidden(x)))


@pytest.fixture(scope="module")
def known_model():
    rng = np.random.default_rng(5)
    d_in, d, k, n = 6, 5, 4, 60
    w1 = rng.normal(size=(d, d_in)).astype(np.float32)
    b1 = rng.normal(size=d).astype(np.float32)
    w2 = rng.normal(size=(k, d)).astype(np.float32)
    b2 = (3.0 * rng.normal(size=k)).astype(np.float32)  # a large bias: the [w; b] term matters
    x = rng.normal(size=(n, d_in)).astype(np.float32)
    y = np.arange(n) % k
    h = np.maximum(x.astype(np.float64) @ w1.T.astype(np.float64) + b1, 0.0)  # known penultimate features
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "x": x, "y": y, "h": h}


@pytest.mark.parametrize("form", ["eager", "export"])
def test_coordinates_match_numpy_through_a_model(known_model, form):
    m = known_model
    model = TwoLayer(m["w1"], m["b1"], m["w2"], m["b2"]).eval()
    x = torch.from_numpy(m["x"])
    if form == "export":
        batch = torch.export.Dim("batch", min=1)
        model = torch.export.export(model, (x[:2],), dynamic_shapes=({0: batch},)).module()
    out = run_inference(model, x, torch.from_numpy(m["y"]), options=InferenceOptions(capture_features=True),
                        progress=False)
    np.testing.assert_allclose(out.features.numpy(), m["h"], atol=1e-5)
    np.testing.assert_allclose(out.bias.numpy(), m["b2"], atol=0)

    classes = (2, 0, 3)
    p = plane_projection(out.features, out.labels, out.weight, out.bias, classes)
    keep = np.isin(m["y"], classes)
    order = np.concatenate([np.flatnonzero(m["y"] == c) for c in classes])
    u_ref, t_ref = numpy_projection(m["h"][order], m["w2"], m["b2"], classes)
    assert keep.sum() == p.coordinates.shape[0]
    np.testing.assert_array_equal(p.indices.numpy(), order)
    np.testing.assert_array_equal(p.labels.numpy(), m["y"][order])
    np.testing.assert_allclose(p.coordinates.numpy(), u_ref, atol=1e-5)
    np.testing.assert_allclose(p.templates.numpy(), t_ref, atol=1e-5)
    # the bias term is really used: leaving it out moves the points by more than the tolerance
    u_no_bias, _ = numpy_projection(m["h"][order], m["w2"], np.zeros_like(m["b2"]), classes)
    assert np.abs(u_no_bias - u_ref).max() > 1e-2


def test_float64_inputs_agree_to_1e12_and_geometry():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(90, 7, generator=g, dtype=torch.float64)
    w = torch.randn(5, 7, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    y = torch.arange(90) % 5
    p = plane_projection(x, y, w, b, [4, 1, 3])
    order = np.concatenate([np.flatnonzero(y.numpy() == c) for c in (4, 1, 3)])
    u_ref, t_ref = numpy_projection(x.numpy()[order], w.numpy(), b.numpy(), (4, 1, 3))
    np.testing.assert_allclose(p.coordinates.numpy(), u_ref, atol=1e-12)
    # templates: a triangle centred on the origin with the side lengths of the full-dimensional templates
    full = torch.cat([w, b[:, None]], dim=1)[[4, 1, 3]]
    t = p.templates
    np.testing.assert_allclose(t.sum(dim=0).numpy(), 0.0, atol=1e-12)
    for i, j in itertools.combinations(range(3), 2):
        assert float((t[i] - t[j]).norm()) == pytest.approx(float((full[i] - full[j]).norm()), rel=1e-12)
    # orientation: first axis from a to b, c above it
    assert float(t[1, 0]) > float(t[0, 0]) and float(t[1, 1]) == pytest.approx(float(t[0, 1]), abs=1e-12)
    assert float(t[2, 1]) > float(t[0, 1])
    # E is orthonormal
    np.testing.assert_allclose((p.basis.T @ p.basis).numpy(), np.eye(2), atol=1e-12)
    assert p.basis.shape == (8, 2) and p.origin.shape == (8,)


def test_no_bias_means_zero_bias():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(30, 4, generator=g), torch.randn(3, 4, generator=g)
    y = torch.arange(30) % 3
    a = plane_projection(x, y, w, None, (0, 1, 2))
    b = plane_projection(x, y, w, torch.zeros(3), (0, 1, 2))
    torch.testing.assert_close(a.coordinates, b.coordinates)


def test_tightness_statistics_match_numpy():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(120, 6, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2, 3, 1, 1, 1])
    w = torch.randn(4, 6, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    y = torch.arange(120) % 4
    classes = (0, 2, 3)
    p = plane_projection(x, y, w, b, classes)
    st = p.statistics
    u, lab, xs = p.coordinates.numpy(), p.labels.numpy(), x.numpy()[p.indices.numpy()]

    def reference(points):
        centres = np.stack([points[lab == k].mean(0) for k in classes])
        spread = np.array([np.linalg.norm(points[lab == k] - centres[i], axis=1).mean()
                           for i, k in enumerate(classes)])
        d = np.array([np.linalg.norm(centres[i] - centres[j]) for i, j in ((0, 1), (0, 2), (1, 2))])
        per_class = [spread[0] / d[[0, 1]].mean(), spread[1] / d[[0, 2]].mean(), spread[2] / d[[1, 2]].mean()]
        return centres, spread, d, spread.mean() / d.mean(), d.min() / d.max(), per_class

    cu, su, du, ru, eu, pu = reference(u)
    _, sx, dx, rx, ex, px = reference(xs)
    assert st.relative_spread_plane == pytest.approx(ru, rel=1e-12)
    assert st.relative_spread_full == pytest.approx(rx, rel=1e-12)
    assert st.equidistance_plane == pytest.approx(eu, rel=1e-12)
    assert st.equidistance_full == pytest.approx(ex, rel=1e-12)
    np.testing.assert_allclose(st.centre_distances_plane, du, rtol=1e-12)
    np.testing.assert_allclose(st.centre_distances_full, dx, rtol=1e-12)
    for i, c in enumerate(st.clusters):
        assert c.class_index == classes[i] and c.n == 30
        np.testing.assert_allclose(c.centre, cu[i], rtol=1e-12)
        assert c.spread_plane == pytest.approx(su[i], rel=1e-12)
        assert c.spread_full == pytest.approx(sx[i], rel=1e-12)
        assert c.relative_spread_plane == pytest.approx(pu[i], rel=1e-12)
        assert c.relative_spread_full == pytest.approx(px[i], rel=1e-12)
    # scale invariance: scaling features and templates together does not change the relative spread
    q = plane_projection(10 * x, y, 10 * w, 10 * b, classes)
    assert q.statistics.relative_spread_plane == pytest.approx(st.relative_spread_plane, rel=1e-10)


def test_per_class_keeps_the_first_rows_of_each_class():
    x, w = torch.randn(50, 3), torch.randn(3, 3)
    y = torch.tensor([2, 0, 1, 1, 0, 2, 1, 0, 2, 2] * 5)
    p = plane_projection(x, y, w, torch.zeros(3), (1, 0, 2), per_class=4)
    expected = np.concatenate([np.flatnonzero(y.numpy() == c)[:4] for c in (1, 0, 2)])
    np.testing.assert_array_equal(p.indices.numpy(), expected)
    assert p.counts == (4, 4, 4) and p.per_class == 4


@pytest.mark.parametrize(
    ("classes", "per_class", "message"),
    [
        ((0, 1), None, "exactly 3"),
        ((0, 1, 1), None, "more than once"),
        ((0, 1, 9), None, r"in \[0, 4\)"),
        ((0, 1, 3), None, "class 3 has no examples"),
        ((0, 1, 2), 0, "`per_class`"),
        ("012", None, "sequence of 3"),
    ],
)
def test_bad_classes_and_options(classes, per_class, message):
    x, w = torch.randn(9, 3), torch.randn(4, 3)
    y = torch.arange(9) % 3
    with pytest.raises(InputError, match=message):
        plane_projection(x, y, w, torch.zeros(4), classes, per_class=per_class)


def test_bad_tensors():
    x, w, y = torch.randn(9, 3), torch.randn(4, 3), torch.arange(9) % 3
    with pytest.raises(InputError, match="D = 3"):
        plane_projection(x, y, torch.randn(4, 5), None, (0, 1, 2))
    with pytest.raises(InputError, match="shape \\[4\\]"):
        plane_projection(x, y, w, torch.zeros(3), (0, 1, 2))
    with pytest.raises(InputError, match="integer tensor"):
        plane_projection(x, y.float(), w, None, (0, 1, 2))
    with pytest.raises(InputError, match="at least 3 classes"):
        plane_projection(x, y % 2, w[:2], None, (0, 1, 2))
    with pytest.raises(InputError, match="finite"):
        plane_projection(x * float("nan"), y, w, None, (0, 1, 2))


def test_collinear_templates_are_refused():
    w = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    b = torch.tensor([1.0, 2.0, 3.0])
    y = torch.arange(9) % 3
    with pytest.raises(InputError, match="collinear"):
        plane_projection(torch.randn(9, 2), y, w, b, (0, 1, 2))


# --------------------------------------------------------------------------------------------------------
# choosing the classes
# --------------------------------------------------------------------------------------------------------


def brute_force_triple(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int, int]:
    k = logits.shape[1]
    pred = logits.argmax(1).numpy()
    y = labels.numpy()
    c = np.zeros((k, k))
    np.add.at(c, (y, pred), 1)
    probs = torch.softmax(logits.double(), 1).numpy()
    s = np.zeros((k, k))
    np.add.at(s, y, probs)

    def key(t):
        pairs = list(itertools.combinations(t, 2))
        return (sum(c[i, j] + c[j, i] for i, j in pairs), sum(s[i, j] + s[j, i] for i, j in pairs))

    return max(itertools.combinations(range(k), 3), key=key)  # first maximum: smallest indices


def test_most_confused_classes_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        logits = torch.randn(200, 7, generator=g) * 2
        labels = torch.randint(0, 7, (200,), generator=g)
        logits[torch.arange(200), labels] += 2.5  # mostly right, some confusions
        assert most_confused_classes(logits, labels) == brute_force_triple(logits, labels)


def test_most_confused_classes_breaks_ties_by_probabilities():
    # every prediction right: no counted confusion, so the softmax mass decides; classes 1, 3, 4 are alike
    labels = torch.arange(60) % 5
    logits = torch.full((60, 5), -4.0)
    logits[torch.arange(60), labels] = 4.0
    for a, b in ((1, 3), (3, 4), (1, 4)):
        logits[labels == a, b] = 3.0
    assert most_confused_classes(logits, labels) == (1, 3, 4) == brute_force_triple(logits, labels)


def test_most_confused_classes_with_many_classes():
    k = 100
    labels = torch.arange(2000) % k
    logits = torch.zeros(2000, k)
    logits[torch.arange(2000), labels] = 5.0
    for a, b in ((17, 63), (63, 88), (17, 88)):  # plant confusions among 17, 63, 88
        rows = (labels == a).nonzero().flatten()[:3]
        logits[rows, b] = 9.0
    assert most_confused_classes(logits, labels) == (17, 63, 88)


def test_confusion_matrix():
    logits = torch.tensor([[2.0, 1, 0], [0, 2, 1], [0, 3, 1], [1, 0, 2]])
    labels = torch.tensor([0, 1, 2, 2])
    expected = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    assert torch.equal(confusion_matrix(logits, labels), expected)


def test_resolve_classes():
    names = ["cat", "dog", "7", "deer"]
    assert resolve_classes("dog,cat,3", 4, names) == (1, 0, 3)
    assert resolve_classes(" 3 , 0,1 ", 4, None) == (3, 0, 1)
    assert resolve_classes("7,0,1", 4, names) == (2, 0, 1)  # a name wins over an index
    assert resolve_classes([1, 2, 3], 4, names) == (1, 2, 3)
    with pytest.raises(InputError, match="unknown class 'cow'; known names: cat, dog, 7, deer"):
        resolve_classes("cat,dog,cow", 4, names)
    with pytest.raises(InputError, match="no class names are known"):
        resolve_classes("cat,1,2", 4, None)
    with pytest.raises(InputError, match="class 0 is given twice"):
        resolve_classes("cat,0,1", 4, names)
    with pytest.raises(InputError, match="exactly 3 distinct classes, got 2"):
        resolve_classes("0,1", 4, names)
    with pytest.raises(InputError, match="out of range"):
        resolve_classes("0,1,4", 4, names)


# --------------------------------------------------------------------------------------------------------
# the shipped sample models: label smoothing tightens the clusters (Müller et al. 2019, Fig. 1)
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_outputs():
    from calibscope.inference.pipeline import compute_outputs
    from calibscope.loading.checkpoint import load_checkpoint
    from calibscope.loading.dataset import load_dataset

    data = {s: load_dataset(SAMPLES / f"digits_{s}.npz") for s in ("train", "val")}
    options = InferenceOptions(capture_features=True)
    return {
        model: {s: compute_outputs(load_checkpoint(SAMPLES / f"digits_{model}.safetensors"), d, options,
                                   use_cache=False, progress=False) for s, d in data.items()}
        for model in ("hard", "ls")
    }


def test_label_smoothing_clusters_are_tighter_on_the_sample_models(sample_outputs):
    val = [sample_outputs[m]["val"] for m in ("hard", "ls")]
    classes = most_confused_classes(torch.cat([o.logits for o in val]), torch.cat([o.labels for o in val]))
    assert classes == (1, 2, 8)  # what the CLI reports for these two models on digits_val.npz
    stats = {(m, s): plane_projection(o.features, o.labels, o.weight, o.bias, classes, per_class=100).statistics
             for m, per_split in sample_outputs.items() for s, o in per_split.items()}
    for split in ("train", "val"):
        hard, ls = stats[("hard", split)], stats[("ls", split)]
        assert ls.relative_spread_plane < hard.relative_spread_plane, split
        assert ls.relative_spread_full < hard.relative_spread_full, split
    # on the training data, where label smoothing acts, the clusters are several times tighter in the plane
    assert stats[("ls", "train")].relative_spread_plane < 0.5 * stats[("hard", "train")].relative_spread_plane
