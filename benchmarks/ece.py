"""Top-label ECE: calibscope vs a one-read floor, torchmetrics, netcal and torch-uncertainty, side by side in one run.

Same fp32 logits and labels on the same device for all of them:

* floor        — ``logits.max(dim=1)`` + ``bincount`` of the labels: reading the logits once (and the labels),
  which any ECE must do;
* floor (numpy argmax) — on CPU also ``numpy.argmax(logits, 1)``, the leanest single read (no max values),
  ≈ 2× faster than torch's ``max(dim=1)``;
* calibscope   — ``expected_calibration_error(logits, labels)`` (15 right-closed bins, softmax in float64);
  and ``calibration_metrics`` — every metric ``calibscope ece`` prints (ℓ1/ℓ2/max, debiased ℓ2, AdaECE,
  classwise, smooth ECE, NLL, Brier) in one pass, beside torchmetrics' ℓ1, ℓ2 and max as three calls;
* torchmetrics — ``multiclass_calibration_error(logits, labels, num_classes=K, n_bins=15)`` (float32);
* netcal       — ``netcal.metrics.ECE(bins=15).measure(probs, labels)`` on NumPy; the timing includes the
  softmax and the copy to NumPy that it needs (CPU only);
* torch-uncertainty — ``CalibrationError(task="multiclass", num_classes=K, num_bins=15)``: ``update`` + ``compute``
  (a torchmetrics ``Metric``; its package ``__init__`` needs torchvision, so the module is imported alone).

Each anchor that is not installed is a line saying so (the ``bench`` extra installs them).

On CUDA the fused kernel (``CALIBSCOPE_COMPILE=1``, torch.compile; timed warm, compile excluded) is timed as
well. Sizes: 4,000,000 × 100 on CUDA, 500,000 × 100 on CPU. Targets on the GPU: ≥ 5× faster than
torchmetrics, ≤ 2× the floor, same value. Prints one line per method, ratios last.

    python benchmarks/ece.py                      # CPU, and CUDA if available
    python benchmarks/ece.py --device cpu --n 200000 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _shared import devices, torch_uncertainty_module

from calibscope.diagnostics.calibration import calibration_metrics, expected_calibration_error


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    """Median seconds over ``repeats`` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def run(device: torch.device, n: int, k: int, repeats: int) -> None:
    g = torch.Generator(device=device).manual_seed(0)
    logits = 3.0 * torch.randn(n, k, generator=g, device=device)
    labels = torch.randint(0, k, (n,), generator=g, device=device)
    labels = torch.where(torch.rand(n, generator=g, device=device) < 0.7, logits.argmax(1), labels)
    print(f"--- {device.type}: {n:,} × {k} fp32 logits, 15 bins, median of {repeats}")
    t_floor, _ = timed(lambda: (logits.max(dim=1), torch.bincount(labels, minlength=15)), device, repeats)
    t_ours, ours = timed(lambda: expected_calibration_error(logits, labels), device, repeats)
    print(f"floor (max(dim=1) + bincount)    {1e3 * t_floor:9.2f} ms")
    t_np = None
    if device.type == "cpu":  # the leanest read there is on a CPU: numpy's argmax, without the max values
        t_np, _ = timed(lambda: logits.numpy().argmax(1), device, repeats)
        print(f"floor (numpy argmax)             {1e3 * t_np:9.2f} ms")
    print(f"calibscope                       {1e3 * t_ours:9.2f} ms   ECE {ours:.10f}")
    t_family, family = timed(lambda: calibration_metrics(logits, labels), device, max(1, repeats // 2))
    print(f"calibscope, the whole family     {1e3 * t_family:9.2f} ms   ECE {family.value('ece'):.10f} "
          f"(+ ℓ2, MCE, debiased ℓ2, AdaECE, SCE, smooth ECE, NLL, Brier: `calibscope ece`)")
    t_fused = None
    if device.type == "cuda":
        os.environ["CALIBSCOPE_COMPILE"] = "1"
        try:
            t_fused, fused = timed(lambda: expected_calibration_error(logits, labels), device, repeats)
            print(f"calibscope fused (compiled)      {1e3 * t_fused:9.2f} ms   ECE {fused:.10f}")
        finally:
            os.environ.pop("CALIBSCOPE_COMPILE", None)
    try:
        from torchmetrics.functional.classification import multiclass_calibration_error
    except ImportError:
        print("torchmetrics not installed: skipped")
        theirs, t_tm = None, None
    else:
        t_tm, theirs = timed(lambda: multiclass_calibration_error(logits, labels, num_classes=k, n_bins=15,
                                                                   norm="l1"), device, repeats)
        theirs = float(theirs)
        print(f"torchmetrics                     {1e3 * t_tm:9.2f} ms   ECE {theirs:.10f}")
        t_tm3, _ = timed(lambda: [multiclass_calibration_error(logits, labels, num_classes=k, n_bins=15, norm=nm)
                                  for nm in ("l1", "l2", "max")], device, max(1, repeats // 2))
        print(f"torchmetrics ℓ1 + ℓ2 + max       {1e3 * t_tm3:9.2f} ms   (three of the family's ten)")
    others = [(name, t, value) for name, t, value in (netcal_row(logits, labels, repeats),
                                                       torch_uncertainty_row(logits, labels, device, repeats))
              if t is not None]
    best = min(t for t in (t_ours, t_fused) if t is not None)
    ratios = [f"calibscope/floor {t_ours / t_floor:.2f}×"]
    if t_np is not None:
        ratios.append(f"calibscope/numpy-argmax {t_ours / t_np:.2f}×")
    if t_fused is not None:
        ratios.append(f"fused/floor {t_fused / t_floor:.2f}×")
    if t_tm is not None:
        ratios.append(f"torchmetrics/calibscope {t_tm / t_ours:.2f}×")
        if t_fused is not None:
            ratios.append(f"torchmetrics/fused {t_tm / best:.2f}×")
        ratios.append(f"|ΔECE| {abs(ours - theirs):.1e} (torchmetrics: float32, left-closed bins)")
    if t_tm is not None:
        ratios.append(f"family/floor {t_family / t_floor:.2f}×, "
                      f"torchmetrics ℓ1+ℓ2+max / family {t_tm3 / t_family:.2f}×")
    for name, t, value in others:
        ratios.append(f"{name}/calibscope {t / t_ours:.2f}× (|ΔECE| {abs(ours - value):.1e})")
    print("ratios: " + ", ".join(ratios))


def netcal_row(logits, labels, repeats):
    try:
        from netcal.metrics import ECE
    except ImportError:
        print("netcal not installed (pip install netcal): skipped")
        return "netcal", None, None
    if logits.device.type != "cpu":
        print("netcal: NumPy only, not timed on this device")
        return "netcal", None, None
    metric = ECE(bins=15)
    t, value = timed(lambda: float(metric.measure(torch.softmax(logits, 1).numpy(), labels.numpy())),
                     logits.device, repeats)
    print(f"netcal {_version('netcal'):<26}{1e3 * t:9.2f} ms   ECE {value:.10f}")
    return "netcal", t, value


def torch_uncertainty_row(logits, labels, device, repeats):
    try:
        module = torch_uncertainty_module("metrics.classification.calibration.calibration_error")
    except ImportError as exc:
        print(f"torch-uncertainty not importable ({exc}): skipped")
        return "torch-uncertainty", None, None

    def once():
        metric = module.CalibrationError(task="multiclass", num_classes=logits.shape[1], num_bins=15).to(device)
        metric.update(logits, labels)
        return float(metric.compute())

    t, value = timed(once, device, repeats)
    print(f"torch-uncertainty {_version('torch_uncertainty'):<15}{1e3 * t:9.2f} ms   ECE {value:.10f}")
    return "torch-uncertainty", t, value


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name.replace("_", "-"))
    except PackageNotFoundError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--n", type=int, default=None, help="rows (default 4,000,000 on CUDA, 500,000 on CPU)")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for device in devices(args.device):
        run(device, args.n or (4_000_000 if device.type == "cuda" else 500_000), args.k, args.repeats)

if __name__ == "__main__":
    main()
