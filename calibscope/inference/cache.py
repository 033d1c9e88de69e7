"""Output cache: ``.calibscope/cache/<key>.safetensors``, keyed by a hash of checkpoint bytes, dataset bytes
and every option that changes the numbers, so ``ece`` then ``temperature`` then ``report`` run the model once.

Entries are safetensors files (tensors + JSON metadata): reading one never executes code. Each entry also
records its own key and a SHA-256 digest of its content (key, meta and every tensor's name, dtype, shape and
bytes); an entry whose key or digest does not match — flipped bytes, a truncated file, another run's entry
copied under this name — is a miss: the outputs are recomputed and the entry rewritten, with one warning.
A cache that cannot be written (read-only or full disk) is skipped with one warning; the result is unaffected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from calibscope.inference.outputs import Outputs

CACHE_FORMAT = 1
_TENSORS = ("logits", "features", "weight", "bias")  # labels come from the dataset, never the cache
_DIGEST_CHUNK = 1 << 24  # bytes hashed at a time when an entry is read by rows
_warned: set[str] = set()


def _warn_once(kind: str, message: str) -> None:
    if kind not in _warned:
        _warned.add(kind)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def content_digest(key: str, meta_text: str, tensors: dict[str, Any]) -> str:
    """SHA-256 of an entry's key, meta (as stored) and tensors (sorted by name: name, dtype, shape, bytes).

    ``tensors`` values are torch tensors or :class:`~calibscope.loading.files.StoredArray` (hashed by rows)."""
    h = hashlib.sha256(f"calibscope-cache:{CACHE_FORMAT}:{key}:".encode())
    h.update(hashlib.sha256(meta_text.encode()).digest())
    for name in sorted(tensors):
        t = tensors[name]
        if isinstance(t, torch.Tensor):
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        else:  # a StoredArray: the same bytes, read in chunks of rows
            h.update(f"{name}:{t.rows(0, 0).dtype}:{tuple(t.shape)}:".encode())
            step = max(1, _DIGEST_CHUNK // max(t.row_bytes, 1))
            for a in range(0, len(t), step):
                h.update(t.rows(a, a + step).contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_entry(key: str, path: Path, stored: dict[str, str], tensors: dict[str, Any]) -> bool:
    meta_text = stored.get("meta", "{}")
    ok = stored.get("key") == key and stored.get("digest") == content_digest(key, meta_text, tensors)
    if not ok:
        _warn_once("digest", f"the output cache entry {path} does not match its digest (damaged, or another run's "
                             "entry); recomputing the outputs")
    return ok


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
            stored = dict(f.metadata() or {})
        if not _check_entry(key, path, stored, tensors):
            return None
        meta = json.loads(stored.get("meta", "{}"))
    except (SafetensorError, OSError, ValueError, RuntimeError):
        _warn_once("digest", f"the output cache entry {path} is unreadable; recomputing the outputs")
        return None  # a damaged entry is a miss, not an error
    if not isinstance(meta, dict):
        return None
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
        arrays = stored_arrays(path, "safetensors")
        logits = arrays.get("logits")
        with safe_open(str(path), framework="pt") as f:
            stored = dict(f.metadata() or {})
            names = list(f.keys())
        if logits is None or len(logits.shape) != 2 or logits.dtype != "<f4" or set(names) != set(arrays):
            return None
        if not _check_entry(key, path, stored, arrays):
            return None
        meta = json.loads(stored.get("meta", "{}"))
    except (InputError, SafetensorError, OSError, ValueError, RuntimeError):
        _warn_once("digest", f"the output cache entry {path} is unreadable; recomputing the outputs")
        return None  # a damaged entry is a miss, not an error
    if not isinstance(meta, dict):
        return None
    meta["cache"] = "hit"
    return logits, meta


def store(key: str, outputs: Outputs) -> None:
    """Write atomically (temp file + rename), with the key and the content digest in the entry's metadata.

    A write that fails (read-only or full disk, …) is skipped with one warning: the result is still returned.
    """
    from safetensors.torch import save_file

    tensors = {k: getattr(outputs, k).detach().cpu().contiguous() for k in _TENSORS if getattr(outputs, k) is not None}
    directory = cache_dir()
    meta_text = json.dumps(outputs.meta, default=str)
    tmp = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{key}.", suffix=".tmp")
        os.close(fd)
        metadata = {"meta": meta_text, "key": key, "digest": content_digest(key, meta_text, tensors)}
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, directory / f"{key}.safetensors")
    except Exception as exc:  # noqa: BLE001 - a cache is an optimisation: never fail the command for it
        _warn_once("write", f"could not write the output cache in {directory} ({type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else 'no detail'}); "
                            "going on without it (pass --no-cache to skip it)")
    finally:
        if tmp is not None and os.path.exists(tmp):
            with contextlib.suppress(OSError):
                os.unlink(tmp)


# --------------------------------------------------------------------------------------------------------
# file digests, memoised by path, size and modification time
# --------------------------------------------------------------------------------------------------------

DIGESTS_FILE = "digests.json"
_RACY_SECONDS = 2.0  # a file modified this recently may change again within the clock's resolution
_digests: dict[str, tuple[tuple[int, int, int, int], str]] = {}  # this process's memo


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def file_digest(path: Path | str) -> str:
    """SHA-256 of a checkpoint file's bytes (as :func:`calibscope.loading.files.file_sha256`), memoised in
    ``digests.json`` of the cache folder by resolved path, size, modification and change time and inode, so a
    repeated command hashes nothing. A file modified in the last two seconds is hashed but not memoised (it
    may change again within the clock's resolution); folders (e.g. Hugging Face) are always hashed."""
    import time

    from calibscope.loading.files import file_sha256

    p = Path(path)
    if p.is_dir():
        return file_sha256(p)
    real = str(p.resolve())
    stamp = _stamp(p.stat())
    known = _digests.get(real)
    if known is not None and known[0] == stamp:
        return known[1]
    index_path = cache_dir() / DIGESTS_FILE
    index = _read_index(index_path)
    entry = index.get(real)
    if isinstance(entry, dict) and tuple(entry.get("stamp") or ()) == stamp and _is_hex(entry.get("sha256")):
        _digests[real] = (stamp, entry["sha256"])
        return entry["sha256"]
    digest = file_sha256(p)
    if time.time() - p.stat().st_mtime_ns / 1e9 < _RACY_SECONDS or _stamp(p.stat()) != stamp:
        return digest
    _digests[real] = (stamp, digest)
    index[real] = {"stamp": list(stamp), "sha256": digest}
    _write_index(index_path, index)
    return digest


def _is_hex(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _read_index(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > 16 << 20:  # a sane bound: thousands of entries are a few hundred kB
            return {}
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_index(path: Path, index: dict[str, Any]) -> None:
    """Atomic (temp file + rename); a failure only costs hashing again next time."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".digests.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(index, f)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
