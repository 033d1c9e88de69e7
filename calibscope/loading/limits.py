"""Bounds checked before a parser allocates: every size a file *declares* (zip members, ``.npy`` headers,
safetensors shapes and offsets, IDX dimensions, image pixels) is compared with what the file really holds and
with a sane ceiling, so that a small hostile file cannot ask for gigabytes, and a file that claims more rows
than it holds is refused instead of being read as if it held them.

=========================================  =====================================================================
check                                      refused when
=========================================  =====================================================================
:func:`check_zip`                          two members share a name (readers disagree which copy counts), or a
                                           deflated member expands more than :data:`MAX_COMPRESSION_RATIO` ×
                                           its compressed size to more than :data:`BOMB_MIN_BYTES`, or the
                                           members together declare more than :func:`memory_ceiling`
:func:`check_npy_size`                     an ``.npy`` header's shape × itemsize differs from the bytes that
                                           follow it (in the file or the zip member)
:func:`check_safetensors_header`           a tensor's byte range does not match its dtype × shape, ranges fall
                                           outside the file, or the header is not a JSON object of tensors
:func:`check_declared_bytes`               any other declared size above :func:`memory_ceiling`
=========================================  =====================================================================

Every refusal is an :class:`~calibscope.errors.InputError` (exit 2, one line).
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

from calibscope.errors import InputError

__all__ = ["BOMB_MIN_BYTES", "MAX_COMPRESSION_RATIO", "check_declared_bytes", "check_npy_size",
           "check_safetensors_header", "check_zip", "memory_ceiling", "require_regular"]

MAX_COMPRESSION_RATIO = 200  # deflate reaches ~1000× only on constant data; real tensors and images: 1–20×
BOMB_MIN_BYTES = 256 << 20  # below this a high ratio is harmless (all-zero labels compress 1000×)
_SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                         "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
                         "C64": 8}
_CEILING_ENV = "CALIBSCOPE_MAX_BYTES"


def _display(path: Path | str) -> str:
    return f"'{path}'"


def memory_ceiling() -> int:
    """The most bytes one file may ask to allocate: ``$CALIBSCOPE_MAX_BYTES``, else the machine's physical
    memory (a file that declares more than the machine holds cannot be loaded anyway)."""
    text = os.environ.get(_CEILING_ENV, "").strip()
    if text:
        try:
            return max(1, int(float(text)))
        except ValueError:
            raise InputError(f"{_CEILING_ENV} must be a number of bytes, got {text!r}") from None
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 64 << 30


def _size(n: int) -> str:
    for unit, step in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= step:
            return f"{n / step:.1f} {unit}"
    return f"{n} bytes"


def check_declared_bytes(path: Path | str, declared: int, what: str) -> None:
    """Refuse a declared allocation above :func:`memory_ceiling`."""
    ceiling = memory_ceiling()
    if declared > ceiling:
        raise InputError(f"{_display(path)}: {what} declares {_size(declared)}, more than the {_size(ceiling)} "
                         f"this machine can hold (set {_CEILING_ENV} to raise the limit); refusing to read it")


def require_regular(path: Path | str, what: str = "file") -> None:
    """Refuse FIFOs, sockets and devices: opening a FIFO blocks until a writer appears (forever)."""
    import stat

    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError:
        return  # missing files get their own message
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise InputError(f"{_display(p)} is {kind}, not a regular {what}; pass a regular file")


def check_zip(path: Path | str, zf: zipfile.ZipFile) -> None:
    """Duplicate member names, decompression bombs and declared sizes beyond memory (see module docstring)."""
    infos = zf.infolist()
    seen: set[str] = set()
    for info in infos:
        if info.filename in seen:
            raise InputError(f"{_display(path)} is a zip archive with two members named {info.filename!r}; "
                             "readers disagree on which one counts, so calibscope refuses it")
        seen.add(info.filename)
    total = 0
    for info in infos:
        total += info.file_size
        if (info.compress_type != zipfile.ZIP_STORED and info.file_size > BOMB_MIN_BYTES
                and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)):
            raise InputError(f"{_display(path)}: zip member {info.filename!r} expands from "
                             f"{_size(info.compress_size)} to {_size(info.file_size)} "
                             f"({info.file_size // max(info.compress_size, 1)}×), which looks like a "
                             "decompression bomb; refusing to read it")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise InputError(f"{_display(path)}: zip member {info.filename!r} is stored uncompressed but declares "
                             f"{info.file_size} bytes in {info.compress_size}; the archive is corrupt")
    check_declared_bytes(path, total, "the zip archive's members")


def check_npy_size(path: Path | str, name: str, shape: tuple[int, ...], itemsize: int, available: int) -> None:
    """The bytes an ``.npy`` header promises (shape × itemsize) must be the bytes that follow it."""
    count = 1
    for d in shape:
        count *= int(d)
    declared = count * int(itemsize)
    where = f"array {name!r}" if name else "the array"
    if declared != available:
        dims = "×".join(str(d) for d in shape) or "scalar"
        raise InputError(f"{_display(path)}: {where} declares shape {dims} ({_size(declared)}) but holds "
                         f"{_size(available)} of data; the file is corrupt or truncated")
    check_declared_bytes(path, declared, where)


def npy_header(fh: Any) -> tuple[tuple[int, ...], bool, Any, int]:
    """(shape, fortran_order, dtype, header_end) of the ``.npy`` stream at ``fh``'s position."""
    import numpy as np

    start = fh.tell() if hasattr(fh, "tell") else 0
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:  # pragma: no cover - numpy raises for unknown versions first
        raise ValueError(f"unsupported .npy version {version}")
    end = fh.tell() if hasattr(fh, "tell") else 0
    return tuple(int(d) for d in shape), bool(fortran), dtype, end - start


def check_npy_file(path: Path | str) -> None:
    """A standalone ``.npy``: header shape × itemsize against the file's size (object arrays are left to
    numpy, which refuses them without ``allow_pickle``)."""
    p = Path(path)
    with p.open("rb") as fh:
        try:
            shape, _, dtype, header = npy_header(fh)
        except Exception as exc:  # noqa: BLE001 - numpy's header parser raises many kinds
            raise InputError(f"{_display(p)} is not a readable .npy file ({_first_line(exc)})") from None
    if not dtype.hasobject:
        check_npy_size(p, "", shape, dtype.itemsize, p.stat().st_size - header)


def check_npz(path: Path | str) -> None:
    """Zip-level checks plus every ``.npy`` member's header against the member's real (uncompressed) size."""
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as zf:
            check_zip(p, zf)
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    try:
                        shape, _, dtype, header = npy_header(fh)
                    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises many kinds
                        raise InputError(f"{_display(p)}: member {info.filename!r} is not a readable .npy array "
                                         f"({_first_line(exc)})") from None
                if not dtype.hasobject:
                    check_npy_size(p, info.filename[: -len(".npy")], shape, dtype.itemsize,
                                   info.file_size - header)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise InputError(f"{_display(p)} is a corrupt or truncated zip archive ({_first_line(exc)})") from None


def check_safetensors_header(path: Path | str) -> tuple[int, dict[str, Any]]:
    """(header length, header) of a safetensors file whose every tensor's byte range matches its dtype and
    shape and lies inside the file; refuses anything else before safetensors allocates."""
    p = Path(path)
    size = p.stat().st_size
    with p.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise InputError(f"{_display(p)} is a truncated safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise InputError(f"{_display(p)} is a truncated safetensors file: its header claims {_size(n)} but the "
                             f"file has {_size(size)}")
        try:
            header = json.loads(fh.read(n))
        except (ValueError, RecursionError) as exc:
            raise InputError(f"{_display(p)} has a safetensors header that is not valid JSON "
                             f"({_first_line(exc)})") from None
    if not isinstance(header, dict):
        raise InputError(f"{_display(p)} has a safetensors header that is not a JSON object")
    data = size - 8 - n
    for key, spec in header.items():
        if key == "__metadata__":
            if spec is not None and not (isinstance(spec, dict) and all(isinstance(v, str) for v in spec.values())):
                raise InputError(f"{_display(p)}: safetensors '__metadata__' must map names to strings")
            continue
        try:
            dtype, shape, (begin, end) = spec["dtype"], spec["shape"], spec["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise InputError(f"{_display(p)}: safetensors entry {key!r} lacks dtype/shape/data_offsets") from None
        if dtype not in _SAFETENSORS_ITEMSIZE or not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape) or not all(
                isinstance(o, int) and not isinstance(o, bool) for o in (begin, end)):
            raise InputError(f"{_display(p)}: safetensors entry {key!r} has an invalid dtype, shape or offsets "
                             f"({str(spec)[:120]})")
        count = 1
        for d in shape:
            count *= d
        declared = count * _SAFETENSORS_ITEMSIZE[dtype]
        if not 0 <= begin <= end <= data or end - begin != declared:
            raise InputError(f"{_display(p)}: safetensors tensor {key!r} ({dtype} {shape}, {_size(declared)}) "
                             f"does not fit its byte range {begin}…{end} of the {_size(data)} of data; the file is "
                             "corrupt or truncated")
    return n, header


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
