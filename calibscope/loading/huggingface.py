"""Hugging Face model folders, as ``save_pretrained`` writes them (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``, optionally ``preprocessor_config.json``), loaded with ``transformers`` (extra
``calibscope[hf]``).

* The model class is the folder's ``config.architectures[0]`` when ``transformers`` has it and it is a
  classifier (``…ForImageClassification``, ``…ForSequenceClassification``, ``…ForAudioClassification``,
  ``…ForVideoClassification``), else the ``AutoModelFor…Classification`` whose mapping knows the config.
  ``from_pretrained(folder, local_files_only=True)``: nothing is downloaded; ``pytorch_model.bin`` is read by
  transformers with ``weights_only=True``.
* Custom code (a config with ``auto_map``, i.e. ``trust_remote_code``) runs only with ``--trust``.
* Metadata: ``class_names`` from ``config.id2label`` (unless they are the default ``LABEL_i``),
  ``num_classes`` = ``config.num_labels``; from ``preprocessor_config.json``: ``mean``/``std``
  (``image_mean``/``image_std`` when ``do_normalize``) and ``input_size`` [H, W] (``crop_size`` when it crops,
  else ``size``), which the dataset's images must have: resizing is the image processor's business.
* The model returns a ``ModelOutput``; its ``logits`` are taken (:mod:`calibscope.model_outputs`). Its head is an
  ``nn.Linear`` (``classifier``), whose input is the penultimate feature for ``project`` and Mahalanobis.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from calibscope.errors import InputError, UntrustedFileError
from calibscope.loading import files
from calibscope.loading.types import ModelCheckpoint

__all__ = ["WEIGHT_FILES", "is_huggingface_folder", "load_huggingface"]

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
CLASSIFIER_SUFFIXES = ("ForImageClassification", "ForSequenceClassification", "ForAudioClassification",
                       "ForVideoClassification")
_AUTO_CLASSES = tuple(f"AutoModel{s}" for s in CLASSIFIER_SUFFIXES)
_INSTALL = "pip install 'calibscope[hf]' (transformers)"


def is_huggingface_folder(p: Path) -> bool:
    """A folder written by ``save_pretrained``: ``config.json`` and one of :data:`WEIGHT_FILES`."""
    return p.is_dir() and (p / CONFIG).is_file() and any((p / w).is_file() for w in WEIGHT_FILES)


def load_huggingface(p: Path, *, trust: bool = False) -> ModelCheckpoint:
    """Load the classifier in folder ``p`` (see the module docstring) on the CPU in eval mode."""
    config = _read_json(p / CONFIG)
    custom = config.get("auto_map")
    if custom and not trust:
        raise UntrustedFileError(f"{files.display(p)}: its config.json names custom model code (auto_map "
                                 f"{_short(custom)}), which transformers would run (trust_remote_code); pass "
                                 "--trust if you trust the folder's author")
    if importlib.util.find_spec("transformers") is None:
        raise InputError(f"{files.display(p)} is a Hugging Face model folder; loading it needs transformers: "
                         f"{_INSTALL}")
    with _quiet_transformers() as transformers:
        model_class = _model_class(p, transformers, config, trust=trust)
        try:
            model = model_class.from_pretrained(str(p), local_files_only=True, trust_remote_code=trust)
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for broken folders
            raise InputError(f"{files.display(p)}: transformers could not load it as {model_class.__name__} "
                             f"({type(exc).__name__}: {_one_line(exc)})") from None
    model = model.to("cpu").eval()
    metadata = _metadata(p, model.config)
    return ModelCheckpoint(model, "huggingface", p, files.file_sha256(p), metadata)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[Any]:
    """transformers without progress bars or advisory logging on the user's terminal."""
    import transformers
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield transformers
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _model_class(p: Path, transformers: Any, config: dict[str, Any], *, trust: bool) -> Any:
    names = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    for name in names:
        if name.endswith(CLASSIFIER_SUFFIXES) and hasattr(transformers, name):
            return getattr(transformers, name)
    if config.get("auto_map") and trust:
        auto = next((a for a in _AUTO_CLASSES if a in config["auto_map"]), None)
        if auto is not None:
            return getattr(transformers, auto)
    if names and not any(n.endswith(CLASSIFIER_SUFFIXES) for n in names):
        raise InputError(f"{files.display(p)} holds a {names[0]}, not a classifier; calibscope needs a model with a "
                         f"classification head (…{', …'.join(CLASSIFIER_SUFFIXES)})")
    model_type = config.get("model_type")
    try:
        hf_config = transformers.AutoConfig.from_pretrained(str(p), local_files_only=True, trust_remote_code=trust)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{files.display(p)}: its config.json is not one transformers "
                         f"{transformers.__version__} reads ({type(exc).__name__}: {_one_line(exc)})") from None
    for auto in _AUTO_CLASSES:
        mapping = getattr(transformers, auto)._model_mapping
        if type(hf_config) in mapping:
            return getattr(transformers, auto)
    raise InputError(f"{files.display(p)}: transformers {transformers.__version__} has no classification model for "
                     f"model_type {model_type!r}; save the folder from a …ForSequenceClassification or "
                     "…ForImageClassification model")


def _metadata(p: Path, config: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"arch": f"transformers:{type(config).__name__.removesuffix('Config')}",
                            "num_classes": int(config.num_labels)}
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    names = [id2label.get(i, "") for i in range(int(config.num_labels))]
    if all(names) and names != [f"LABEL_{i}" for i in range(len(names))]:
        meta["class_names"] = names
    if (p / PREPROCESSOR).is_file():
        meta.update(_preprocessing(p / PREPROCESSOR))
    return meta


def _preprocessing(path: Path) -> dict[str, Any]:
    """mean/std and the input size from an image processor's ``preprocessor_config.json``."""
    pre = _read_json(path)
    out: dict[str, Any] = {}
    mean, std = pre.get("image_mean"), pre.get("image_std")
    if pre.get("do_normalize", True) and isinstance(mean, list) and isinstance(std, list) and mean and std:
        if all(isinstance(v, (int, float)) for v in mean + std) and len(mean) == len(std):
            out["mean"], out["std"] = [float(v) for v in mean], [float(v) for v in std]
    factor = pre.get("rescale_factor")
    if pre.get("do_rescale", True) and isinstance(factor, (int, float)) and abs(factor * 255 - 1) > 1e-6:
        raise InputError(f"{files.display(path)} rescales pixels by {factor}, not 1/255; calibscope feeds uint8 "
                         "images ÷ 255: store the images as floats already scaled, or re-save the processor")
    size = pre.get("crop_size") if pre.get("do_center_crop") else pre.get("size")
    hw = _height_width(size)
    if hw is not None:
        out["input_size"] = hw
    return out


def _height_width(size: Any) -> list[int] | None:
    if isinstance(size, int):
        return [size, size]
    if isinstance(size, dict) and isinstance(size.get("height"), int) and isinstance(size.get("width"), int):
        return [size["height"], size["width"]]
    return None  # {"shortest_edge": …} keeps the aspect ratio: no fixed size to check


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{files.display(path)} is not readable JSON ({_one_line(exc)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{files.display(path)} holds a {type(data).__name__}, not a JSON object")
    return data


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "…"


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__
