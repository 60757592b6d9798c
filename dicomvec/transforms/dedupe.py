"""Copies of one image (files sharing an ImageID) become one row, taken from a copy that works.

- Batch, before decode: ``GroupByKey`` on ImageID (the shuffle carries metadata only, no pixels
  yet; it is a stage boundary, so the heavy decode/normalize/resize stage after it runs on every
  local worker), then ``OrderCopies`` emits ONE record per ImageID — the smallest path — with
  the other copies, in path order, as ``record.alternates``. ``DecodePixels`` tries them in
  order until one decodes (``decode_first_copy``): the row comes from a copy that works; copies
  that failed are dead-lettered, each with its own reason; copies never tried are counted
  (``duplicate_files``) and named in the log (``report_unused_copies``). An image whose row is
  already stored (resume) counts its alternates the same way.
- Streaming, after resize: a stateful DoFn (``KeepFirstPerImageID``) keeps the first copy per
  ImageID that got through decode, normalize and resize (so a broken copy that arrives first
  cannot hide a good one arriving later); the same path arriving again (an updated file) passes
  through. Later copies are counted and named.

Accounting: every copy ends in exactly one bucket — stored (or skipped as already stored),
dead-lettered, or ``duplicate_files``.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, List, Optional, Tuple

import apache_beam as beam
from apache_beam.coders import StrUtf8Coder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from dicomvec import counters as C
from dicomvec.record import Failure, ImageRecord
from dicomvec.transforms.stage import counter

log = logging.getLogger(__name__)


def report_duplicate(duplicates_counter, image_id: str, kept: str, dropped: str) -> None:
    duplicates_counter.inc()
    log.warning("duplicate ImageID %s: %s is the same image as %s; kept one", image_id, dropped,
                kept)


def report_unused_copies(duplicates_counter, record: ImageRecord) -> None:
    """Count and name the alternates of ``record`` that will not be used."""
    for unused in record.alternates:
        report_duplicate(duplicates_counter, record.image_id, record.path, unused.path)


def decode_first_copy(record: ImageRecord, decode: Callable[[ImageRecord], ImageRecord]
                      ) -> Tuple[Optional[ImageRecord], List[Tuple[ImageRecord, Exception]]]:
    """Try ``record`` then its alternates, in order, with ``decode``.

    Returns (the first decoded copy, with its untried alternates still attached — or None when
    every copy failed; the copies that failed with their exceptions, in order).
    """
    copies = (record.evolve(alternates=()),) + tuple(record.alternates)
    failed: List[Tuple[ImageRecord, Exception]] = []
    for index, copy in enumerate(copies):
        try:
            decoded = decode(copy)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a dead letter
            failed.append((copy, exc))
            continue
        return decoded.evolve(alternates=tuple(copies[index + 1:])), failed
    return None, failed


def copy_failure(copy: ImageRecord, stage: str, exc: Exception, used: str = "") -> Failure:
    """The dead letter of one copy; names the copy used instead, if any."""
    failure = Failure.from_exception(copy, stage, exc)
    if not used:
        return failure
    return dataclasses.replace(failure, error_message=(
        f"{failure.error_message} (another copy of image {copy.image_id} was used: "
        f"{used})")[:2000])


class KeepFirstPerImageID(beam.DoFn):
    """In: (image_id, ImageRecord). Out: the first record per ImageID (keyed state)."""

    FIRST_PATH = ReadModifyWriteStateSpec("first_path", StrUtf8Coder())

    def __init__(self):
        super().__init__()
        self.duplicates = counter(C.DUPLICATE_FILES)

    def process(self, element, first_path=beam.DoFn.StateParam(FIRST_PATH)):
        image_id, record = element
        seen = first_path.read()
        if seen is None or seen == record.path:  # first file, or the same file again (updated)
            first_path.write(record.path)
            yield record
            return
        report_duplicate(self.duplicates, image_id, seen, record.path)


class OrderCopies(beam.DoFn):
    """In: (image_id, [ImageRecord, ...]) from a GroupByKey. Out: the record with the smallest
    path, carrying the other copies (path order) as ``alternates``."""

    def process(self, element):
        _, records = element
        ordered = sorted(records, key=lambda record: record.path)
        yield ordered[0].evolve(alternates=tuple(ordered[1:]))


def _key_by_image_id(records: beam.PCollection, label: str) -> beam.PCollection:
    return (records
            | label >> beam.Map(lambda record: (record.image_id, record))
            .with_output_types(Tuple[str, ImageRecord]))


class OnePerImageID(beam.PTransform):
    """Batch: group the copies of each image before decode (``alternates``)."""

    def expand(self, records):
        return (_key_by_image_id(records, "KeyByImageID")
                | "GroupByImageID" >> beam.GroupByKey()
                | "OrderCopies" >> beam.ParDo(OrderCopies()))


class KeepFirstWorkingCopy(beam.PTransform):
    """Streaming: after resize, keep the first copy of each image that got this far."""

    def expand(self, records):
        return (_key_by_image_id(records, "KeyByImageID")
                | "KeepFirst" >> beam.ParDo(KeepFirstPerImageID()))
