"""Datasets → :class:`~calibscope.loading.types.Dataset` (inputs and labels in memory).

Formats, told apart by content (:func:`calibscope.loading.files.sniff`), not by extension:

* **tensor files**: ``.npz``, ``.pt`` (read with ``weights_only=True``), ``.safetensors``, ``.npy`` (inputs
  only). Inputs under ``x`` / ``images`` / ``inputs`` / ``data``, labels under ``y`` / ``labels`` /
  ``targets``; split-named keys (``test_x``, ``x_test``, ``test_images`` …) when a split is chosen or when
  the file holds only split-named keys (e.g. Keras' ``mnist.npz``, where ``test`` is taken). Optional
  ``class_names``: an array of str (npz), a list of str (.pt), or a JSON list in the safetensors metadata
  key ``class_names``. A ``.pt`` may also hold an ``(inputs, labels)`` tuple.
* **image folder**: ``root/class_name/*.png|jpg|jpeg|bmp``; classes are the sorted folder names and files
  are taken in sorted order (torchvision ``ImageFolder``'s indices). All images must have one size. If every
  image is grayscale the result has 1 channel, otherwise images are converted to RGB.
* **CIFAR-10/100 python batches**: a batch file (``data_batch_1``, ``test_batch``, CIFAR-100's
  ``train``/``test``) or the ``cifar-10-batches-py`` / ``cifar-100-python`` folder, read with the restricted
  unpickler of :mod:`calibscope.loading.safe_pickle`. Class names come from ``batches.meta`` / ``meta``.
* **MNIST IDX** (also Fashion-MNIST), plain or ``.gz``: the images file (its labels file is found beside
  it), or a folder holding the ``train-*`` / ``t10k-*`` files.
* **CSV**: a header row, one label column, every other column a float32 feature.

Conventions of the result: images are NCHW and ``uint8`` images stay ``uint8`` (0–255); the division by 255
and the ``--mean/--std`` normalisation happen later, on the device, so the host→device copy is 4× smaller.
Channel-last image tensors ``[N, H, W, C]`` are transposed to NCHW when that is unambiguous, and 3-D
``uint8`` images ``[N, H, W]`` get a channel dimension. Other inputs become float32 (including ``uint8``
arrays that are not images, e.g. ``[N, F]``, with values kept as they are). Labels are int64
class indices ``[N]`` (integral floats are accepted) or None when the source has none.

Splits: folders and files that hold several splits default to ``"test"`` (the evaluation set); pass
``split="train"`` (``--split``) for another one. Choosing a split that a single-split source does not
have is an error rather than silently ignored. ``limit`` keeps the first N examples in the source's order.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibscope.errors import InputError
from calibscope.loading import limits
from calibscope.loading.files import (
    display,
    file_sha256,
    read_numpy,
    read_safetensors,
    read_torch_weights_only,
    require_exists,
    sniff,
    stored_arrays,
)
from calibscope.loading.types import Dataset

INPUT_KEYS = ("x", "images", "inputs", "data")
LABEL_KEYS = ("y", "labels", "targets")
# Named model inputs (Hugging Face tokenizers' and processors' output keys), fed to the model by keyword.
NAMED_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "pixel_values",
                    "input_values", "input_features")
CSV_LABEL_COLUMNS = ("label", "labels", "y", "target", "class")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
SPLIT_FOLDER_NAMES = ("train", "test", "val", "valid", "validation")
_DEFAULT_SPLIT = "test"
_GRAYSCALE_MODES = ("1", "L", "LA")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass
class _Loaded:
    """What a format reader hands back before the shared checks and conversions."""

    inputs: Any  # np.ndarray
    labels: Any | None  # np.ndarray | None
    format: str
    files: list[Path]  # the files read, for the content hash
    split: str | None = None  # the split actually used
    class_names: tuple[str, ...] | None = None
    tensor_like: bool = False  # inputs came from a tensor container: apply the layout heuristics
    n_source: int | None = None  # examples in the source when the reader already applied the limit
    metadata: dict[str, Any] = field(default_factory=dict)


def load_dataset(
    path: Path | str,
    *,
    limit: int | None = None,
    label_column: str | None = None,
    split: str | None = None,
) -> Dataset:
    """Load a dataset file or folder into memory.

    Args:
        path: a tensor file, image folder, CIFAR batch file/folder, MNIST IDX file/folder, or CSV file
            (see the module docstring).
        limit: keep only the first ``limit`` examples (> 0).
        label_column: the CSV column holding labels (default: the first of ``label``, ``labels``, ``y``,
            ``target``, ``class``, case-insensitive).
        split: the split to read from sources that hold several; default ``"test"`` where there is a choice.

    Returns:
        :class:`Dataset` with ``inputs`` ``[N, ...]`` (images NCHW ``uint8``, everything else float32) and
        ``labels`` int64 ``[N]`` or None. ``sha256`` hashes the bytes read together with the split and limit,
        so another selection of the same file gets another hash.

    Raises:
        InputError: one line naming the file, for anything that cannot be used.

    Example::

        >>> ds = load_dataset("sample_checkpoints/digits_test.npz", limit=100)
        >>> ds.inputs.shape, ds.inputs.dtype, ds.labels[:5].tolist()
        (torch.Size([100, 1, 8, 8]), torch.uint8, [0, 1, 3, 4, 5])
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise InputError(f"Expected `limit` to be an integer larger than 0, but got {limit!r}")
    if split is not None and (not isinstance(split, str) or not split.strip()):
        raise InputError(f"Expected `split` to be a non-empty name such as 'test', but got {split!r}")
    if label_column is not None and not isinstance(label_column, str):
        raise InputError(f"Expected `label_column` to be a column name, but got {label_column!r}")
    p = require_exists(path)
    loaded = _read(p, limit=limit, label_column=label_column, split=split)
    return _finish(loaded, p, limit=limit)


# ------------------------------------------------------------------------------------------------ dispatch


def _read(p: Path, *, limit: int | None, label_column: str | None, split: str | None) -> _Loaded:
    kind = sniff(p)
    if label_column is not None and kind != "text":
        raise InputError(f"--label-column applies to CSV files; {display(p)} is not one")
    if kind == "directory":
        return _read_directory(p, split=split, limit=limit)
    if kind in ("npz", "npy"):
        arrays = _mapped(p, kind) or read_numpy(p)
        if kind == "npy":
            _single_split(p, split, None)
            return _Loaded(arrays[""], None, "npy", [p], tensor_like=True)
        return _from_mapping(arrays, p, "npz", split, class_names=arrays.get("class_names"))
    if kind == "safetensors":
        tensors, meta = _mapped_safetensors(p) or read_safetensors(p)
        return _from_mapping(tensors, p, "safetensors", split, class_names=_json_class_names(meta, p))
    if kind == "torch-zip":
        return _from_torch_object(_read_torch(p), p, split)
    if kind == "torch-legacy":
        return _read_pickle(p, split)
    if kind in ("idx", "gzip"):
        return _read_idx_images(p, split=split)
    if kind == "text":
        _single_split(p, split, None)
        return _read_csv(p, label_column=label_column, limit=limit)
    if kind in ("torchscript", "torch-export"):
        raise InputError(f"{display(p)} is a model ({kind}), not a dataset; pass it as the checkpoint")
    raise InputError(f"{display(p)} is not a recognised dataset: expected .npz/.pt/.safetensors tensors, an "
                     "image folder, CIFAR python batches, MNIST IDX files, or a CSV file")


def _single_split(p: Path, requested: str | None, own: str | None) -> str | None:
    """For sources holding one split: a requested split must be that one (when known)."""
    if requested is None or requested == own:
        return own
    if own is None:
        raise InputError(f"{display(p)} holds a single split, so --split {requested} cannot be applied; "
                         "omit --split")
    raise InputError(f"{display(p)} is the {own!r} split, not {requested!r}; pass the {requested!r} file "
                     "or the folder holding both")


# ------------------------------------------------------------------------------------------------ mapping

MAP_MIN_BYTES = 64 << 20  # arrays at least this big are memory-mapped, not read


def _mapped(p: Path, kind: str) -> dict[str, Any] | None:
    """The arrays of a ``.npy``/``.npz`` with every big, uncompressed one memory-mapped (copy-on-write) rather
    than read, so that a dataset bigger than memory streams from disk; None when nothing is big enough."""
    try:
        stored = stored_arrays(p, kind)
    except InputError:
        return None  # the ordinary reader says what is wrong
    big = {k: a for k, a in stored.items() if a.nbytes >= MAP_MIN_BYTES and a.dtype != "bfloat16"}
    if not big:
        return None
    out: dict[str, Any] = {k: a.memmap() for k, a in big.items()}
    if kind == "npz":
        with np.load(p, allow_pickle=False) as data:
            out.update({k: data[k] for k in data.files if k not in out})
    return out


def _is_mapped(a: Any) -> bool:
    import mmap

    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return True
        a = getattr(a, "base", None)
    return False


def _mapped_safetensors(p: Path) -> tuple[dict[str, Any], dict[str, str]] | None:
    """As :func:`_mapped`, for safetensors files (small tensors are read as usual)."""
    try:
        stored = stored_arrays(p, "safetensors")
    except InputError:
        return None
    big = {k: a for k, a in stored.items() if a.nbytes >= MAP_MIN_BYTES and a.dtype != "bfloat16"}
    if not big:
        return None
    from safetensors import safe_open

    out: dict[str, Any] = {k: a.memmap() for k, a in big.items()}
    with safe_open(str(p), framework="pt") as f:
        meta = dict(f.metadata() or {})
        out.update({k: f.get_tensor(k) for k in f.keys() if k not in out})
    return out, meta


# ------------------------------------------------------------------------------------------------ finish


def _finish(loaded: _Loaded, source: Path, *, limit: int | None) -> Dataset:
    import torch

    if isinstance(loaded.inputs, dict):
        return _finish_named(loaded, source, limit=limit)

    inputs = np.asarray(loaded.inputs)
    labels = None if loaded.labels is None else _labels_int64(loaded.labels, source)
    if inputs.ndim < 2:
        raise InputError(f"{display(source)}: inputs must have shape [N, ...] with at least one feature per "
                         f"example, got shape {list(inputs.shape)}")
    n_total = int(inputs.shape[0])
    if n_total == 0:
        raise InputError(f"{display(source)} holds 0 examples")
    if labels is not None and labels.shape[0] != n_total:
        raise InputError(f"{display(source)}: {n_total} examples but {labels.shape[0]} labels")
    n_total = max(n_total, loaded.n_source or 0)
    class_names = loaded.class_names
    if class_names is not None and labels is not None and labels.size and int(labels.max()) >= len(class_names):
        raise InputError(f"{display(source)}: labels go up to {int(labels.max())} but class_names has "
                         f"{len(class_names)} names")
    sliced = limit is not None and limit < inputs.shape[0]
    if sliced:  # before any conversion, so only the kept examples are converted and copied
        inputs = inputs[:limit]
        labels = None if labels is None else labels[:limit]
    inputs, layout = _inputs_layout(inputs, source, tensor_like=loaded.tensor_like)
    mapped = _is_mapped(inputs) and inputs.flags.c_contiguous  # stays on disk, read when used
    if not mapped and (sliced or not inputs.flags.writeable or not inputs.flags.c_contiguous):
        inputs = np.array(inputs, order="C", copy=True)  # owns its memory: the full array can be freed
    if labels is not None and (sliced or not labels.flags.writeable):
        labels = labels.copy()
    n = int(inputs.shape[0])
    metadata = {"split": loaded.split, "limit": limit, "num_examples_in_source": n_total, **loaded.metadata}
    if layout:
        metadata["layout"] = layout
    effective = {"split": loaded.split, "limit": n if n < n_total else None,
                 "label_column": loaded.metadata.get("label_column")}
    return Dataset(
        inputs=torch.from_numpy(inputs),
        labels=None if labels is None else torch.from_numpy(labels),
        source=source,
        format=loaded.format,
        sha256=_selection_sha256(loaded.files, source, effective),
        class_names=class_names,
        metadata=metadata,
    )


def _inputs_layout(a: Any, source: Path, *, tensor_like: bool) -> tuple[Any, str | None]:
    """uint8 stays uint8 (images), everything else becomes float32; NHWC → NCHW when unambiguous."""
    layout = None
    if tensor_like and a.ndim == 4 and _clearly_channel_last(a.shape):
        a = a.transpose(0, 3, 1, 2)
        layout = "NHWC→NCHW"
    if a.dtype == np.uint8 and a.ndim == 3:
        a = a[:, None]
        layout = "NHW→NCHW"
    if a.dtype == np.uint8 and a.ndim == 4:
        return a, layout  # images: uint8 until they are on the device
    if a.dtype.kind == "i" or (a.dtype.kind == "u" and a.dtype.itemsize > 1):
        return a.astype(np.int64, copy=False), layout  # token ids, counts: integers stay integers
    if a.dtype.kind not in "biuf":
        raise InputError(f"{display(source)}: inputs must be numbers, got dtype {a.dtype}")
    return a.astype(np.float32, copy=False), layout


def _clearly_channel_last(shape: tuple[int, ...]) -> bool:
    _, h, w, c = shape
    return c in (1, 3, 4) and h > 4 and w > 4  # h > 4 also means dim 1 is not a channel count


def _labels_int64(labels: Any, source: Path) -> Any:
    a = np.asarray(labels)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise InputError(f"{display(source)}: labels must be class indices of shape [N], got shape "
                         f"{list(a.shape)}")
    if a.dtype.kind == "b":
        return a.astype(np.int64)
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        bad[~bad] = a[~bad] != np.round(a[~bad])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"{display(source)}: labels must be whole class indices, but label {i} is "
                             f"{a[i].item()!r}")
    elif a.dtype.kind not in "iu":
        raise InputError(f"{display(source)}: labels must be integer class indices, got dtype {a.dtype}")
    if a.size and a.dtype.kind != "u" and (a < 0).any():
        i = int(np.flatnonzero(a < 0)[0])
        raise InputError(f"{display(source)}: labels must be class indices ≥ 0, but label {i} is {a[i].item()!r}")
    return a.astype(np.int64, copy=False)


def _selection_sha256(files: list[Path], source: Path, selection: dict[str, Any]) -> str:
    """Hash of the bytes read (plus relative names inside a folder, which carry class labels) and the
    selection (split, limit, label column), so that another selection gives another hash."""
    h = hashlib.sha256()
    for f in files:
        if source.is_dir():
            h.update(f.relative_to(source).as_posix().encode() + b"\0")
        h.update(file_sha256(f).encode())
    h.update(json.dumps(selection, sort_keys=True).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ tensor files


def _find_key(keys: Any, names: tuple[str, ...], split: str | None) -> str | None:
    if split is None:
        candidates = list(names)
    else:
        candidates = [f"{split}_{n}" for n in names] + [f"{n}_{split}" for n in names]
    return next((k for k in candidates if k in keys), None)


def _from_mapping(mapping: dict[str, Any], p: Path, fmt: str, split: str | None, *,
                  class_names: Any = None) -> _Loaded:
    keys = [k for k in mapping if isinstance(k, str)]
    named = [k for k in NAMED_INPUT_KEYS if k in keys]
    if named and _find_key(keys, INPUT_KEYS, None) is None:
        return _named_inputs(mapping, named, p, fmt, split, class_names=class_names)
    if split is None:
        x_key = _find_key(keys, INPUT_KEYS, None)
        used_split = None
        if x_key is None and _find_key(keys, INPUT_KEYS, _DEFAULT_SPLIT) is not None:
            used_split = _DEFAULT_SPLIT  # only split-named keys (e.g. Keras' mnist.npz): evaluate on test
            x_key = _find_key(keys, INPUT_KEYS, used_split)
    else:
        used_split = split
        x_key = _find_key(keys, INPUT_KEYS, split)
        if x_key is None:
            raise InputError(f"{display(p)} has no {split!r} split: none of {split}_x, x_{split}, "
                             f"{split}_images, … is among its keys ({_list(keys)})")
    if x_key is None:
        raise InputError(f"{display(p)} has no inputs under a recognised name (keys: {_list(keys)}); expected "
                         f"one of {', '.join(INPUT_KEYS)} with labels under {', '.join(LABEL_KEYS)} (or "
                         "split-named keys such as test_x / y_test)")
    y_key = _find_key(keys, LABEL_KEYS, used_split)
    inputs = _to_numpy(mapping[x_key], p, x_key)
    labels = None if y_key is None else _to_numpy(mapping[y_key], p, y_key)
    names = _class_names(class_names, p) if class_names is not None else None
    return _Loaded(inputs, labels, fmt, [p], split=used_split, class_names=names, tensor_like=True,
                   metadata={"keys": [x_key, y_key]})


def _named_inputs(mapping: dict[str, Any], named: list[str], p: Path, fmt: str, split: str | None, *,
                  class_names: Any) -> _Loaded:
    """``input_ids`` (+ ``attention_mask``, ``token_type_ids`` …) and labels: e.g.
    ``np.savez(path, **tokenizer(texts, padding=True, return_tensors="np"), labels=y)``."""
    _single_split(p, split, None)
    y_key = _find_key(list(mapping), LABEL_KEYS, None)
    inputs = {k: _to_numpy(mapping[k], p, k) for k in named}
    labels = None if y_key is None else _to_numpy(mapping[y_key], p, y_key)
    names = _class_names(class_names, p) if class_names is not None else None
    return _Loaded(inputs, labels, fmt, [p], class_names=names, metadata={"keys": [*named, y_key]})


def _finish_named(loaded: _Loaded, source: Path, *, limit: int | None) -> Dataset:
    """Named inputs: integers stay int64 (token ids, masks), floats become float32; one example dimension."""
    import torch

    from calibscope.feeding import KeywordInputs

    arrays = {k: np.asarray(a) for k, a in loaded.inputs.items()}
    rows = {k: (int(a.shape[0]) if a.ndim else 0) for k, a in arrays.items()}
    if len(set(rows.values())) != 1:
        raise InputError(f"{display(source)}: the named inputs have different numbers of examples ({rows})")
    n_total = next(iter(rows.values()))
    if n_total == 0:
        raise InputError(f"{display(source)} holds 0 examples")
    labels = None if loaded.labels is None else _labels_int64(loaded.labels, source)
    if labels is not None and labels.shape[0] != n_total:
        raise InputError(f"{display(source)}: {n_total} examples but {labels.shape[0]} labels")
    tensors = {}
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise InputError(f"{display(source)}: {k!r} must be numbers, got dtype {a.dtype}")
        a = a[:limit] if limit is not None else a
        a = a.astype(np.int64) if a.dtype.kind in "biu" else a.astype(np.float32)
        tensors[k] = torch.from_numpy(np.array(a, order="C", copy=True))
    if labels is not None and limit is not None:
        labels = labels[:limit].copy()
    n = int(next(iter(tensors.values())).shape[0])
    metadata = {"split": None, "limit": limit, "num_examples_in_source": n_total, **loaded.metadata}
    effective = {"split": None, "limit": n if n < n_total else None, "named_inputs": list(tensors)}
    return Dataset(inputs=KeywordInputs(tensors), labels=None if labels is None else torch.from_numpy(labels),
                   source=source, format=loaded.format, sha256=_selection_sha256(loaded.files, source, effective),
                   class_names=loaded.class_names, metadata=metadata)


def _to_numpy(value: Any, p: Path, key: str) -> Any:
    if type(value).__module__.startswith("torch"):
        import torch

        if isinstance(value, torch.Tensor):
            t = value.detach().cpu()
            if t.dtype == torch.bfloat16:
                t = t.float()
            return t.numpy()
    try:
        a = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{display(p)}: {key!r} is not an array ({exc})") from None
    if a.dtype == object:
        raise InputError(f"{display(p)}: {key!r} is not a numeric array")
    return a


def _class_names(value: Any, p: Path) -> tuple[str, ...]:
    if type(value).__module__ == "numpy":
        value = np.asarray(value).tolist()
    if isinstance(value, (list, tuple)):
        out = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
        if all(isinstance(v, str) for v in out):
            return tuple(out)
    raise InputError(f"{display(p)}: 'class_names' must be a list of strings")


def _json_class_names(meta: dict[str, str], p: Path) -> Any:
    text = meta.get("class_names")
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{display(p)}: metadata 'class_names' is not valid JSON ({exc.msg})") from None


def _read_torch(p: Path) -> Any:
    import pickle

    try:
        return read_torch_weights_only(p)
    except pickle.UnpicklingError:
        raise InputError(f"{display(p)} holds pickled code or custom classes, which calibscope never loads as "
                         "data; save plain tensors instead, e.g. torch.save({'x': x, 'y': y}, path)") from None


def _from_torch_object(obj: Any, p: Path, split: str | None) -> _Loaded:
    if isinstance(obj, dict):
        return _from_mapping(obj, p, "pt", split, class_names=obj.get("class_names"))
    if isinstance(obj, (tuple, list)) and len(obj) == 2:  # (inputs, labels), e.g. torchvision's old MNIST .pt
        _single_split(p, split, None)
        return _Loaded(_to_numpy(obj[0], p, "[0]"), _to_numpy(obj[1], p, "[1]"), "pt", [p], tensor_like=True)
    if type(obj).__module__.startswith("torch"):
        _single_split(p, split, None)
        return _Loaded(_to_numpy(obj, p, "tensor"), None, "pt", [p], tensor_like=True)
    raise InputError(f"{display(p)} holds a {type(obj).__name__}; expected a dict of tensors "
                     f"({', '.join(INPUT_KEYS)} / {', '.join(LABEL_KEYS)}) or an (inputs, labels) tuple")


def _read_pickle(p: Path, split: str | None) -> _Loaded:
    """A raw pickle stream: a CIFAR batch, a plain dict of arrays, or a legacy (pre-1.6) torch file."""
    from calibscope.loading.safe_pickle import safe_load

    obj = safe_load(p)
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        return _from_torch_object(_read_torch(p), p, split)
    if isinstance(obj, dict) and _is_cifar_batch(obj):
        return _read_cifar_files([p], p.parent, split=_single_split(p, split, _cifar_file_split(p.name)),
                                 first=obj)
    if isinstance(obj, dict) and ("label_names" in obj or "fine_label_names" in obj):
        raise InputError(f"{display(p)} holds CIFAR class names, not images; pass a batch file "
                         "(e.g. test_batch) or the folder holding the batches")
    if isinstance(obj, dict):
        return _from_mapping(obj, p, "pickle", split, class_names=obj.get("class_names"))
    raise InputError(f"{display(p)} holds a pickled {type(obj).__name__}, not a dataset")


# ------------------------------------------------------------------------------------------------ CIFAR

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"


def _is_cifar_batch(d: dict[str, Any]) -> bool:
    return "data" in d and ("labels" in d or "fine_labels" in d) and (
        "batch_label" in d or "fine_labels" in d or np.ndim(d["data"]) == 2 and np.shape(d["data"])[1] == 3072)


def _cifar_file_split(name: str) -> str | None:
    if name in ("test_batch", "test"):
        return "test"
    if name.startswith("data_batch") or name == "train":
        return "train"
    return None


def _read_cifar_files(files: list[Path], folder: Path, *, split: str | None,
                      first: dict[str, Any] | None = None) -> _Loaded:
    from calibscope.loading.safe_pickle import safe_load

    images, labels = [], []
    hundred = False
    for i, f in enumerate(files):
        d = first if (i == 0 and first is not None) else safe_load(f)
        if not isinstance(d, dict) or not _is_cifar_batch(d):
            raise InputError(f"{display(f)} is not a CIFAR python batch (expected keys data and labels)")
        data = np.asarray(d["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise InputError(f"{display(f)}: CIFAR 'data' must be uint8 [N, 3072], got {data.dtype} "
                             f"{list(data.shape)}")
        hundred = "fine_labels" in d
        # Each row is 1024 R, then 1024 G, then 1024 B values, row-major: already channel-first.
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(d["fine_labels" if hundred else "labels"]))
    meta_file = folder / ("meta" if hundred else "batches.meta")
    names = None
    if meta_file.is_file():
        meta = safe_load(meta_file)
        raw = meta.get("fine_label_names" if hundred else "label_names") if isinstance(meta, dict) else None
        if raw is not None:
            names = _class_names(raw, meta_file)
    inputs = images[0] if len(images) == 1 else np.concatenate(images)
    label_arr = labels[0] if len(labels) == 1 else np.concatenate(labels)
    used = list(files) + ([meta_file] if names is not None else [])
    return _Loaded(inputs, label_arr, "cifar100" if hundred else "cifar10", used, split=split, class_names=names)


def _read_cifar_folder(folder: Path, split: str | None) -> _Loaded:
    used_split = split or _DEFAULT_SPLIT
    if (folder / "test_batch").is_file() or (folder / "data_batch_1").is_file():  # CIFAR-10
        if used_split == "test":
            files = [folder / "test_batch"]
        elif used_split == "train":
            files = [folder / f"data_batch_{i}" for i in range(1, 6)]
        else:
            raise InputError(f"{display(folder)} holds CIFAR-10 splits 'train' and 'test', not {used_split!r}")
    else:  # CIFAR-100
        if used_split not in ("train", "test"):
            raise InputError(f"{display(folder)} holds CIFAR-100 splits 'train' and 'test', not {used_split!r}")
        files = [folder / used_split]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise InputError(f"{display(folder)} lacks {', '.join(missing)} for the {used_split!r} split")
    return _read_cifar_files(files, folder, split=used_split)


# ------------------------------------------------------------------------------------------------ MNIST IDX


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


def _read_idx_images(p: Path, *, split: str | None, used_split: str | None = None) -> _Loaded:
    buf = _read_bytes(p)
    if not (len(buf) >= 4 and buf[:2] == b"\0\0" and buf[2] in _IDX_DTYPES):
        raise InputError(f"{display(p)} is gzip-compressed but not an MNIST IDX file; decompress it first")
    if used_split is None:
        used_split = _single_split(p, split, _idx_file_split(p.name))
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
    return _Loaded(arr[:, None], labels, "mnist-idx", files, split=used_split,
                   metadata={"labels_file": None if labels_path is None else labels_path.name})


def _find_idx_images(folder: Path, split: str) -> Path | None:
    prefix = {"test": "t10k", "train": "train"}[split]
    roots = [folder, folder / "raw", *sorted(d / "raw" for d in folder.iterdir() if d.is_dir())]
    for root in roots:
        if not root.is_dir():
            continue
        for f in sorted(root.iterdir()):
            if f.is_file() and f.name.startswith(prefix) and ("images-idx3" in f.name or "images.idx3" in f.name):
                return f
    return None


def _has_idx_images(folder: Path) -> bool:
    return any(_find_idx_images(folder, s) is not None for s in ("test", "train"))


# ------------------------------------------------------------------------------------------------ folders


def _read_directory(p: Path, *, split: str | None, limit: int | None) -> _Loaded:
    if (p / _CIFAR10_DIR).is_dir():
        p = p / _CIFAR10_DIR
    elif (p / _CIFAR100_DIR).is_dir():
        p = p / _CIFAR100_DIR
    if (p / "test_batch").is_file() or (p / "data_batch_1").is_file() or (
            (p / "meta").is_file() and ((p / "test").is_file() or (p / "train").is_file())):
        return _read_cifar_folder(p, split)
    if _has_idx_images(p):
        used = split or _DEFAULT_SPLIT
        if used not in ("train", "test"):
            raise InputError(f"{display(p)} holds MNIST splits 'train' and 'test', not {used!r}")
        images = _find_idx_images(p, used)
        if images is None:
            raise InputError(f"{display(p)} has no {used!r} split: no {'t10k' if used == 'test' else 'train'}"
                             "-images-idx3-ubyte file")
        return _read_idx_images(images, split=None, used_split=used)
    return _read_image_folder(p, split=split, limit=limit)


def _subdirs(p: Path) -> list[Path]:
    return sorted((d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _read_image_folder(root: Path, *, split: str | None, limit: int | None) -> _Loaded:
    base, used_split = root, None
    if split is not None:
        if not (root / split).is_dir():
            raise InputError(f"{display(root)} has no {split!r} folder (sub-folders: "
                             f"{_list([d.name for d in _subdirs(root)])})")
        base, used_split = root / split, split
    else:
        subs = _subdirs(root)
        if subs and all(d.name.lower() in SPLIT_FOLDER_NAMES and _subdirs(d) for d in subs):
            names = {d.name.lower(): d for d in subs}
            pick = next((s for s in ("test", "val", "valid", "validation") if s in names), None)
            if pick is None:
                raise InputError(f"{display(root)} holds split folders ({_list([d.name for d in subs])}); "
                                 "choose one with --split")
            base, used_split = names[pick], names[pick].name
    classes = _subdirs(base)
    if not classes:
        raise InputError(f"{display(base)} is not a dataset folder: expected class sub-folders of images "
                         "(root/class_name/*.png), CIFAR python batches, or MNIST IDX files")
    files: list[tuple[Path, int]] = []
    for index, class_dir in enumerate(classes):
        visited: set[str] = set()  # real paths of the folders walked: each once, so a symlink loop ends
        walked = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            visited.add(os.path.realpath(dirpath))
            kept = []
            for d in dirnames:
                real = os.path.realpath(os.path.join(dirpath, d))
                if not d.startswith(".") and real not in visited:
                    visited.add(real)
                    kept.append(d)
            dirnames[:] = kept
            walked.append((dirpath, filenames))
        for dirpath, filenames in sorted(walked):  # torchvision ImageFolder's order
            for name in sorted(filenames):
                if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                    limits.require_regular(Path(dirpath) / name, "image file")
                    files.append((Path(dirpath) / name, index))
    if not files:
        raise InputError(f"{display(base)} holds 0 examples: no {'/'.join(IMAGE_SUFFIXES)} files in its class "
                         "folders")
    n_source = len(files)
    if limit is not None:
        files = files[:limit]
    inputs, read = _decode_images([f for f, _ in files])
    if read["bit_depth"] > 8:
        import warnings

        warnings.warn(f"{display(base)}: read {read['bit_depth']}-bit images (modes {', '.join(read['image_modes'])}); "
                      f"each sample is divided by 2^bits − 1 into [0, 1] (float32) rather than clipped at 255",
                      UserWarning, stacklevel=2)
    labels = np.array([c for _, c in files], dtype=np.int64)
    return _Loaded(inputs, labels, "image-folder", [f for f, _ in files], split=used_split,
                   class_names=tuple(d.name for d in classes), n_source=n_source, metadata=read)


_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _decode_images(paths: list[Path]) -> tuple[Any, dict[str, Any]]:
    """Images → ``[N, C, H, W]``: uint8 when every image has 8 bits per sample; float32 in [0, 1] (each divided by
    its real maximum, 2^bits − 1) when any is a 16-bit grayscale image, which ``convert("L")`` would clip at 255.
    Also returns what was read: ``{"image_modes": [...], "bit_depth": 8 | 16}``."""
    import warnings

    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        raise InputError("reading an image folder needs Pillow: pip install pillow") from None

    def _open(f: Path) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                return Image.open(f)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(f"{display(f)} is a decompression bomb ({_one_line(exc)}); refusing to decode it "
                             f"(the limit is Pillow's Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS})") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{display(f)} is not a readable image ({exc})") from None

    with _open(paths[0]) as im:
        size = im.size
    gray, modes, depth = True, set(), 8
    for f in paths:  # headers only: sizes and modes, before decoding anything
        with _open(f) as im:
            if im.size != size:
                raise InputError(f"{display(f)} is {im.size[0]}×{im.size[1]} but {display(paths[0])} is "
                                 f"{size[0]}×{size[1]}; all images must have the same size")
            modes.add(im.mode)
            if im.mode in _HIGH_DEPTH_MODES:
                depth = max(depth, _bit_depth(f, im))
            gray = gray and (im.mode in _GRAYSCALE_MODES or im.mode in _HIGH_DEPTH_MODES)
    w, h = size
    channels, mode = (1, "L") if gray else (3, "RGB")
    dtype = np.uint8 if depth == 8 else np.float32
    limits.check_declared_bytes(paths[0].parent, len(paths) * channels * h * w * np.dtype(dtype).itemsize,
                                f"the image folder ({len(paths)} images of {w}×{h})")
    out = np.empty((len(paths), channels, h, w), dtype=dtype)
    for i, f in enumerate(paths):
        with _open(f) as im:
            try:
                if im.mode in _HIGH_DEPTH_MODES:
                    bits = _bit_depth(f, im)
                    a = np.asarray(im, dtype=np.float64) / float(2 ** bits - 1)
                    if not gray:
                        a = np.repeat(a[..., None], 3, axis=2)
                elif depth != 8:
                    a = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
                else:
                    a = np.asarray(im.convert(mode), dtype=np.uint8)
            except (OSError, ValueError) as exc:
                raise InputError(f"{display(f)} is not a readable image ({exc})") from None
        out[i] = a[None] if channels == 1 else a.transpose(2, 0, 1)
    return out, {"image_modes": sorted(modes), "bit_depth": depth}


def _bit_depth(f: Path, im: Any) -> int:
    """Bits per sample of a high-depth image: a PNG's IHDR says; ``I;16*`` modes are 16 bits."""
    if im.format == "PNG":
        with f.open("rb") as fh:
            head = fh.read(25)
        if len(head) == 25 and head[12:16] == b"IHDR" and head[24] in (1, 2, 4, 8, 16):
            return int(head[24])
    if im.mode.startswith("I;16"):
        return 16
    raise InputError(f"{display(f)} has {im.mode!r} samples of unknown bit depth; save it as an 8- or 16-bit PNG")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------------ CSV


def _read_csv(p: Path, *, label_column: str | None, limit: int | None) -> _Loaded:
    import csv

    try:
        fh = p.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"cannot read {display(p)}: {exc.strerror or exc}") from None
    with fh:
        try:
            first = fh.readline()
        except UnicodeDecodeError as exc:
            raise InputError(f"{display(p)} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        fh.seek(0)
        delimiter = "\t" if p.suffix.lower() == ".tsv" or ("\t" in first and "," not in first) else ","
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = [h.strip() for h in next(reader, [])]
            if not header or all(not h for h in header):
                raise InputError(f"{display(p)} holds 0 examples (no header row)")
            if all(_is_number(h) for h in header):
                raise InputError(f"{display(p)}: the first row must be a header naming the columns, but it "
                                 f"holds numbers ({_list(header)})")
            y_col = _csv_label_index(header, label_column, p)
            x_cols = [j for j in range(len(header)) if j != y_col]
            if not x_cols:
                raise InputError(f"{display(p)} has no feature columns besides {header[y_col]!r}")
            rows: list[list[str]] = []
            ys: list[str] = []
            lines: list[int] = []
            n_source = 0
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise InputError(f"{display(p)} line {reader.line_num} has {len(row)} cells but the header "
                                     f"has {len(header)} columns")
                n_source += 1
                ys.append(row[y_col].strip())  # every label, so that --limit cannot change class indices
                lines.append(reader.line_num)
                if limit is None or n_source <= limit:
                    rows.append([row[j] for j in x_cols])
        except csv.Error as exc:
            raise InputError(f"{display(p)} line {reader.line_num} is not valid CSV ({exc})") from None
        except UnicodeDecodeError as exc:
            raise InputError(f"{display(p)} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not rows:
        raise InputError(f"{display(p)} holds 0 examples (only a header row)")
    try:
        features = np.array(rows, dtype=np.float32)
    except ValueError as exc:
        for r, row in enumerate(rows):
            for k, cell in enumerate(row):
                if not _is_float32(cell):
                    raise InputError(f"{display(p)} row {r + 1} (line {lines[r]}), column "
                                     f"{header[x_cols[k]]!r}: {cell!r} is not a number") from None
        raise InputError(f"{display(p)}: the features are not numbers ({exc})") from None
    labels, class_names = _csv_labels(ys, lines, header[y_col], p)
    labels = labels[: len(rows)]
    return _Loaded(features, labels, "csv", [p], class_names=class_names, n_source=n_source,
                   metadata={"label_column": header[y_col], "feature_columns": len(x_cols)})


def _is_float32(text: str) -> bool:
    try:
        np.float32(text)
    except ValueError:
        return False
    return True


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_label_index(header: list[str], label_column: str | None, p: Path) -> int:
    if label_column is not None:
        if label_column in header:
            return header.index(label_column)
        folded = [h.lower() for h in header]
        if folded.count(label_column.lower()) == 1:
            return folded.index(label_column.lower())
        raise InputError(f"{display(p)} has no column {label_column!r} (columns: {_list(header)})")
    for name in CSV_LABEL_COLUMNS:
        for j, h in enumerate(header):
            if h.lower() == name:
                return j
    raise InputError(f"{display(p)} has no label column (columns: {_list(header)}); name it with "
                     f"--label-column or call it one of {', '.join(CSV_LABEL_COLUMNS)}")


def _csv_labels(ys: list[str], lines: list[int], column: str, p: Path) -> tuple[Any, tuple[str, ...] | None]:
    for r, y in enumerate(ys):
        if not y:
            raise InputError(f"{display(p)} row {r + 1} (line {lines[r]}), column {column!r}: the label is empty")
    if all(_is_number(y) for y in ys):
        return np.array([float(y) for y in ys], dtype=np.float64), None  # whole numbers checked in _finish
    names = tuple(sorted(set(ys)))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[y] for y in ys], dtype=np.int64), names


def _list(items: list[str], most: int = 12) -> str:
    shown = ", ".join(str(i) for i in items[:most])
    return shown + (f", … ({len(items)} in all)" if len(items) > most else "") if items else "none"
