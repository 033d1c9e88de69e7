"""Typed errors. Library code raises these; only ``calibscope.cli`` turns them into exit codes.

* :class:`InputError` (and subclasses) — bad input or usage → exit code 2, one-line message.
* :class:`GateFailed` — a configured threshold was exceeded → exit code 1.
* any other exception — an internal error → exit code 3.
"""

from __future__ import annotations


class CalibscopeError(Exception):
    """Base class of every error calibscope raises on purpose."""


class InputError(CalibscopeError, ValueError):
    """The user's input (file, option, data) cannot be used. The message is shown as one line."""


class UntrustedFileError(InputError):
    """Loading the file would execute code from it and ``--trust`` was not given."""


class GateFailed(CalibscopeError):
    """A quality gate (e.g. ``--max-ece``) failed. Exit code 1."""


class InputNote(UserWarning):
    """Something about the input that calibscope noticed and handled (e.g. a pandas index column it ignored).
    Shown once, as one line (``calibscope: warning: …``); never changes the exit code."""


class ArgumentError(InputError):
    """An argument of a library call is out of range. The message names it as ```name``` (the Python
    argument); ``argument`` holds the name, so that the command line can word it as its flag."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument
