"""Keep one file per ImageID (DICOM identity): copies of an image become one row.

In: ``(image_id, ImageRecord)`` keyed pairs. Out: the first record seen per ImageID. Later files
with the same ImageID are counted (``duplicate_files``) and named in the log. Stateful (keyed
state), so it works the same on batch and streaming runners.
"""
from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.coders import StrUtf8Coder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from dicomvec.transforms.stage import counter

log = logging.getLogger(__name__)


class KeepFirstPerImageID(beam.DoFn):
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
        self.duplicates.inc()
        log.warning("duplicate ImageID %s: %s is the same image as %s; kept one", image_id,
                    record.path, seen)
