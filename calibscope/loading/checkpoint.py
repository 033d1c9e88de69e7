"""Load a classifier checkpoint, or a file of precomputed logits, recognised by its content.

=====================================  ============================================  ===========================
content (``files.sniff``)              how it loads                                  result
=====================================  ============================================  ===========================
torch.export archive (``.pt2``)        ``torch.export.load(...).module()``;          ``ModelCheckpoint``
                                       metadata from the extra file                  ``format="export"``
                                       ``calibscope.json``
TorchScript (``.pt``, ``.ts``)         ``torch.jit.load``; metadata from the extra   ``format="torchscript"``
                                       file ``calibscope.json``
state_dict (``.pt``, ``.pth``,         ``torch.load(weights_only=True)`` + ``--arch``  ``format="state_dict"``
``.bin``), also under ``state_dict``/  (``"module."`` DDP and ``"_orig_mod."``
``model``/``model_state_dict``         prefixes are stripped)
safetensors                            tensors + ``--arch`` or metadata               ``format="safetensors"``
                                       ``calibscope.arch`` (+ ``calibscope.arch_kwargs``)
pickled ``nn.Module``                  refused; with ``trust=True``                   ``format="pickle"``
                                       ``torch.load(weights_only=False)``
logits / probabilities                 ``logits`` or ``probs`` [N, K], optional       ``LogitsCheckpoint``
(``.npz``, ``.npy``, ``.pt``,          ``labels`` [N] and ``class_names``; CSV: a
``.safetensors``, ``.csv``)            header row, a ``label``/``labels``/``y``/
                                       ``target`` column, the other columns logits
=====================================  ============================================  ===========================

Metadata (safetensors keys ``calibscope.<name>``, strings, JSON-encoded where not plain; the ``calibscope.json``
extra file of ``.pt2``/TorchScript holds the same names without the prefix) → ``ModelCheckpoint.metadata``:
``arch`` (str), ``arch_kwargs`` (dict), ``mean`` / ``std`` (list of float), ``class_names`` (list of str),
``num_classes`` (int).

Probabilities are recognised (every finite entry in [0, 1], every finite row summing to 1 within 1e-4, at least
two columns; rows holding NaN/Inf are left to the central checks) also when stored as ``logits``, and turned into
logits with :math:`\\log(\\max(p, \\text{tiny}_{\\text{float32}}))`, so that ``softmax`` gives ``p`` back.

Safety: nothing in a file is allowed to run code unless ``trust=True``. Pickles are read with
``weights_only=True``; ``.pt2`` archives are vetted by :mod:`calibscope.loading.pt2_safety` first (guard code,
symbolic expressions, node targets and every pickled member must have the form ``torch.export.save`` writes,
because ``torch.export.load`` would ``exec``/``eval``/unpickle them); an architecture named by a file's metadata
is limited to ``calibscope.*``, ``torchvision:`` and ``timm:`` (see :mod:`calibscope.loading.arch`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from calibscope.errors import InputError, InputNote, UntrustedFileError
from calibscope.loading import files, pt2_safety
from calibscope.loading.arch import build_architecture
from calibscope.loading.prefixes import select_network
from calibscope.loading.types import Checkpoint, LogitsCheckpoint, LogitsFormat, LogitsRows, ModelCheckpoint

__all__ = ["EXTRA_FILE", "METADATA_PREFIX", "load_checkpoint", "open_logits_rows"]

METADATA_PREFIX = "calibscope."  # safetensors metadata keys
EXTRA_FILE = "calibscope.json"  # extra file of .pt2 / TorchScript archives
_LOGITS_KEYS = ("logits", "probs")
_STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model")
_PROB_TOLERANCE = 1e-4
_SUPPORTED = ("Supported: .pt2 (torch.export), TorchScript, state_dict/.pth/.bin with --arch, safetensors, "
              "Hugging Face folders, ONNX, pickled nn.Module with --trust, logits/probabilities files "
              "(.npz .npy .pt .safetensors .csv)")
_LOOKS_LIKE = {
    "directory": "a directory",
    "gzip": "gzip-compressed data",
    "idx": "an MNIST IDX data file",
    "unknown": "none of the known formats",
}


def load_checkpoint(
    path: Path | str,
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    trust: bool = False,
    prefix: str | None = None,
) -> Checkpoint:
    """Load ``path`` as a runnable model (:class:`ModelCheckpoint`) or precomputed logits (:class:`LogitsCheckpoint`).

    ``arch`` / ``arch_kwargs``: the architecture (``package.module:callable``, ``path/to/file.py:Callable``,
    ``torchvision:NAME``, ``timm:NAME``) for weights-only files; ignored for self-describing files (``.pt2``,
    TorchScript, pickled modules) and logits files. ``trust``: allow loading that runs code from the file.
    ``prefix``: where the network's weights sit in a training checkpoint's state_dict (``"model."``; found by
    itself when one prefix fits, see :mod:`calibscope.loading.prefixes`).

    Models come back on the CPU in eval mode; logits as float32 ``[N, K]``, labels as int64 ``[N]``.
    Raises :class:`InputError` (one line, naming the file) or :class:`UntrustedFileError`.

    Example::

        >>> ckpt = load_checkpoint("sample_checkpoints/digits_hard.safetensors")
        >>> ckpt.format, ckpt.metadata["arch"]
        ('safetensors', 'calibscope.models:DigitsCNN')
    """
    p = files.require_exists(path)
    kind = files.sniff(p)
    if kind == "directory":
        from calibscope.loading.huggingface import is_huggingface_folder, load_huggingface

        if is_huggingface_folder(p):
            return load_huggingface(p, trust=trust)
    if kind in ("unknown", "text"):
        from calibscope.loading.onnx import load_onnx, looks_like_onnx

        if looks_like_onnx(p):
            return load_onnx(p)
    if kind == "torch-export":
        return _load_export(p, trust=trust)
    if kind == "torchscript":
        return _load_torchscript(p)
    if kind in ("torch-zip", "torch-legacy"):
        return _load_torch_pickle(p, arch=arch, arch_kwargs=arch_kwargs, trust=trust, prefix=prefix)
    if kind == "safetensors":
        return _load_safetensors(p, arch=arch, arch_kwargs=arch_kwargs, trust=trust, prefix=prefix)
    if kind in ("npz", "npy"):
        return _load_numpy(p, kind)
    if kind == "text":
        return _load_csv(p)
    raise InputError(f"{files.display(p)} is not a checkpoint calibscope can read "
                     f"(looks like {_LOOKS_LIKE.get(kind, kind)}). {_SUPPORTED}")


# ------------------------------------------------------------------------------------ torch.export (.pt2)


def _load_export(p: Path, *, trust: bool) -> ModelCheckpoint:
    from calibscope.loading.aoti import is_aoti_package, load_aoti

    if is_aoti_package(p):  # compiled native code: named as such, loaded only with --trust
        with zipfile.ZipFile(p) as zf:
            pt2_safety.check_archive_structure(p, zf)
        return load_aoti(p, trust=trust)
    if trust:
        with zipfile.ZipFile(p) as zf:
            pt2_safety.check_archive_structure(p, zf)
    else:
        pt2_safety.vet_export_archive(p)
    extra = {EXTRA_FILE: ""}
    with _captured_torch_export_log() as records:
        try:
            module = torch.export.load(str(p), extra_files=extra).module()
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds for unreadable archives
            raise InputError(_export_failure(p, exc, records)) from None
    with contextlib.suppress(Exception):  # exported GraphModules refuse .eval(); they were traced in a mode
        module.eval()
    metadata = _decode_metadata(p, _parse_extra_file(p, extra[EXTRA_FILE]), prefix="")
    return ModelCheckpoint(module, "export", p, files.file_sha256(p), metadata)


@contextlib.contextmanager
def _captured_torch_export_log() -> Iterator[list[logging.LogRecord]]:
    """Keep ``torch.export.load``'s multi-line warnings (with tracebacks) off the user's terminal."""
    records: list[logging.LogRecord] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("torch.export")
    handler = _Collect(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _export_failure(p: Path, exc: BaseException, records: list[logging.LogRecord]) -> str:
    causes = [r.exc_info[1] for r in records if r.exc_info and r.exc_info[1] is not None]
    cause = _one_line(causes[-1] if causes else exc).rstrip(".")
    writer_torch, writer_schema = _export_writer_versions(p)
    our_schema = _our_export_schema()
    schema_differs = bool(writer_schema and our_schema and writer_schema.split(".")[0] != our_schema.split(".")[0])
    if (writer_torch and writer_torch != torch.__version__) or schema_differs:
        writer = f"torch {writer_torch or 'unknown'}" + (f" (export schema {writer_schema})" if writer_schema else "")
        ours = f"torch {torch.__version__}" + (f" (export schema {our_schema})" if our_schema else "")
        return (f"{files.display(p)} was written by {writer} and cannot be loaded by this {ours}: {cause}. "
                "Load it with the torch version that wrote it, or use a TorchScript or safetensors file of the "
                "model instead")
    return (f"{files.display(p)} is a torch.export archive that torch {torch.__version__} cannot load ({cause}); "
            "re-export it with torch.export.save, or use a TorchScript or safetensors file of the model instead")


def _export_writer_versions(p: Path) -> tuple[str | None, str | None]:
    """(torch version, export schema version) recorded in a .pt2 archive, where it says."""
    torch_version = schema = None
    try:
        with zipfile.ZipFile(p) as zf:
            for name in zf.namelist():
                if re.search(r"(^|/)models/[^/]+\.json$", name) or name.endswith("serialized_exported_program.json"):
                    program = json.loads(zf.read(name))
                    torch_version = torch_version or program.get("torch_version") or None
                    sv = program.get("schema_version")
                    if isinstance(sv, dict) and schema is None:
                        schema = f"{sv.get('major')}.{sv.get('minor')}"
                elif re.search(r"(^|/)version$", name) and "/.data/" not in f"/{name}" and schema is None:
                    schema = zf.read(name).decode("utf-8", "replace").strip() or None
    except Exception:  # noqa: BLE001 - best effort, only used to word a message
        pass
    return (str(torch_version) if torch_version else None), schema


def _our_export_schema() -> str | None:
    try:
        from torch._export.serde.schema import SCHEMA_VERSION

        return f"{SCHEMA_VERSION[0]}.{SCHEMA_VERSION[1]}"
    except Exception:  # noqa: BLE001 - private torch API; only used to word a message
        return None


# --------------------------------------------------------------------------------------------- TorchScript


def _load_torchscript(p: Path) -> ModelCheckpoint:
    extra = {EXTRA_FILE: ""}
    try:
        module = torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for unreadable archives
        raise InputError(f"{files.display(p)} is a TorchScript archive that torch {torch.__version__} cannot load "
                         f"({_one_line(exc)}); re-save it with torch.jit.save, or use a .pt2 or safetensors file "
                         "of the model instead") from None
    module.eval()
    metadata = _decode_metadata(p, _parse_extra_file(p, extra[EXTRA_FILE]), prefix="")
    return ModelCheckpoint(module, "torchscript", p, files.file_sha256(p), metadata)


def _parse_extra_file(p: Path, text: str | bytes) -> dict[str, Any]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{files.display(p)}: its extra file '{EXTRA_FILE}' is not valid JSON ({exc}); "
                         "re-save it with a JSON object such as '{\"mean\": [0.5], \"std\": [0.5]}'") from None
    if not isinstance(data, dict):
        raise InputError(f"{files.display(p)}: its extra file '{EXTRA_FILE}' holds a {type(data).__name__}, "
                         "not a JSON object; re-save it with an object such as '{\"class_names\": [...]}'")
    return data


# ---------------------------------------------------------------------------- torch.save pickles (.pt/.pth/.bin)


def _load_torch_pickle(p: Path, *, arch: str | None, arch_kwargs: dict[str, Any] | None,
                       trust: bool, prefix: str | None = None) -> Checkpoint:
    try:
        obj = files.read_torch_weights_only(p)
    except pickle.UnpicklingError as exc:
        if not trust:
            found = _pickled_global(exc)
            raise UntrustedFileError(
                f"{files.display(p)} contains pickled Python code (e.g. a whole nn.Module"
                f"{'; this one references ' + found if found else ''}); loading it would run code from the file. "
                "Re-save it as a state_dict/safetensors/TorchScript/.pt2, or pass --trust if you trust its "
                "author") from None
        obj = _torch_load_trusted(p)

    if isinstance(obj, torch.nn.Module):
        return _module_checkpoint(p, obj)
    if isinstance(obj, torch.Tensor):
        return _logits_checkpoint(p, "pt", obj, None, key="logits")
    if not isinstance(obj, Mapping):
        raise InputError(f"{files.display(p)} holds a {type(obj).__name__}, not a state_dict, a dict with "
                         "'logits'/'probs', or an nn.Module; save model.state_dict() or "
                         "{'logits': ..., 'labels': ...} instead")
    key = _logits_key(obj)
    if key is not None:
        return _logits_checkpoint(p, "pt", obj[key], obj.get("labels"), key=key,
                                  class_names=obj.get("class_names"))
    for wrapper in _STATE_DICT_WRAPPERS:  # {"model": module} saved with torch.save (only with --trust)
        if isinstance(obj.get(wrapper), torch.nn.Module):
            return _module_checkpoint(p, obj[wrapper])
    state_dict = _find_state_dict(p, obj)
    if arch is None:
        raise _needs_arch(p, state_dict)
    kwargs = {} if arch_kwargs is None else arch_kwargs
    module = _build_and_load(p, state_dict, arch, kwargs, from_file=False, trust=trust, prefix=prefix)
    return ModelCheckpoint(module, "state_dict", p, files.file_sha256(p), {"arch": arch, "arch_kwargs": kwargs})


def _torch_load_trusted(p: Path) -> Any:
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - unpickling user code can raise anything
        raise InputError(f"{files.display(p)} could not be unpickled even with --trust "
                         f"({type(exc).__name__}: {_one_line(exc)}); the classes it names must be importable "
                         "here (same package versions as where it was saved)") from None


def _module_checkpoint(p: Path, module: torch.nn.Module) -> ModelCheckpoint:
    module = module.to("cpu").eval()
    return ModelCheckpoint(module, "pickle", p, files.file_sha256(p), {})


def _pickled_global(exc: BaseException) -> str | None:
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return match.group(1) if match else None


# ------------------------------------------------------------------------------------------------ safetensors


def _load_safetensors(p: Path, *, arch: str | None, arch_kwargs: dict[str, Any] | None,
                      trust: bool, prefix: str | None = None) -> Checkpoint:
    tensors, raw_metadata = files.read_safetensors(p)
    metadata = _decode_metadata(p, raw_metadata, prefix=METADATA_PREFIX)
    key = _logits_key(tensors)
    if key is not None:
        extra = {k: v for k, v in metadata.items() if k != "class_names"}
        return _logits_checkpoint(p, "safetensors", tensors[key], tensors.get("labels"), key=key,
                                  class_names=metadata.get("class_names"), metadata=extra)
    if not tensors:
        raise InputError(f"{files.display(p)} holds no tensors; expected a state_dict or 'logits'/'probs'")
    if arch is not None:
        used_arch, from_file = arch, False
        kwargs = {} if arch_kwargs is None else arch_kwargs
    elif "arch" in metadata:
        used_arch, from_file = metadata["arch"], True
        kwargs = metadata.get("arch_kwargs", {}) if arch_kwargs is None else arch_kwargs
    else:
        raise _needs_arch(p, tensors, safetensors=True)
    module = _build_and_load(p, tensors, used_arch, kwargs, from_file=from_file, trust=trust, prefix=prefix)
    metadata = {**metadata, "arch": used_arch, "arch_kwargs": kwargs}
    return ModelCheckpoint(module, "safetensors", p, files.file_sha256(p), metadata)


# ------------------------------------------------------------------------------------------ state_dict → module


def _find_state_dict(p: Path, obj: Mapping[Any, Any]) -> dict[str, torch.Tensor]:
    candidate: Mapping[Any, Any] = obj
    for wrapper in _STATE_DICT_WRAPPERS:
        if isinstance(obj.get(wrapper), Mapping):
            candidate = obj[wrapper]
            break
    tensors = {k: v for k, v in candidate.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    others = [k for k, v in candidate.items()
              if not (isinstance(k, str) and isinstance(v, torch.Tensor)) and not str(k).endswith("_extra_state")]
    if not tensors or others:
        keys = ", ".join(repr(k) for k in list(obj)[:8]) + (", …" if len(obj) > 8 else "")
        raise InputError(f"{files.display(p)} holds a dict (keys {keys or 'none'}) that is neither a state_dict "
                         "(parameter names → tensors, possibly under 'state_dict', 'model' or 'model_state_dict') "
                         "nor logits ('logits' or 'probs' [N, K], optional 'labels')")
    extra_state = {k: v for k, v in candidate.items() if str(k).endswith("_extra_state") and k not in tensors}
    return {**tensors, **extra_state}


def _needs_arch(p: Path, state_dict: Mapping[str, Any], *, safetensors: bool = False) -> InputError:
    where = (" and its metadata names no 'calibscope.arch'" if safetensors else "")
    return InputError(f"{files.display(p)} holds only weights (a state_dict of {len(state_dict)} tensors){where}; "
                      "tell calibscope the architecture with --arch package.module:callable "
                      "--arch-kwargs '{...}' (or --arch torchvision:NAME / timm:NAME)")


def _build_and_load(p: Path, state_dict: dict[str, Any], arch: str, kwargs: dict[str, Any], *,
                    from_file: bool, trust: bool, prefix: str | None = None) -> torch.nn.Module:
    try:
        module = build_architecture(arch, kwargs, from_file=from_file, trust=trust)
    except InputError as exc:  # UntrustedFileError included; say which file named the architecture
        if not from_file:
            raise
        raise type(exc)(f"{files.display(p)}: {exc}") from None
    expected = module.state_dict()
    state_dict, note = select_network(p, state_dict, set(expected), prefix=prefix)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k} {_shape(state_dict[k])} in the file vs {_shape(expected[k])} in the model"
              for k in expected
              if k in state_dict and isinstance(state_dict[k], torch.Tensor) and isinstance(expected[k], torch.Tensor)
              and state_dict[k].shape != expected[k].shape]
    source = f"the architecture {arch!r} named in its metadata" if from_file else f"--arch {arch!r}"
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({_first(shapes, 3)})")
        raise InputError(f"{files.display(p)} does not fit {source} with kwargs {_json(kwargs)}: "
                         f"{'; '.join(parts)}; check --arch and --arch-kwargs (and --prefix for a training "
                         "checkpoint that holds more than the network)")
    try:
        module.load_state_dict(state_dict, strict=True)
    except Exception as exc:  # noqa: BLE001 - dtype/extra-state problems the key check cannot see
        raise InputError(f"{files.display(p)} does not fit {source}: {_one_line(exc)}") from None
    if note is not None:
        warnings.warn(note, InputNote, stacklevel=2)
    return module.to("cpu").eval()


# ------------------------------------------------------------------------------------------ metadata decoding


def _decode_metadata(p: Path, raw: Mapping[str, Any], *, prefix: str) -> dict[str, Any]:
    """Well-known keys decoded and checked (``arch``, ``arch_kwargs``, ``mean``, ``std``, ``class_names``,
    ``num_classes``); other keys under ``prefix`` kept as they are."""
    out: dict[str, Any] = {}
    for full_key, value in raw.items():
        if not full_key.startswith(prefix) or full_key == prefix:
            continue
        name = full_key[len(prefix):]
        where = f"{files.display(p)}: metadata {full_key!r}"
        if name == "arch":
            if isinstance(value, str) and value.startswith('"'):
                value = _json_value(where, value)
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{where} must be a string like 'calibscope.models:DigitsCNN', got {value!r}")
            out[name] = value.strip()
            continue
        if isinstance(value, str) and name in ("arch_kwargs", "mean", "std", "class_names", "num_classes"):
            value = _json_value(where, value)
        if name == "arch_kwargs":
            if not isinstance(value, dict):
                raise InputError(f"{where} must be a JSON object such as '{{\"num_classes\": 10}}', got {value!r}")
        elif name in ("mean", "std"):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value]
            if (not isinstance(value, list) or not value
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise InputError(f"{where} must be a JSON list of per-channel numbers such as '[0.5, 0.5, 0.5]', "
                                 f"got {value!r}")
            value = [float(v) for v in value]
        elif name == "class_names":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InputError(f"{where} must be a JSON list of strings such as '[\"cat\", \"dog\"]', "
                                 f"got {value!r}")
        elif name == "num_classes":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{where} must be a positive integer, got {value!r}")
        out[name] = value
    return out


def _json_value(where: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InputError(f"{where} is not valid JSON ({exc}): {text[:80]!r}") from None


# -------------------------------------------------------------------------------------------- logits files


def _load_numpy(p: Path, kind: str) -> LogitsCheckpoint:
    arrays = files.read_numpy(p)
    if kind == "npy":
        return _logits_checkpoint(p, "npy", arrays[""], None, key="logits")
    key = _logits_key(arrays)
    if key is None:
        found = ", ".join(repr(k) for k in sorted(arrays)) or "none"
        raise InputError(f"{files.display(p)} has arrays {found} but no 'logits' or 'probs'; expected 'logits' "
                         "(or 'probs') [N, K], optional 'labels' [N] and 'class_names' [K]")
    class_names = arrays.get("class_names")
    if class_names is not None:
        if class_names.dtype.kind not in "US" or class_names.ndim != 1:
            raise InputError(f"{files.display(p)}: 'class_names' must be a 1-D array of strings, got "
                             f"{class_names.dtype} {list(class_names.shape)}")
        class_names = [str(c) for c in class_names.tolist()]
    return _logits_checkpoint(p, "npz", arrays[key], arrays.get("labels"), key=key, class_names=class_names)


def _load_csv(p: Path) -> LogitsCheckpoint:
    """A logits/probabilities CSV (see :mod:`calibscope.loading.logits_csv`); its notes are said once."""
    from calibscope.loading.logits_csv import read_logits_csv

    table = read_logits_csv(p)
    for note in table.notes:
        warnings.warn(note, InputNote, stacklevel=2)
    metadata = {"notes": list(table.notes)} if table.notes else None
    return _logits_checkpoint(p, "csv", table.values, table.labels, key="logits", class_names=table.class_names,
                              metadata=metadata)


def _logits_key(container: Mapping[Any, Any]) -> str | None:
    return next((k for k in _LOGITS_KEYS if k in container), None)


def _logits_checkpoint(p: Path, fmt: LogitsFormat, raw_logits: Any, raw_labels: Any, *, key: str,
                       class_names: Any = None, metadata: dict[str, Any] | None = None) -> LogitsCheckpoint:
    logits = _as_tensor(p, raw_logits, key)
    if logits.ndim != 2:
        raise InputError(f"{files.display(p)}: '{key}' has shape {list(logits.shape)}; expected [N, K] "
                         "(one row of K class scores per example)")
    if logits.dtype == torch.bool:
        raise InputError(f"{files.display(p)}: '{key}' is boolean; expected numbers")
    logits = logits.to(torch.float32)
    is_probs = _looks_like_probabilities(logits)
    if key == "probs" and not is_probs:
        raise InputError(f"{files.display(p)}: 'probs' are not probabilities (every entry must be in [0, 1] and "
                         f"every row sum to 1 within {_PROB_TOLERANCE}); store raw scores as 'logits' instead")
    if is_probs:
        logits = torch.log(torch.clamp(logits, min=torch.finfo(torch.float32).tiny))
    logits = logits.contiguous()
    n, k = logits.shape
    labels = _labels(p, raw_labels, n)
    meta = dict(metadata or {})
    if class_names is not None:
        if isinstance(class_names, tuple):
            class_names = list(class_names)
        if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
            raise InputError(f"{files.display(p)}: 'class_names' must be a list of strings")
        if len(class_names) != k:
            raise InputError(f"{files.display(p)}: {k} logit columns but {len(class_names)} class names")
        meta["class_names"] = class_names
    return LogitsCheckpoint(logits, labels, fmt, p, files.file_sha256(p), from_probabilities=is_probs,
                            metadata=meta)


def open_logits_rows(path: Path | str, *, min_bytes: int = 0, chunk_rows: int | None = None) -> LogitsRows | None:
    """``path`` as logits read by rows from disk (:class:`LogitsRows`), never loaded whole; or None.

    For ``.npy``, uncompressed ``.npz`` (``numpy.savez``) and safetensors files whose ``logits``/``probs`` are
    a plain 2-D numeric array of at least ``min_bytes`` bytes, with labels (if any) stored as plainly. Anything
    else — other formats, compressed members, unusual contents, a safetensors model — gives None, and
    :func:`load_checkpoint` (with its messages) is the way in. Whether the file holds probabilities is decided
    over every row, as :func:`load_checkpoint` does, reading ``chunk_rows`` rows at a time (default: 2²² values;
    real logits stop at the first chunk; probabilities cost one extra pass).
    """
    p = files.require_exists(path)
    kind = files.sniff(p)
    if kind not in ("npy", "npz", "safetensors"):
        return None
    try:
        arrays = files.stored_arrays(p, kind)
    except InputError:
        return None  # load_checkpoint says what is wrong with the file
    key = "" if kind == "npy" else _logits_key(arrays)
    if key is None or key not in arrays:
        return None
    array = arrays[key]
    if len(array.shape) != 2 or array.nbytes < min_bytes or not (array.dtype == "bfloat16" or array.dtype[1:2] in
                                                                 ("f", "i", "u")):
        return None
    metadata: dict[str, Any] = {}
    class_names = None
    if kind == "npz":
        if any(name in ("labels", "class_names") and name not in arrays for name in _npz_members(p)):
            return None  # a compressed labels/class_names member: the eager loader reads it
        if "class_names" in arrays:
            import numpy as np

            with np.load(p, allow_pickle=False) as data:
                names = data["class_names"]
            if names.dtype.kind not in "US" or names.ndim != 1:
                return None
            class_names = [str(c) for c in names.tolist()]
    elif kind == "safetensors":
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            raw = dict(f.metadata() or {})
        decoded = _decode_metadata(p, raw, prefix=METADATA_PREFIX)
        class_names = decoded.get("class_names")
        metadata = {k: v for k, v in decoded.items() if k != "class_names"}
    n, k = array.shape
    labels = _labels(p, arrays["labels"].rows(0, n), n) if "labels" in arrays else None
    if class_names is not None:
        if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
            raise InputError(f"{files.display(p)}: 'class_names' must be a list of strings")
        if len(class_names) != k:
            raise InputError(f"{files.display(p)}: {k} logit columns but {len(class_names)} class names")
        metadata["class_names"] = class_names
    is_probs = _rows_look_like_probabilities(array, chunk_rows or max(1, (1 << 22) // max(k, 1)))
    if key == "probs" and not is_probs:
        raise InputError(f"{files.display(p)}: 'probs' are not probabilities (every entry must be in [0, 1] and "
                         f"every row sum to 1 within {_PROB_TOLERANCE}); store raw scores as 'logits' instead")
    fmt: LogitsFormat = "npy" if kind == "npy" else "npz" if kind == "npz" else "safetensors"
    return LogitsRows(array, labels, fmt, p, files.file_sha256(p), from_probabilities=is_probs, metadata=metadata)


def _npz_members(p: Path) -> list[str]:
    with zipfile.ZipFile(p) as zf:
        return [n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")]


def _rows_look_like_probabilities(array: Any, chunk_rows: int) -> bool:
    """:func:`_looks_like_probabilities` over all rows of a stored array, chunk by chunk."""
    n, k = array.shape
    if n == 0 or k < 2:
        return False
    any_complete = False
    for a in range(0, n, chunk_rows):
        x = array.rows(a, a + chunk_rows).to(torch.float32)
        finite = torch.isfinite(x)
        if bool(((x < 0) | (x > 1)).logical_and(finite).any()):
            return False
        complete = finite.all(dim=1)
        if bool(complete.any()):
            sums = x[complete].sum(dim=1, dtype=torch.float64)
            if not bool(((sums - 1.0).abs() <= _PROB_TOLERANCE).all()):
                return False
            any_complete = True
    return any_complete


def _looks_like_probabilities(x: torch.Tensor) -> bool:
    """All finite entries in [0, 1] and every all-finite row summing to 1 (at least one such row, K ≥ 2)."""
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] < 2:
        return False
    finite = torch.isfinite(x)
    if bool(((x < 0) | (x > 1)).logical_and(finite).any()):
        return False
    complete = finite.all(dim=1)
    if not bool(complete.any()):
        return False
    sums = x[complete].sum(dim=1, dtype=torch.float64)
    return bool(((sums - 1.0).abs() <= _PROB_TOLERANCE).all())


def _labels(p: Path, raw: Any, n: int) -> torch.Tensor | None:
    if raw is None:
        return None
    labels = _as_tensor(p, raw, "labels")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise InputError(f"{files.display(p)}: 'labels' has shape {list(labels.shape)}; expected [N] class indices")
    if labels.is_floating_point():
        bad = labels != torch.round(labels)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise InputError(f"{files.display(p)}: labels must be whole class indices, but label {i} is "
                             f"{float(labels[i])!r}")
    labels = labels.to(torch.int64).contiguous()
    if labels.shape[0] != n:
        raise InputError(f"{files.display(p)}: {n} logits rows but {labels.shape[0]} labels")
    return labels


def _as_tensor(p: Path, value: Any, key: str) -> torch.Tensor:
    import numpy as np

    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu")
    elif isinstance(value, np.ndarray) or isinstance(value, (list, tuple)):
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise InputError(f"{files.display(p)}: '{key}' holds {array.dtype} values; expected numbers")
        if array.dtype.kind in "iu":
            array = array.astype(np.int64)
        elif array.dtype.kind == "f" and (array.dtype.itemsize > 8 or not array.dtype.isnative):
            array = array.astype(np.float64)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    else:
        raise InputError(f"{files.display(p)}: '{key}' is a {type(value).__name__}; expected an array")
    if tensor.is_complex():
        raise InputError(f"{files.display(p)}: '{key}' is complex; expected real numbers")
    return tensor


# ------------------------------------------------------------------------------------------------- helpers


def _first(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (", …" if len(items) > n else "")


def _shape(t: Any) -> str:
    return str(list(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _json(value: Any) -> str:
    try:
        return "'" + json.dumps(value) + "'"
    except (TypeError, ValueError):
        return repr(value)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__

