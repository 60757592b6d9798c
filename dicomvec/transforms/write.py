"""Write: a batch of embedded records → one upsert into the vector store.

In: list[ImageRecord] with vectors. Out: the number of rows stored (main output) and a
``Failure`` at stage ``write`` for each row the database refused (tag ``failed``). One
connection per DoFn instance (``setup``/``teardown``); transient errors reconnect and retry inside
the store; permanent row errors are isolated by bisection so good rows are still written.
"""
from __future__ import annotations

import logging
import time
from typing import List

import apache_beam as beam

from dicomvec.io.stores import ImageRow, VectorStore
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
    def __init__(self, sink_url: str, schema: str, table: str, preprocess_version: str,
                 dimension: int, progress_every: int = 500):
        super().__init__()
        self.dimension = dimension
        self.preprocess_version = preprocess_version
        self.sink_url = sink_url
        self.schema = schema
        self.table = table
        self.progress_every = max(1, progress_every)
        self.store = None
        self.stored = counter("write_ok")
        self.failed = counter("write_failed")

    def setup(self):
        self.store = VectorStore(self.sink_url, schema=self.schema, table=self.table,
                                 dimension=self.dimension)
        try:
            self.store.open()
        except Exception as exc:
            if not self.store.dialect.is_transient(exc):
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

    def process(self, batch: List[ImageRecord]):
        by_id = {}
        for record in batch:
            by_id[record.image_id] = record
        failed = self.store.upsert([to_row(record, self.preprocess_version)
                                   for record in by_id.values()])
        for row, exc in failed:
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(FAILED, Failure.from_exception(
                by_id[row.ImageID], "write", exc, retryable=self.store.dialect.is_transient(exc)))
        stored = len(by_id) - len(failed)
        self.stored.inc(stored)
        self._progress(stored)
        yield stored

    def _progress(self, stored: int):
        self._written += stored
        if self._written >= self._next_report:
            elapsed = max(time.monotonic() - self._started, 1e-9)
            log.info("progress: this worker stored %d images (%.1f images/s)", self._written,
                     self._written / elapsed)
            self._next_report += self.progress_every
