"""Decode → normalize → resize: three stages over the one record type (each step's work on a
record is ``dicomvec.imaging.record_steps``, which a search's query image runs too).

- ``DecodePixels``: reads the file's pixel data once (reduced resolution when the target is much
  smaller) → ``record.header`` (tags only) and ``record.decoded`` (raw stored values).
- ``NormalizePixels``: modality LUT → VOI → MONOCHROME1 inversion → robust fallback (or the
  MIMIC-CXR-JPG recipe) → ``record.pixels`` (uint8).
- ``ResizeAndEncode``: fit inside S×S, pad, encode once → ``record.encoded``/``mime``; the heavy
  fields are dropped so only the small encoded image travels on to batching.
"""
from __future__ import annotations

import dataclasses
import functools
import logging

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from dicomvec import counters as C
from dicomvec import imaging
from dicomvec.imaging import record_steps
from dicomvec.io.heap import limit_heap_growth
from dicomvec.io.object_storage import ObjectReader
from dicomvec.io.prefetch import ReadAhead, thread_pool
from dicomvec.io.remote import ObjectFetcher, ObjectReadError, is_remote
from dicomvec.record import ImageRecord
from dicomvec.transforms.dedupe import copy_failure, decode_first_copy, report_unused_copies
from dicomvec.transforms.stage import FAILED, RecordStage, counter

log = logging.getLogger(__name__)
#: ranged reads in flight per DecodePixels instance (two MIMIC objects of four ranges each)
PART_THREADS = 8


class DecodePixels(RecordStage):
    """Decodes the record's file; when it fails and the record carries ``alternates`` (other
    files with the same ImageID), the next copy is tried: the first copy that decodes goes on,
    each copy that failed is dead-lettered with its own reason, untried copies are counted as
    duplicates. ``storage_settings``: Beam's storage options as a dict
    (``object_storage.storage_settings``): ``s3://`` and ``gs://`` objects are then read whole
    in ONE GET on one client per DoFn instance (``remote.ObjectFetcher``). ``read_ahead``:
    (objects, bytes) of the read-ahead window: the next objects of the bundle are fetched on a
    thread pool while this one is decoded (``dicomvec.io.prefetch``). A failed object read is
    the copy's ``read`` dead letter (``retryable`` when the storage error is transient). Local
    files are read as before, in the calling thread."""

    stage = "decode"

    def __init__(self, image_size: int, storage_settings=None, read_ahead=(1, 0)):
        super().__init__()
        self.image_size = image_size
        self.storage_settings = storage_settings
        self.read_ahead = tuple(read_ahead)
        self.reader = None
        self.fetcher = None
        self.pool = None
        self.window = None
        self.duplicates = counter(C.DUPLICATE_FILES, scope="decode")
        self.read_failed = counter(C.IMAGES.failed("read"), scope="decode")

    def setup(self):
        objects, _ = self.read_ahead
        if self.storage_settings is not None:
            # objects > 1: each MIMIC-size object also in parallel ranges (remote.PART_BYTES)
            self.fetcher = ObjectFetcher(self.storage_settings, connections=objects,
                                         part_threads=PART_THREADS if objects > 1 else 0)
        self.pool = thread_pool(objects) if objects > 1 and self.fetcher else None
        if self.fetcher is not None:  # whole objects in memory: give freed ones back at once
            limit_heap_growth()

    def start_bundle(self):
        objects, max_bytes = self.read_ahead
        self.window = ReadAhead(self.pool, objects, max_bytes) if self.pool else None

    def teardown(self):
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        if self.fetcher is not None:
            self.fetcher.close()

    def process(self, record: ImageRecord, timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam):
        if self.window is None or not is_remote(record.path):
            yield from self._decode(record, None)
            return
        objects, max_bytes = self.read_ahead
        cost = record.size_bytes or max_bytes // objects
        fetch = functools.partial(self.fetcher.whole, record.path, record.size_bytes)
        for outcome in self.window.push((record, timestamp, window), fetch, cost):
            yield from self._windowed(outcome)

    def finish_bundle(self):
        if self.window is None:
            return
        for outcome in self.window.drain():
            yield from self._windowed(outcome)

    def _windowed(self, outcome):
        """``outcome``: the window's ``[item, data, error]``; its bytes are handed on in a
        one-use holder, so nothing here keeps them alive once they are parsed."""
        (record, timestamp, window), prefetched = outcome[0], outcome[1:]
        outcome[1] = None
        for output in self._decode(record, prefetched):
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(
                    output.tag, WindowedValue(output.value, timestamp, (window,)))
            else:
                yield WindowedValue(output, timestamp, (window,))

    def _decode(self, record: ImageRecord, prefetched):
        """``prefetched``: ``[bytes, exception]`` of ``record``'s own file when the read-ahead
        fetched it (a holder: the bytes are taken out of it, so they are freed as soon as they
        are parsed, ~15 MB sooner per MIMIC object); its alternates (if needed) are read on
        demand."""

        def decode(copy: ImageRecord) -> ImageRecord:
            if prefetched is not None and copy.path == record.path:
                if prefetched[1] is not None:
                    raise prefetched[1]
                dataset = imaging.read_dataset(_take(prefetched))
                return self._decoded(copy, dataset)
            return self.process_record(copy)

        decoded, failed = decode_first_copy(record, decode)
        used = decoded.path if decoded is not None else ""
        for copy, exc in failed:
            stage = "read" if isinstance(exc, ObjectReadError) else self.stage
            (self.read_failed if stage == "read" else self.failed).inc()
            log.warning("%s failed for %s: %s: %s%s", stage, copy.path, type(exc).__name__,
                        exc, f" (using its copy {used})" if used else "")
            failure = copy_failure(copy, stage, exc, used)
            if getattr(exc, "retryable", False):
                failure = dataclasses.replace(failure, retryable=True)
            yield beam.pvalue.TaggedOutput(FAILED, failure)
        if decoded is None:
            return
        self.ok.inc()
        report_unused_copies(self.duplicates, decoded)
        yield decoded.evolve(alternates=())

    def process_record(self, record: ImageRecord) -> ImageRecord:
        """Read (in this thread) and decode one file."""
        if is_remote(record.path) and self.storage_settings is not None:
            if self.fetcher is None:  # lazily (search calls this without setup)
                self.fetcher = ObjectFetcher(self.storage_settings)
            holder = [self.fetcher.whole(record.path)]
            return self._decoded(record, imaging.read_dataset(_take(holder)))
        if self.reader is None:
            self.reader = ObjectReader(None)
        with self.reader.open(record.path) as stream:
            dataset = imaging.read_dataset(stream)
        return self._decoded(record, dataset)

    def decode_bytes(self, record: ImageRecord, data: bytes) -> ImageRecord:
        return self._decoded(record, imaging.read_dataset(data))

    def _decoded(self, record: ImageRecord, dataset) -> ImageRecord:
        return record_steps.decode(record, dataset, self.image_size)


def _take(holder):
    """The holder's first item, cleared from it (the caller's reference is the last one)."""
    data, holder[0] = holder[0], None
    return data


class NormalizePixels(RecordStage):
    stage = "normalize"

    def __init__(self, method: str):
        super().__init__()
        self.method = method

    def process_record(self, record: ImageRecord) -> ImageRecord:
        return record_steps.normalize(record, self.method)


class ResizeAndEncode(RecordStage):
    stage = "resize"

    def __init__(self, image_size: int, image_format: str):
        super().__init__()
        self.image_size = image_size
        self.image_format = image_format

    def process_record(self, record: ImageRecord) -> ImageRecord:
        return record_steps.resize_and_encode(record, self.image_size, self.image_format)
