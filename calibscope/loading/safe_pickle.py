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

Example::

    >>> safe_load("cifar-10-batches-py/test_batch")["data"].shape
    (10000, 3072)
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


def _resolve(module: str, name: str) -> Any | None:
    """The object an allowed ``module.name`` stands for, or None when it is not allowed."""
    if module in ("builtins", "__builtin__") and name in _BUILTINS:
        import builtins

        return getattr(builtins, name)
    if module == "_codecs" and name == "encode":
        return _latin1_encode
    if module == "numpy" and name in ("ndarray", "dtype"):
        import numpy as np

        return getattr(np, name)
    if module in _NUMPY_MULTIARRAY and name in ("_reconstruct", "scalar"):
        return getattr(_numpy_core().multiarray, name)
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
            return _decode_keys(SafeUnpickler(fh, source=p, encoding="bytes").load())
    except InputError:
        raise
    except OSError as exc:
        raise InputError(f"cannot read {display(p)}: {exc.strerror or exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, RecursionError) as exc:
        text = str(exc).strip().splitlines()
        reason = text[0][:300] if text else type(exc).__name__
        raise InputError(f"{display(p)} is not a readable pickle file ({reason})") from None


def _decode_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {_decode(k): _decode_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_keys(v) for v in obj]
    return obj


def _decode(key: Any) -> Any:
    if isinstance(key, bytes):
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return key.decode("latin-1")
    return key
