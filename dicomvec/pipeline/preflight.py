"""Checks made before a job starts, so a user's mistake is one line and exit status 2 with
nothing created: no table, no database file, no dead-letter or ``beam-temp`` folder.

In: the job's options (``DicomvecOptions``). Out: the input pattern actually used (a directory
given as ``--input`` becomes ``DIR/**``, every file below it), or a ``PreflightError`` (a
``UserError``: the CLI prints it as one line). Every check only looks: nothing here writes.

* input: the pattern matches at least one file (``NoInputFilesError`` otherwise);
* sink: ``sqlite:///PATH``: PATH, if it exists, is a writable file (``must_exist``: it
  exists); else its folder is writable or can be made (the nearest existing ancestor is a
  writable folder, not a file); a server (PostgreSQL, IRIS): the login works (connect, close);
* dead letters: the folder is writable, or can be made (same rule);
* provider: its credentials are present (``EmbeddingProvider.preflight``; e.g. nvclip's
  ``NVIDIA_API_KEY`` for the hosted API). No request is sent.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

from dicomvec.errors import NoInputFilesError, PreflightError, first_line  # noqa: F401
from dicomvec.io.local_paths import folder_problem, writable_dir

log = logging.getLogger(__name__)


def _is_local(path: str) -> bool:
    return "://" not in path


def resolve_input(pattern: Optional[str], what: str = "a DICOM file pattern such as "
                  "'/data/mimic-cxr/files/**/*.dcm'", require_match: bool = True) -> str:
    """The pattern to read: ``pattern`` itself, or ``DIR/**`` when it names a directory (logged:
    say which pattern was used). Raises NoInputFilesError when it matches no file."""
    from apache_beam.io.filesystems import FileSystems
    if not pattern:
        raise NoInputFilesError(f"--input is required: {what}")
    used = pattern
    if _is_local(pattern) and os.path.isdir(pattern):
        used = os.path.join(pattern, "**")
        log.info("--input %s is a directory: reading every file below it (pattern %s)",
                 pattern, used)
    if require_match:
        try:
            # one match is enough: the pipeline's MatchFiles lists the archive itself, so
            # a 377K-file archive is not listed twice before the first file is read
            matched = FileSystems.match([used], limits=[1])[0].metadata_list
        except Exception as exc:  # bad scheme, unreachable bucket, no permission
            raise NoInputFilesError(f"cannot list --input {used!r}: "
                                    f"{type(exc).__name__}: {first_line(exc)}") from None
        if not matched:
            raise NoInputFilesError(f"no files match --input {used!r}")
    return used


def check_dead_letter_folder(path: str) -> None:
    """The dead-letter folder can be written: it is a writable folder, or can be made (its
    nearest existing ancestor is a writable folder; the job makes it, not this check)."""
    if not _is_local(path):
        return  # object stores: Beam's filesystem reports its own errors
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise PreflightError(f"--dead-letter {path!r} is a file, not a folder")
        if not writable_dir(path):
            raise PreflightError(f"--dead-letter folder {path!r} is not writable")
        return
    problem = folder_problem(os.path.dirname(os.path.normpath(path)))
    if problem:
        raise PreflightError(f"cannot create --dead-letter {path!r}: {problem}")


def require_dead_letter_folder(path: str) -> None:
    """For commands that read dead letters: the folder the user named must exist."""
    if _is_local(path) and not os.path.isdir(path):
        what = "is not a folder" if os.path.exists(path) else "does not exist"
        raise PreflightError(f"dead-letter folder {path!r} {what}")


def check_provider(config) -> None:
    """The provider can be built and has its credentials (no request is sent)."""
    from dicomvec.io.providers import create_provider
    create_provider(config).preflight()  # unknown name: ValueError


def check_job(options, input_pattern: bool = True, sink_must_exist: bool = False,
              dead_letters: bool = True, require_match: bool = True) -> Optional[str]:
    """Every check for a job over ``options`` (``DicomvecOptions``), cheapest first; returns the
    input pattern to use (None when ``input_pattern`` is False)."""
    used = resolve_input(options.input, require_match=require_match) if input_pattern else None
    check_provider(options.provider_config())
    if dead_letters:
        check_dead_letter_folder(options.dead_letter)
    # the sink: its dialect's check (SQLite: the file; servers: a login); a bad URL: ValueError
    options.sink_config().images().dialect.check_reachable(sink_must_exist)
    return used
