"""The demo's commands end to end (``make demo``: ``calibscope ece`` and ``calibscope compare`` on the three
sample models), cold (empty output cache) and cached, and where their time goes, in one run.

* End to end: each command of the ``demo`` target (read from ``make -n demo``, so it is the Makefile's own
  command line; a built-in copy when ``make`` is missing) as a subprocess with the target's environment
  (``OMP_NUM_THREADS=1`` unless set), wall seconds. ``cold``: a fresh
  ``CALIBSCOPE_CACHE_DIR`` (as after ``make setup``); ``cached``: the same commands again. Repeats alternate
  cold and cached so that machine load hits both alike; the load average is printed (the machine is shared).
* Where the time goes: the same commands once more in a child process that wraps the workflow entry points
  with timers (checkpoint loading, test outputs, each report section, the HTML page, the figures), cold.

Goal (issue 18): the demo's commands ≤ 30 s together after set-up, on an idle 2-core machine.

    python benchmarks/demo.py [--repeats 2] [--no-breakdown]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
S = "sample_checkpoints"
MODELS = [f"{S}/digits_hard.pt2", f"{S}/digits_ls.pt2", f"{S}/digits_sam.pt2"]
FALLBACK = [  # the Makefile's demo recipe, for machines without make
    ["ece", *MODELS, "--data", f"{S}/digits_test.npz", "--out", "demo-out"],
    ["compare", *MODELS, "--data", f"{S}/digits_test.npz", "--val", f"{S}/digits_val.npz",
     "--train", f"{S}/digits_train.npz", "-o", "demo-out/compare.html"],
]


def demo_commands() -> tuple[list[list[str]], str]:
    """The calibscope argument lists of ``make demo`` (without the leading ``calibscope``), and their source."""
    make = shutil.which("make")
    if make is not None:
        stamp = ROOT / ".venv" / ".calibscope-installed"
        out = subprocess.run([make, "-n", "-s", "-o", str(stamp.relative_to(ROOT)), "demo"], cwd=ROOT,
                             capture_output=True, text=True)
        commands = []
        for line in out.stdout.replace("\\\n", " ").splitlines():
            words = shlex.split(line)
            if words and words[0].endswith("/calibscope"):
                commands.append(words[1:])
        if out.returncode == 0 and commands:
            return commands, "make -n demo"
    return FALLBACK, "built-in copy of the demo recipe"


def with_out(argv: list[str], out: Path) -> list[str]:
    return [a.replace("demo-out", str(out)) for a in argv]


# the environment of the Makefile's demo target: nothing of its own (calibscope picks one intra-op thread for the
# tiny sample models by itself, calibscope/workflows/threads.py); CALIBSCOPE_THREADS=2 times torch's default
DEMO_ENV: dict[str, str] = {}


def run_once(argv: list[str], cache: Path, out: Path) -> float:
    env = {**os.environ, **DEMO_ENV, "CALIBSCOPE_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "calibscope", *with_out(argv, out)], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def end_to_end(commands: list[list[str]], repeats: int, work: Path) -> None:
    names = [c[0] for c in commands]
    cold: list[list[float]] = [[] for _ in commands]
    cached: list[list[float]] = [[] for _ in commands]
    for r in range(repeats):
        cache = work / f"cache{r}"
        print(f"  repeat {r + 1}: load average {load()}", flush=True)
        for i, argv in enumerate(commands):
            cold[i].append(run_once(argv, cache, work / f"out{r}"))
        for i, argv in enumerate(commands):
            cached[i].append(run_once(argv, cache, work / f"out{r}"))
    print(f"  load average after: {load()}")
    print(f"  {'command':<10} {'cold (s)':>9} {'cached (s)':>11}   runs cold | cached")
    for i, name in enumerate(names):
        print(f"  {name:<10} {statistics.median(cold[i]):9.2f} {statistics.median(cached[i]):11.2f}   "
              f"{', '.join(f'{x:.1f}' for x in cold[i])} | {', '.join(f'{x:.1f}' for x in cached[i])}")
    total_cold = statistics.median([sum(t) for t in zip(*cold, strict=True)])
    total_cached = statistics.median([sum(t) for t in zip(*cached, strict=True)])
    print(f"  {'together':<10} {total_cold:9.2f} {total_cached:11.2f}   (goal ≤ 30 s; median of the sums)")


# ---------------------------------------------------------------------------------------------------------
# the breakdown: one command in this (child) process, its workflow entry points wrapped with timers
# ---------------------------------------------------------------------------------------------------------


def _wrap(times: dict[str, float], owner, attr: str, label: str) -> None:
    is_dict = isinstance(owner, dict)
    fn = owner[attr] if is_dict else getattr(owner, attr)
    times.setdefault(label, 0.0)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times[label] += time.perf_counter() - start

    if is_dict:
        owner[attr] = timed
    else:
        setattr(owner, attr, timed)


def breakdown_child(argv: list[str], result: Path) -> None:
    start = time.perf_counter()
    times: dict[str, float] = {}
    import torch  # noqa: F401 - every command needs it; timed on its own

    times["import torch"] = time.perf_counter() - start
    import matplotlib.figure

    from calibscope import cli
    from calibscope.loading import checkpoint
    from calibscope.render import ece_view, report_html
    from calibscope.workflows import calibration, report

    if argv[0] == "ece":
        _wrap(times, calibration, "run_calibration", "run_calibration (load, infer, metrics)")
        _wrap(times, ece_view, "write_outputs", "figures + ece.json")
    else:
        _wrap(times, report.ReportContext, "load_models", "test outputs (all models)")
        for key in list(report.SECTION_RUNNERS):
            _wrap(times, report.SECTION_RUNNERS, key, f"section {key}")
        _wrap(times, report_html, "write_report", "HTML page (figures)")
    _wrap(times, checkpoint, "load_checkpoint", "of all: loading checkpoints")
    _wrap(times, matplotlib.figure.Figure, "savefig", "of all: savefig (PNG/SVG)")
    sys.argv = ["calibscope", *argv]
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the table the command prints
    try:
        cli.main()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    times["total"] = time.perf_counter() - start
    result.write_text(json.dumps(times))


def breakdown(commands: list[list[str]], work: Path) -> None:
    cache = work / "breakdown-cache"
    for argv in commands:
        result = work / f"{argv[0]}.json"
        env = {**os.environ, **DEMO_ENV, "CALIBSCOPE_CACHE_DIR": str(cache)}
        subprocess.run([sys.executable, __file__, "--child", str(result), "--",
                        *with_out(argv, work / "breakdown-out")], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times = json.loads(result.read_text())
        total = times.pop("total")
        print(f"  calibscope {argv[0]}: {total:.2f} s in process (load average {load()})")
        for label, seconds in times.items():
            print(f"    {label:<42} {seconds:7.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-breakdown", action="store_true", help="only the end-to-end timings")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("argv", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        breakdown_child(args.argv, args.child)
        return
    commands, source = demo_commands()
    import torch

    print(f"make demo: {len(commands)} commands ({source}); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    for argv in commands:
        print("  calibscope " + " ".join(argv))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"end to end, median of {args.repeats} (cold: empty output cache; cached: run again)")
        end_to_end(commands, args.repeats, work)
        if not args.no_breakdown:
            print("where the time goes (one cold run, each command in one process, timers on the workflow calls)")
            breakdown(commands, work)


if __name__ == "__main__":
    main()
