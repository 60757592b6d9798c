"""Write: a batch of embedded items → one upsert into the vector store (images or reports).

In: a list of items (``ImageRecord`` with a vector; ``ReportRow``). Out: the number of rows
stored (main output) and a ``Failure`` at stage ``write`` for each row the database refused
(tag ``failed``). ``to_row`` turns an item into its table row, ``failure`` an item and an
exception into a dead letter. One connection per DoFn instance (``setup``/``teardown``);
transient errors reconnect and retry inside the store; permanent row errors are isolated by
bisection so good rows are still written.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, List, Optional

import apache_beam as beam

from dicomvec import counters as C
from dicomvec.defaults import PROGRESS_EVERY
from dicomvec.io.stores import ImageRow, SinkConfig
from dicomvec.io.stores.tables import IMAGES, TableSpec
from dicomvec.record import Failure, ImageRecord
from dicomvec.transforms.stage import FAILED, counter

log = logging.getLogger(__name__)


def to_row(record: ImageRecord, preprocess_version: str) -> ImageRow:
    return ImageRow(SubjectID=record.subject_id, StudyID=record.study_id,
                    ImageID=record.image_id, ImagePath=record.path, DicomFile=record.dicom_file,
                    ViewPosition=record.view_position, Vector=record.vector,
                    EmbeddingModel=record.embedding_model, Provider=record.provider,
                    PreprocessVersion=preprocess_version)


class WriteToStore(beam.DoFn):
    def __init__(self, sink: SinkConfig, to_row: Callable,
                 failure: Callable = Failure.from_exception,
                 spec: TableSpec = IMAGES, names: C.JobCounters = C.IMAGES,
                 dimension: Optional[int] = None, progress_every: int = PROGRESS_EVERY):
        super().__init__()
        self.sink = sink
        self.to_row = to_row
        self.failure = failure
        self.spec = spec
        self.dimension = dimension
        self.progress_every = max(1, progress_every)
        self.store = None
        self.stored = counter(names.stored)
        self.failed = counter(names.failed("write"))
        self.noun = names.prefix.rstrip("_") or "images"

    def setup(self):
        self.store = self.sink.store(self.spec, dimension=self.dimension)
        try:
            self.store.open()
        except Exception as exc:
            if not self.store.is_transient(exc):
                raise  # wrong credentials, bad URL: the job cannot write at all
            # unreachable right now: each batch retries, then becomes retryable dead letters
            log.warning("write: the store is unreachable at start-up (%s); will retry per "
                        "batch", type(exc).__name__)
        self._started = time.monotonic()
        self._written = 0
        self._next_report = self.progress_every

    def teardown(self):
        if self.store is not None:
            self.store.close()

    def process(self, batch: List):
        by_key = {}
        for item in batch:
            row = self.to_row(item)
            by_key[self.spec.row_label(row)] = (item, row)
        failed = self.store.upsert([row for _, row in by_key.values()])
        for row, exc in failed:
            self.failed.inc()
            item = by_key[self.spec.row_label(row)][0]
            yield beam.pvalue.TaggedOutput(FAILED, self.failure(
                item, "write", exc, retryable=self.store.is_transient(exc)))
        stored = len(by_key) - len(failed)
        self.stored.inc(stored)
        self._progress(stored)
        yield stored

    def _progress(self, stored: int):
        self._written += stored
        if self._written >= self._next_report:
            elapsed = max(time.monotonic() - self._started, 1e-9)
            log.info("progress: this worker stored %d %s (%.1f %s/s)", self._written,
                     self.noun, self._written / elapsed, self.noun)
            self._next_report += self.progress_every
