"""Builders of hostile input files (each small, made from a seed in the test) and a runner that calls a loader in
a forked child with a memory ceiling and a deadline, reporting the outcome and the child's peak memory."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import resource
import struct
import traceback
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"
BOMB_BYTES = 300 << 20  # above limits.BOMB_MIN_BYTES, built in well under a second from zeros


# ----------------------------------------------------------------------------------------------- the runner


def _child(conn, fn, args, extra_bytes):
    try:
        with open("/proc/self/status") as fh:
            vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + extra_bytes, resource.RLIM_INFINITY))
    except (OSError, ValueError, StopIteration):  # pragma: no cover - no /proc: run without a ceiling
        pass
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        value = fn(*args)
        outcome = ("ok", repr(value)[:300])
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        outcome = (type(exc).__name__, str(exc)[:2000] if not isinstance(exc, MemoryError) else "MemoryError",
                   traceback.format_exc()[-3000:], [c.__name__ for c in type(exc).__mro__])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    conn.send((outcome, base * 1024, peak * 1024))
    conn.close()


def run_isolated(fn: Callable[..., Any], *args: Any, timeout: float = 60.0,
                 extra_bytes: int = 2 << 30) -> dict[str, Any]:
    """``fn(*args)`` in a forked child allowed ``extra_bytes`` of address space beyond the parent's and
    ``timeout`` seconds. Returns ``{"kind": "ok" | exception name | "timeout", "message", "input_error",
    "peak_rss", "rss_growth"}`` (bytes; ``ru_maxrss`` of the child)."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args, extra_bytes))
    proc.start()
    child.close()
    if not parent.poll(timeout):
        proc.kill()
        proc.join()
        return {"kind": "timeout", "message": f"no answer within {timeout} s", "input_error": False}
    outcome, base, peak = parent.recv()
    proc.join()
    mro = outcome[3] if len(outcome) > 3 else []
    return {"kind": outcome[0], "message": outcome[1], "trace": outcome[2] if len(outcome) > 2 else "",
            "input_error": "InputError" in mro, "peak_rss": peak, "rss_growth": max(0, peak - base)}


# ----------------------------------------------------------------------------------------------- builders


def npy_bytes(shape: tuple[int, ...], dtype: str, data: bytes) -> bytes:
    """An ``.npy`` whose header says ``shape`` but whose data is ``data`` (a lie when they differ)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def npz_header_lie(path: Path) -> Path:
    """Logits whose ``.npy`` header claims 7,000,000 rows but whose member holds 10 (stored, as numpy.savez)."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((10, 10)).astype(np.float32)
    labels = np.arange(10, dtype=np.int64)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("logits.npy", npy_bytes((7_000_000, 10), "<f4", logits.tobytes()))
        zf.writestr("labels.npy", npy_bytes((10,), "<i8", labels.tobytes()))
    return path


def npz_bomb(path: Path) -> Path:
    """A deflated ``.npz`` member of zeros: ~300 kB on disk, 300 MB when read."""
    n = BOMB_BYTES
    header = npy_bytes((n,), "|u1", b"")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zi = zipfile.ZipInfo("x.npy")
        zi.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(zi, "w", force_zip64=True) as fh:
            fh.write(header)
            chunk = bytes(1 << 20)
            left = n
            while left > 0:
                fh.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
        zf.writestr("y.npy", npy_bytes((1,), "<i8", bytes(8)))
    return path


def pt2_bomb(path: Path) -> Path:
    """The sample ``.pt2`` with a deflated member of zeros added (torch's reader inflates it whole)."""
    src = SAMPLES / "digits_hard.pt2"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        zi = zipfile.ZipInfo("digits_hard/extra/padding")
        zi.compress_type = zipfile.ZIP_DEFLATED
        with zout.open(zi, "w", force_zip64=True) as fh:
            chunk = bytes(1 << 20)
            for _ in range(BOMB_BYTES >> 20):
                fh.write(chunk)
    return path


def cifar_shared_references(path: Path, depth: int = 32) -> Path:
    """A CIFAR-like batch of ~200 bytes whose lists share references: 2^depth elements when walked."""
    node: Any = [0]
    for _ in range(depth):
        node = [node, node]
    path.write_bytes(pickle.dumps({b"data": node, b"labels": node}, protocol=2))
    return path


def bytearray_bomb(path: Path, size: int = 3_300_000_000) -> Path:
    """59 bytes of pickle that call ``bytearray(3_300_000_000)``."""
    path.write_bytes(b"\x80\x02c__builtin__\nbytearray\n\x8a\x05" + size.to_bytes(5, "little") + b"\x85R.")
    return path


def safetensors_file(path: Path, header: dict, data: bytes = b"") -> Path:
    import json

    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def idx_file(path: Path, dims: tuple[int, ...], data: bytes = b"", dtype: int = 0x08) -> Path:
    path.write_bytes(bytes([0, 0, dtype, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + data)
    return path


def idx_gzip_bomb(path: Path) -> Path:
    """A gzipped IDX images file that truthfully holds 300 MB of zeros (~300 kB compressed)."""
    import gzip

    n = int(BOMB_BYTES // (28 * 28))
    with gzip.open(path, "wb", compresslevel=1) as gz:
        gz.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", n, 28, 28))
        chunk = bytes(1 << 20)
        left = n * 28 * 28
        while left > 0:
            gz.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return path


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, *, bit_depth: int = 8, color_type: int = 0, rows: bytes | None = None) -> bytes:
    """A PNG written by hand (filter 0 on every row): ``rows`` is the raw big-endian samples, row after row;
    omitted, one tiny IDAT (enough for a header-only reader; a decoder finds it truncated)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    if rows is None:
        idat = zlib.compress(b"\x00" * 16)
    else:
        stride = len(rows) // height
        idat = zlib.compress(b"".join(b"\x00" + rows[i * stride:(i + 1) * stride] for i in range(height)))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def image_folder(root: Path, images: dict[str, list[bytes]]) -> Path:
    for cls, files in images.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(files):
            (root / cls / f"{i}.png").write_bytes(data)
    return root


def symlink_loop_folder(root: Path) -> Path:
    """Two classes of one tiny image each, and in each class folder two links back to it: walking with
    followlinks=True visits 2^depth folders until the path is too long."""
    tiny = png_bytes(2, 2, rows=bytes(4))
    image_folder(root, {"a": [tiny], "b": [tiny]})
    for cls in ("a", "b"):
        os.symlink(".", root / cls / "again")
        os.symlink(".", root / cls / "once_more")
    return root
