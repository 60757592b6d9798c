"""Errors a user can fix, reported as one plain line by the CLI (no traceback), exit status 2.

Imports nothing heavy: the CLI loads this module before it knows which command runs.
"""
from __future__ import annotations


class UserError(ValueError):
    """A problem with the command's input that the user can fix."""


class UsageError(UserError):
    """A misspelled or unknown option, or a bad option value."""


def user_errors() -> tuple:
    """The exception types the CLI prints as one line: ValueError covers NoInputFilesError,
    unknown providers, bad sink URLs and identifiers; plus the provider's fatal errors."""
    from dicomvec.io.providers.base import FatalProviderError, TextNotSupportedError
    return (UserError, ValueError, FatalProviderError, TextNotSupportedError)


def __getattr__(name: str):
    if name == "USER_ERRORS":  # the tuple, for older callers
        return user_errors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
