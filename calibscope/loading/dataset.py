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
* **CSV**: a header row, one label column, every other column a float32 feature (a first column that is
  pandas' row index, as `DataFrame.to_csv` writes it, is dropped with a warning).

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

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from calibscope.errors import InputError
from calibscope.loading._loaded import DEFAULT_SPLIT, Loaded, class_names_of, listing, single_split
from calibscope.loading.cifar import (
    CIFAR10_DIR,
    CIFAR100_DIR,
    cifar_file_split,
    is_cifar_batch,
    read_cifar_files,
    read_cifar_folder,
)
from calibscope.loading.csv_data import read_csv
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
from calibscope.loading.idx import find_idx_images, has_idx_images, read_idx_images
from calibscope.loading.images import read_image_folder
from calibscope.loading.types import Dataset

INPUT_KEYS = ("x", "images", "inputs", "data")
LABEL_KEYS = ("y", "labels", "targets")
# Named model inputs (Hugging Face tokenizers' and processors' output keys), fed to the model by keyword.
NAMED_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "pixel_values",
                    "input_values", "input_features")
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


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


def _read(p: Path, *, limit: int | None, label_column: str | None, split: str | None) -> Loaded:
    kind = sniff(p)
    if label_column is not None and kind != "text":
        raise InputError(f"--label-column applies to CSV files; {display(p)} is not one")
    if kind == "directory":
        return _read_directory(p, split=split, limit=limit)
    if kind in ("npz", "npy"):
        arrays = _mapped(p, kind) or read_numpy(p)
        if kind == "npy":
            single_split(p, split, None)
            return Loaded(arrays[""], None, "npy", [p], tensor_like=True)
        return _from_mapping(arrays, p, "npz", split, class_names=arrays.get("class_names"))
    if kind == "safetensors":
        tensors, meta = _mapped_safetensors(p) or read_safetensors(p)
        return _from_mapping(tensors, p, "safetensors", split, class_names=_json_class_names(meta, p))
    if kind == "torch-zip":
        return _from_torch_object(_read_torch(p), p, split)
    if kind == "torch-legacy":
        return _read_pickle(p, split)
    if kind in ("idx", "gzip"):
        return read_idx_images(p, split=split)
    if kind == "text":
        single_split(p, split, None)
        return read_csv(p, label_column=label_column, limit=limit)
    if kind in ("torchscript", "torch-export"):
        raise InputError(f"{display(p)} is a model ({kind}), not a dataset; pass it as the checkpoint")
    raise InputError(f"{display(p)} is not a recognised dataset: expected .npz/.pt/.safetensors tensors, an "
                     "image folder, CIFAR python batches, MNIST IDX files, or a CSV file")


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


def _finish(loaded: Loaded, source: Path, *, limit: int | None) -> Dataset:
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
                  class_names: Any = None) -> Loaded:
    keys = [k for k in mapping if isinstance(k, str)]
    named = [k for k in NAMED_INPUT_KEYS if k in keys]
    if named and _find_key(keys, INPUT_KEYS, None) is None:
        return _named_inputs(mapping, named, p, fmt, split, class_names=class_names)
    if split is None:
        x_key = _find_key(keys, INPUT_KEYS, None)
        used_split = None
        if x_key is None and _find_key(keys, INPUT_KEYS, DEFAULT_SPLIT) is not None:
            used_split = DEFAULT_SPLIT  # only split-named keys (e.g. Keras' mnist.npz): evaluate on test
            x_key = _find_key(keys, INPUT_KEYS, used_split)
    else:
        used_split = split
        x_key = _find_key(keys, INPUT_KEYS, split)
        if x_key is None:
            raise InputError(f"{display(p)} has no {split!r} split: none of {split}_x, x_{split}, "
                             f"{split}_images, … is among its keys ({listing(keys)})")
    if x_key is None:
        raise InputError(f"{display(p)} has no inputs under a recognised name (keys: {listing(keys)}); expected "
                         f"one of {', '.join(INPUT_KEYS)} with labels under {', '.join(LABEL_KEYS)} (or "
                         "split-named keys such as test_x / y_test)")
    y_key = _find_key(keys, LABEL_KEYS, used_split)
    inputs = _to_numpy(mapping[x_key], p, x_key)
    labels = None if y_key is None else _to_numpy(mapping[y_key], p, y_key)
    names = class_names_of(class_names, p) if class_names is not None else None
    return Loaded(inputs, labels, fmt, [p], split=used_split, class_names=names, tensor_like=True,
                   metadata={"keys": [x_key, y_key]})


def _named_inputs(mapping: dict[str, Any], named: list[str], p: Path, fmt: str, split: str | None, *,
                  class_names: Any) -> Loaded:
    """``input_ids`` (+ ``attention_mask``, ``token_type_ids`` …) and labels: e.g.
    ``np.savez(path, **tokenizer(texts, padding=True, return_tensors="np"), labels=y)``."""
    single_split(p, split, None)
    y_key = _find_key(list(mapping), LABEL_KEYS, None)
    inputs = {k: _to_numpy(mapping[k], p, k) for k in named}
    labels = None if y_key is None else _to_numpy(mapping[y_key], p, y_key)
    names = class_names_of(class_names, p) if class_names is not None else None
    return Loaded(inputs, labels, fmt, [p], class_names=names, metadata={"keys": [*named, y_key]})


def _finish_named(loaded: Loaded, source: Path, *, limit: int | None) -> Dataset:
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


def _from_torch_object(obj: Any, p: Path, split: str | None) -> Loaded:
    if isinstance(obj, dict):
        return _from_mapping(obj, p, "pt", split, class_names=obj.get("class_names"))
    if isinstance(obj, (tuple, list)) and len(obj) == 2:  # (inputs, labels), e.g. torchvision's old MNIST .pt
        single_split(p, split, None)
        return Loaded(_to_numpy(obj[0], p, "[0]"), _to_numpy(obj[1], p, "[1]"), "pt", [p], tensor_like=True)
    if type(obj).__module__.startswith("torch"):
        single_split(p, split, None)
        return Loaded(_to_numpy(obj, p, "tensor"), None, "pt", [p], tensor_like=True)
    raise InputError(f"{display(p)} holds a {type(obj).__name__}; expected a dict of tensors "
                     f"({', '.join(INPUT_KEYS)} / {', '.join(LABEL_KEYS)}) or an (inputs, labels) tuple")


def _read_pickle(p: Path, split: str | None) -> Loaded:
    """A raw pickle stream: a CIFAR batch, a plain dict of arrays, or a legacy (pre-1.6) torch file."""
    from calibscope.loading.safe_pickle import safe_load

    obj = safe_load(p)
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        return _from_torch_object(_read_torch(p), p, split)
    if isinstance(obj, dict) and is_cifar_batch(obj):
        return read_cifar_files([p], p.parent, split=single_split(p, split, cifar_file_split(p.name)),
                                 first=obj)
    if isinstance(obj, dict) and ("label_names" in obj or "fine_label_names" in obj):
        raise InputError(f"{display(p)} holds CIFAR class names, not images; pass a batch file "
                         "(e.g. test_batch) or the folder holding the batches")
    if isinstance(obj, dict):
        return _from_mapping(obj, p, "pickle", split, class_names=obj.get("class_names"))
    raise InputError(f"{display(p)} holds a pickled {type(obj).__name__}, not a dataset")


# ------------------------------------------------------------------------------------------------ folders


def _read_directory(p: Path, *, split: str | None, limit: int | None) -> Loaded:
    if (p / CIFAR10_DIR).is_dir():
        p = p / CIFAR10_DIR
    elif (p / CIFAR100_DIR).is_dir():
        p = p / CIFAR100_DIR
    if (p / "test_batch").is_file() or (p / "data_batch_1").is_file() or (
            (p / "meta").is_file() and ((p / "test").is_file() or (p / "train").is_file())):
        return read_cifar_folder(p, split)
    if has_idx_images(p):
        used = split or DEFAULT_SPLIT
        if used not in ("train", "test"):
            raise InputError(f"{display(p)} holds MNIST splits 'train' and 'test', not {used!r}")
        images = find_idx_images(p, used)
        if images is None:
            raise InputError(f"{display(p)} has no {used!r} split: no {'t10k' if used == 'test' else 'train'}"
                             "-images-idx3-ubyte file")
        return read_idx_images(images, split=None, used_split=used)
    return read_image_folder(p, split=split, limit=limit)
