"""Throughput of calibscope's inference engine vs a hand-written loop, side by side in one run.

Same model (a ResNet-style CNN, or torchvision's resnet18 with --torchvision), same precision, same uint8
images in host memory, same batch size. The hand-written loop is what a notebook does: slice, ``.to(device)``,
convert and normalise, forward, ``.cpu()``. Prints images/s of each and the ratio engine / loop
(target ≥ 0.9). Runs on CUDA when present (large sizes) and always on CPU (small sizes).

    python benchmarks/inference.py                 # CPU, and CUDA if available
    python benchmarks/inference.py --device cuda --n 50000 --batch-size 1024 --precision bf16
"""

from __future__ import annotations

import argparse
import time

import torch
from _shared import ResNet18

from calibscope.inference.engine import InferenceOptions, run_inference

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def hand_loop(model, images, device, batch_size, amp_dtype):
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    parts = []
    with torch.inference_mode():
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(device).float().div(255).sub(mean).div(std)
            if amp_dtype is not None:
                with torch.autocast(device.type, dtype=amp_dtype):
                    out = model(x)
            else:
                out = model(x)
            parts.append(out.float().cpu())
    return torch.cat(parts)


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times), result


def bench(device: torch.device, n: int, batch_size: int, width: int, precision: str, repeats: int,
          use_torchvision: bool) -> None:
    torch.manual_seed(0)
    if use_torchvision:
        import torchvision

        model = torchvision.models.resnet18(num_classes=10)
        name = "torchvision resnet18"
    else:
        model = ResNet18(width=width)
        name = f"ResNet18(width={width})"
    model = model.eval().to(device)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    options = InferenceOptions(device=str(device), precision=precision, batch_size=batch_size, mean=MEAN, std=STD)
    loop_model = model
    if device.type == "cuda":
        loop_model = model.to(memory_format=torch.channels_last)  # give the hand loop the same advantage

    def engine():
        return run_inference(model, images, options=options, progress=False).logits

    def loop():
        return hand_loop(loop_model, images, device, batch_size, amp)

    engine(), loop()  # warm-up (cuDNN autotune, allocator)
    t_loop, ref = best_of(loop, repeats)
    t_engine, got = best_of(engine, repeats)
    diff = (got - ref).abs().max().item()
    print(f"{device.type:>4} | {name} | {precision} | n={n} batch={batch_size} | "
          f"engine {n / t_engine:10.1f} img/s | hand loop {n / t_loop:10.1f} img/s | "
          f"ratio engine/loop {t_loop / t_engine:5.2f} | max |Δlogit| {diff:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    ap.add_argument("--n", type=int, default=None, help="images (default: 2048 on CPU, 50000 on CUDA)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 256 on CPU, 1024 on CUDA")
    ap.add_argument("--width", type=int, default=None, help="ResNet width (default: 16 on CPU, 64 on CUDA)")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torchvision", action="store_true", help="use torchvision's resnet18 (if installed)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA"))
    if args.device in ("all", "cpu"):
        bench(torch.device("cpu"), args.n or 2048, args.batch_size or 256, args.width or 16, args.precision,
              args.repeats, args.torchvision)
    if args.device in ("all", "cuda"):
        if not torch.cuda.is_available():
            print("cuda | skipped: CUDA is not available on this machine")
        else:
            torch.backends.cudnn.benchmark = True
            bench(torch.device("cuda"), args.n or 50000, args.batch_size or 1024, args.width or 64,
                  args.precision, args.repeats, args.torchvision)


if __name__ == "__main__":
    main()
