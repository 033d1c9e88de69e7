"""Atomic file output: write to a temporary file in the target's directory, then rename it onto the target.

A reader never sees a half-written file and an interrupted or failing write leaves the target untouched
(``os.replace`` is atomic on POSIX and Windows when both paths are on the same file system, which a temp
file in the same directory guarantees). The parent directory must exist.

Output sets: inside :func:`transactional_outputs` (the command line runs every command in one) each file is still
published atomically as it is written, but the set remembers it (and keeps the file it replaced, renamed to a
hidden ``.bak`` sibling). A command that fails, is interrupted (Ctrl-C) or terminated (SIGTERM) leaves no
output behind: what it published is removed, the earlier files are renamed back, and the folders it made
(:func:`make_folder`) are removed again if empty; when it succeeds the backups are deleted. SIGINT/SIGTERM are
held back during those few renames. (Only SIGKILL or a power cut can leave part of a set.)
:func:`check_destination` and :func:`check_folder` say what
is wrong with a destination before anything is computed. A write that fails (read-only or full file system,
a directory in the way) is an :class:`~calibscope.errors.InputError` with one line, not an internal error.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path

__all__ = ["atomic_output", "atomic_write_bytes", "atomic_write_text", "check_destination", "check_folder",
           "transactional_outputs", "discarding_writes", "make_folder"]

_DISCARD: ContextVar[bool] = ContextVar("calibscope_discard_writes", default=False)
_scratch: list[Path] = []


class _OutputSet:
    """The files a command has published so far (with a hard-linked copy of what each replaced) and the
    folders it made, so that a failure can take them all back."""

    def __init__(self) -> None:
        self.published: list[tuple[Path, Path | None]] = []  # (target, backup of the file it replaced)
        self.folders: list[Path] = []  # made by make_folder during the set, outermost first

    def publish(self, tmp: Path, target: Path) -> None:
        backup = None
        if target.exists() and not any(t == target for t, _ in self.published):
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".bak", dir=target.parent)
            os.close(fd)
            backup = Path(name)
            try:
                os.replace(target, backup)  # the earlier output, kept until the command succeeds
            except OSError:
                with contextlib.suppress(OSError):
                    backup.unlink()
                raise
        try:
            os.replace(tmp, target)
        except OSError:
            if backup is not None:
                os.replace(backup, target)
            raise
        self.published.append((target, backup))

    def commit(self) -> None:
        with _signals_held():
            for _, backup in self.published:
                if backup is not None:
                    with contextlib.suppress(OSError):
                        backup.unlink()
            self.published.clear()
            self.folders.clear()

    def abort(self) -> None:
        with _signals_held():
            for target, backup in reversed(self.published):
                with contextlib.suppress(OSError):
                    if backup is not None:
                        os.replace(backup, target)
                    else:
                        target.unlink()
            self.published.clear()
            for folder in reversed(self.folders):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty: a folder that holds other files stays
            self.folders.clear()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait (main thread, POSIX) while a set is settled, then arrive."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}) if main else None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


_SET: ContextVar[_OutputSet | None] = ContextVar("calibscope_output_set", default=None)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that an output set is cleaned up as for Ctrl-C."""


@contextlib.contextmanager
def transactional_outputs(*, commit_if: Callable[[BaseException], bool] = lambda exc: False) -> Iterator[_OutputSet]:
    """Keep every atomic write of the block when it ends normally (or with an exception for which ``commit_if``
    is true, e.g. a failed gate, whose report is wanted); take them all back when it raises anything else.
    Nested blocks join the outermost one. SIGTERM raises :class:`Terminated` inside the block (main thread
    only)."""
    if _SET.get() is not None:
        yield _SET.get()  # type: ignore[misc]
        return
    import signal
    import threading

    output_set = _OutputSet()
    token = _SET.set(output_set)
    previous = None
    if threading.current_thread() is threading.main_thread():
        def _terminated(signum, frame):
            raise Terminated()

        with contextlib.suppress(ValueError, OSError):
            previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        try:
            yield output_set
        except BaseException as exc:
            _SET.reset(token)
            token = None
            if commit_if(exc):
                output_set.commit()
            else:
                output_set.abort()
            raise
        _SET.reset(token)
        token = None
        output_set.commit()
    finally:
        if token is not None:
            _SET.reset(token)
            output_set.abort()
        if previous is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signal.SIGTERM, previous)


def output_folder(out: str | os.PathLike[str]) -> Path:
    """:func:`make_folder` for a command's ``--out``: a folder that cannot be made is a one-line input error."""
    from calibscope.errors import InputError

    try:
        return make_folder(out)
    except OSError as exc:
        raise InputError(f"cannot create the output directory '{out}': {exc.strerror or exc}") from None


def make_folder(folder: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` that an output set undoes (if the folders stay empty) when the command fails."""
    folder = Path(folder)
    if _DISCARD.get():
        return folder
    missing = []
    f = folder
    while not f.exists() and f != f.parent:
        missing.append(f)
        f = f.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise _write_error(folder, NotADirectoryError(20, "a file of that name is in the way")) from None
    except OSError as exc:
        raise _write_error(folder, exc) from None
    output_set = _SET.get()
    if output_set is not None:
        output_set.folders.extend(reversed(missing))
    return folder


def check_destination(path: str | os.PathLike[str] | None, option: str) -> None:
    """Before computing: ``path`` (a file to write, for ``option``) must not be a directory, its folder must
    exist and be writable. Raises :class:`~calibscope.errors.InputError` with one line."""
    from calibscope.errors import InputError

    if path is None or str(path) == "-":
        return
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{option} '{p}' is a directory; name a file to write, e.g. '{p / 'out'}'")
    if p.exists() and not p.is_file():
        raise InputError(f"{option} '{p}' exists and is not a regular file (a FIFO or device?); name a new file")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write {option} '{p}': the folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {option} '{p}': the folder '{parent}' is not writable")


def check_folder(path: str | os.PathLike[str] | None, option: str) -> None:
    """Before computing: ``path`` (a folder to write into, for ``option``) must be a writable folder or not exist
    yet under a writable one."""
    from calibscope.errors import InputError

    if path is None:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{option} '{p}' exists and is not a folder; name a folder to write into")
    f = p
    while not f.exists() and f != f.parent:
        f = f.parent
    if not f.is_dir():
        raise InputError(f"cannot write into {option} '{p}': '{f}' is not a folder")
    if not os.access(f, os.W_OK | os.X_OK):
        raise InputError(f"cannot write into {option} '{p}': '{f}' is not writable")


def _write_error(target: Path, exc: OSError):
    from calibscope.errors import InputError

    reason = exc.strerror or str(exc) or type(exc).__name__
    return InputError(f"cannot write '{target}': {reason}")


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
    from calibscope.errors import InputError

    if target.is_dir():
        raise InputError(f"cannot write '{target}': it is a directory; name a file")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write '{target}': the folder '{parent}' does not exist")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise _write_error(target, exc) from None
    os.close(fd)
    tmp = Path(name)
    output_set = _SET.get()
    try:
        # mkstemp creates mode 0600; give the result the mode an ordinary open() would have
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            yield tmp
        except OSError as exc:  # the writer's own write failed: a full disk, a quota
            raise _write_error(target, exc) from None
        _fsync(tmp)
        try:
            if output_set is None:
                os.replace(tmp, target)
            else:  # taken back (the earlier file restored) if the command fails
                output_set.publish(tmp, target)
        except OSError as exc:
            raise _write_error(target, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path`` as a :class:`~pathlib.Path`."""
    target = _discarded(Path(path)) if _DISCARD.get() else Path(path)
    with _atomic_output(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8, newlines as given); returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))
