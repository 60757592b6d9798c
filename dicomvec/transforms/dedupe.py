"""Keep one file per ImageID (DICOM identity): copies of an image become one row.

``OnePerImageID``: PCollection[ImageRecord] → PCollection[ImageRecord], one per ImageID. Later
files with the same ImageID are counted (``duplicate_files``) and named in the log.

- Batch: ``GroupByKey`` on ImageID, then the smallest path wins (deterministic across re-runs).
  The shuffle carries metadata only (no pixels yet), and it is a stage boundary, so the heavy
  decode/normalize/resize stage after it runs on every local worker.
- Streaming: a stateful DoFn (``KeepFirstPerImageID``) remembers the first path per ImageID; the
  same path arriving again (an updated file) passes through.
"""
from __future__ import annotations

import logging
from typing import Tuple

import apache_beam as beam
from apache_beam.coders import StrUtf8Coder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from dicomvec.record import ImageRecord
from dicomvec.transforms.stage import counter

log = logging.getLogger(__name__)


def _report_duplicate(duplicates_counter, image_id: str, kept: str, dropped: str) -> None:
    duplicates_counter.inc()
    log.warning("duplicate ImageID %s: %s is the same image as %s; kept one", image_id, dropped,
                kept)


class KeepFirstPerImageID(beam.DoFn):
    """In: (image_id, ImageRecord). Out: the first record per ImageID (keyed state)."""

    FIRST_PATH = ReadModifyWriteStateSpec("first_path", StrUtf8Coder())

    def __init__(self):
        super().__init__()
        self.duplicates = counter("duplicate_files")

    def process(self, element, first_path=beam.DoFn.StateParam(FIRST_PATH)):
        image_id, record = element
        seen = first_path.read()
        if seen is None or seen == record.path:  # first file, or the same file again (updated)
            first_path.write(record.path)
            yield record
            return
        _report_duplicate(self.duplicates, image_id, seen, record.path)


class KeepSmallestPath(beam.DoFn):
    """In: (image_id, [ImageRecord, ...]) from a GroupByKey. Out: the record with the smallest
    path."""

    def __init__(self):
        super().__init__()
        self.duplicates = counter("duplicate_files")

    def process(self, element):
        image_id, records = element
        ordered = sorted(records, key=lambda record: record.path)
        for dropped in ordered[1:]:
            _report_duplicate(self.duplicates, image_id, ordered[0].path, dropped.path)
        yield ordered[0]


class OnePerImageID(beam.PTransform):
    def __init__(self, streaming: bool):
        super().__init__()
        self.streaming = streaming

    def expand(self, records):
        keyed = (records
                 | "KeyByImageID" >> beam.Map(lambda record: (record.image_id, record))
                 .with_output_types(Tuple[str, ImageRecord]))
        if self.streaming:
            return keyed | "KeepFirst" >> beam.ParDo(KeepFirstPerImageID())
        return (keyed
                | "GroupByImageID" >> beam.GroupByKey()
                | "KeepSmallestPath" >> beam.ParDo(KeepSmallestPath()))
