"""Loss-surface slices against an independent recomputation with ``torch.func.functional_call``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from calibscope.diagnostics.landscape import filter_normalised_direction, loss_along_line, loss_surface
from calibscope.errors import InputError
from calibscope.models import DigitsCNN


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    a = DigitsCNN(num_classes=3, channels=2, hidden=8)
    b = DigitsCNN(num_classes=3, channels=2, hidden=8)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (20, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 3, (20,), generator=g)
    return a, b, x, y


def _loss(model, state, x, y):
    with torch.no_grad():
        logits = functional_call(model, state, (x.float() / 255.0,))
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def test_filter_normalised_direction_norms():
    torch.manual_seed(0)
    model = DigitsCNN(num_classes=3, channels=2, hidden=8)
    params = list(model.parameters())
    d = filter_normalised_direction(params, generator=torch.Generator().manual_seed(5))
    for p, u in zip(params, d, strict=True):
        if p.ndim == 1:
            assert torch.count_nonzero(u) == 0  # biases are not perturbed (Li et al. 2018)
        else:
            torch.testing.assert_close(u.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
    again = filter_normalised_direction(params, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(u, v) for u, v in zip(d, again, strict=True))


@pytest.mark.parametrize("dimensions", [1, 2])
def test_surface_values_match_an_independent_evaluation(cnn, dimensions):
    model, _, x, y = cnn
    surface = loss_surface(model, x, y, dimensions=dimensions, points=5, span=0.5, seed=7)
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for _, p in model.named_parameters()]
    g = torch.Generator().manual_seed(7)
    d1 = filter_normalised_direction(params, generator=g)
    d2 = filter_normalised_direction(params, generator=g)
    assert surface.alphas == pytest.approx((-0.5, -0.25, 0.0, 0.25, 0.5))
    assert surface.center_loss == pytest.approx(_loss(model, dict(zip(names, params, strict=True)), x, y)[0], rel=1e-6)
    i, j = 4, 1
    if dimensions == 1:
        state = {n: p + 0.5 * u for n, p, u in zip(names, params, d1, strict=True)}
        got, acc = surface.loss[i], surface.accuracy[i]
    else:
        state = {n: p + 0.5 * u - 0.25 * v for n, p, u, v in zip(names, params, d1, d2, strict=True)}
        got, acc = surface.loss[i][j], surface.accuracy[i][j]
    want = _loss(model, state, x, y)
    assert got == pytest.approx(want[0], rel=1e-5) and acc == pytest.approx(want[1])
    for n, p in zip(names, params, strict=True):  # restored
        assert torch.equal(dict(model.named_parameters())[n].detach(), p)


def test_line_between_checkpoints(cnn):
    a, b, x, y = cnn
    before = {k: v.clone() for k, v in a.state_dict().items()}
    calls = []
    line = loss_along_line(a, b, x, y, points=5, on_progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (5, 5)
    assert line.ts == pytest.approx((0.0, 0.25, 0.5, 0.75, 1.0))
    sa, sb = a.state_dict(), b.state_dict()
    assert line.loss[0] == pytest.approx(_loss(a, sa, x, y)[0], rel=1e-6)
    assert line.loss[-1] == pytest.approx(_loss(a, sb, x, y)[0], rel=1e-5)
    mid = {k: 0.75 * sa[k] + 0.25 * sb[k] for k in sa}
    assert line.loss[1] == pytest.approx(_loss(a, mid, x, y)[0], rel=1e-5)
    distance = sum(float((sb[k] - sa[k]).square().sum()) for k in sa) ** 0.5
    assert line.distance == pytest.approx(distance, rel=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in a.state_dict().items())


def test_line_refuses_different_architectures(cnn):
    a, _, x, y = cnn
    other = DigitsCNN(num_classes=3, channels=4, hidden=8)
    with pytest.raises(InputError, match="shape"):
        loss_along_line(a, other, x, y)
