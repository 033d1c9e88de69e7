"""MNIST IDX files (also Fashion-MNIST), plain or gzip, with bomb and truncation checks."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from calibscope.errors import InputError
from calibscope.loading import limits
from calibscope.loading._loaded import Loaded, single_split
from calibscope.loading.files import display

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}




def _read_bytes(p: Path) -> bytes:
    """The file's bytes; a ``.gz`` is decompressed, reading no more than its IDX header says it holds (+1 byte,
    so that a longer stream is still noticed) and refusing a decompression bomb before reading it."""
    try:
        with p.open("rb") as fh:
            head = fh.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(p, "rb") as gz:
                start = gz.read(4)
                if len(start) < 4 or start[:2] != b"\0\0" or start[2] not in _IDX_DTYPES:
                    return start
                dims = gz.read(4 * start[3])
                expected = 4 + len(dims) + _idx_data_bytes(start, dims)
                compressed = p.stat().st_size
                if expected > limits.BOMB_MIN_BYTES and expected > limits.MAX_COMPRESSION_RATIO * compressed:
                    raise InputError(f"{display(p)}: its IDX header promises {expected} bytes from {compressed} "
                                     "compressed, which looks like a decompression bomb; refusing to read it")
                limits.check_declared_bytes(p, expected, "the IDX header")
                return start + dims + gz.read(expected - 4 - len(dims) + 1)
        return p.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(f"cannot read {display(p)} ({exc})") from None


def _idx_data_bytes(start: bytes, dims: bytes) -> int:
    """Bytes of data an IDX header declares (Python integers: no overflow for four 2³²-sized dimensions)."""
    count = 1
    for (d,) in struct.iter_unpack(">I", dims[: len(dims) // 4 * 4]):
        count *= d
    return count * np.dtype(_IDX_DTYPES[start[2]]).itemsize


def _parse_idx(buf: bytes, p: Path) -> Any:
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES:
        raise InputError(f"{display(p)} is not an MNIST IDX file (its first bytes are not an IDX magic number)")
    dtype = np.dtype(_IDX_DTYPES[buf[2]])
    ndim = buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise InputError(f"{display(p)} is a truncated IDX file: {len(buf)} bytes, shorter than its header")
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    expected = header + _idx_data_bytes(buf[:4], buf[4:header])
    count = (expected - header) // dtype.itemsize
    if len(buf) != expected:
        state = "truncated" if len(buf) < expected else "longer than its header says"
        raise InputError(f"{display(p)} is {state}: the header describes {'×'.join(map(str, dims))} values "
                         f"({expected} bytes) but the data is {len(buf)} bytes")
    return np.frombuffer(buf, dtype=dtype, count=count, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_labels_path(images: Path) -> Path | None:
    for a, b in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1")):
        if a in images.name:
            base = images.name.replace(a, b)
            alt = base[:-3] if base.endswith(".gz") else base + ".gz"
            for name in (base, alt):
                if (images.parent / name).is_file():
                    return images.parent / name
    return None


def _idx_file_split(name: str) -> str | None:
    if name.startswith("t10k"):
        return "test"
    if name.startswith("train"):
        return "train"
    return None


def read_idx_images(p: Path, *, split: str | None, used_split: str | None = None) -> Loaded:
    buf = _read_bytes(p)
    if not (len(buf) >= 4 and buf[:2] == b"\0\0" and buf[2] in _IDX_DTYPES):
        raise InputError(f"{display(p)} is gzip-compressed but not an MNIST IDX file; decompress it first")
    if used_split is None:
        used_split = single_split(p, split, _idx_file_split(p.name))
    arr = _parse_idx(buf, p)
    if arr.ndim == 1:
        raise InputError(f"{display(p)} is an IDX labels file; pass the images file (…-images-idx3-ubyte) and "
                         "the labels are found beside it")
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise InputError(f"{display(p)}: expected IDX images uint8 [N, H, W], got {arr.dtype} {list(arr.shape)}")
    files = [p]
    labels = None
    labels_path = _idx_labels_path(p)
    if labels_path is not None:
        labels = _parse_idx(_read_bytes(labels_path), labels_path)
        if labels.ndim != 1:
            raise InputError(f"{display(labels_path)}: expected IDX labels [N], got shape {list(labels.shape)}")
        files.append(labels_path)
    return Loaded(arr[:, None], labels, "mnist-idx", files, split=used_split,
                   metadata={"labels_file": None if labels_path is None else labels_path.name})


def find_idx_images(folder: Path, split: str) -> Path | None:
    prefix = {"test": "t10k", "train": "train"}[split]
    roots = [folder, folder / "raw", *sorted(d / "raw" for d in folder.iterdir() if d.is_dir())]
    for root in roots:
        if not root.is_dir():
            continue
        for f in sorted(root.iterdir()):
            if f.is_file() and f.name.startswith(prefix) and ("images-idx3" in f.name or "images.idx3" in f.name):
                return f
    return None


def has_idx_images(folder: Path) -> bool:
    return any(find_idx_images(folder, s) is not None for s in ("test", "train"))


