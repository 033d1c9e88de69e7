"""Atomic file output: write to a temporary file in the target's directory, then rename it onto the target.

A reader never sees a half-written file and an interrupted or failing write leaves the target untouched
(``os.replace`` is atomic on POSIX and Windows when both paths are on the same file system, which a temp
file in the same directory guarantees). The parent directory must exist.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

__all__ = ["atomic_output", "atomic_write_bytes", "atomic_write_text", "discarding_writes"]

_DISCARD: ContextVar[bool] = ContextVar("calibscope_discard_writes", default=False)
_scratch: list[Path] = []


@contextlib.contextmanager
def discarding_writes() -> Iterator[None]:
    """Within this block every atomic write goes to a private temporary folder instead of its target, and
    :func:`atomic_write_bytes` / :func:`atomic_write_text` return the path there (so code that reads back
    what it wrote still works); the folder is deleted when the process exits.

    The command line runs under it on every ``torchrun`` rank but 0, so that one rank alone writes files
    while every rank runs the same code.
    """
    token = _DISCARD.set(True)
    try:
        yield
    finally:
        _DISCARD.reset(token)


def _discarded(target: Path) -> Path:
    """Where a write to ``target`` goes while writes are discarded."""
    if not _scratch:
        _scratch.append(Path(tempfile.mkdtemp(prefix="calibscope-discarded-")))
        atexit.register(shutil.rmtree, _scratch[0], True)
    folder = _scratch[0] / str(len(list(_scratch[0].iterdir())))
    folder.mkdir()
    return folder / target.name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on error delete it.

    Example::

        with atomic_output(out / "reliability.png") as tmp:
            fig.savefig(tmp, format="png")   # pass the format: the temp name ends in ".tmp"
    """
    target = _discarded(Path(path)) if _DISCARD.get() else Path(path)
    with _atomic_output(target) as tmp:
        yield tmp


@contextlib.contextmanager
def _atomic_output(target: Path) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        # mkstemp creates mode 0600; give the result the mode an ordinary open() would have
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path`` as a :class:`~pathlib.Path`."""
    target = _discarded(Path(path)) if _DISCARD.get() else Path(path)
    with _atomic_output(target) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8, newlines as given); returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))
