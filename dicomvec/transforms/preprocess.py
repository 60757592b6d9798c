"""Decode → normalize → resize: three stages over the one record type.

- ``DecodePixels``: reads the file's pixel data once (reduced resolution when the target is much
  smaller) → ``record.header`` (tags only) and ``record.decoded`` (raw stored values).
- ``NormalizePixels``: modality LUT → VOI → MONOCHROME1 inversion → robust fallback (or the
  MIMIC-CXR-JPG recipe) → ``record.pixels`` (uint8).
- ``ResizeAndEncode``: fit inside S×S, pad, encode once → ``record.encoded``/``mime``; the heavy
  fields are dropped so only the small encoded image travels on to batching.
"""
from __future__ import annotations

import logging

import apache_beam as beam

from dicomvec import counters as C
from dicomvec import imaging
from dicomvec.io.object_storage import ObjectReader
from dicomvec.record import ImageRecord
from dicomvec.transforms.dedupe import copy_failure, decode_first_copy, report_unused_copies
from dicomvec.transforms.stage import FAILED, RecordStage, counter

log = logging.getLogger(__name__)


class DecodePixels(RecordStage):
    """Decodes the record's file; when it fails and the record carries ``alternates`` (other
    files with the same ImageID), the next copy is tried: the first copy that decodes goes on,
    each copy that failed is dead-lettered with its own reason, untried copies are counted as
    duplicates. ``storage_settings``: Beam's S3 options as a dict
    (``object_storage.s3_settings``), so ``s3://`` files are read on one S3 client per DoFn
    instance."""

    stage = "decode"

    def __init__(self, image_size: int, storage_settings=None):
        super().__init__()
        self.image_size = image_size
        self.storage_settings = storage_settings
        self.reader = None
        self.duplicates = counter(C.DUPLICATE_FILES)

    def process(self, record: ImageRecord):
        decoded, failed = decode_first_copy(record, self.process_record)
        used = decoded.path if decoded is not None else ""
        for copy, exc in failed:
            self.failed.inc()
            log.warning("decode failed for %s: %s: %s%s", copy.path, type(exc).__name__, exc,
                        f" (using its copy {used})" if used else "")
            yield beam.pvalue.TaggedOutput(FAILED, copy_failure(copy, self.stage, exc, used))
        if decoded is None:
            return
        self.ok.inc()
        report_unused_copies(self.duplicates, decoded)
        yield decoded.evolve(alternates=())

    def process_record(self, record: ImageRecord) -> ImageRecord:
        if self.reader is None:  # lazily, on the worker (search calls this without setup)
            self.reader = ObjectReader(self.storage_settings)
        with self.reader.open(record.path) as stream:
            dataset = imaging.read_dataset(stream)
        decoded = imaging.decode_pixels(dataset, self.image_size)
        if "PixelData" in dataset:
            del dataset.PixelData  # keep the tags, free the compressed/native bytes
        return record.evolve(header=dataset, decoded=decoded)


class NormalizePixels(RecordStage):
    stage = "normalize"

    def __init__(self, method: str):
        super().__init__()
        self.method = method

    def process_record(self, record: ImageRecord) -> ImageRecord:
        gray = imaging.normalize_pixels(record.header, record.decoded, self.method)
        return record.evolve(pixels=gray, decoded=None)


class ResizeAndEncode(RecordStage):
    stage = "resize"

    def __init__(self, image_size: int, image_format: str):
        super().__init__()
        self.image_size = image_size
        self.image_format = image_format

    def process_record(self, record: ImageRecord) -> ImageRecord:
        encoded = imaging.fit_and_encode(record.pixels, self.image_size, self.image_format)
        return record.evolve(encoded=encoded.data, mime=encoded.mime, pixels=None, header=None)
