"""Build an ``nn.Module`` from an architecture spec (``--arch`` or a file's ``calibscope.arch`` metadata).

Spec forms:

================================  ===========================================================================
``package.module:callable``       ``importlib.import_module("package.module").callable(**kwargs)``
``path/to/file.py:Callable``      the module is loaded from that file (its folder goes on ``sys.path``, so its
                                  sibling imports work), then ``Callable(**kwargs)``
``torchvision:NAME``              ``torchvision.models.get_model(NAME, **kwargs)`` (if torchvision is installed)
``timm:NAME``                     ``timm.create_model(NAME, **kwargs)`` (if timm is installed)
================================  ===========================================================================

``callable`` may be a dotted attribute path (``module:Outer.build``).

Safety: a spec read from a file (``from_file=True``) could name any function, e.g. ``os:system``. Unless the user
passes ``--trust``, such specs are limited to ``nn.Module`` classes in ``calibscope.*`` modules, ``torchvision:``
and ``timm:``; anything else raises :class:`~calibscope.errors.UntrustedFileError` before anything is imported.
An ``--arch`` given on the command line is the user's own choice and is always allowed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from calibscope.errors import InputError, UntrustedFileError

__all__ = ["ArchSpec", "build_architecture", "parse_arch_spec"]

_HUBS = ("torchvision", "timm")
_SYNTAX = ("expected 'package.module:callable', 'path/to/file.py:Callable', 'torchvision:NAME' or 'timm:NAME', "
           "got {spec!r}")


@dataclass(frozen=True)
class ArchSpec:
    """A parsed architecture spec. ``target`` is the module name, the file path, or the hub name."""

    kind: Literal["module", "file", "torchvision", "timm"]
    target: str
    name: str
    text: str


def parse_arch_spec(spec: str) -> ArchSpec:
    """Split ``spec`` into its kind, target and callable name; :class:`InputError` if it has none of the forms."""
    if not isinstance(spec, str):
        raise InputError(f"--arch: {_SYNTAX.format(spec=spec)}")
    text = spec.strip()
    target, sep, name = text.rpartition(":")
    target, name = target.strip(), name.strip()
    if not sep or not target or not name:
        raise InputError(f"--arch: {_SYNTAX.format(spec=spec)}")
    if target in _HUBS:
        return ArchSpec(target, target, name, text)  # type: ignore[arg-type]
    if not all(part.isidentifier() for part in name.split(".")):
        raise InputError(f"--arch: {_SYNTAX.format(spec=spec)} ({name!r} is not a Python name)")
    if target.endswith(".py"):
        return ArchSpec("file", target, name, text)
    if all(part.isidentifier() for part in target.split(".")):
        return ArchSpec("module", target, name, text)
    raise InputError(f"--arch: {_SYNTAX.format(spec=spec)}")


def build_architecture(
    spec: str,
    kwargs: dict[str, Any] | None = None,
    *,
    from_file: bool = False,
    trust: bool = False,
) -> torch.nn.Module:
    """Instantiate the architecture named by ``spec`` with keyword arguments ``kwargs``.

    ``from_file``: the spec (and kwargs) came from a checkpoint's metadata rather than the command line; unless
    ``trust`` is set only ``calibscope.*`` ``nn.Module`` classes, ``torchvision:`` and ``timm:`` are allowed.
    Returns the module (train/eval mode as constructed, on whatever device the factory chose).

    Example::

        >>> build_architecture("calibscope.models:DigitsCNN", {"num_classes": 3}).classifier
        Linear(in_features=128, out_features=3, bias=True)
    """
    parsed = parse_arch_spec(spec)
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise InputError(f"--arch-kwargs for {parsed.text!r} must be a JSON object such as "
                         f"'{{\"num_classes\": 10}}', got {kwargs!r}")
    untrusted = from_file and not trust
    if untrusted:
        _require_allowed_module(parsed)  # before importing anything

    if parsed.kind in _HUBS:
        model = _build_from_hub(parsed, kwargs)
    else:
        factory = _resolve(parsed)
        if untrusted and not (isinstance(factory, type) and issubclass(factory, torch.nn.Module)):
            raise _untrusted(parsed, "it is not an nn.Module class")
        model = _call(parsed, factory, kwargs)
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"--arch {parsed.text!r} returned a {type(model).__name__}, not a torch.nn.Module; "
                         "point it at an nn.Module class or a function that returns one")
    return model


# --------------------------------------------------------------------------------------------------- safety


def _require_allowed_module(parsed: ArchSpec) -> None:
    if parsed.kind in _HUBS:
        return
    if parsed.kind == "module" and (parsed.target == "calibscope" or parsed.target.startswith("calibscope.")):
        return
    raise _untrusted(parsed, "it is neither a calibscope.* module nor torchvision:/timm:")


def _untrusted(parsed: ArchSpec, why: str) -> UntrustedFileError:
    return UntrustedFileError(
        f"the checkpoint's metadata names the architecture {parsed.text!r}, which calibscope will not run from a "
        f"file ({why}); pass --trust if you trust the file's author, or give the architecture yourself with "
        "--arch package.module:callable (--arch on the command line overrides the file's metadata)")


# -------------------------------------------------------------------------------------------- resolution


def _resolve(parsed: ArchSpec) -> Any:
    module = _load_file(parsed) if parsed.kind == "file" else _import(parsed)
    obj: Any = module
    for i, part in enumerate(parsed.name.split(".")):
        if not hasattr(obj, part):
            where = parsed.target if i == 0 else f"{parsed.target}:{'.'.join(parsed.name.split('.')[:i])}"
            public = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))
            hint = f"; it has: {', '.join(public[:12])}{', …' if len(public) > 12 else ''}" if public else ""
            raise InputError(f"--arch {parsed.text!r}: {where!r} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"--arch {parsed.text!r}: {parsed.name!r} is a {type(obj).__name__}, not callable")
    return obj


def _import(parsed: ArchSpec) -> Any:
    try:
        return importlib.import_module(parsed.target)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (parsed.target == missing or parsed.target.startswith(missing + ".")):
            raise InputError(f"--arch {parsed.text!r}: no module named {missing!r}; check the spelling, install "
                             "the package, or use 'path/to/file.py:Callable'") from None
        raise InputError(f"--arch {parsed.text!r}: importing {parsed.target!r} failed because module "
                         f"{missing!r} is not installed") from None
    except Exception as exc:  # noqa: BLE001 - any error raised by the user's module at import time
        raise InputError(f"--arch {parsed.text!r}: importing {parsed.target!r} failed "
                         f"({type(exc).__name__}: {_one_line(exc)})") from exc


def _load_file(parsed: ArchSpec) -> Any:
    path = Path(parsed.target).expanduser()
    if not path.is_file():
        raise InputError(f"--arch {parsed.text!r}: '{path}' does not exist")
    resolved = path.resolve()
    name = f"_calibscope_arch_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise InputError(f"--arch {parsed.text!r}: '{path}' cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, typing and pickling look the module up here
    folder = str(resolved.parent)
    if folder not in sys.path:  # as `python file.py` does: the file's sibling modules import
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any error raised by the user's file
        del sys.modules[name]
        raise InputError(f"--arch {parsed.text!r}: running '{path}' failed "
                         f"({type(exc).__name__}: {_one_line(exc)})") from exc
    return module


def _call(parsed: ArchSpec, factory: Any, kwargs: dict[str, Any]) -> Any:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins and some C extensions have none
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            raise InputError(f"--arch {parsed.text!r} cannot be called with --arch-kwargs {_show(kwargs)}: {exc}; "
                             f"it takes {_describe(signature)}") from None
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise InputError(f"--arch {parsed.text!r} called with --arch-kwargs {_show(kwargs)} failed "
                         f"(TypeError: {_one_line(exc)})") from exc
    except Exception as exc:  # noqa: BLE001 - any error raised by the user's constructor
        raise InputError(f"--arch {parsed.text!r} with --arch-kwargs {_show(kwargs)} failed "
                         f"({type(exc).__name__}: {_one_line(exc)})") from exc


def _build_from_hub(parsed: ArchSpec, kwargs: dict[str, Any]) -> Any:
    hub = parsed.kind
    if importlib.util.find_spec(hub) is None:
        raise InputError(f"--arch {parsed.text!r}: {hub} is not installed; pip install {hub} or use "
                         "package.module:callable")
    try:
        if hub == "torchvision":
            from torchvision.models import get_model  # type: ignore[import-not-found]

            return get_model(parsed.name, **kwargs)
        import timm  # type: ignore[import-not-found]

        return timm.create_model(parsed.name, **kwargs)
    except Exception as exc:  # noqa: BLE001 - unknown names, bad kwargs, download failures
        raise InputError(f"--arch {parsed.text!r} with --arch-kwargs {_show(kwargs)} failed "
                         f"({type(exc).__name__}: {_one_line(exc)})") from exc


# ---------------------------------------------------------------------------------------------- helpers


def _describe(signature: inspect.Signature) -> str:
    params = [p for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not params:
        return "no keyword arguments"
    return "(" + ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in params) + ")"


def _show(kwargs: dict[str, Any]) -> str:
    try:
        return "'" + json.dumps(kwargs) + "'"
    except (TypeError, ValueError):
        return repr(kwargs)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
