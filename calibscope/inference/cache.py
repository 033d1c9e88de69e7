"""Output cache: ``.calibscope/cache/<key>.safetensors``, keyed by a hash of checkpoint bytes, dataset bytes
and every option that changes the numbers, so ``ece`` then ``temperature`` then ``report`` run the model once.

Entries are safetensors files (tensors + JSON metadata): reading one never executes code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from calibscope.inference.outputs import Outputs

CACHE_FORMAT = 1
_TENSORS = ("logits", "features", "weight", "bias")  # labels come from the dataset, never the cache


def cache_dir() -> Path:
    """``$CALIBSCOPE_CACHE_DIR`` or ``./.calibscope/cache``."""
    return Path(os.environ.get("CALIBSCOPE_CACHE_DIR", Path(".calibscope") / "cache"))


def cache_key(**parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (hashes of inputs, options, versions)."""
    text = json.dumps({"cache_format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load_cached(key: str) -> Outputs | None:
    path = cache_dir() / f"{key}.safetensors"
    if not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
    except (SafetensorError, OSError, ValueError):
        return None  # a damaged entry is a miss, not an error
    meta["cache"] = "hit"
    return Outputs(**{k: tensors.get(k) for k in _TENSORS}, labels=None, meta=meta)


def load_cached_logits_rows(key: str):
    """The cached logits as a :class:`~calibscope.loading.files.StoredArray` (read by rows, nothing read yet)
    and the entry's meta, or None: for a rank that needs only its shard of an entry."""
    path = cache_dir() / f"{key}.safetensors"
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    from calibscope.errors import InputError
    from calibscope.loading.files import stored_arrays

    try:
        logits = stored_arrays(path, "safetensors").get("logits")
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
    except (InputError, SafetensorError, OSError, ValueError):
        return None  # a damaged entry is a miss, not an error
    if logits is None or len(logits.shape) != 2 or logits.dtype != "<f4":
        return None
    meta["cache"] = "hit"
    return logits, meta


def store(key: str, outputs: Outputs) -> None:
    """Write atomically (temp file + rename); failures to cache are silent (the result is still returned)."""
    from safetensors.torch import save_file

    tensors = {k: getattr(outputs, k).contiguous() for k in _TENSORS if getattr(outputs, k) is not None}
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"meta": json.dumps(outputs.meta, default=str)})
            os.replace(tmp, directory / f"{key}.safetensors")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
