"""Batch and embed: records → ``GroupIntoBatches`` (sharded keys) → one provider call per batch.

``BatchForEmbedding``: PCollection[ImageRecord] → PCollection[list[ImageRecord]] of at most
``batch_size``. ``EmbedBatch``: list[ImageRecord] → list[ImageRecord] with vectors (main output,
one element per batch, for the batched write) and a ``Failure`` per image that failed (tag
``failed``, stage ``embed``). One bad image never fails its neighbours; a provider that cannot
work at all (bad key, no credits) raises ``FatalProviderError`` and stops the job.
"""
from __future__ import annotations

import logging
from typing import List

import apache_beam as beam

from dicomvec.io.providers import (EncodedImage, FatalProviderError, ProviderConfig,
                                   create_provider)
from dicomvec.record import Failure, ImageRecord
from dicomvec.transforms.stage import FAILED, counter

log = logging.getLogger(__name__)


class BatchForEmbedding(beam.PTransform):
    def __init__(self, batch_size: int, max_wait_s: float = None, key: str = "embed"):
        super().__init__()
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s  # streaming: flush partial batches after this long
        self.key = key

    def expand(self, records):
        key = self.key
        return (records
                | "Key" >> beam.Map(lambda record: (key, record))
                | "GroupIntoBatches" >> beam.GroupIntoBatches.WithShardedKey(
                    self.batch_size, max_buffering_duration_secs=self.max_wait_s)
                | "DropKey" >> beam.Map(lambda keyed: list(keyed[1])))


class EmbedBatch(beam.DoFn):
    def __init__(self, provider_config: ProviderConfig):
        super().__init__()
        self.provider_config = provider_config
        self.provider = None
        self.embedded = counter("embed_ok")
        self.failed = counter("embed_failed")
        self.batches = counter("embed_batches")
        self.stat_counters = {}
        self._reported_stats = {}

    def setup(self):
        self.provider = create_provider(self.provider_config)
        self.provider.setup()

    def teardown(self):
        if self.provider is not None:
            self.provider.teardown()

    def _report_stats(self):
        """Provider stats (requests, retries, ...) → Beam counters, as deltas."""
        for name, value in self.provider.stats().items():
            delta = int(value) - self._reported_stats.get(name, 0)
            if delta:
                if name not in self.stat_counters:
                    self.stat_counters[name] = counter(f"provider_{name}")
                self.stat_counters[name].inc(delta)
                self._reported_stats[name] = int(value)

    def process(self, batch: List[ImageRecord]):
        self.batches.inc()
        images = [EncodedImage(record.encoded, record.mime) for record in batch]
        try:
            results = self.provider.embed_images(images)
        except FatalProviderError:
            raise
        except Exception as exc:  # a provider bug must not lose the batch
            log.exception("provider %s raised for a batch of %d", self.provider.name, len(batch))
            results = None
            failure_exc = exc
        embedded = []
        for index, record in enumerate(batch):
            if results is None:
                self.failed.inc()
                yield beam.pvalue.TaggedOutput(
                    FAILED, Failure.from_exception(record, "embed", failure_exc, retryable=True))
                continue
            result = results[index]
            if result.ok:
                embedded.append(record.evolve(vector=result.vector, encoded=None,
                                              provider=self.provider.name,
                                              embedding_model=self.provider.model))
            else:
                self.failed.inc()
                yield beam.pvalue.TaggedOutput(FAILED, Failure(
                    path=record.path, image_id=record.image_id, stage="embed",
                    error_type=result.error_type, error_message=result.error_message[:2000],
                    attempts=result.attempts, retryable=result.retryable))
        self.embedded.inc(len(embedded))
        self._report_stats()
        if embedded:
            yield embedded
