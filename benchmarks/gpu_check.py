"""Every GPU figure of the performance pass in one run, as markdown table rows (called by gpu_check.sh).

Each check prints rows ``| check | figure | target | status |`` to stdout; a missing package or a failure is a
row that says so (``skipped: …`` / ``error: …``), never a crash of the whole run. ``--dry`` runs the same code on
the CPU with tiny sizes (to test the script on a machine without a GPU: the figures are then meaningless).

    PYTHONPATH=. python benchmarks/gpu_check.py            # on the GPU machine
    PYTHONPATH=. python benchmarks/gpu_check.py --dry      # CPU smoke test
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _shared import ResNet18  # noqa: E402
from _shared import best_time as best  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def row(check: str, figure: str, target: str, ok: bool | None) -> None:
    status = "n/a" if ok is None else ("pass" if ok else "FAIL")
    print(f"| {check} | {figure} | {target} | {status} |", flush=True)


def check_engine(device, dry):
    from calibscope.inference.engine import InferenceOptions, run_inference

    try:
        import torchvision

        model, name = torchvision.models.resnet50(num_classes=1000), "ResNet-50"
    except Exception:  # noqa: BLE001 - torchvision absent or not importable
        model, name = ResNet18(num_classes=1000, width=8 if dry else 64), "ResNet-18 (no torchvision)"
    side, n, bs = (16, 32, 16) if dry else (224, 4096, 256)
    model = model.eval().to(device)
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8)
    if device.type == "cuda":
        images = images.pin_memory()
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    for precision in ("fp32", "bf16"):
        amp = None if precision == "fp32" else torch.bfloat16
        loop_model = model.to(memory_format=torch.channels_last) if amp is not None and device.type == "cuda" else model

        def loop(loop_model=loop_model, amp=amp):
            parts = []
            with torch.inference_mode():
                for i in range(0, n, bs):
                    x = images[i:i + bs].to(device, non_blocking=True).float().div_(255).sub_(mean).div_(std)
                    if amp is not None and device.type == "cuda":
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                        parts.append(loop_model(x).float().cpu())
            return torch.cat(parts)

        options = InferenceOptions(device=str(device), precision=precision, batch_size=bs, mean=MEAN, std=STD)
        t_loop = best(loop, device, 2)
        t_engine = best(lambda options=options: run_inference(model, images, options=options, progress=False),
                        device, 2)
        ratio = t_loop / t_engine
        layout = " + channels_last" if precision == "bf16" else ""
        row(f"engine vs raw loop, {name} {side}², {precision}{layout}",
            f"{n / t_engine:.0f} vs {n / t_loop:.0f} img/s: {ratio:.2f}×", "≥ 0.9×", ratio >= 0.9)


def check_auto_batch(device, dry):
    """The automatic batch size (no --batch-size) vs fixed ones on ResNet-50 224² fp32: speed within 5 % of the
    best fixed batch, and the progress bar moves (more than one batch)."""
    from calibscope.inference.engine import InferenceOptions, automatic_batch_size, run_inference

    try:
        import torchvision

        model, name = torchvision.models.resnet50(num_classes=1000), "ResNet-50"
    except Exception:  # noqa: BLE001 - torchvision absent or not importable
        model, name = ResNet18(num_classes=1000, width=8 if dry else 64), "ResNet-18 (no torchvision)"
    side, n, fixed = (16, 64, (8, 16, 32)) if dry else (224, 4096, (128, 256, 512, 1024))
    model = model.eval().to(device)
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8)
    if device.type == "cuda":
        images = images.pin_memory()
    auto = automatic_batch_size(images, device)
    times = {}
    for size in (None, *fixed):
        options = InferenceOptions(device=str(device), batch_size=size, mean=MEAN, std=STD)
        times[size] = best(lambda options=options: run_inference(model, images, options=options, progress=False),
                           device, 2)
    fastest = min(fixed, key=times.get)
    ratio = times[fastest] / times[None]
    row(f"automatic batch size, {name} {side}², {n} images, fp32",
        f"auto = {auto} ({-(-n // auto)} batches): {n / times[None]:.0f} img/s vs best fixed {fastest}: "
        f"{n / times[fastest]:.0f} img/s ({ratio:.3f}×; fixed {', '.join(f'{b}: {n / times[b]:.0f}' for b in fixed)})",
        "≥ 0.95×, > 1 batch", ratio >= 0.95 and -(-n // auto) > 1)


def check_ece(device, dry):
    from calibscope.diagnostics.calibration import expected_calibration_error

    n, k = (20_000, 100) if dry else (4_000_000, 100)
    g = torch.Generator(device=device).manual_seed(0)
    logits = 3.0 * torch.randn(n, k, generator=g, device=device)
    labels = torch.randint(0, k, (n,), generator=g, device=device)
    t_floor = best(lambda: (logits.max(dim=1), torch.bincount(labels, minlength=15)), device, 5)
    t_ours = best(lambda: expected_calibration_error(logits, labels), device, 5)
    row(f"ECE {n:,}×{k} vs floor (max(1) + bincount)", f"{1e3 * t_ours:.2f} vs {1e3 * t_floor:.2f} ms: "
        f"{t_ours / t_floor:.2f}×", "≤ 2×", t_ours / t_floor <= 2)
    try:
        from torchmetrics.functional.classification import multiclass_calibration_error
    except ImportError:
        row("ECE vs torchmetrics", "skipped: torchmetrics not installed", "≥ 5×", None)
        return
    t_tm = best(lambda: multiclass_calibration_error(logits, labels, num_classes=k, n_bins=15), device, 3)
    row("ECE vs torchmetrics", f"{1e3 * t_tm:.2f} vs {1e3 * t_ours:.2f} ms: {t_tm / t_ours:.1f}× faster", "≥ 5×",
        t_tm / t_ours >= 5)


def check_temperature(device, dry):
    from scipy.optimize import minimize_scalar

    from calibscope.diagnostics.temperature import fit_temperature

    n, k = (10_000, 100) if dry else (1_000_000, 100)
    g = torch.Generator(device=device).manual_seed(0)
    z = torch.randn(n, k, generator=g, device=device) * 2
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    logits = 2.5 * z

    def lbfgs():  # gpleiss/temperature_scaling
        t = torch.nn.Parameter(torch.ones(1, device=device) * 1.5)
        opt = torch.optim.LBFGS([t], lr=0.01, max_iter=50)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(logits / t, labels)
            loss.backward()
            return loss

        opt.step(closure)
        return float(t)

    z64, y = logits.double(), labels

    def nll(log_t):
        return float(F.cross_entropy(z64 / math.exp(log_t), y))

    t_star = math.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded", options={"xatol": 1e-12}).x)
    t_ours = best(lambda: fit_temperature(logits, labels), device, 3)
    t_lb = best(lbfgs, device, 2)
    fit = fit_temperature(logits, labels)
    err = abs(fit.temperature - t_star)
    row(f"temperature {n:,}×{k} vs gpleiss LBFGS", f"{1e3 * t_ours:.1f} vs {1e3 * t_lb:.1f} ms: "
        f"{t_lb / t_ours:.1f}×; |T − T*| {err:.1e} (LBFGS {abs(lbfgs() - t_star):.1e})", "≥ 20×, |T − T*| ≤ 1e-6",
        t_lb / t_ours >= 20 and err <= 1e-6)


def check_hvp(device, dry):
    from calibscope.diagnostics.hessian import HessianOperator, select_parameters

    n, width, side = (16, 8, 16) if dry else (256, 64, 32)
    torch.manual_seed(0)
    model = ResNet18(width=width).to(device).eval()
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,))
    prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        op = HessianOperator(model, images, labels, parameters=select_parameters(model), batch_size=n,
                             mean=MEAN, std=STD)
        x = (images.to(device).float() / 255 - torch.tensor(MEAN, device=device).view(1, 3, 1, 1)) \
            / torch.tensor(STD, device=device).view(1, 3, 1, 1)
        y = labels.to(device)
        params = [p for _, p in select_parameters(model)]

        def forward_backward():
            torch.autograd.grad(F.cross_entropy(model(x), y), params)

        v = torch.randn(op.dim, device=device)
        t_fb = best(forward_backward, device, 5)
        t_hvp = best(lambda: op.hvp(v), device, 5)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
    row(f"HVP vs forward+backward, ResNet-18 B = {n}", f"{1e3 * t_hvp:.1f} vs {1e3 * t_fb:.1f} ms: "
        f"{t_hvp / t_fb:.2f}×", "≤ 4×", t_hvp / t_fb <= 4)


def check_oom(device, dry):
    from calibscope.inference.engine import InferenceOptions, run_inference

    if device.type != "cuda":
        row("CUDA OOM back-off", "skipped: no CUDA (dry run)", "batch halved, same logits", None)
        return
    torch.manual_seed(0)
    model = ResNet18(width=64, num_classes=10).to(device).eval()
    images = torch.randint(0, 256, (2048, 3, 64, 64), dtype=torch.uint8)
    reference = run_inference(model, images, options=InferenceOptions(device="cuda", batch_size=64), progress=False)
    free, _ = torch.cuda.mem_get_info(device)
    left = 3 << 29  # 1.5 GiB left free: batch 2048 (2 GiB per activation) cannot fit, batch 64 (67 MB) can
    hog = torch.empty(max(0, free - left) // 4, dtype=torch.float32, device=device)  # the rest, taken first
    notices = []
    try:
        out = run_inference(model, images, options=InferenceOptions(device="cuda", batch_size=2048),
                            progress=False, on_notice=notices.append)
    finally:
        del hog
        torch.cuda.empty_cache()
    diff = float((out.logits - reference.logits).abs().max())
    halved = out.meta["batch_size"] < 2048
    row("CUDA OOM back-off (all but 1.5 GiB of the free memory taken first)", f"batch 2048 → {out.meta['batch_size']}, "
        f"notice: {bool(notices)}, max |Δlogit| vs batch 64 {diff:.1e}", "halved, |Δ| ≤ 1e-4",
        halved and diff <= 1e-4)


CHECKS = {"engine": check_engine, "batch": check_auto_batch, "ece": check_ece, "temperature": check_temperature,
          "hvp": check_hvp,
          "oom": check_oom}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="CPU, tiny sizes: test the script, not the GPU")
    ap.add_argument("--only", nargs="*", choices=sorted(CHECKS), default=list(CHECKS))
    args = ap.parse_args()
    if not args.dry and not torch.cuda.is_available():
        row("CUDA", "skipped: torch.cuda.is_available() is False (use --dry on a CPU machine)", "", None)
        return
    device = torch.device("cpu" if args.dry else "cuda")
    for name in args.only:
        try:
            CHECKS[name](device, args.dry)
        except Exception as exc:  # noqa: BLE001 - one failing check must not hide the others
            traceback.print_exc(file=sys.stderr)
            row(name, f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}", "",
                False)


if __name__ == "__main__":
    main()
