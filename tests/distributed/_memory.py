"""Peak resident memory of ``calibscope ece`` over a logits file made here from a seed.

    python tests/distributed/_memory.py make PATH ROWS CLASSES     # write PATH (numpy.savez: logits, labels)
    python tests/distributed/_memory.py ece PATH                   # run ece on it, print a JSON line

``make`` writes the logits 2²² at a time (a memory-mapped scratch file, then ``numpy.savez``, which copies
it in 16 MiB pieces), so making a file bigger than memory needs little memory too. ``ece`` forces reading by
rows (``CALIBSCOPE_STREAM_MIN_BYTES=0``) and reports the resident set after the imports, the peak (``VmHWM``
of ``/proc/self/status``, or ``ru_maxrss``), the seconds and the ECE.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path


def make(path: Path, rows: int, classes: int, seed: int = 0) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    scratch = path.with_suffix(".scratch.npy")
    logits = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(rows, classes))
    labels = np.empty(rows, dtype=np.int64)
    step = max(1, (1 << 22) // classes)
    for a in range(0, rows, step):
        b = min(rows, a + step)
        z = rng.standard_normal((b - a, classes), dtype=np.float32)
        y = rng.integers(0, classes, b - a)
        z[np.arange(b - a), y] += 2.5  # a model that is right about half the time, over-confident
        logits[a:b] = 2.0 * z
        labels[a:b] = y
    logits.flush()
    del logits
    np.savez(path, logits=np.load(scratch, mmap_mode="r"), labels=labels)
    scratch.unlink()


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def ece(path: Path) -> dict:
    os.environ["CALIBSCOPE_STREAM_MIN_BYTES"] = "0"
    import io
    from contextlib import redirect_stdout

    import torch  # noqa: F401 - counted in the baseline

    from calibscope.cli import app

    baseline = _status_kib("VmRSS")
    out = io.StringIO()
    t0 = time.perf_counter()
    with redirect_stdout(out):
        code = app(["ece", str(path), "--json", "--no-cache"], standalone_mode=False, prog_name="calibscope")
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    doc = json.loads(out.getvalue())
    return {"code": code, "file_bytes": path.stat().st_size, "baseline_mib": (baseline or 0) / 1024,
            "peak_mib": peak / 1024, "seconds": seconds, "ece": doc["results"][0]["ece"], "n": doc["results"][0]["n"]}


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        print(json.dumps(ece(Path(sys.argv[2]))), flush=True)
