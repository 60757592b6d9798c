"""Errors a user can fix, reported as one plain line by the CLI (no traceback), exit status 2.

Imports nothing: the CLI loads this module before it knows which command runs, and every layer
may raise these.
"""
from __future__ import annotations


class UserError(ValueError):
    """A problem with the command's input that the user can fix."""


class UsageError(UserError):
    """A misspelled or unknown option, or a bad option value."""


class PreflightError(UserError):
    """Something the job needs is missing or unusable; nothing has been created."""


class NoInputFilesError(PreflightError):
    """The input pattern matched nothing: an error, never an empty success."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its class name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
