"""Scaling out on CPU: throughput with 1 process and with 2 ``torchrun`` ranks, side by side in one run.

Three workloads, each timed inside the processes after a warm-up (start-up, imports and the rendezvous are
reported apart, as ``start``):

* ``inference``: a CIFAR-size CNN over N uint8 images (:func:`run_inference` in one process;
  :func:`run_inference_sharded` on 2 ranks: each runs its contiguous shard, then the logits are all-gathered);
* ``hvp``: Hessian-vector products of the mean cross-entropy over M examples (one process; 2 ranks each take
  half of the examples and all-reduce the product, as ``calibscope hessian`` does);
* ``ece-stream``: calibration statistics over a logits file read by rows from disk (one process reads every
  row; 2 ranks read half each and all-reduce the sums).

Configurations: 1 process × 1 thread (the baseline), 1 process × 2 threads, 2 ranks × 1 thread (gloo). Printed
last: the speed-up of 2 ranks over the baseline and the parallel efficiency (speed-up / 2). With 2 cores,
2 ranks × 1 thread and 1 process × 2 threads use the same hardware. The model of N-GPU scaling on paper is in
``docs/scaling.md``.

    python benchmarks/scaling.py                   # defaults sized for a 2-core CPU
    python benchmarks/scaling.py --images 32768 --hvp-examples 2048 --logits-rows 2000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def _model(width: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 3, 1, 1), nn.ReLU(), nn.Conv2d(w, 2 * w, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4 * w, 4 * w), nn.ReLU(), nn.Linear(4 * w, 10)).eval()


def _images(n: int):
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), \
        torch.randint(0, 10, (n,), generator=g)


def _barrier(group) -> None:
    if group is not None:
        group.all_true(True)


def worker(args) -> None:
    """One process of one configuration: time each workload, rank 0 prints a JSON line."""
    t_start = time.perf_counter()
    import torch

    from calibscope.diagnostics.calibration import streamed_calibration_metrics
    from calibscope.diagnostics.hessian import HessianOperator, select_parameters
    from calibscope.inference import distributed
    from calibscope.inference.engine import InferenceOptions, run_inference, run_inference_sharded
    from calibscope.inference.pipeline import output_shard
    from calibscope.loading.checkpoint import open_logits_rows

    group = distributed.init_from_environment()
    start_seconds = time.perf_counter() - t_start + float(os.environ.get("BENCH_IMPORT_SECONDS", "0"))
    model = _model(args.width)
    images, labels = _images(args.images)
    options = InferenceOptions(device="cpu", batch_size=args.batch_size, mean=(0.5,), std=(0.25,))
    result = {"start": start_seconds}

    # inference
    run_inference(model, images[: args.batch_size], options=options, progress=False)  # warm-up
    _barrier(group)
    t0 = time.perf_counter()
    if group is None:
        out = run_inference(model, images, options=options, progress=False)
    else:
        out = run_inference_sharded(model, images, group=group, options=options, progress=False)
    result["inference"] = args.images / (time.perf_counter() - t0)
    assert out.logits.shape[0] == args.images

    # Hessian-vector products
    m = args.hvp_examples
    a, b = (0, m) if group is None else group.shard(m)
    op = HessianOperator(model, images[a:b], labels[a:b], parameters=select_parameters(model),
                         batch_size=args.batch_size, mean=(0.5,), std=(0.25,), total=m,
                         reduce=None if group is None else group.all_reduce_sum)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(2))
    op.hvp(v)  # warm-up
    _barrier(group)
    t0 = time.perf_counter()
    for _ in range(args.hvps):
        op.hvp(v)
    result["hvp"] = args.hvps * m / (time.perf_counter() - t0)  # examples through an HVP per second

    # every calibration metric of `calibscope ece`, its logits read by rows from disk (as the command does)
    shard = output_shard(open_logits_rows(args.logits_file), None)
    _barrier(group)
    t0 = time.perf_counter()
    metrics = streamed_calibration_metrics(shard.chunks(), num_classes=shard.num_classes, num_examples=len(shard),
                                           reduce=None if group is None else group.all_reduce_sum,
                                           gather=None if group is None else group.all_gather_rows)
    result["ece-stream"] = shard.num_examples / (time.perf_counter() - t0)
    result["ece"] = metrics.value("ece")
    if group is None or group.is_main:
        print("BENCH " + json.dumps(result), flush=True)
    distributed.shutdown()


def _run(label: str, cmd: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("WORLD_SIZE", None)
    t0 = time.perf_counter()
    job = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    line = next((x for x in job.stdout.splitlines() if x.startswith("BENCH ")), None)
    if job.returncode != 0 or line is None:
        raise SystemExit(f"{label} failed ({job.returncode}):\n{job.stderr[-3000:]}")
    result = json.loads(line[len("BENCH "):])
    result["wall"] = wall
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8192, help="images for the inference workload")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hvp-examples", type=int, default=512)
    parser.add_argument("--hvps", type=int, default=5)
    parser.add_argument("--logits-rows", type=int, default=200_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--logits-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        logits_file = Path(tmp) / "logits.npy"
        rng = np.random.default_rng(0)
        z = np.lib.format.open_memmap(logits_file, mode="w+", dtype=np.float32,
                                      shape=(args.logits_rows, args.classes))
        for s in range(0, args.logits_rows, 1 << 16):
            z[s:s + (1 << 16)] = rng.standard_normal((min(1 << 16, args.logits_rows - s), args.classes),
                                                     dtype=np.float32) * 3
        z.flush()
        del z
        np.savez(Path(tmp) / "logits.npz", logits=np.load(logits_file, mmap_mode="r"),
                 labels=rng.integers(0, args.classes, args.logits_rows))
        common = [str(HERE), "--worker", "--images", str(args.images), "--width", str(args.width), "--batch-size",
                  str(args.batch_size), "--hvp-examples", str(args.hvp_examples), "--hvps", str(args.hvps),
                  "--logits-file", str(Path(tmp) / "logits.npz")]
        configs = [
            ("1 process x 1 thread", [sys.executable, *common], 1),
            ("1 process x 2 threads", [sys.executable, *common], 2),
            ("2 ranks x 1 thread", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    "--nproc_per_node=2", *common], 1),
        ]
        results = {label: _run(label, cmd, threads) for label, cmd, threads in configs}

    import torch

    print(f"calibscope scaling on CPU (torch {torch.__version__}, {os.cpu_count()} cores, gloo): "
          f"inference {args.images} images 3x32x32 (CNN width {args.width}, batch {args.batch_size}); "
          f"HVPs over {args.hvp_examples} examples; ECE statistics over {args.logits_rows} x {args.classes} "
          "logits read from disk")
    units = {"inference": "images/s", "hvp": "examples/s", "ece-stream": "rows/s"}
    width = max(len(label) for label in results)
    for workload, unit in units.items():
        cells = "  ".join(f"{label}: {r[workload]:>11,.0f}" for label, r in results.items())
        print(f"{workload:<10} [{unit:>10}]  {cells}")
    base, two = results["1 process x 1 thread"], results["2 ranks x 1 thread"]
    for workload in units:
        speedup = two[workload] / base[workload]
        print(f"{workload:<10} 2 ranks / 1 process: speed-up {speedup:.2f}x, efficiency {speedup / 2:.0%}"
              f"  (1 process x 2 threads: {results['1 process x 2 threads'][workload] / base[workload]:.2f}x)")
    print("start-up (imports + rendezvous, s): " + "  ".join(f"{k:<{width}} {v['start']:.1f}"
                                                              for k, v in results.items()))
    eces = {f"{r['ece']:.12f}" for r in results.values()}
    print(f"ECE of the logits file: {' / '.join(sorted(eces))} ({'the same' if len(eces) == 1 else 'DIFFERENT'} "
          "in every configuration)")


if __name__ == "__main__":
    main()
