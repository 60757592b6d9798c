"""Identify: a matched file (Beam ``ReadableFile``) → an ``ImageRecord`` with IDs and metadata.

Reads the DICOM header only (``stop_before_pixels``); pixel data is read once, later, by decode.
On ``s3://`` the header read is bounded ranged GETs of 64 KB (``object_storage.HeaderReader``),
not Beam's default whole-object download.
Failures: the path is not a readable regular file (dangling symlink, directory, FIFO — never
opened, a read would block —, vanished, permission denied) → stage ``read``; not DICOM / no
identity → ``decode``. ``ReportUnreadable`` turns matched paths that Beam's listing left out
(``io.listing.paths_the_listing_skips``) into ``read`` dead letters, so every matched path is
counted.
"""
from __future__ import annotations

import functools
import logging

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils.windowed_value import WindowedValue

from dicomvec import counters as C
from dicomvec import imaging
from dicomvec.io.files import identify
from dicomvec.io.listing import (UnreadablePathError, check_readable, is_non_dicom_kind,
                                 unreadable_reason)
from dicomvec.imaging.reading import HEAD_BYTES
from dicomvec.io.object_storage import HeaderReader
from dicomvec.io.prefetch import ReadAhead, thread_pool
from dicomvec.io.remote import is_remote
from dicomvec.record import Failure, ImageRecord
from dicomvec.transforms.stage import FAILED, counter

log = logging.getLogger(__name__)


class MatchPath(beam.DoFn):
    """In: one path (str). Out: its ``FileMetadata``, or a Failure at stage ``read`` when the
    file is gone. Used when the input is a list of files (reprocessing dead letters)."""

    def __init__(self):
        super().__init__()
        self.matched = counter(C.MATCHED)
        self.read_failed = counter(C.IMAGES.failed("read"))

    def unreadable(self, path: str, exc: BaseException):
        """The ``read`` dead letter of a matched ``path`` (counted as matched)."""
        self.matched.inc()
        self.read_failed.inc()
        yield beam.pvalue.TaggedOutput(
            FAILED, Failure.from_exception(ImageRecord(path=path), "read", exc))

    def process(self, path: str):
        try:
            found = FileSystems.match([path])[0].metadata_list
            if not found:
                reason = unreadable_reason(path) or "file not found"
                raise FileNotFoundError(f"{reason}: {path}")
        except Exception as exc:
            yield from self.unreadable(path, exc)
            return
        yield from found


class ReportUnreadable(MatchPath):
    """In: a matched path Beam's listing could not list (a dangling symbolic link, a directory).
    Out: a Failure at stage ``read`` with the reason; counted as matched."""

    def process(self, path: str):
        reason = unreadable_reason(path) or "matched by the pattern but not listed as a file"
        log.warning("cannot read %s: %s", path, reason)
        yield from self.unreadable(path, UnreadablePathError(f"{path}: {reason}"))


def _plainly_not_dicom(stream) -> bool:
    """No ``DICM`` preamble in the first 132 bytes; the stream is put back at its start."""
    head = stream.read(132)
    stream.seek(0)
    return not (len(head) >= 132 and head[128:132] == b"DICM")


class IdentifyDicom(beam.DoFn):
    """In: ``fileio.ReadableFile``. Out: ImageRecord, or Failure on tag ``failed``.
    ``storage_settings``: Beam's storage options as a dict (``object_storage.storage_settings``).
    ``read_ahead``: (objects, bytes) of the read-ahead window for ``s3://`` / ``gs://`` files:
    their first ``HEAD_BYTES`` are fetched on a thread pool while earlier headers are parsed
    (``dicomvec.io.prefetch``); a header longer than that continues with bounded ranged reads.
    Local files are read as before, in the calling thread.
    ``ignore_non_dicom`` (the input is a folder: "the DICOM files in it"): a file of a known
    non-DICOM kind (``.txt``, ``.csv``, ``.gz``, …; ``io.listing.NON_DICOM_SUFFIXES``) without a
    ``DICM`` preamble is counted as ``not_dicom_ignored``, not dead-lettered; a file without
    extension is read as usual."""

    def __init__(self, storage_settings=None, read_ahead=(1, HEAD_BYTES),
                 ignore_non_dicom: bool = False):
        super().__init__()
        self.storage_settings = storage_settings
        self.read_ahead = tuple(read_ahead)
        self.ignore_non_dicom = ignore_non_dicom
        self.matched = counter(C.MATCHED)
        # scoped: Identify and Decode run fused in one operator on Flink, and one name there
        # would be one metric (see stage.counter)
        self.read_failed = counter(C.IMAGES.failed("read"), scope="identify")
        self.header_failed = counter(C.IMAGES.failed("decode"), scope="identify")
        self.ignored = counter(C.NOT_DICOM_IGNORED)

    def setup(self):
        objects, _ = self.read_ahead
        self.reader = HeaderReader(self.storage_settings, connections=objects)
        self.pool = thread_pool(objects) if objects > 1 else None

    def start_bundle(self):
        objects, _ = self.read_ahead
        # header reads are small: the window is bounded by count (objects × HEAD_BYTES)
        self.window = (ReadAhead(self.pool, objects, objects * HEAD_BYTES)
                       if self.pool is not None else None)

    def teardown(self):
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def process(self, readable_file, timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam):
        metadata = readable_file.metadata
        self.matched.inc()
        if not hasattr(self, "reader"):  # called without setup (tests, tools)
            self.setup()
            self.start_bundle()
        if self.window is None or not is_remote(metadata.path):
            yield from self._identify(metadata, lambda: self.reader.open(readable_file))
            return
        size = metadata.size_in_bytes
        fetch = functools.partial(self.reader.fetcher.range, metadata.path, 0,
                                  min(size, HEAD_BYTES))
        for item, data, error in self.window.push((metadata, timestamp, window), fetch,
                                                  HEAD_BYTES):
            yield from self._emit(item, data, error)

    def finish_bundle(self):
        if self.window is None:
            return
        for item, data, error in self.window.drain():
            yield from self._emit(item, data, error)

    def _emit(self, item, data, error):
        """The outputs of one element leaving the read-ahead window, with its own windowing."""
        metadata, timestamp, window = item

        def opened():
            if error is not None:
                raise error
            return self.reader.open_prefetched(metadata.path, metadata.size_in_bytes, data)

        for output in self._identify(metadata, opened):
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(
                    output.tag, WindowedValue(output.value, timestamp, (window,)))
            else:
                yield WindowedValue(output, timestamp, (window,))

    def _identify(self, metadata, open_stream):
        path = metadata.path
        placeholder = ImageRecord(path=path)
        try:
            check_readable(path)  # before open(): a FIFO would block it forever
            stream = open_stream()
        except Exception as exc:
            self.read_failed.inc()
            log.warning("cannot read %s: %s: %s", path, type(exc).__name__, exc)
            yield beam.pvalue.TaggedOutput(FAILED, read_failure(placeholder, exc))
            return
        try:
            with stream:
                if (self.ignore_non_dicom and is_non_dicom_kind(path)
                        and _plainly_not_dicom(stream)):
                    self.ignored.inc()
                    log.debug("not DICOM, ignored: %s", path)
                    return
                header = imaging.read_dataset(stream, stop_before_pixels=True)
            yield identify(path, header).evolve(size_bytes=metadata.size_in_bytes or 0)
        except OSError as exc:
            self.read_failed.inc()
            yield beam.pvalue.TaggedOutput(FAILED, read_failure(placeholder, exc))
        except Exception as exc:
            self.header_failed.inc()
            log.warning("cannot read DICOM header of %s: %s", path, exc)
            yield beam.pvalue.TaggedOutput(FAILED,
                                           Failure.from_exception(placeholder, "decode", exc))


def read_failure(record: ImageRecord, exc: BaseException) -> Failure:
    """A ``read`` dead letter; retryable when the storage said the error is transient."""
    return Failure.from_exception(record, "read", exc,
                                  retryable=bool(getattr(exc, "retryable", False)))
