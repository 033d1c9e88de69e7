"""Image folders (``root/class_name/*.png``, torchvision ImageFolder's order) and image decoding."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from calibscope.errors import InputError
from calibscope.loading import limits
from calibscope.loading._loaded import Loaded, listing
from calibscope.loading.files import display

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
SPLIT_FOLDER_NAMES = ("train", "test", "val", "valid", "validation")
_GRAYSCALE_MODES = ("1", "L", "LA")


def _subdirs(p: Path) -> list[Path]:
    return sorted((d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def read_image_folder(root: Path, *, split: str | None, limit: int | None) -> Loaded:
    base, used_split = root, None
    if split is not None:
        if not (root / split).is_dir():
            raise InputError(f"{display(root)} has no {split!r} folder (sub-folders: "
                             f"{listing([d.name for d in _subdirs(root)])})")
        base, used_split = root / split, split
    else:
        subs = _subdirs(root)
        if subs and all(d.name.lower() in SPLIT_FOLDER_NAMES and _subdirs(d) for d in subs):
            names = {d.name.lower(): d for d in subs}
            pick = next((s for s in ("test", "val", "valid", "validation") if s in names), None)
            if pick is None:
                raise InputError(f"{display(root)} holds split folders ({listing([d.name for d in subs])}); "
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
    return Loaded(inputs, labels, "image-folder", [f for f, _ in files], split=used_split,
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


