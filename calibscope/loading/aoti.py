"""AOTInductor packages: ``.pt2`` archives written by ``torch._inductor.aoti_compile_and_package``.

They look like ``torch.export`` archives but hold compiled native code (``data/aotinductor/<model>/*.so``),
which ``torch._inductor.aoti_load_package`` loads and runs: so they load only with ``--trust``, and are named as
what they are otherwise. The package runs only on the platform it was compiled for (its
``wrapper_metadata.json`` says which: CPU/CUDA, OS, machine).

:class:`AotiClassifier` is an ``nn.Module`` facade over the loaded package. The compiled model's input checks
are switched on (``AOTI_RUNTIME_CHECK_INPUTS=1``; without them a wrong shape reads out of bounds instead of
failing), and a package compiled for a static batch size B — read from the generated wrapper's input check
``B != size[0]`` — is fed B rows at a time, the last chunk padded with copies of its last row and the padding
dropped. No gradients and no penultimate features (:data:`~calibscope.feeding.NO_AUTOGRAD`).
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from calibscope.errors import InputError, UntrustedFileError
from calibscope.feeding import NO_AUTOGRAD
from calibscope.loading import files
from calibscope.loading.types import ModelCheckpoint

__all__ = ["AotiClassifier", "is_aoti_package", "load_aoti"]

_MARKER = "/data/aotinductor/"
_REASON = ("it is an AOTInductor package (compiled native code), which gives neither gradients nor penultimate "
           "features; pass the torch.export .pt2 or the weights it was compiled from instead")
_STATIC_BATCH = re.compile(r"if \((\d+) != \w+_size\[0\]\)")


def is_aoti_package(p: Path) -> bool:
    """A zip holding ``data/aotinductor/`` members (what ``aoti_compile_and_package`` writes)."""
    try:
        with zipfile.ZipFile(p) as zf:
            return any(_MARKER in f"/{n}" for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_aoti(p: Path, *, trust: bool) -> ModelCheckpoint:
    """The package as an :class:`AotiClassifier` (``trust`` required: it runs compiled code from the file)."""
    platform = _platform(p)
    if not trust:
        raise UntrustedFileError(f"{files.display(p)} is an AOTInductor package (compiled native code for "
                                 f"{platform}); loading it runs that code. Pass --trust if you trust its author, or "
                                 "use the torch.export .pt2 it was compiled from")
    loader = getattr(getattr(torch, "_inductor", None), "aoti_load_package", None)
    if loader is None:
        raise InputError(f"{files.display(p)} is an AOTInductor package, and torch {torch.__version__} has no "
                         "torch._inductor.aoti_load_package to load it; use torch ≥ 2.6 or the torch.export .pt2")
    os.environ.setdefault("AOTI_RUNTIME_CHECK_INPUTS", "1")  # read once, at the package's first call
    try:
        compiled = loader(str(p))
    except Exception as exc:  # noqa: BLE001 - wrong platform, missing compiler runtime, corrupt archive
        raise InputError(f"{files.display(p)} is an AOTInductor package (for {platform}) that torch "
                         f"{torch.__version__} cannot load here ({_one_line(exc)}); compile it on this machine or "
                         "use the torch.export .pt2") from None
    module = AotiClassifier(compiled, p, static_batch=_static_batch(p))
    return ModelCheckpoint(module, "aoti", p, files.file_sha256(p), {"platform": platform})


class AotiClassifier(nn.Module):
    """A loaded AOTInductor package behind the ``nn.Module`` interface (see the module docstring)."""

    def __init__(self, compiled: Any, path: Path, *, static_batch: int | None):
        super().__init__()
        setattr(self, NO_AUTOGRAD, _REASON)
        self.compiled, self.path, self.static_batch = compiled, path, static_batch

    def forward(self, x: torch.Tensor) -> Any:
        size, rows = self.static_batch, int(x.shape[0])
        if size is None or size == rows:
            return self._run(x)
        parts = []
        for a in range(0, rows, size):
            chunk = x[a:a + size]
            n = int(chunk.shape[0])
            if n < size:
                chunk = torch.cat([chunk, chunk[-1:].expand(size - n, *chunk.shape[1:])])
            parts.append(self._run(chunk)[:n])
        return torch.cat(parts)

    def _run(self, x: torch.Tensor) -> Any:
        try:
            out = self.compiled(x.contiguous())
        except Exception as exc:  # noqa: BLE001 - the compiled model's input checks
            raise InputError(f"{files.display(self.path)} (an AOTInductor package) refused inputs of shape "
                             f"{list(x.shape)} {str(x.dtype).removeprefix('torch.')} ({_one_line(exc)})") from None
        return out[0] if isinstance(out, (list, tuple)) and len(out) == 1 else out


def _platform(p: Path) -> str:
    try:
        with zipfile.ZipFile(p) as zf:
            name = next((n for n in zf.namelist() if _MARKER in f"/{n}" and n.endswith("_metadata.json")
                         and "kernel" not in n.rsplit("/", 1)[-1]), None)
            meta = json.loads(zf.read(name)) if name else {}
    except (zipfile.BadZipFile, OSError, ValueError, KeyError):
        meta = {}
    device = meta.get("AOTI_DEVICE_KEY", "unknown device")
    return f"{device} on {meta.get('AOTI_PLATFORM', '?')}/{meta.get('AOTI_MACHINE', '?')}"


def _static_batch(p: Path) -> int | None:
    """B when the generated wrapper checks ``B != size[0]`` for the first input (a static batch size)."""
    try:
        with zipfile.ZipFile(p) as zf:
            for name in zf.namelist():
                if _MARKER in f"/{name}" and name.endswith(".wrapper.cpp"):
                    info = zf.getinfo(name)
                    if info.file_size > 64 << 20:
                        return None
                    text = zf.read(name).decode("utf-8", "replace")
                    start = text.find("void check_input_0(")
                    if start < 0:
                        return None
                    end = text.find("static void", start + 1)
                    match = _STATIC_BATCH.search(text[start:end if end > 0 else None])
                    return int(match.group(1)) if match else None
    except (zipfile.BadZipFile, OSError):
        return None
    return None


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:240] if lines else type(exc).__name__
