"""Hutch++ against exact traces and against Hutchinson at the same number of Hessian-vector products.

The sample models' classifier-layer Hessian is formed exactly (the closed form of the cross-entropy in the last
layer's weights and bias, mean (diag p − ppᵀ) ⊗ x̃x̃ᵀ on captured penultimate features), checked against the
HVP operator, and then both estimators run on it many times, so their variances are measured rather than
assumed; Hutchinson's is also known in closed form, 2(‖H‖²_F − Σ H_ii²)/S for Rademacher probes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from calibscope.diagnostics.hessian import HessianOperator, hutchinson_trace, select_parameters
from calibscope.diagnostics.trace import hutchplusplus_trace
from calibscope.errors import InputError

SAMPLES = Path(__file__).resolve().parents[2] / "sample_checkpoints"
BUDGET = 30  # products per estimate, both methods
SEEDS = 40


def _explicit(eigenvalues, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.as_tensor(eigenvalues, dtype=torch.float64)) @ q.T
    return a, (lambda v: a @ v)


def test_hutchplusplus_is_exact_when_the_sketch_holds_the_range():
    a, matvec = _explicit([5.0, -2.0, 1.0] + [0.0] * 47)
    est = hutchplusplus_trace(matvec, 50, n_hvp=9, dtype=torch.float64)
    assert est.trace == pytest.approx(float(torch.trace(a)), abs=1e-10)
    assert est.n_hvp == 9 and est.samples == 3 and est.standard_error == pytest.approx(0.0, abs=1e-10)


def test_hutchplusplus_is_unbiased_and_counts_its_products():
    a, _ = _explicit(np.geomspace(1.0, 1e-3, 80), seed=2)
    calls = []

    def matvec(v):
        calls.append(1)
        return a @ v

    values = [hutchplusplus_trace(matvec, 80, n_hvp=12, seed=s, dtype=torch.float64).trace for s in range(200)]
    assert len(calls) == 12 * 200
    se = np.std(values, ddof=1) / np.sqrt(len(values))
    assert abs(np.mean(values) - float(torch.trace(a))) <= 4 * se


@pytest.mark.parametrize("n_hvp", [5, 7, 3, 0, True, 6.0])
def test_hutchplusplus_rejects_a_budget_that_is_not_a_multiple_of_three(n_hvp):
    with pytest.raises(InputError, match="multiple of 3"):
        hutchplusplus_trace(lambda v: v, 10, n_hvp=n_hvp)


def _last_layer_hessian(name: str, n: int = 128):
    """Exact Hessian of the mean cross-entropy in the sample model's classifier (weight, bias), and the
    HVP operator on the same examples and parameters."""
    from calibscope.loading.checkpoint import load_checkpoint
    from calibscope.loading.dataset import load_dataset

    ckpt = load_checkpoint(SAMPLES / name)
    model = ckpt.module.eval()
    data = load_dataset(SAMPLES / "digits_train.npz")
    x, y = data.inputs[:n], data.labels[:n]
    op = HessianOperator(model, x, y, parameters=select_parameters(model, "last"), mean=ckpt.metadata["mean"],
                         std=ckpt.metadata["std"])
    weight, bias = (p for _, p in select_parameters(model, "last"))
    captured = []
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    handle = last.register_forward_hook(lambda mod, inp, out: captured.append(inp[0].detach()))
    with torch.no_grad():
        mean = torch.tensor(ckpt.metadata["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(ckpt.metadata["std"]).view(1, -1, 1, 1)
        inputs = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        model((inputs - mean) / std)
    handle.remove()
    feats = captured[0].double()
    # closed form (softmax cross-entropy): H = mean_i (diag p_i − p_i p_iᵀ) ⊗ x̃_i x̃_iᵀ with x̃ = [x; 1]
    p = torch.softmax(feats @ weight.detach().double().T + bias.detach().double(), dim=1)
    a = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    xt = torch.cat([feats, torch.ones(len(feats), 1, dtype=feats.dtype)], dim=1)
    k, d = weight.shape
    full = torch.einsum("ikl,id,ie->kdle", a, xt, xt) / len(feats)
    order = torch.cat([(torch.arange(k)[:, None] * (d + 1) + torch.arange(d)).flatten(),  # W row-major, then b
                       torch.arange(k) * (d + 1) + d])
    return full.reshape(k * (d + 1), k * (d + 1))[order][:, order], op


@pytest.mark.parametrize("name", ["digits_hard.safetensors", "digits_ls.safetensors", "digits_sam.safetensors"])
def test_hutchplusplus_has_lower_variance_than_hutchinson_at_equal_hvps_on_the_sample_models(name):
    h, op = _last_layer_hessian(name)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0))
    reference = h @ v.double()  # the operator's Hessian is this one (to float32 rounding)
    assert float(torch.linalg.vector_norm(op.hvp(v).double() - reference)) <= 1e-3 * float(
        torch.linalg.vector_norm(reference))
    exact = float(torch.trace(h))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of small dense products: threads only contend
    try:
        hutch = [hutchinson_trace(lambda u: h @ u, op.dim, samples=BUDGET, seed=s, dtype=torch.float64).trace
                 for s in range(SEEDS)]
        hpp = [hutchplusplus_trace(lambda u: h @ u, op.dim, n_hvp=BUDGET, seed=s, dtype=torch.float64).trace
               for s in range(SEEDS)]
    finally:
        torch.set_num_threads(threads)
    closed_form = 2 * (float((h**2).sum()) - float((torch.diagonal(h) ** 2).sum())) / BUDGET
    var_hutch, var_hpp = np.var(hutch, ddof=1), np.var(hpp, ddof=1)
    print(f"{name}: tr H = {exact:.5g}; variance at {BUDGET} HVPs over {SEEDS} seeds: Hutchinson {var_hutch:.3g} "
          f"(closed form {closed_form:.3g}), Hutch++ {var_hpp:.3g}")
    assert var_hutch == pytest.approx(closed_form, rel=0.6)  # the empirical spread is Hutchinson's true one
    assert var_hpp < var_hutch / 2
    assert abs(np.mean(hpp) - exact) <= 4 * np.sqrt(var_hpp / SEEDS) + 1e-9 * abs(exact)
