"""The automatic inference batch size vs fixed ones: peak memory and throughput, side by side in one run.

For each batch size (``auto`` = :func:`calibscope.inference.engine.automatic_batch_size`, then the fixed ones)
a fresh child process builds the model and the uint8 images, runs ``run_inference`` once as a warm-up on two
examples, then over all of them, and reports images/s, its peak RSS (``ru_maxrss``) and the number of batches
(the progress bar advances once per batch). Rounds alternate the batch sizes so that machine load hits them
alike; the best round of each is kept. Ratios last: auto's speed / the best fixed batch's (goal ≥ 0.95) and
auto's peak RSS / that batch's.

Models: ``resnet18`` — ResNet-18 in torchvision's ImageNet layout (built in ``_shared.py``, no torchvision),
random weights, 3×224² uint8 images; ``digits`` — the shipped digits CNN (``sample_checkpoints/
digits_hard.pt2``) on its 8×8 images, tiled to ``--digits-n`` rows.

    python benchmarks/batch_size.py                          # both models, CPU, small sizes
    python benchmarks/batch_size.py --model resnet18 --n 256 --rounds 2 --batches 16 32 64 128 256 1024
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def child(model_name: str, batch: str, n: int, device: str) -> dict:
    import torch

    from calibscope.inference.engine import InferenceOptions, automatic_batch_size, run_inference

    torch.manual_seed(0)
    if model_name == "resnet18":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _shared import ResNet18

        model = ResNet18(num_classes=1000, stem="imagenet").eval()
        images = torch.randint(0, 256, (n, 3, 224, 224), dtype=torch.uint8)
        mean, std = MEAN, STD
    else:
        from calibscope.loading.checkpoint import load_checkpoint
        from calibscope.loading.dataset import load_dataset

        checkpoint = load_checkpoint(ROOT / "sample_checkpoints" / "digits_hard.pt2")
        model = checkpoint.module
        base = load_dataset(ROOT / "sample_checkpoints" / "digits_train.npz").inputs
        images = base.repeat((n + base.shape[0] - 1) // base.shape[0], *([1] * (base.ndim - 1)))[:n].contiguous()
        mean = std = None
    size = None if batch == "auto" else int(batch)
    options = InferenceOptions(device=device, batch_size=size, mean=mean, std=std)
    run_inference(model, images[:2], options=options, progress=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = run_inference(model, images, options=options, progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    used = int(out.meta["batch_size"])
    return {"batch": batch, "used": used, "batches": -(-n // used), "seconds": seconds, "peak_mb": peak / 1024,
            "before_mb": before / 1024,
            "auto": automatic_batch_size(images, torch.device(device)) if batch == "auto" else None}


def run_child(model: str, batch: str, n: int, device: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", model, batch, str(n), device], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(model: str, n: int, batches: list[int], rounds: int, device: str) -> None:
    sizes = ["auto", *map(str, batches)]
    best: dict[str, dict] = {}
    for r in range(rounds):
        order = sizes if r % 2 == 0 else sizes[::-1]
        for size in order:
            row = run_child(model, size, n, device)
            if size not in best or row["seconds"] < best[size]["seconds"]:
                best[size] = row
    print(f"--- {model}, {n} images, {device}, best of {rounds} rounds (load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())})")
    print(f"  {'batch':>6} {'used':>5} {'batches':>8} {'img/s':>9} {'peak RSS':>10} {'RSS before':>11}")
    for size in sizes:
        row = best[size]
        print(f"  {size:>6} {row['used']:>5} {row['batches']:>8} {n / row['seconds']:9.1f} "
              f"{row['peak_mb']:8.0f} MB {row['before_mb']:8.0f} MB")
    fixed = [best[s] for s in sizes[1:]]
    fastest = min(fixed, key=lambda row: row["seconds"])
    auto = best["auto"]
    same = [row for row in fixed if row["used"] == auto["used"]]
    print(f"  ratios: auto (batch {auto['used']}, {auto['batches']} batches) speed / best fixed (batch "
          f"{fastest['used']}) {fastest['seconds'] / auto['seconds']:.3f} (goal ≥ 0.95); peak RSS auto / best fixed "
          f"{auto['peak_mb'] / fastest['peak_mb']:.2f}"
          + (f"; auto vs the same fixed batch: speed {same[0]['seconds'] / auto['seconds']:.3f}" if same else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["all", "resnet18", "digits"], default="all")
    ap.add_argument("--n", type=int, default=256, help="ResNet-18 images (224²)")
    ap.add_argument("--digits-n", type=int, default=65536, help="digits rows (the training set tiled)")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64, 128, 256, 1024])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        model, batch, n, device = args.child
        print(json.dumps(child(model, batch, int(n), device)))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    if args.model in ("all", "resnet18"):
        bench("resnet18", args.n, args.batches, args.rounds, args.device)
    if args.model in ("all", "digits"):
        bench("digits", args.digits_n, args.batches, args.rounds, args.device)


if __name__ == "__main__":
    main()
