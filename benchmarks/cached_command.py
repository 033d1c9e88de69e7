"""Is a cached command instant? Wall time of ``calibscope ece MODEL --data TEST`` with the outputs already in
the cache, side by side with ``python -c "import torch"`` (the floor: every command needs torch), in one run.

The first (uncached) run is timed too. Runs alternate (torch, cached, torch, cached, ...) so that machine load
hits both alike; the medians and their ratio are printed. A cache hit must not load the model: the target is
a ratio ≤ 1.5. ``--device cuda`` runs the command on the GPU (the cached run then still needs no model).

    python benchmarks/cached_command.py [--repeats 5] [--device cpu|cuda] [--model PATH] [--data PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_checkpoints"


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", type=Path, default=SAMPLES / "digits_hard.pt2")
    parser.add_argument("--data", type=Path, default=SAMPLES / "digits_test.npz")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "CALIBSCOPE_CACHE_DIR": cache}
        command = [sys.executable, "-m", "calibscope", "ece", str(args.model), "--data", str(args.data),
                   "--device", args.device, "--json"]
        floor = [sys.executable, "-c", "import torch"]
        first = timed(command, env)
        time.sleep(2.1)  # the cache's file-digest memo skips files modified in the last two seconds
        timed(command, env)  # memoises the digest
        torch_s, cached_s = [], []
        for _ in range(args.repeats):
            torch_s.append(timed(floor, env))
            cached_s.append(timed(command, env))
    t, c = statistics.median(torch_s), statistics.median(cached_s)
    print(f"device {args.device}, {args.model.name} on {args.data.name}, median of {args.repeats}")
    print(f"  python -c 'import torch'          {t:7.2f} s   (runs: {', '.join(f'{x:.2f}' for x in torch_s)})")
    print(f"  calibscope ece, cached outputs    {c:7.2f} s   (runs: {', '.join(f'{x:.2f}' for x in cached_s)})")
    print(f"  calibscope ece, first run         {first:7.2f} s")
    print(f"  cached / import torch             {c / t:7.2f} ×   (target ≤ 1.5)")


if __name__ == "__main__":
    main()
