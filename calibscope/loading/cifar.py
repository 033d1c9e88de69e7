"""CIFAR-10/100 python batches (files or the extracted folder), read with the restricted unpickler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calibscope.errors import InputError
from calibscope.loading._loaded import DEFAULT_SPLIT, Loaded, class_names_of
from calibscope.loading.files import display

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"


def is_cifar_batch(d: dict[str, Any]) -> bool:
    return "data" in d and ("labels" in d or "fine_labels" in d) and (
        "batch_label" in d or "fine_labels" in d or np.ndim(d["data"]) == 2 and np.shape(d["data"])[1] == 3072)


def cifar_file_split(name: str) -> str | None:
    if name in ("test_batch", "test"):
        return "test"
    if name.startswith("data_batch") or name == "train":
        return "train"
    return None


def read_cifar_files(files: list[Path], folder: Path, *, split: str | None,
                      first: dict[str, Any] | None = None) -> Loaded:
    from calibscope.loading.safe_pickle import safe_load

    images, labels = [], []
    hundred = False
    for i, f in enumerate(files):
        d = first if (i == 0 and first is not None) else safe_load(f)
        if not isinstance(d, dict) or not is_cifar_batch(d):
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
            names = class_names_of(raw, meta_file)
    inputs = images[0] if len(images) == 1 else np.concatenate(images)
    label_arr = labels[0] if len(labels) == 1 else np.concatenate(labels)
    used = list(files) + ([meta_file] if names is not None else [])
    return Loaded(inputs, label_arr, "cifar100" if hundred else "cifar10", used, split=split, class_names=names)


def read_cifar_folder(folder: Path, split: str | None) -> Loaded:
    used_split = split or DEFAULT_SPLIT
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
    return read_cifar_files(files, folder, split=used_split)


