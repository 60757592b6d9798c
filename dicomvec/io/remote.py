"""Byte reads from object storage (``s3://``, ``gs://``) on one thread-safe client per scheme.

``ObjectFetcher`` is what the read-ahead (``dicomvec.io.prefetch``) runs in its threads and what
the header reader uses for bounded reads:

* ``range(path, start, end)``: ``GET`` of ``bytes=start-(end-1)`` (S3: ``get_object`` with a
  ``Range``; GCS: ``Blob.download_as_bytes(start, end)``) — never an open-ended download;
* ``whole(path)``: the whole object in ONE request (no ``HEAD`` first: the size is not needed).

Clients are built the way Beam's own filesystems build theirs, from the same options: S3 from
Beam's ``S3Options`` (a dict, ``object_storage.s3_settings``) with a connection pool as large as
the number of fetch threads; GCS through Beam's ``gcsio.create_storage_client`` (Application
Default Credentials, ``--project``; ``STORAGE_EMULATOR_HOST`` for a GCS-API server such as
fake-gcs-server). One client per scheme is shared by the threads (boto3 clients are thread-safe,
the GCS client's HTTP session too); a new client per file costs ~100 ms of CPU.

Errors become ``ObjectReadError`` (an ``OSError``: a ``read`` dead letter) with ``retryable``
set when the error is transient (5xx, throttling, timeouts, dropped connections) and clear for
missing objects, refused credentials, access denied.
"""
from __future__ import annotations

import concurrent.futures
import os
import threading
from typing import Dict, Optional

from apache_beam.io import filesystemio

#: S3 error codes worth retrying later (the object and the credentials are fine)
_S3_TRANSIENT = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                 "Throttling", "ThrottlingException", "RequestTimeTooSkewed", "503", "500"}


class ObjectReadError(OSError):
    """An object could not be read; ``retryable``: the error is transient."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


def is_gcs(path: Optional[str]) -> bool:
    return bool(path) and path.startswith("gs://")


def is_remote(path: Optional[str]) -> bool:
    """True for the object stores the read-ahead serves (``s3://``, ``gs://``)."""
    return bool(path) and path.startswith(("s3://", "gs://"))


def split_object_path(path: str):
    """``s3://bucket/key`` or ``gs://bucket/name`` → ``("bucket", "key")``."""
    scheme, _, rest = path.partition("://")
    bucket, _, key = rest.partition("/")
    if not bucket or scheme not in ("s3", "gs"):
        raise ObjectReadError(f"not an object path (s3:// or gs://BUCKET/KEY): {path!r}")
    return bucket, key


class ObjectFetcher:
    """Bounded and whole-object reads for ``s3://`` and ``gs://`` paths; thread-safe.
    ``settings``: Beam's S3 options as a dict plus ``project`` (GCS), as
    ``object_storage.storage_settings`` makes them. ``connections``: HTTP connections to keep
    per client (the number of threads that share it)."""

    def __init__(self, settings: Optional[Dict[str, object]] = None, connections: int = 10,
                 part_threads: int = 0):
        self.settings = dict(settings or {})
        self.part_threads = max(0, part_threads)
        self.connections = max(1, connections) + self.part_threads
        self._lock = threading.Lock()
        self._s3 = None
        self._gcs = None
        self._parts = None

    # ---- clients (built once, lazily, on the worker)

    def s3(self):
        with self._lock:
            if self._s3 is None:
                self._s3 = _s3_client(self.settings, self.connections)
            return self._s3

    def gcs(self):
        with self._lock:
            if self._gcs is None:
                self._gcs = _gcs_client(self.settings, self.connections)
            return self._gcs

    # ---- reads

    def range(self, path: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object (fewer when it is shorter)."""
        if start >= end:
            return b""
        return self._read(path, start, end)

    def whole(self, path: str, size: Optional[int] = None):
        """The whole object. With ``part_threads`` and the object's (listed) ``size`` of at
        least two ``PART_BYTES``: in up to ``MAX_PARTS`` ranged GETs at once, each written into
        its slice of ONE buffer of ``size`` bytes (the last range open-ended: an object that
        changed size since the listing is then read again in one GET). Otherwise one GET."""
        if not self.part_threads or not size or size < 2 * PART_BYTES:
            return self._read(path, None, None)
        count = min(MAX_PARTS, -(-size // PART_BYTES))
        step = -(-size // count)
        buffer = bytearray(size)
        view = memoryview(buffer)
        bounds = [(start, min(size, start + step)) for start in range(0, size, step)]
        pool = self._part_pool()
        futures = [pool.submit(self._read, path, start, end if end < size else None,
                               view[start:end]) for start, end in bounds]
        try:
            filled = [future.result() for future in futures]
        except _Overflow:
            filled = None
        except BaseException:
            for future in futures:
                future.cancel()
            concurrent.futures.wait(futures)  # no thread writes into the buffer after this
            raise
        if filled != [end - start for start, end in bounds]:
            concurrent.futures.wait(futures)
            return self._read(path, None, None)  # the object changed since the listing
        return buffer

    def _part_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._parts is None:
                self._parts = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.part_threads, thread_name_prefix="dicomvec-range-read")
            return self._parts

    def close(self) -> None:
        if self._parts is not None:
            self._parts.shutdown(wait=False, cancel_futures=True)

    def _read(self, path: str, start: Optional[int], end: Optional[int], out=None):
        """Bytes ``[start, end)`` (``end`` None: to the object's end; both None: all of it);
        with ``out`` (a writable memoryview) they are written into it and their count
        returned (``_Overflow`` when the object has more than fits)."""
        bucket, key = split_object_path(path)
        if is_gcs(path):
            return self._read_gcs(path, bucket, key, start, end, out)
        return self._read_s3(path, bucket, key, start, end, out)

    def _read_s3(self, path, bucket, key, start, end, out=None):
        from botocore.exceptions import (BotoCoreError, ClientError, ConnectionError as
                                         BotoConnectionError, ReadTimeoutError)
        extra = {} if start is None else {
            "Range": f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"}
        try:
            response = self.s3().get_object(Bucket=bucket, Key=key, **extra)
            if out is not None:
                return _read_into(response["Body"], out)
            return _read_body(response["Body"], response.get("ContentLength"))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if code == "InvalidRange":  # an empty object
                return b""
            raise ObjectReadError(f"cannot read {path}: {code or status}",
                                  retryable=code in _S3_TRANSIENT or status >= 500) from None
        except (BotoConnectionError, ReadTimeoutError) as exc:
            raise ObjectReadError(f"cannot read {path}: {type(exc).__name__}: {exc}",
                                  retryable=True) from None
        except BotoCoreError as exc:
            raise ObjectReadError(f"cannot read {path}: {type(exc).__name__}: {exc}",
                                  retryable=_transient_connection_error(exc)) from None
        except (OSError, ValueError) as exc:  # the body's stream broke mid-read
            raise ObjectReadError(f"cannot read {path}: {type(exc).__name__}: {exc}",
                                  retryable=True) from None

    def _read_gcs(self, path, bucket, name, start, end, out=None):
        from google.api_core import exceptions as gexc
        import requests
        blob = self.gcs().bucket(bucket).blob(name)
        try:
            if out is not None:
                writer = _ViewWriter(out)
                blob.download_to_file(writer, start=start, end=None if end is None else end - 1,
                                      raw_download=True, checksum=None)
                return writer.filled
            if start is None:
                return blob.download_as_bytes(raw_download=True)
            return blob.download_as_bytes(start=start, end=end - 1, raw_download=True,
                                          checksum=None)
        except gexc.RequestRangeNotSatisfiable:  # an empty object
            return b""
        except gexc.GoogleAPICallError as exc:
            status = getattr(exc, "code", None) or 0
            transient = (isinstance(exc, (gexc.ServerError, gexc.TooManyRequests))
                         or int(status) in (408, 429) or int(status) >= 500)
            raise ObjectReadError(f"cannot read {path}: HTTP {status} "
                                  f"{type(exc).__name__}", retryable=transient) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ObjectReadError(f"cannot read {path}: {type(exc).__name__}",
                                  retryable=True) from None
        except Exception as exc:  # google.auth refresh errors and the like
            from google.auth import exceptions as aexc
            if isinstance(exc, aexc.GoogleAuthError):
                raise ObjectReadError(f"cannot read {path}: Google credentials: "
                                      f"{type(exc).__name__}", retryable=False) from None
            raise


#: pieces a whole-object body is read in (see ``_read_body``)
_PIECE = 256 << 10
#: whole objects of at least 2 × PART_BYTES are read in up to MAX_PARTS ranged GETs at once
#: (``ObjectFetcher.whole``): a MIMIC object (~15 MB) in 4 ranges of ~3.9 MB. A connection
#: carries ~85-90 MB/s (S3's guidance), so a ranged read brings one object in ~1/4 of the time
#: and the read-ahead needs fewer objects in memory for the same rate
PART_BYTES = 4 << 20
MAX_PARTS = 4


class _Overflow(Exception):
    """The object has more bytes than its listed size (it changed since the listing)."""


class _ViewWriter:
    """A write-only file over a memoryview (GCS ``download_to_file`` target)."""

    def __init__(self, out: memoryview):
        self.out = out
        self.filled = 0

    def write(self, data) -> int:
        end = self.filled + len(data)
        if end > len(self.out):
            raise _Overflow()
        self.out[self.filled:end] = data
        self.filled = end
        return len(data)


#: pieces a ranged part is read in: small, as up to ``part_threads`` parts arrive at once
_PART_PIECE = 64 << 10


def _read_into(body, out: memoryview) -> int:
    """Read the response body into ``out``; its byte count (``_Overflow`` past the end)."""
    filled = 0
    while True:
        piece = body.read(_PART_PIECE)
        if not piece:
            return filled
        end = filled + len(piece)
        if end > len(out):
            body.close()
            raise _Overflow()
        out[filled:end] = piece
        filled = end


def _read_body(body, length: Optional[int]):
    """The response body in one buffer of exactly its length: read in 256 KB pieces into a
    ``bytearray`` allocated once, instead of ``read()``, which joins the pieces at the end and
    so holds every object twice for a moment (with several fetches in flight, tens of MB)."""
    if not length:
        return body.read()
    buffer = bytearray(length)
    view = memoryview(buffer)
    filled = 0
    while filled < length:
        piece = body.read(min(_PIECE, length - filled))
        if not piece:
            raise ObjectReadError(f"the connection closed after {filled} of {length} bytes",
                                  retryable=True)
        view[filled:filled + len(piece)] = piece
        filled += len(piece)
    view.release()
    return buffer


def _transient_connection_error(exc) -> bool:
    from botocore.exceptions import (ConnectTimeoutError, EndpointConnectionError,
                                     IncompleteReadError)
    return isinstance(exc, (ConnectTimeoutError, EndpointConnectionError, IncompleteReadError))


def _s3_client(settings: Dict[str, object], connections: int):
    """A boto3 S3 client with the options Beam's ``boto3_client.Client`` uses, plus a pool of
    ``connections`` HTTP connections (boto3's default of 10 would make extra threads wait)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ObjectReadError("s3:// paths need Beam's AWS extra: "
                              "pip install 'dicomvec[aws]' (apache-beam[aws])") from None
    return boto3.session.Session().client(
        service_name="s3", region_name=settings.get("s3_region_name"),
        api_version=settings.get("s3_api_version"),
        use_ssl=not settings.get("s3_disable_ssl", False), verify=settings.get("s3_verify"),
        endpoint_url=settings.get("s3_endpoint_url"),
        aws_access_key_id=settings.get("s3_access_key_id"),
        aws_secret_access_key=settings.get("s3_secret_access_key"),
        aws_session_token=settings.get("s3_session_token"),
        config=Config(max_pool_connections=connections + 2))


#: the variable google-cloud-storage reads a GCS JSON-API server's URL from
EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"


def use_gcs_emulator(settings: Optional[Dict[str, object]]) -> Optional[str]:
    """Set ``STORAGE_EMULATOR_HOST`` in this process from ``settings["gcs_emulator_host"]``
    (the job's ``--gcs_emulator_host``) unless the process has it already (its own value wins,
    as for the S3 variables). Every GCS client built afterwards in this process — ours and Beam's
    filesystem's — talks to that server. Returns the host in effect."""
    host = (settings or {}).get("gcs_emulator_host")
    if host and not os.environ.get(EMULATOR_VARIABLE):
        os.environ[EMULATOR_VARIABLE] = str(host)
    return os.environ.get(EMULATOR_VARIABLE)


def _gcs_client(settings: Dict[str, object], connections: int):
    """Beam's own GCS client (``gcsio.create_storage_client``) for these options, with an HTTP
    connection pool of ``connections``."""
    use_gcs_emulator(settings)
    try:
        from apache_beam.io.gcp import gcsio
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise ObjectReadError("gs:// paths need Beam's GCP extra: "
                              "pip install 'dicomvec[gcp]' (apache-beam[gcp])") from None
    options = PipelineOptions.from_dictionary(
        {k: v for k, v in settings.items() if k in GCS_OPTION_NAMES and v is not None})
    client = gcsio.create_storage_client(options)
    try:
        import requests.adapters
        adapter = requests.adapters.HTTPAdapter(pool_connections=connections + 2,
                                                pool_maxsize=connections + 2)
        client._http.mount("https://", adapter)
        client._http.mount("http://", adapter)
    except AttributeError:  # a client without a requests session: keep its defaults
        pass
    return client


#: Beam's GCP options a worker needs to build the same GCS client as the driver
GCS_OPTION_NAMES = ("project", "impersonate_service_account", "job_name")


class RangeDownloader(filesystemio.Downloader):
    """Beam's ``Downloader`` interface over ``ObjectFetcher.range`` (bounded GETs); ``prefix``:
    the first bytes of the object when already fetched (the read-ahead's header read)."""

    def __init__(self, fetcher: ObjectFetcher, path: str, size: int, prefix: bytes = b""):
        self._fetcher = fetcher
        self._path = path
        self._size = size
        self._prefix = prefix

    @property
    def size(self) -> int:
        return self._size

    def get_range(self, start: int, end: int) -> bytes:
        if end <= len(self._prefix):
            return self._prefix[start:end]
        if start < len(self._prefix):
            return self._prefix[start:] + self._fetcher.range(self._path, len(self._prefix),
                                                              end)
        return self._fetcher.range(self._path, start, end)
