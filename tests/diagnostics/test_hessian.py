"""Top Hessian eigenvalues against independent references: the full Hessian from ``torch.func.hessian`` and
``numpy.linalg.eigh``, finite differences of gradients, explicit matrices with a known spectrum."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from calibscope.diagnostics.hessian import (
    HessianOperator,
    hessian_repeats,
    hessian_subsets,
    hutchinson_trace,
    lanczos_top_eigenvalues,
    select_parameters,
    spectral_density,
    top_hessian_eigenvalues,
)
from calibscope.errors import InputError
from calibscope.models import MLP

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"


# ------------------------------------------------------------------------------------------------ helpers


class TinyCNN(nn.Module):
    """conv3×3 → BatchNorm → ReLU → avgpool 2 → linear: 88 parameters on 1×6×6 inputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        return self.fc(F.avg_pool2d(F.relu(self.bn(self.conv(x))), 2).flatten(1))


def _tiny_cnn() -> TinyCNN:
    torch.manual_seed(3)
    model = TinyCNN()
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        model.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.05]))
        model.bn.running_var.copy_(torch.tensor([0.5, 1.5, 0.8]))
        model.bn.weight.copy_(torch.tensor([1.2, 0.7, 1.0]))
        model.bn.bias.copy_(torch.tensor([0.1, 0.0, -0.1]))
    return model.eval()


def _tiny_mlp() -> MLP:
    torch.manual_seed(1)
    return MLP(5, 3, hidden=(6,)).eval()  # 57 parameters


def _data(shape, n, classes, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g), torch.randint(0, classes, (n,), generator=g)


def _exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, forward=None) -> np.ndarray:
    """Full Hessian of the mean cross-entropy, float64, by torch.func.hessian over the flat parameters."""
    model = copy.deepcopy(model).double()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])
    x = x.double()

    def loss(flat):
        parts = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes, strict=True)}
        out = forward(parts, x) if forward is not None else functional_call(model, parts, (x,))
        return F.cross_entropy(out, y)

    return torch.func.hessian(loss)(flat0).numpy()


def _top(h: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.linalg.eigh(h)[0])[::-1][:k]


def _normalised(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return (images.float() / 255.0 - mean) / std


def _sample(name: str):
    from calibscope.loading.checkpoint import load_checkpoint

    ckpt = load_checkpoint(SAMPLES / name)
    return ckpt.module, ckpt.metadata["mean"], ckpt.metadata["std"]


@pytest.fixture(scope="module")
def digits_train():
    from calibscope.loading.dataset import load_dataset

    return load_dataset(SAMPLES / "digits_train.npz")


@pytest.fixture(scope="module")
def sample_spectra(digits_train):
    out = {}
    for name in ("digits_hard", "digits_sam"):
        model, mean, std = _sample(f"{name}.pt2")
        out[name] = top_hessian_eigenvalues(model, digits_train.inputs, digits_train.labels, top=5, tol=1e-4,
                                            mean=mean, std=std)
    return out


# ------------------------------------------------------------------------------ against the exact Hessian


def test_tiny_mlp_top5_matches_exact_hessian():
    model = _tiny_mlp()
    x, y = _data((5,), 40, 3, seed=2)
    all_eigenvalues = np.linalg.eigvalsh(_exact_hessian(model, x, y))
    exact = np.sort(all_eigenvalues)[::-1][:5]
    spectrum = top_hessian_eigenvalues(model, x, y, top=5, tol=1e-4, batch_size=16)
    assert spectrum.converged
    np.testing.assert_allclose(spectrum.eigenvalues, exact, rtol=1e-4)
    assert spectrum.n_hvp <= 57
    # the certificate: an eigenvalue of H lies within the residual (plus fp32 rounding) of each Ritz value
    for ev, res in zip(spectrum.eigenvalues, spectrum.residuals, strict=True):
        assert np.min(np.abs(all_eigenvalues - ev)) <= res + 1e-6 * exact[0]


def test_single_batch_keeps_the_gradient_graph_and_rebuilds_it_after_an_in_place_change():
    """One batch: the gradient's graph is built once and reused (one backward per product); products equal
    the exact Hessian's, and after the weights change in place they are those of the changed model."""
    model = _tiny_mlp()
    x, y = _data((5,), 40, 3, seed=2)
    op = HessianOperator(model, x, y, parameters=select_parameters(model), batch_size=64)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(op.hvp(v).numpy(), _exact_hessian(model, x, y) @ v.double().numpy(), atol=2e-6)
    kept = op._gradient_graph
    op.hvp(v)
    assert op._gradient_graph is kept  # reused, not rebuilt
    with torch.no_grad():
        next(model.parameters()).mul_(1.5)
    np.testing.assert_allclose(op.hvp(v).numpy(), _exact_hessian(model, x, y) @ v.double().numpy(), atol=2e-6)
    assert op._gradient_graph is not kept
    op.release()
    assert op._gradient_graph is None


def test_tiny_cnn_with_batchnorm_in_eval_mode_matches_exact_hessian():
    model = _tiny_cnn()
    x, y = _data((1, 6, 6), 48, 4, seed=4)
    exact = _top(_exact_hessian(model, x, y), 5)
    spectrum = top_hessian_eigenvalues(model, x, y, top=5, tol=1e-4, batch_size=20)
    assert spectrum.converged and spectrum.settings.has_batchnorm and spectrum.settings.bn == "eval"
    np.testing.assert_allclose(spectrum.eigenvalues, exact, rtol=1e-4)
    assert spectrum.ratio == pytest.approx(exact[0] / exact[4], rel=2e-4)


def test_batchnorm_train_mode_uses_batch_statistics_and_leaves_running_ones_alone():
    model = _tiny_cnn()
    x, y = _data((1, 6, 6), 48, 4, seed=4)
    running = model.bn.running_mean.clone(), model.bn.running_var.clone()

    def forward_train(p, inp):  # an explicit train-mode forward: batch statistics of the whole set
        # (written out rather than F.batch_norm(training=True): torch.func.hessian of that kernel gets the
        # BatchNorm-weight block wrong in torch 2.13 — vmap over its double backward; finite differences agree
        # with the formula below and with calibscope's HVPs)
        h = F.conv2d(inp, p["conv.weight"], p["conv.bias"])
        mu, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
        h = (h - mu) / torch.sqrt(var + model.bn.eps)
        h = h * p["bn.weight"].view(1, -1, 1, 1) + p["bn.bias"].view(1, -1, 1, 1)
        return F.linear(F.avg_pool2d(F.relu(h), 2).flatten(1), p["fc.weight"], p["fc.bias"])

    reference = copy.deepcopy(model).train()
    params = dict(model.named_parameters())
    torch.testing.assert_close(forward_train(params, x), reference(x))  # the explicit forward is train mode
    exact = _top(_exact_hessian(model, x, y, forward=forward_train), 3)
    spectrum = top_hessian_eigenvalues(model, x, y, top=3, bn="train", batch_size=64)
    np.testing.assert_allclose(spectrum.eigenvalues, exact, rtol=1e-4)
    assert spectrum.settings.bn == "train"
    assert torch.equal(model.bn.running_mean, running[0]) and torch.equal(model.bn.running_var, running[1])
    assert not model.training


# ------------------------------------------------------------------------------ the operator itself


def test_hvp_matches_finite_difference_of_gradients():
    model = _tiny_cnn().double()
    x, y = _data((1, 6, 6), 30, 4, seed=5)
    chosen = select_parameters(model)
    op = HessianOperator(model, x, y, parameters=chosen, batch_size=8)
    assert op.dtype == torch.float64
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 1e-5

    def grad_at(shift):
        with torch.no_grad():
            offset = 0
            for _, p in chosen:
                p.add_(shift[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
        g = op.gradient()
        with torch.no_grad():
            offset = 0
            for _, p in chosen:
                p.sub_(shift[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
        return g

    fd = (grad_at(eps * v) - grad_at(-eps * v)) / (2 * eps)
    torch.testing.assert_close(op.hvp(v), fd, rtol=1e-6, atol=1e-8 * float(fd.abs().max()))


def test_operator_is_symmetric_on_the_sample_cnn(digits_train):
    model, mean, std = _sample("digits_hard.safetensors")
    op = HessianOperator(model, digits_train.inputs[:64], digits_train.labels[:64],
                         parameters=select_parameters(model), mean=mean, std=std)
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(op.dim, generator=g), torch.randn(op.dim, generator=g)
    hu, hv = op.hvp(u).double(), op.hvp(v).double()
    uhv, vhu = float(torch.dot(u.double(), hv)), float(torch.dot(v.double(), hu))
    # fp32 rounding of the products, relative to the size of the terms that cancel in the dot products
    assert abs(uhv - vhu) <= 1e-5 * float(u.norm() * hv.norm())


def test_operator_is_symmetric_to_rounding_in_float64():
    model = _tiny_cnn().double()
    x, y = _data((1, 6, 6), 30, 4, seed=5)
    op = HessianOperator(model, x, y, parameters=select_parameters(model), batch_size=7)
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(op.dim, generator=g, dtype=torch.float64), torch.randn(op.dim, generator=g, dtype=torch.float64)
    assert float(u @ op.hvp(v)) == pytest.approx(float(v @ op.hvp(u)), rel=1e-12)


def test_loss_uses_the_inference_normalisation_and_weights_examples_exactly(digits_train):
    model, mean, std = _sample("digits_hard.safetensors")
    x, y = digits_train.inputs, digits_train.labels
    with torch.no_grad():
        reference = float(F.cross_entropy(model(_normalised(x, mean[0], std[0])), y))
    for batch in (150, 7):
        op = HessianOperator(model, x, y, parameters=select_parameters(model, "last"), batch_size=batch,
                             mean=mean, std=std)
        assert op.loss() == pytest.approx(reference, rel=1e-5)


def test_uneven_batches_give_the_same_spectrum():
    model = _tiny_mlp()
    x, y = _data((5,), 41, 3, seed=6)
    a = top_hessian_eigenvalues(model, x, y, top=3, batch_size=41)
    b = top_hessian_eigenvalues(model, x, y, top=3, batch_size=6)
    np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=2e-5)


def test_forward_over_reverse_agrees_with_double_backward():
    model = _tiny_cnn()
    x, y = _data((1, 6, 6), 24, 4, seed=7)
    chosen = select_parameters(model)
    a = HessianOperator(model, x, y, parameters=chosen, method="double-backward")
    b = HessianOperator(model, x, y, parameters=chosen, method="forward-over-reverse")
    assert (a.method, b.method) == ("double-backward", "forward-over-reverse")
    v = torch.randn(a.dim, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a.hvp(v), b.hvp(v), rtol=1e-4, atol=1e-6)


def test_per_layer_blocks_match_the_exact_diagonal_blocks():
    model = _tiny_mlp()
    x, y = _data((5,), 40, 3, seed=2)
    h = _exact_hessian(model, x, y)
    spectrum = top_hessian_eigenvalues(model, x, y, top=2, per_layer=True)
    offsets, start = {}, 0
    for name, p in model.named_parameters():
        layer = name.rsplit(".", 1)[0]
        lo, hi = offsets.get(layer, (start, start))
        offsets[layer] = (lo, start + p.numel())
        start += p.numel()
    assert [x.layer for x in spectrum.per_layer] == list(offsets)
    for entry in spectrum.per_layer:
        lo, hi = offsets[entry.layer]
        assert entry.n_params == hi - lo
        assert entry.eigenvalue == pytest.approx(_top(h[lo:hi, lo:hi], 1)[0], rel=1e-4)


def test_parameter_selection():
    model = _tiny_cnn()
    assert [n for n, _ in select_parameters(model, "last")] == ["fc.weight", "fc.bias"]
    assert [n for n, _ in select_parameters(model, r"^bn\.")] == ["bn.weight", "bn.bias"]
    with pytest.raises(InputError, match="matches no parameter"):
        select_parameters(model, "nothing_here")
    with pytest.raises(InputError, match="not a valid regular expression"):
        select_parameters(model, "(")


# ------------------------------------------------------------------------------ Lanczos, trace, density


def _explicit(eigenvalues, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    a = torch.tensor((q * np.asarray(eigenvalues)) @ q.T)
    return a, lambda v: a @ v.double()


def test_lanczos_on_an_explicit_matrix_with_negative_and_clustered_eigenvalues():
    eigenvalues = np.concatenate([[10.0, 9.99, 5.0, 4.0, 3.5], np.linspace(-6.0, 1.0, 95)])
    _, matvec = _explicit(eigenvalues)
    res = lanczos_top_eigenvalues(matvec, 100, k=5, tol=1e-8, max_matvec=100, dtype=torch.float64)
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues, eigenvalues[:5], rtol=1e-8)
    assert all(r <= 1e-8 * abs(e) for r, e in zip(res.residuals, res.eigenvalues, strict=True))


def test_lanczos_restarts_on_an_invariant_subspace():
    # rank 2: the Krylov space of any start vector is exhausted after 3 steps; the third eigenvalue is 0
    a, matvec = _explicit([3.0, 1.0] + [0.0] * 28)
    res = lanczos_top_eigenvalues(matvec, 30, k=3, tol=1e-6, dtype=torch.float64)
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues, [3.0, 1.0, 0.0], atol=1e-10)


def test_lanczos_reports_non_convergence_with_its_residuals():
    _, matvec = _explicit(np.linspace(0.0, 1.0, 200))
    res = lanczos_top_eigenvalues(matvec, 200, k=5, tol=1e-10, max_matvec=8, dtype=torch.float64)
    assert not res.converged and res.n_matvec == 8
    assert max(res.residuals) > 0


def test_hutchinson_is_exact_for_a_diagonal_matrix_and_unbiased_otherwise():
    diag = torch.linspace(-1.0, 3.0, 50, dtype=torch.float64)
    est = hutchinson_trace(lambda v: diag * v, 50, samples=5, dtype=torch.float64)
    assert est.trace == pytest.approx(float(diag.sum())) and est.standard_error == pytest.approx(0.0, abs=1e-12)
    a, matvec = _explicit(np.linspace(-1.0, 4.0, 60), seed=3)
    est = hutchinson_trace(matvec, 60, samples=400, seed=1, dtype=torch.float64)
    assert abs(est.trace - float(torch.trace(a))) <= 4 * est.standard_error
    assert est.n_hvp == 400


def test_spectral_density_with_a_full_krylov_space_recovers_the_spectrum():
    eigenvalues = np.linspace(-1.0, 2.0, 12)
    _, matvec = _explicit(eigenvalues, seed=4)
    dens = spectral_density(matvec, 12, runs=2, steps=12, dtype=torch.float64)
    for nodes, weights in zip(dens.nodes, dens.weights, strict=True):
        np.testing.assert_allclose(sorted(nodes), eigenvalues, atol=1e-8)
        assert sum(weights) == pytest.approx(1.0)
    grid = np.asarray(dens.grid)
    assert np.trapezoid(dens.density, grid) == pytest.approx(1.0, abs=0.01)


# ------------------------------------------------------------------------------ subsets and repeats


def test_subsets_are_disjoint_seeded_and_sized():
    subsets = hessian_subsets(100, examples=30, repeats=3, seed=5)
    assert [len(s) for s in subsets] == [30, 30, 30]
    assert len(set(torch.cat(subsets).tolist())) == 90
    assert all(torch.equal(a, b) for a, b in zip(subsets, hessian_subsets(100, examples=30, repeats=3, seed=5),
                                                 strict=True))
    assert torch.equal(hessian_subsets(10, examples=4096)[0], torch.arange(10))
    assert [len(s) for s in hessian_subsets(100, examples=4096, repeats=3)] == [33, 33, 33]


def test_repeats_summarise_disjoint_subsets():
    model = _tiny_mlp()
    x, y = _data((5,), 90, 3, seed=8)
    rep = hessian_repeats(model, x, y, repeats=3, top=2, examples=30, trace_samples=4)
    assert len({s.settings.subset_sha256 for s in rep.spectra}) == 3
    eig = np.asarray([s.eigenvalues for s in rep.spectra])
    np.testing.assert_allclose(rep.eigenvalues_mean, eig.mean(0))
    np.testing.assert_allclose(rep.eigenvalues_std, eig.std(0, ddof=1))
    for s in rep.spectra:  # each subset's numbers are that subset's exact Hessian
        idx = hessian_subsets(90, examples=30, repeats=3)[s.settings.subset]
        np.testing.assert_allclose(s.eigenvalues, _top(_exact_hessian(model, x[idx], y[idx]), 2), rtol=1e-4)


# ------------------------------------------------------------------------------ the shipped samples


def test_top5_on_the_sample_cnn_needs_at_most_40_hvps(sample_spectra):
    for spectrum in sample_spectra.values():
        assert spectrum.converged
        assert spectrum.n_hvp <= 40
        assert spectrum.settings.n_params == 151_306 and spectrum.settings.examples == 150


def test_sam_has_a_lower_top_eigenvalue_than_hard_targets(sample_spectra):
    assert sample_spectra["digits_sam"].eigenvalues[0] < sample_spectra["digits_hard"].eigenvalues[0]


# ------------------------------------------------------------------------------ bad input


def test_one_example_is_refused():
    model = _tiny_mlp()
    x, y = _data((5,), 1, 3, seed=0)
    with pytest.raises(InputError, match="at least 2 examples"):
        top_hessian_eigenvalues(model, x, y)


def test_more_eigenvalues_than_parameters_is_refused():
    model = _tiny_mlp()
    x, y = _data((5,), 10, 3, seed=0)
    with pytest.raises(InputError, match="larger than the number of chosen parameters"):
        top_hessian_eigenvalues(model, x, y, top=58)
    with pytest.raises(InputError, match="larger than the number of chosen parameters \\(21\\)"):
        top_hessian_eigenvalues(model, x, y, top=22, params="last")


class _PrototypeNet(nn.Module):
    """Logits = −squared distance to learned class prototypes via ``torch.cdist``, whose backward has no
    derivative (and no forward-mode AD) in torch: not twice differentiable in the prototypes or below."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(5, 4)
        self.prototypes = nn.Parameter(torch.randn(3, 4))

    def forward(self, x):
        return -torch.cdist(self.embed(x), self.prototypes) ** 2


def test_loss_not_twice_differentiable_is_a_clear_error():
    torch.manual_seed(0)
    x, y = _data((5,), 10, 3, seed=0)
    with pytest.raises(InputError, match="not twice differentiable with respect to the chosen parameters") as info:
        top_hessian_eigenvalues(_PrototypeNet(), x, y, top=2)
    assert "\n" not in str(info.value) and "--params" in str(info.value)


class _AttentionNet(nn.Module):
    """One self-attention layer over 3 tokens and a linear head (CPU SDPA kernel: no double backward)."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        q, k, v = self.qkv(x.view(-1, 1, 3, 4)).chunk(3, dim=-1)  # [batch, heads, tokens, dim]
        return self.head(F.scaled_dot_product_attention(q, k, v).flatten(1))


def test_fused_attention_falls_back_to_the_math_kernel_and_stays_exact():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(2)
    model = _AttentionNet().eval()
    x, y = _data((12,), 20, 3, seed=1)
    spectrum = top_hessian_eigenvalues(model, x, y, top=3)
    assert spectrum.settings.hvp_method == "double-backward+math-attention"
    with sdpa_kernel([SDPBackend.MATH]):
        exact = _top(_exact_hessian(model, x, y), 3)
    np.testing.assert_allclose(spectrum.eigenvalues, exact, rtol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    ({"top": 0}, "`top`"), ({"tol": 0.0}, "`tol`"), ({"bn": "batch"}, "`bn`"), ({"examples": 1}, "`examples`"),
    ({"trace_samples": 1}, "trace_samples"), ({"repeats": 0}, "`repeats`"), ({"batch_size": 0}, "`batch_size`"),
])
def test_bad_arguments_are_refused_with_a_teaching_message(kwargs, match):
    x, y = _data((5,), 10, 3, seed=0)
    with pytest.raises(InputError, match=match):
        top_hessian_eigenvalues(_tiny_mlp(), x, y, **kwargs)


def test_torchscript_model_gives_the_same_numbers_and_refuses_bn_train():
    model = _tiny_cnn()
    x, y = _data((1, 6, 6), 16, 4, seed=0)
    scripted = torch.jit.script(model)
    eager = top_hessian_eigenvalues(model, x, y, top=3)
    compiled = top_hessian_eigenvalues(scripted, x, y, top=3)
    assert compiled.settings.has_batchnorm
    np.testing.assert_allclose(compiled.eigenvalues, eager.eigenvalues, rtol=1e-6)
    with pytest.raises(InputError, match="--bn train needs BatchNorm layers whose mode can change"):
        top_hessian_eigenvalues(scripted, x, y, top=3, bn="train")


def test_state_of_the_model_is_restored():
    model = _tiny_cnn().train()
    model.conv.weight.requires_grad_(False)
    x, y = _data((1, 6, 6), 16, 4, seed=0)
    top_hessian_eigenvalues(model, x, y, top=1)
    assert model.training and not model.conv.weight.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = _tiny_cnn()
    x, y = _data((1, 6, 6), 48, 4, seed=4)
    cpu = top_hessian_eigenvalues(model, x, y, top=5)
    gpu = top_hessian_eigenvalues(copy.deepcopy(model).cuda(), x, y, top=5)
    assert gpu.settings.device.startswith("cuda") and not gpu.settings.tf32
    np.testing.assert_allclose(gpu.eigenvalues, cpu.eigenvalues, rtol=1e-4)
