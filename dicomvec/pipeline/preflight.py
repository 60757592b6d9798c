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
* ``--job_endpoint`` (a portable runner's job service): it answers within a few seconds;
* provider: its credentials are present (``EmbeddingProvider.preflight``; e.g. nvclip's
  ``NVIDIA_API_KEY`` for the hosted API). No request is sent. When the job would send the
  archive's data to a hosted third-party service, one notice says so on stderr (not an error).
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
    used = folder_pattern(pattern) or pattern
    if used != pattern:
        log.info("--input %s is a directory: reading every file below it (pattern %s); files "
                 "plainly not DICOM (.txt, .csv, .gz, … without a DICM preamble) are ignored",
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


def _has_wildcard(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def folder_pattern(pattern: Optional[str]) -> Optional[str]:
    """``DIR/**`` when ``pattern`` names a folder — a local directory, or an object-store
    prefix ending in ``/`` (``s3://bucket/files/``) —, else None. Looks at nothing remote."""
    if not pattern or _has_wildcard(pattern):
        return None
    if _is_local(pattern):
        return os.path.join(pattern, "**") if os.path.isdir(pattern) else None
    return pattern + "**" if pattern.endswith("/") else None


def remote_folder_pattern(pattern: Optional[str]) -> Optional[str]:
    """``s3://bucket/files`` (no wildcard, no trailing ``/``) → ``s3://bucket/files/**``: what
    to list when no object has exactly that name (then it is a prefix, a folder). None for a
    local path or a pattern."""
    if not pattern or _is_local(pattern) or _has_wildcard(pattern) or pattern.endswith("/"):
        return None
    return pattern + "/**"


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
    """The provider can be built and has its credentials (no request is sent), and its
    ``store_key`` fits the Provider column."""
    from dicomvec.defaults import PROVIDER_KEY_LENGTH
    from dicomvec.io.providers import create_provider
    provider = create_provider(config)  # unknown name: ValueError
    provider.preflight()
    if not provider.store_key or len(provider.store_key) > PROVIDER_KEY_LENGTH:
        raise PreflightError(f"provider {provider.name!r}: its store key {provider.store_key!r} "
                             f"must be 1 to {PROVIDER_KEY_LENGTH} characters (build it with "
                             "store_key_for)")


def announce_destination(config, sends: str) -> None:
    """Once every check has passed: when ``sends`` (what of the archive the command sends
    through the provider: "image pixels", "report texts"; '' for nothing, e.g. a text query)
    goes to a hosted third-party service, print the privacy notice on stderr (not an error,
    no prompt). Nothing is printed for a local model or a self-hosted NIM."""
    import sys

    from dicomvec.io.providers import create_provider
    from dicomvec.io.providers.privacy import third_party_notice
    notice = third_party_notice(create_provider(config), sends)
    if notice:
        print(notice, file=sys.stderr, flush=True)


def check_runner(options) -> None:
    """``--runner`` names a runner Beam knows (a short name such as ``FlinkRunner``, with or
    without ``Runner``, or a dotted class path); a misspelled one gets a suggestion."""
    from apache_beam.options.pipeline_options import StandardOptions
    runner = options.view_as(StandardOptions).runner
    if not runner or "." in runner:
        return
    known = list(StandardOptions.KNOWN_RUNNER_NAMES)
    lowered = {name.lower(): name for name in known}
    name = runner.lower()
    if name in lowered or name + "runner" in lowered or name == "pythonrpcdirectrunner":
        return
    import difflib
    close = difflib.get_close_matches(name, list(lowered), n=1, cutoff=0.75)
    hint = f" (did you mean {lowered[close[0]]}?)" if close else ""
    raise PreflightError(f"unknown --runner {runner}{hint}; Beam knows {', '.join(known)} or "
                         "the dotted name of a PipelineRunner class")


#: seconds to wait for ``--job_endpoint`` to answer before the job is refused
JOB_ENDPOINT_TIMEOUT_S = 5.0


def check_job_endpoint(options, timeout: Optional[float] = None) -> None:
    """``--job_endpoint HOST:PORT`` (a Beam job service, e.g. Flink's job server) answers: a
    gRPC connection is ready within ``timeout`` seconds. Without the check a wrong address
    leaves the driver waiting silently for minutes. ``embed`` (in-process) is not checked."""
    from apache_beam.options.pipeline_options import PortableOptions
    endpoint = options.view_as(PortableOptions).job_endpoint
    if not endpoint or endpoint == "embed":
        return
    import grpc
    timeout = JOB_ENDPOINT_TIMEOUT_S if timeout is None else timeout
    channel = grpc.insecure_channel(endpoint)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise PreflightError(f"no Beam job service answers at --job_endpoint {endpoint} (waited "
                             f"{timeout:g} s): start the job server there, or fix the "
                             "address") from None
    finally:
        channel.close()


def check_job(options, input_pattern: bool = True, sink_must_exist: bool = False,
              dead_letters: bool = True, require_match: bool = True,
              sends: str = "image pixels") -> Optional[str]:
    """Every check for a job over ``options`` (``DicomvecOptions``), cheapest first; returns the
    input pattern to use (None when ``input_pattern`` is False). ``sends``: what the job sends
    to its provider (for ``announce_destination``'s privacy notice)."""
    used = resolve_input(options.input, require_match=require_match) if input_pattern else None
    check_runner(options)
    check_provider(options.provider_config())
    check_job_endpoint(options)
    if dead_letters:
        check_dead_letter_folder(options.dead_letter)
    # the sink: its dialect's check (SQLite: the file; servers: a login); a bad URL: ValueError
    options.sink_config().images().dialect.check_reachable(sink_must_exist)
    from dicomvec.pipeline.job_monitor import flink_cluster_problem
    problem = flink_cluster_problem(options)
    if problem:
        raise PreflightError(problem)
    announce_destination(options.provider_config(), sends)
    return used
