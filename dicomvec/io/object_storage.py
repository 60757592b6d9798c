"""Object storage (``s3://``) around Beam's own S3 filesystem.

Listing, full reads (decode) and writes (dead letters) go through ``FileSystems`` and Beam's S3
filesystem (``apache-beam[aws]``, boto3) with Beam's S3 options (``--s3_endpoint_url``,
``--s3_region_name``, ...; credentials from the environment as boto3 finds them). This module
adds what Beam's filesystem does not give:

* ``HeaderReader``: the identify stage's header read as **bounded** ranged GETs. Beam's S3
  downloader asks for ``Range: bytes=<start>-`` (open-ended) behind a 16 MB read buffer, so a
  64 KB header read pulls the whole ~15 MB object. Here an ``s3://`` file opens as Beam's
  ``filesystemio.DownloaderStream`` over a downloader that fetches ``bytes=<start>-<end>`` in
  ``HEAD_BYTES`` blocks (the object's size comes from the match, so no HEAD request either).
  Other schemes open through ``ReadableFile.open()`` as before.
* ``match_input``: ``FileSystems.match`` for ``--input``, preceded for ``s3://`` by one
  ListObjectsV2 of the pattern's bucket and prefix that turns storage failures into one plain
  line (``ObjectStorageError``): no credentials, credentials refused, access denied, missing
  bucket, unreachable endpoint. (Beam's listing retries refused requests for minutes, then
  raises a nested ``BeamIOError``; it reports a missing bucket as an empty match.)

* ``ObjectReader``: decode's full read through Beam's own S3 reader, but on one S3 client per
  DoFn instance instead of a new boto3 client per file.

In: Beam ``PipelineOptions`` (their ``S3Options`` view) and paths. Out: streams, file metadata
or a one-line error.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
from typing import Dict, Iterator, List, Optional

import apache_beam as beam
from apache_beam.io import filesystemio
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from dicomvec.imaging.reading import HEAD_BYTES
from dicomvec.io.remote import (EMULATOR_VARIABLE, GCS_OPTION_NAMES, ObjectFetcher,
                                RangeDownloader, is_gcs, is_remote, use_gcs_emulator)

#: Beam's ``S3Options`` flags, passed on as a plain dict (Beam's boto3 client accepts one)
S3_OPTION_NAMES = ("s3_access_key_id", "s3_secret_access_key", "s3_session_token",
                   "s3_endpoint_url", "s3_region_name", "s3_api_version", "s3_verify",
                   "s3_disable_ssl")
_S3_PATH = re.compile(r"^s3://([^/]+)/?(.*)$")
_REFUSED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
            "InvalidClientTokenId", "AuthorizationHeaderMalformed"}


class ObjectStorageError(ValueError):
    """The bucket cannot be used (credentials, bucket, endpoint): a user error, one line."""


def is_s3(path: Optional[str]) -> bool:
    return bool(path) and path.startswith("s3://")


def split_s3(path: str):
    """``s3://bucket/key/prefix`` → ``("bucket", "key/prefix")``."""
    match = _S3_PATH.match(path)
    if not match or not match.group(1):
        raise ObjectStorageError(f"not an S3 path (s3://BUCKET/KEY): {path!r}")
    return match.group(1), match.group(2)


def s3_settings(options) -> Dict[str, object]:
    """Beam's S3 options of ``options`` (any ``PipelineOptions`` view) as a dict."""
    from apache_beam.options.pipeline_options import S3Options
    s3 = options.view_as(S3Options)
    return {name: getattr(s3, name, None) for name in S3_OPTION_NAMES}


def storage_settings(options) -> Dict[str, object]:
    """What a worker needs to build the same storage clients as the driver: Beam's S3 options
    and the GCP options of Beam's GCS client (``--project``, ...), as one dict."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    gcp = options.view_as(GoogleCloudOptions)
    # dicomvec's --gcs_emulator_host, read by name: io/ does not import the pipeline's options
    emulator = (options.get_all_options().get("gcs_emulator_host")
                or os.environ.get(EMULATOR_VARIABLE) or None)
    return {**s3_settings(options),
            **{name: getattr(gcp, name, None) for name in GCS_OPTION_NAMES},
            "gcs_emulator_host": emulator}


class UseStorageSettings(beam.DoFn):
    """Passes its elements on; in ``setup`` (before anything of its stage runs in the worker
    process) it applies the storage settings Beam's own filesystems read from the environment
    (``--gcs_emulator_host`` → ``STORAGE_EMULATOR_HOST``), so Beam's ``MatchAll`` on a worker
    lists the same GCS-API server as the driver."""

    def __init__(self, settings: Dict[str, object]):
        self.settings = settings

    def setup(self):
        use_gcs_emulator(self.settings)

    def process(self, element):
        yield element


def beam_s3_client(settings: Dict[str, object]):
    """Beam's own S3 client object (``boto3_client.Client``) for these S3 options."""
    try:
        from apache_beam.io.aws.clients.s3 import boto3_client
        return boto3_client.Client(options=settings)
    except (ImportError, AssertionError):
        raise ObjectStorageError("s3:// paths need Beam's AWS extra: "
                                 "pip install 'dicomvec[aws]' (apache-beam[aws])") from None


def s3_client(settings: Dict[str, object]):
    """A boto3 S3 client built the way Beam's S3 filesystem builds its own."""
    return beam_s3_client(settings).client


# --------------------------------------------------------------------------- errors


def _static_prefix(key_pattern: str) -> str:
    """The part of a key pattern before its first wildcard (what Beam lists)."""
    cut = min((i for i in (key_pattern.find(c) for c in "*?[") if i >= 0),
              default=len(key_pattern))
    return key_pattern[:cut]


def describe_s3_problem(path: str, settings: Dict[str, object]) -> Optional[str]:
    """One ListObjectsV2 of ``path``'s bucket and static prefix: a one-line reason why the
    bucket cannot be read, or None when it can."""
    from botocore.exceptions import (BotoCoreError, ClientError, EndpointConnectionError,
                                     NoCredentialsError)
    bucket, key = split_s3(path)
    endpoint = settings.get("s3_endpoint_url") or "AWS S3"
    where = f"s3://{bucket}"
    try:
        s3_client(settings).list_objects_v2(Bucket=bucket, Prefix=_static_prefix(key),
                                            MaxKeys=1)
    except NoCredentialsError:
        return (f"no AWS credentials to read {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or an instance role) in the "
                "environment")
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket" or status == 404:
            return f"S3 bucket {bucket!r} does not exist (at {endpoint})"
        if code in _REFUSED:
            return (f"{endpoint} refused the AWS credentials for {where} ({code}): check "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
        if code == "AccessDenied" or status == 403:
            return (f"access denied to {where} (AccessDenied): the credentials need "
                    "s3:ListBucket and s3:GetObject on it")
        return f"cannot list {where} at {endpoint}: {code or status}"
    except EndpointConnectionError:
        return f"cannot reach the S3 endpoint {endpoint}: check --s3_endpoint_url"
    except BotoCoreError as exc:
        return f"cannot list {where} at {endpoint}: {type(exc).__name__}: {exc}"
    return None


def match_input(pattern: str, options) -> List:
    """``FileSystems.match`` of one pattern → its ``FileMetadata`` list (possibly empty).

    For ``s3://`` the bucket is checked first with one ListObjectsV2 (Beam's own listing
    retries a refused request with exponential backoff for minutes before it gives up, and
    reports a missing bucket as no files). Raises ``ObjectStorageError`` (one line) when the
    storage cannot be read."""
    problem = None
    if is_s3(pattern):
        problem = describe_s3_problem(pattern, s3_settings(options))
    elif is_gcs(pattern):
        from dicomvec.io.gcs import describe_gcs_problem
        problem = describe_gcs_problem(pattern, storage_settings(options))
    if problem:
        raise ObjectStorageError(problem)
    try:
        return FileSystems.match([pattern])[0].metadata_list
    except BeamIOError as exc:
        raise ObjectStorageError(f"cannot list --input {pattern!r}: "
                                 f"{str(exc).splitlines()[0][:300]}") from None


def check_s3_paths(paths, options) -> None:
    """One ListObjectsV2 per distinct bucket among the ``s3://`` paths (files or folders);
    raises ``ObjectStorageError`` (one line) for the first bucket that cannot be read. For
    commands that read listed paths (reprocess, search --image), where Beam would otherwise
    retry a refused request for minutes."""
    buckets = sorted({split_s3(path)[0] for path in paths if is_s3(path)})
    settings = s3_settings(options) if buckets else {}
    for bucket in buckets:
        problem = describe_s3_problem(f"s3://{bucket}/", settings)
        if problem:
            raise ObjectStorageError(problem)
    gcs_buckets = sorted({path[5:].split("/", 1)[0] for path in paths if is_gcs(path)})
    if gcs_buckets:
        from dicomvec.io.gcs import describe_gcs_problem
        for bucket in gcs_buckets:
            problem = describe_gcs_problem(f"gs://{bucket}/", storage_settings(options))
            if problem:
                raise ObjectStorageError(problem)


#: Beam S3 option → the environment variable boto3 reads the same setting from
_ENVIRONMENT = {"s3_endpoint_url": "AWS_ENDPOINT_URL_S3", "s3_region_name": "AWS_DEFAULT_REGION",
                "s3_access_key_id": "AWS_ACCESS_KEY_ID",
                "s3_secret_access_key": "AWS_SECRET_ACCESS_KEY",
                "s3_session_token": "AWS_SESSION_TOKEN"}


@contextlib.contextmanager
def worker_environment(options) -> Iterator[None]:
    """While a job runs, also hand Beam's S3 options to locally started worker processes
    through the environment variables boto3 reads (variables already set win). The local
    engine's worker processes (``--direct_num_workers`` > 1) start with no pipeline options,
    so Beam's own S3 steps there (``MatchFiles``, dead-letter writes) would use AWS's default
    endpoint; portable runners (Flink, Prism) provision the options themselves."""
    settings = s3_settings(options)
    added = {variable: str(settings[name]) for name, variable in _ENVIRONMENT.items()
             if settings.get(name) and variable not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for variable in added:
            os.environ.pop(variable, None)


# --------------------------------------------------------------------------- header reads


class HeaderReader:
    """Opens matched files for a header read: ``s3://`` and ``gs://`` as bounded ranged GETs of
    ``buffer_size`` bytes (``remote.RangeDownloader`` on one ``ObjectFetcher``, whose clients
    are shared by ``connections`` threads), anything else via ``ReadableFile.open()``. Create
    one per DoFn instance (in ``setup``)."""

    def __init__(self, settings: Optional[Dict[str, object]] = None,
                 buffer_size: int = HEAD_BYTES, connections: int = 1):
        self.settings = dict(settings or {})
        self.buffer_size = buffer_size
        self.fetcher = ObjectFetcher(self.settings, connections=connections)

    def open(self, readable_file):
        """A binary, seekable stream positioned at the start of the file."""
        metadata = readable_file.metadata
        if not is_remote(metadata.path):
            return readable_file.open()
        return self.open_prefetched(metadata.path, metadata.size_in_bytes, b"")

    def open_s3(self, path: str, size: int):
        return self.open_prefetched(path, size, b"")

    def open_prefetched(self, path: str, size: int, prefix: bytes):
        """A stream over the object whose first bytes (``prefix``) are already fetched; reads
        past them are bounded ranged GETs."""
        stream = filesystemio.DownloaderStream(RangeDownloader(self.fetcher, path, size, prefix))
        return io.BufferedReader(stream, buffer_size=self.buffer_size)


# --------------------------------------------------------------------------- whole-file reads


class ObjectReader:
    """Opens a file for a full read (decode). ``s3://``: Beam's own S3 reader
    (``s3io.S3IO(...).open``: HEAD, then one open-ended GET behind a 16 MB buffer) on ONE Beam
    S3 client kept for the reader's life; ``FileSystems.open`` builds a new boto3 session and
    client for every file, ~120 ms of CPU each (``benchmarks/s3_bytes.py``), more than the
    whole decode of a MIMIC image. Other schemes (and no settings): ``FileSystems.open``.
    Create one per DoFn instance (not shared between threads)."""

    def __init__(self, settings: Optional[Dict[str, object]] = None):
        self.settings = None if settings is None else dict(settings)
        self._client = None

    def open(self, path: str):
        if not is_s3(path) or self.settings is None:
            return FileSystems.open(path)
        from apache_beam.io.aws import s3io
        if self._client is None:
            self._client = beam_s3_client(self.settings)
        return s3io.S3IO(client=self._client).open(path, "rb")
