"""Temperature scaling: calibscope's exact Newton fit vs scipy, netcal, torch-uncertainty and the gpleiss LBFGS
recipe, side by side in one run.

The recipe (gpleiss/temperature_scaling): ``T = nn.Parameter(torch.ones(1) * 1.5)``,
``optim.LBFGS([T], lr=0.01, max_iter=50)``, one ``step`` minimising ``CrossEntropyLoss(logits / T, labels)``.
Logits: ``T_true · z`` with labels drawn from ``softmax(z)``, so the optimum is near ``T_true``; the exact
optimum T* of these very logits is found independently by scipy's bounded minimisation of a float64 NLL over
log T (timed too, as the "scipy" row). Anchors, each skipped with a line when not installed:
``netcal.scaling.TemperatureScaling()`` (its default MLE fit on float64 NumPy softmax outputs, CPU only; needs
pyro-ppl) and torch-uncertainty's ``TemperatureScaler(lr=0.1, max_iter=100)`` (its defaults; LBFGS on the logits).
Prints time, |T − T*| and NLL(T) − NLL(T*) for both, ratios last. Sizes: 1,000,000 × 100 on
CUDA, 100,000 × 100 on CPU. Target: ≥ 20× faster and closer to T*.

    python benchmarks/temperature.py                  # CPU, and CUDA if available
    python benchmarks/temperature.py --device cpu --n 50000 --threads 1
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from _shared import devices, torch_uncertainty_module
from scipy.optimize import minimize_scalar

from calibscope.diagnostics.temperature import fit_temperature


def nll64(logits: torch.Tensor, labels: torch.Tensor, t: float, chunk: int = 1 << 16) -> float:
    """Mean NLL of softmax(z / T) in float64 (the reference objective)."""
    total = 0.0
    for a in range(0, logits.shape[0], chunk):
        z = logits[a : a + chunk].double() / t
        total += float((torch.logsumexp(z, 1) - z.gather(1, labels[a : a + chunk, None]).squeeze(1)).sum())
    return total / logits.shape[0]


def reference_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    result = minimize_scalar(lambda u: nll64(logits, labels, math.exp(u)), bounds=(math.log(0.05), math.log(20)),
                             method="bounded", options={"xatol": 1e-10, "maxiter": 500})
    return math.exp(result.x)


def lbfgs_recipe(logits: torch.Tensor, labels: torch.Tensor) -> float:
    temperature = torch.nn.Parameter(torch.ones(1, device=logits.device) * 1.5)
    optimizer = torch.optim.LBFGS([temperature], lr=0.01, max_iter=50)
    criterion = torch.nn.CrossEntropyLoss()

    def closure():
        optimizer.zero_grad()
        loss = criterion(logits / temperature, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(temperature.detach())


def anchor_rows(logits: torch.Tensor, labels: torch.Tensor, device: torch.device) -> list[tuple]:
    rows = []
    try:
        from netcal.scaling import TemperatureScaling
    except ImportError as exc:
        print(f"netcal not importable ({exc}; pip install netcal): skipped")
    else:
        if device.type == "cpu":
            def netcal_fit():
                model = TemperatureScaling()
                # float64: on float32 inputs netcal 1.4 returns T = 1, unfitted
                model.fit(torch.softmax(logits.double(), 1).numpy(), labels.numpy())
                return 1.0 / float(model.weights[0])  # netcal's weight multiplies the logits: 1/T

            seconds, t = timed(netcal_fit, device)
            rows.append(("netcal TemperatureScaling (MLE)", seconds, t, "float64 softmax outputs, NumPy"))
        else:
            print("netcal: NumPy only, not timed on this device")
    try:
        module = torch_uncertainty_module("post_processing.calibration.temperature_scaler")
    except ImportError as exc:
        print(f"torch-uncertainty not importable ({exc}): skipped")
    else:
        def tu_fit():
            scaler = module.TemperatureScaler(device=device)
            loader = [(logits, labels)]  # one batch of logits: the model is the identity
            scaler.fit(loader, progress=False)
            return float(scaler.temperature[0].detach())

        seconds, t = timed(tu_fit, device)
        rows.append(("torch-uncertainty TemperatureScaler", seconds, t, "LBFGS lr 0.1, 100 it."))
    return rows


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def run(device: torch.device, n: int, k: int, t_true: float) -> None:
    g = torch.Generator(device=device).manual_seed(0)
    z = 2.0 * torch.randn(n, k, generator=g, device=device)
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    logits = (t_true * z).float()
    print(f"--- {device.type}: {n:,} × {k} fp32 logits, T_true = {t_true}")
    t_scipy, t_star = timed(lambda: reference_temperature(logits, labels), device)
    nll_star = nll64(logits, labels, t_star)
    print(f"reference T* (scipy, float64)    {t_star:.10f}   NLL {nll_star:.12f}")
    fit_temperature(logits[:1000], labels[:1000])  # warm-up (allocator, first-call overheads)
    lbfgs_recipe(logits[:1000], labels[:1000])
    t_ours, fit = timed(lambda: fit_temperature(logits, labels), device)
    t_lbfgs, t_lb = timed(lambda: lbfgs_recipe(logits, labels), device)
    rows = [("calibscope (Newton on 1/T)", t_ours, fit.temperature,
             f"{fit.n_passes} passes + {fit.warm_start_passes} on {fit.warm_start_rows:,} rows"),
            ("LBFGS recipe (lr 0.01, 50 it.)", t_lbfgs, t_lb, ""),
            ("scipy bounded, float64 NLL", t_scipy, t_star, "the reference")]
    rows += anchor_rows(logits, labels, device)
    t_fused = None
    if device.type == "cuda":
        os.environ["CALIBSCOPE_COMPILE"] = "1"
        try:
            fit_temperature(logits[:100_000], labels[:100_000])  # compile outside the timing
            t_fused, fused = timed(lambda: fit_temperature(logits, labels), device)
            rows.insert(1, ("calibscope fused (compiled)", t_fused, fused.temperature, f"{fused.n_passes} passes"))
        finally:
            os.environ.pop("CALIBSCOPE_COMPILE", None)
    for name, seconds, t, note in rows:
        gap = nll64(logits, labels, t) - nll_star
        print(f"{name:<32} {1e3 * seconds:9.1f} ms   T {t:.10f}   |T − T*| {abs(t - t_star):.2e}   "
              f"NLL − NLL* {gap:.2e}   {note}")
    ratios = [f"LBFGS/calibscope time {t_lbfgs / t_ours:.1f}×"]
    if t_fused is not None:
        ratios.append(f"LBFGS/fused time {t_lbfgs / t_fused:.1f}×")
    ratios.append(f"|T − T*| LBFGS/calibscope {abs(t_lb - t_star) / max(abs(fit.temperature - t_star), 1e-300):.1e}")
    for name, seconds, _, _ in rows[2:]:
        ratios.append(f"{name.split(' ')[0]}/calibscope time {seconds / t_ours:.1f}×")
    print("ratios: " + ", ".join(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--n", type=int, default=None, help="rows (default 1,000,000 on CUDA, 100,000 on CPU)")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--t-true", type=float, default=2.5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for device in devices(args.device):
        run(device, args.n or (1_000_000 if device.type == "cuda" else 100_000), args.k, args.t_true)

if __name__ == "__main__":
    main()
