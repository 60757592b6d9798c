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

import logging

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from dicomvec import counters as C
from dicomvec import imaging
from dicomvec.io.files import identify
from dicomvec.io.listing import UnreadablePathError, check_readable, unreadable_reason
from dicomvec.io.object_storage import HeaderReader
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


class IdentifyDicom(beam.DoFn):
    """In: ``fileio.ReadableFile``. Out: ImageRecord, or Failure on tag ``failed``.
    ``storage_settings``: Beam's S3 options as a dict (``object_storage.s3_settings``)."""

    def __init__(self, storage_settings=None):
        super().__init__()
        self.storage_settings = storage_settings
        self.matched = counter(C.MATCHED)
        self.read_failed = counter(C.IMAGES.failed("read"))
        self.header_failed = counter(C.IMAGES.failed("decode"))

    def setup(self):
        self.reader = HeaderReader(self.storage_settings)

    def process(self, readable_file):
        path = readable_file.metadata.path
        self.matched.inc()
        placeholder = ImageRecord(path=path)
        try:
            check_readable(path)  # before open(): a FIFO would block it forever
            stream = self.reader.open(readable_file)
        except Exception as exc:
            self.read_failed.inc()
            log.warning("cannot read %s: %s: %s", path, type(exc).__name__, exc)
            yield beam.pvalue.TaggedOutput(FAILED, Failure.from_exception(placeholder, "read", exc))
            return
        try:
            with stream:
                header = imaging.read_dataset(stream, stop_before_pixels=True)
            yield identify(path, header)
        except OSError as exc:
            self.read_failed.inc()
            yield beam.pvalue.TaggedOutput(FAILED, Failure.from_exception(placeholder, "read", exc))
        except Exception as exc:
            self.header_failed.inc()
            log.warning("cannot read DICOM header of %s: %s", path, exc)
            yield beam.pvalue.TaggedOutput(FAILED,
                                           Failure.from_exception(placeholder, "decode", exc))
