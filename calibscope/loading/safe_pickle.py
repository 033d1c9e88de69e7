"""A restricted unpickler for data pickles (CIFAR python batches): plain containers and numpy arrays only.

A pickle is a small program: every ``GLOBAL`` it names is imported and may be called. :class:`SafeUnpickler`
resolves globals from a fixed allow-list instead of importing anything, so a file that names ``os.system``,
``builtins.eval`` or any class of its own is refused before a single call is made. What is allowed:

* builtin containers and scalars (``dict``, ``list``, ``tuple``, ``set``, ``frozenset``, ``bytes``,
  ``bytearray``, ``str``, ``int``, ``float``, ``complex``, ``bool``);
* numpy array reconstruction: ``numpy.ndarray``, ``numpy.dtype``, ``_reconstruct`` and ``scalar`` from
  ``numpy.core.multiarray`` / ``numpy._core.multiarray`` (numpy 1.x / 2.x names) and ``_frombuffer``
  (pickle protocol 5);
* ``_codecs.encode`` restricted to latin-1, which protocol-2 pickles use to spell ``bytes``.

Bounded memory: ``bytes``/``bytearray`` are not called with a size (``bytearray(3_300_000_000)`` is 59 bytes
of pickle), ``_reconstruct`` only makes the empty array pickles start from, and an object whose shared
references would expand when walked (a 150-byte pickle of lists of the same list, 3.6 GB when copied) is
refused: the number of elements reachable along every path may not exceed the file's size (a pickle spells
each element it really holds with at least one byte).

Example::

    safe_load("cifar-10-batches-py/test_batch")["data"].shape   # (10000, 3072)
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from calibscope.errors import InputError
from calibscope.loading.files import display

_BUILTINS = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float", "complex", "bool"}
)
_NUMPY_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it (``encode(text, 'latin1')``), and nothing else."""
    import codecs

    if not isinstance(obj, str) or encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(obj, "latin-1", errors)


def _numpy_core() -> Any:
    import numpy as np

    return getattr(np, "_core", None) or np.core  # numpy ≥ 2 / numpy 1.x


def _sized_constructor(kind: type) -> Any:
    """``bytes``/``bytearray`` as pickles call them (from bytes, a string and its encoding, or nothing)."""

    def make(*args: Any) -> Any:
        if args and isinstance(args[0], int) and not isinstance(args[0], bool):
            raise pickle.UnpicklingError(f"{kind.__name__}({args[0]}) (a size, not data)")
        return kind(*args)

    return make


def _empty_reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
    """numpy's ``_reconstruct``, which pickles call with shape ``(0,)`` before filling the array."""
    import numpy as np

    if int(np.prod(shape, dtype=object)) > 1024:
        raise pickle.UnpicklingError(f"numpy _reconstruct with shape {shape} (pickles start from an empty array)")
    return _numpy_core().multiarray._reconstruct(subtype, shape, dtype)


def _resolve(module: str, name: str) -> Any | None:
    """The object an allowed ``module.name`` stands for, or None when it is not allowed."""
    if module in ("builtins", "__builtin__") and name in _BUILTINS:
        import builtins

        if name in ("bytes", "bytearray"):
            return _sized_constructor(getattr(builtins, name))
        return getattr(builtins, name)
    if module == "_codecs" and name == "encode":
        return _latin1_encode
    if module == "numpy" and name in ("ndarray", "dtype"):
        import numpy as np

        return getattr(np, name)
    if module in _NUMPY_MULTIARRAY and name == "_reconstruct":
        return _empty_reconstruct
    if module in _NUMPY_MULTIARRAY and name == "scalar":
        return _numpy_core().multiarray.scalar
    if module in _NUMPY_NUMERIC and name == "_frombuffer":
        return _numpy_core().numeric._frombuffer
    return None


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves globals only from the allow-list in this module's docstring.

    Anything else raises :class:`InputError` naming the reference, without importing or calling it.
    """

    def __init__(self, file: Any, *, source: Path | str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        obj = _resolve(module, name)
        if obj is None:
            raise InputError(f"{display(self._source)} contains a pickled reference to {module}.{name}, "
                             "which calibscope never loads")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise InputError(f"{display(self._source)} contains a persistent pickle reference, "
                         "which calibscope never loads")


def safe_load(path: Path | str) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler` and ``encoding="bytes"`` (as CIFAR's own loader does).

    Dictionary keys that were Python 2 ``str`` (so ``bytes`` here) are decoded to ``str`` afterwards, at every
    level; values are left as they are (CIFAR's ``label_names`` stay ``bytes``). Corrupt or truncated files
    raise :class:`InputError`.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            obj = SafeUnpickler(fh, source=p, encoding="bytes").load()
        _check_expansion(obj, p, p.stat().st_size)
        return _decode_keys(obj, {})
    except InputError:
        raise
    except OSError as exc:
        raise InputError(f"cannot read {display(p)}: {exc.strerror or exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, RecursionError) as exc:
        text = str(exc).strip().splitlines()
        reason = text[0][:300] if text else type(exc).__name__
        raise InputError(f"{display(p)} is not a readable pickle file ({reason})") from None


def _check_expansion(obj: Any, p: Path, size: int) -> None:
    """Refuse objects whose containers, walked along every path, hold more elements than the file has bytes."""
    containers = (dict, list, tuple, set, frozenset)
    limit = size + 64
    done: dict[int, int] = {}  # id → elements reachable below it, counted along every path
    active: set[int] = set()  # on the current path (a cycle counts once)
    stack: list[tuple[Any, bool]] = [(obj, False)] if isinstance(obj, containers) else []
    while stack:
        o, children_done = stack.pop()
        if not children_done:
            if id(o) in done or id(o) in active:
                continue
            active.add(id(o))
            stack.append((o, True))
            kids = [*o.keys(), *o.values()] if isinstance(o, dict) else list(o)
            stack.extend((k, False) for k in kids if isinstance(k, containers))
            continue
        kids = [*o.keys(), *o.values()] if isinstance(o, dict) else list(o)
        total = 1 + sum(done.get(id(k), 1) if isinstance(k, containers) else 1 for k in kids)
        active.discard(id(o))
        done[id(o)] = total
        if total > limit:
            raise InputError(f"{display(p)} is a pickle whose shared references expand to more than {limit} "
                             f"elements from {size} bytes (a pickle bomb); calibscope refuses it")


def _decode_keys(obj: Any, memo: dict[int, Any]) -> Any:
    """``bytes`` keys → ``str``, keeping shared references shared (one copy per original container)."""
    if not isinstance(obj, (dict, list)):
        return obj
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, dict):
        out: Any = {}
        memo[id(obj)] = out
        out.update({_decode(k): _decode_keys(v, memo) for k, v in obj.items()})
        return out
    out = []
    memo[id(obj)] = out
    out.extend(_decode_keys(v, memo) for v in obj)
    return out


def _decode(key: Any) -> Any:
    if isinstance(key, bytes):
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return key.decode("latin-1")
    return key
