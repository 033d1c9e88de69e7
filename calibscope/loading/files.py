"""Low-level file primitives shared by checkpoint and dataset loading: content sniffing, hashing, and
reading tensor containers (npz, npy, torch zip with ``weights_only=True``, safetensors) without ever
executing code from the file.
"""

from __future__ import annotations

import argparse
import hashlib
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any, Literal

from calibscope.errors import InputError
from calibscope.loading import limits

Kind = Literal[
    "safetensors",  # 8-byte little-endian header length + JSON header
    "torch-export",  # zip written by torch.export.save (.pt2)
    "torchscript",  # zip written by torch.jit.save (has code/)
    "torch-zip",  # zip written by torch.save (data.pkl): state_dict, tensors, or a pickled module
    "torch-legacy",  # pre-1.6 torch.save / a raw pickle stream
    "npz",
    "npy",
    "gzip",
    "idx",  # MNIST IDX (uncompressed)
    "text",  # CSV / plain text
    "directory",
    "unknown",
]

_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def display(path: Path | str) -> str:
    """How a path is shown in messages."""
    return f"'{path}'"


def require_exists(path: Path | str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{display(p)} does not exist")
    limits.require_regular(p)
    return p


def sniff(path: Path | str) -> Kind:
    """Tell what a file is by its content (the extension is only a hint for text files)."""
    p = require_exists(path)
    if p.is_dir():
        return "directory"
    try:
        with p.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise InputError(f"cannot read {display(p)}: {exc.strerror or exc}") from None
    if len(head) == 0:
        raise InputError(f"{display(p)} is empty (0 bytes)")
    if len(head) >= 9:  # first: a header length like 0x280 starts with the pickle opcode b"\x80"
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= _MAX_SAFETENSORS_HEADER and head[8:9] == b"{":
            return "safetensors"
    if head.startswith(b"PK"):
        return _sniff_zip(p)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head[:1] == b"\x80" or head[:2] == b"\x8a\x0a":  # pickle protocol ≥ 2, or torch legacy magic
        return "torch-legacy"
    if len(head) >= 4 and head[0] == 0 and head[1] == 0 and head[2] in (0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E):
        return "idx"
    if _looks_like_text(p):
        return "text"
    return "unknown"


def _looks_like_text(p: Path) -> bool:
    with p.open("rb") as fh:
        chunk = fh.read(4096)
    if b"\x00" in chunk:
        return False
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > len(chunk) - 4  # a multi-byte character cut at the chunk's end
    return True


def _sniff_zip(p: Path) -> Kind:
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{display(p)} is a corrupt or truncated zip archive ({exc})") from None
    if any(n.endswith(".npy") for n in names) and not any(n.endswith("data.pkl") for n in names):
        return "npz"
    if any(n.endswith("models/model.json") or n.endswith("archive_format") or "/serialized_exported_program" in n
           for n in names):
        return "torch-export"
    if any("/code/" in n or n.startswith("code/") for n in names) and any(n.endswith("constants.pkl") or
                                                                         n.endswith("data.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "torch-zip"
    return "unknown"


def read_json_file(path: Path | str, what: str, *, missing: str, expected: str, max_bytes: int = 64 << 20) -> Any:
    """A small JSON document that calibscope wrote earlier (a baseline, a temperature or calibrator file).

    Every way it can fail is a one-line :class:`InputError` naming ``what`` (e.g. ``"the baseline"``): missing
    (with the hint ``missing``, e.g. how to write one), unreadable, larger than ``max_bytes``, not JSON, or
    nested too deeply to be ``expected`` (what it should be, e.g. "a `calibscope ece --json` document")."""
    import json

    p = Path(path)
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise InputError(f"{what} '{p}' is {size} bytes; {expected} is at most {max_bytes >> 20} MiB")
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} '{p}' not found ({missing})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} '{p}' is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what} '{p}': {exc}") from None
    except RecursionError:
        raise InputError(f"{what} '{p}' is nested too deeply to be {expected}") from None


def file_sha256(path: Path | str, *, chunk: int = 1 << 20) -> str:
    """SHA-256 of the file's bytes (or of a directory's sorted file names and bytes)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for q in files:
        if p.is_dir():
            h.update(str(q.relative_to(p)).encode())
        with q.open("rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def read_safetensors(path: Path | str) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors (as torch tensors) and the string metadata of a safetensors file.

    Truncated or corrupt files raise :class:`InputError` with one line that says so.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    try:
        limits.check_safetensors_header(p)
        tensors: dict[str, Any] = {}
        with safe_open(str(p), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except InputError:
        raise
    except (SafetensorError, ValueError, KeyError, TypeError, struct.error, OSError) as exc:
        raise InputError(f"{display(p)} is not a readable safetensors file ({_one_line(exc)})") from None
    return tensors, metadata


def read_numpy(path: Path | str) -> dict[str, Any]:
    """Arrays of an ``.npz`` (by name) or ``.npy`` (under the name ``""``), with ``allow_pickle=False``."""
    import numpy as np

    p = Path(path)
    try:
        with p.open("rb") as fh:
            zipped = fh.read(2) == b"PK"
        limits.check_npz(p) if zipped else limits.check_npy_file(p)
    except OSError as exc:
        raise InputError(f"cannot read {display(p)}: {exc.strerror or exc}") from None
    try:
        with np.load(p, allow_pickle=False) as data:  # type: ignore[attr-defined]
            return {k: data[k] for k in data.files}
    except (AttributeError, TypeError):  # a plain .npy gives an ndarray, not an NpzFile
        try:
            return {"": np.load(p, allow_pickle=False)}
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{display(p)} is not a readable .npy file ({_one_line(exc)})") from None
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise InputError(f"{display(p)} holds pickled Python objects, which calibscope never loads; "
                             "save plain numeric arrays") from None
        raise InputError(f"{display(p)} is not a readable numpy file ({_one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - zipfile/format errors of many kinds
        raise InputError(f"{display(p)} is not a readable numpy file ({_one_line(exc)})") from None


# Plain-data classes allowed in weights-only pickles beside torch's own: timm's train.py saves its
# argparse.Namespace under "args" (unpickling one only fills its __dict__; it runs no code).
SAFE_GLOBALS = [argparse.Namespace]


def read_torch_weights_only(path: Path | str) -> Any:
    """``torch.load(weights_only=True)``: tensors, dicts, lists, numbers — never code.

    Raises :class:`InputError` for corrupt files; lets ``pickle.UnpicklingError`` through so callers can
    tell "this file contains code (e.g. a pickled nn.Module)" apart and name ``--trust``.
    """
    import pickle

    import torch

    p = Path(path)
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as zf:
                limits.check_zip(p, zf)
        except (zipfile.BadZipFile, OSError) as exc:
            raise InputError(f"{display(p)} is a corrupt or truncated zip archive ({_one_line(exc)})") from None
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(SAFE_GLOBALS):
            warnings.simplefilter("ignore", UserWarning)  # torch warns about pickle protocols on its way to refusing
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # noqa: BLE001
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise pickle.UnpicklingError(str(exc)) from None
        raise InputError(f"{display(p)} is not a readable torch file ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# ------------------------------------------------------------------------------------- arrays read by rows

_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "bfloat16", "I64": "<i8", "I32": "<i4",
                       "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


class StoredArray:
    """An uncompressed array inside a file — a ``.npy``, a stored (not deflated) ``.npz`` member, a safetensors
    tensor — read by rows with plain file reads, never mapped or loaded whole: reading rows ``[a, b)`` costs the
    memory of those rows, whatever the file's size, and leaves nothing resident behind.

    ``dtype`` is a numpy dtype string with its byte order (``"<f4"``) or ``"bfloat16"``.
    """

    def __init__(self, path: Path, *, name: str, offset: int, shape: tuple[int, ...], dtype: str):
        import numpy as np

        self.path, self.name, self.offset = Path(path), name, int(offset)
        self.shape, self.dtype = tuple(int(d) for d in shape), dtype
        self._np_dtype = np.dtype("<u2" if dtype == "bfloat16" else dtype)
        self.row_bytes = int(self._np_dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64)))

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0

    @property
    def nbytes(self) -> int:
        return self.row_bytes * len(self)

    def __repr__(self) -> str:
        return f"StoredArray({display(self.path)}, {self.name!r}, shape={self.shape}, dtype={self.dtype})"

    def memmap(self):
        """The whole array as a copy-on-write ``numpy.memmap`` (pages are read from disk when touched and can be
        dropped again by the kernel: an array bigger than memory works). Not for bfloat16."""
        import numpy as np

        if self.dtype == "bfloat16":
            raise InputError(f"{display(self.path)}: {self.name!r} is bfloat16, which numpy cannot map")
        return np.memmap(self.path, dtype=self._np_dtype, mode="c", offset=self.offset, shape=self.shape)

    def rows(self, start: int, stop: int):
        """Rows ``[start, stop)`` as a fresh torch tensor in native byte order (bfloat16 stays bfloat16)."""
        import numpy as np
        import torch

        if not self.shape:
            raise InputError(f"{display(self.path)}: {self.name!r} is a scalar, not an array of rows")
        start, stop = max(0, start), min(len(self), stop)
        count = max(0, stop - start)
        out = np.empty((count, *self.shape[1:]), dtype=self._np_dtype)
        want = count * self.row_bytes
        if want:
            with self.path.open("rb") as fh:
                fh.seek(self.offset + start * self.row_bytes)
                got = fh.readinto(memoryview(out.reshape(-1).view(np.uint8)))
            if got != want:
                raise InputError(f"{display(self.path)} is truncated: {self.name!r} rows {start}…{stop} need "
                                 f"{want} bytes but only {got} could be read")
        if self.dtype == "bfloat16":
            return torch.from_numpy(out.astype("=u2", copy=False).view(np.int16)).view(torch.bfloat16)
        if not out.dtype.isnative:
            out = out.astype(out.dtype.newbyteorder("="))
        return torch.from_numpy(out)


def stored_arrays(path: Path | str, kind: Kind | None = None) -> dict[str, StoredArray]:
    """The arrays of a ``.npy`` (named ``""``), ``.npz`` (its stored members, by name) or safetensors file that
    can be read by rows; deflated ``.npz`` members, Fortran-ordered or object arrays and other formats are left
    out (the ordinary readers take those, with their own messages)."""
    p = Path(path)
    kind = kind or sniff(p)
    try:
        if kind == "npy":
            limits.check_npy_file(p)
            with p.open("rb") as fh:
                array = _npy_array(p, fh, "")
            return {} if array is None else {"": array}
        if kind == "npz":
            limits.check_npz(p)  # every member's header against its real size
            return _npz_arrays(p)
        if kind == "safetensors":
            return _safetensors_arrays(p)
    except InputError:
        raise
    except (OSError, ValueError, KeyError, TypeError, struct.error, zipfile.BadZipFile) as exc:
        raise InputError(f"{display(p)} is not readable ({_one_line(exc)})") from None
    return {}


def _npy_array(p: Path, fh, name: str) -> StoredArray | None:
    import numpy as np

    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    if dtype.hasobject or (fortran and len(shape) > 1):
        return None
    return StoredArray(p, name=name, offset=fh.tell(), shape=shape, dtype=dtype.str)


def _npz_arrays(p: Path) -> dict[str, StoredArray]:
    out: dict[str, StoredArray] = {}
    with zipfile.ZipFile(p) as zf, p.open("rb") as fh:
        for info in zf.infolist():
            if not info.filename.endswith(".npy") or info.compress_type != zipfile.ZIP_STORED:
                continue
            fh.seek(info.header_offset)
            local = fh.read(30)
            if local[:4] != b"PK\x03\x04":
                raise InputError(f"{display(p)} is a corrupt zip archive (member {info.filename!r})")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            name = info.filename[: -len(".npy")]
            array = _npy_array(p, fh, name)
            if array is not None:
                out[name] = array
    return out


def _safetensors_arrays(p: Path) -> dict[str, StoredArray]:
    n, header = limits.check_safetensors_header(p)
    size = p.stat().st_size
    out: dict[str, StoredArray] = {}
    for key, spec in header.items():
        if key == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(spec["dtype"])
        begin, end = spec["data_offsets"]
        if 8 + n + end > size:
            raise InputError(f"{display(p)} is a truncated safetensors file: the header describes {8 + n + end} "
                             f"bytes but the file has {size}")
        if dtype is not None:
            out[key] = StoredArray(p, name=key, offset=8 + n + begin, shape=tuple(spec["shape"]), dtype=dtype)
    return out
