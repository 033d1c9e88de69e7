"""One intra-op thread for tiny work (the command line's choice; the library leaves torch's setting alone).

On a tiny model and dataset (the shipped 8×8 digits samples: 151k parameters, 64 inputs, 1,347 rows) every
torch op is short, and with several intra-op threads each one ends at a barrier. On an idle machine that
costs nothing measurable; when another process keeps a core busy, each barrier can wait a scheduler quantum:
`calibscope compare` on the samples took 26.1 s with two threads and 15.2 s with one beside one busy process
(14.5 s either way when idle; docs/performance.md). So when every model of a command is tiny — parameters ×
elements per example ≤ 2**27 and at most 2**17 rows, or, for a logits file, rows × classes ≤ 2**22 — the
command runs with one intra-op thread. Larger work keeps torch's default, and so does a user who chose:
``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` or ``CALIBSCOPE_THREADS=N`` set (the last: N intra-op threads).
Only the command line asks for this policy (a :class:`~calibscope.workflows.session.Session` built with
``auto_threads=True``). The parameter
count is estimated from the checkpoint's bytes (4 per float32 parameter), so a model served from the output
cache is never loaded to decide.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from calibscope.errors import InputError

SMALL_MODEL_WORK = 1 << 27  # parameters × elements per example
SMALL_ROWS = 1 << 17
SMALL_LOGITS = 1 << 22  # rows × classes of a logits file
_PINNED_BY = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CALIBSCOPE_THREADS")


def is_tiny(parameters: int, example_elements: int, rows: int) -> bool:
    """Whether a model of ``parameters`` on ``rows`` examples of ``example_elements`` values is tiny work.

    >>> is_tiny(10_000, 64, 1_347), is_tiny(270_000, 3 * 32 * 32, 10_000)  # digits MLP; CIFAR ResNet-20
    (True, False)
    """
    return parameters * max(example_elements, 1) <= SMALL_MODEL_WORK and rows <= SMALL_ROWS


def checkpoint_parameters(path: Path | str) -> int:
    """≈ parameters of the checkpoint at ``path``: its bytes / 4 (a folder: all its files)."""
    p = Path(path)
    if p.is_dir():
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    else:
        size = p.stat().st_size if p.exists() else 0
    return size // 4


def example_elements(dataset: Any) -> int:
    """Values per example of a loaded dataset (named inputs: summed over the names)."""
    inputs = getattr(dataset, "inputs", None)
    if isinstance(inputs, torch.Tensor):
        return math.prod(inputs.shape[1:])
    tensors = getattr(inputs, "tensors", None) or {}
    return sum(math.prod(t.shape[1:]) for t in tensors.values()) if tensors else 1


class ThreadPolicy:
    """The process-wide choice for one command: :meth:`consider` each model's work before it runs; one
    intra-op thread while all of them were tiny, torch's setting back as soon as one is not."""

    def __init__(self) -> None:
        chosen = os.environ.get("CALIBSCOPE_THREADS", "").strip()
        if chosen:
            if not chosen.isdigit() or int(chosen) < 1:
                raise InputError(f"CALIBSCOPE_THREADS must be a whole number of threads ≥ 1, but got {chosen!r}")
            torch.set_num_threads(int(chosen))
        self.default = torch.get_num_threads()
        self.pinned = any(os.environ.get(name) for name in _PINNED_BY) or self.default == 1
        self.large_seen = False

    def consider(self, tiny: bool) -> None:
        if self.pinned:
            return
        if not tiny:
            self.large_seen = True
        want = self.default if self.large_seen else 1
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)
