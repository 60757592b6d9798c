"""Errors a user can fix, reported as one plain line by the CLI (no traceback)."""
from dicomvec.io.providers.base import FatalProviderError, TextNotSupportedError


class UserError(ValueError):
    """A problem with the command's input that the user can fix."""


# ValueError covers NoInputFilesError, unknown providers, bad sink URLs and identifiers.
USER_ERRORS = (UserError, ValueError, FatalProviderError, TextNotSupportedError)
