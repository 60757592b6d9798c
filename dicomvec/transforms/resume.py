"""Resume: drop images already stored for this provider and preprocessing version, before any
pixel is decoded or any embedding is paid for.

In: ImageRecord. Out: the records with no matching row. The lookup is batched (``BatchElements``
then one ``existing_ids`` query per batch of up to 500 IDs) — no per-image query and no
whole-table side input. Counter ``skipped_existing`` (one per image; the image's other copies,
if any, count as ``duplicate_files``). With ``valid_dimension`` (``run --replace-invalid``) a
stored row whose vector is zero or not that long does not count as stored: the image is
embedded again and its row replaced. If the store cannot be reached (a transient error after
the store's retries), the records go on as not stored: the write stage then stores them or turns
them into retryable ``write`` dead letters — the job does not fail and no image is lost (counter
``resume_lookup_failed``).
"""
from __future__ import annotations

import apache_beam as beam

import logging

from dicomvec import counters as C
from dicomvec.io.stores import SinkConfig
from dicomvec.transforms.dedupe import report_unused_copies
from dicomvec.transforms.stage import counter

log = logging.getLogger(__name__)


class _DropStored(beam.DoFn):
    def __init__(self, sink: SinkConfig, provider, preprocess_version, valid_dimension=None):
        super().__init__()
        self.valid_dimension = valid_dimension
        self.sink = sink
        self.provider = provider
        self.preprocess_version = preprocess_version
        self.store = None
        self.skipped = counter(C.ALREADY_STORED)
        self.duplicates = counter(C.DUPLICATE_FILES, scope="resume")
        self.lookup_failed = counter(C.RESUME_LOOKUP_FAILED)

    def setup(self):
        self.store = self.sink.images()  # connects on first use

    def teardown(self):
        if self.store is not None:
            self.store.close()

    def process(self, records):
        try:
            stored = self.store.existing_ids([r.image_id for r in records], self.provider,
                                             self.preprocess_version, self.valid_dimension)
        except Exception as exc:
            if not self.store.is_transient(exc):
                raise
            self.lookup_failed.inc(len(records))
            log.warning("resume: cannot reach the store (%s); %d images go on as not stored",
                        type(exc).__name__, len(records))
            stored = set()
        for record in records:
            if record.image_id in stored:
                self.skipped.inc()
                report_unused_copies(self.duplicates, record)  # its other copies: not needed
            else:
                yield record


class SkipStored(beam.PTransform):
    def __init__(self, sink: SinkConfig, provider, preprocess_version,
                 max_batch_size: int = 500, valid_dimension=None):
        super().__init__()
        self.dofn = _DropStored(sink, provider, preprocess_version, valid_dimension)
        self.max_batch_size = max_batch_size

    def expand(self, records):
        return (records
                | "BatchIDs" >> beam.BatchElements(min_batch_size=1,
                                                   max_batch_size=self.max_batch_size)
                | "DropStored" >> beam.ParDo(self.dofn))
