"""Batch and embed: records → ``GroupIntoBatches`` (spread keys) → one provider call per batch.

``BatchForEmbedding``: PCollection[ImageRecord] → PCollection[list[ImageRecord]] of at most
``batch_size``, keyed by ``crc32(ImageID) % shards`` so that the batching (a keyed, stateful
step) and everything fused after it (embed, write) run on ``shards`` parallel workers: one key
would put every batch on one Flink subtask. ``batching_shards`` takes ``shards`` from the
runner's parallelism. ``EmbedBatch``: list[ImageRecord] → list[ImageRecord] with vectors (main output,
one element per batch, for the batched write) and a ``Failure`` per image that failed (tag
``failed``, stage ``embed``); the reports job embeds texts with it (``inputs``). One bad image never fails its neighbours; a provider that cannot
work at all (bad key, no credits) raises ``FatalProviderError`` and stops the job.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import zlib
from typing import Any, List, Optional, Tuple

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from dicomvec import counters as C
from dicomvec.defaults import NVCLIP_CONCURRENCY
from dicomvec.io.providers import EncodedImage, FatalProviderError, ProviderConfig
from dicomvec.record import Failure, ImageRecord
from dicomvec.transforms.provider_dofn import ProviderDoFn
from dicomvec.transforms.stage import FAILED, counter

log = logging.getLogger(__name__)


def batching_shards(options) -> int:
    """Number of batching keys for these pipeline options: Flink's ``--parallelism`` when set,
    the local engine's ``--direct_num_workers`` (default 1) on the DirectRunner / FnApiRunner,
    otherwise 2 (one per slot of the default local cluster)."""
    from apache_beam.options.pipeline_options import (DirectOptions, FlinkRunnerOptions,
                                                      StandardOptions)
    parallelism = options.view_as(FlinkRunnerOptions).parallelism or -1
    if parallelism > 0:
        return parallelism
    runner = str(options.view_as(StandardOptions).runner or "DirectRunner")
    if runner.lower() in ("directrunner", "direct", "bundlebaseddirectrunner",
                          "swappingrunner") or runner.endswith("FnApiRunner"):
        return max(1, options.view_as(DirectOptions).direct_num_workers or 1)
    return 2


def batching_key(record, shards: int) -> int:
    """Stable shard of a record by its ImageID (reports: StudyID); the same in every worker
    process, unlike ``hash``."""
    if shards <= 1:
        return 0
    ident = getattr(record, "image_id", None) or getattr(record, "study_id", None) or ""
    return zlib.crc32(str(ident).encode("utf-8")) % shards


class BatchForEmbedding(beam.PTransform):
    def __init__(self, batch_size: int, max_wait_s: float = None, shards: int = 1):
        super().__init__()
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s  # streaming: flush partial batches after this long
        self.shards = max(1, int(shards))

    def expand(self, records):
        shards = self.shards
        return (records
                | "Key" >> beam.Map(lambda record: (batching_key(record, shards), record))
                .with_output_types(Tuple[int, Any])   # int keys: a deterministic key coder
                | "GroupIntoBatches" >> beam.GroupIntoBatches(
                    self.batch_size, max_buffering_duration_secs=self.max_wait_s)
                | "DropKey" >> beam.Map(lambda keyed: list(keyed[1])))


class ImageInputs:
    """What ``EmbedBatch`` embeds for the images job: ``ImageRecord`` → its encoded image; out
    the record with its vector. ``identity``: (path, ID) of an item's dead letter."""

    def identity(self, record: ImageRecord):
        return record.path, record.image_id

    def submit(self, provider, batch: List[ImageRecord]) -> cf.Future:
        return provider.submit_images([EncodedImage(r.encoded, r.mime) for r in batch])

    def embedded(self, provider, record: ImageRecord, vector):
        return record.evolve(vector=vector, encoded=None, provider=provider.store_key,
                             embedding_model=provider.model)

    def refused(self, item, result) -> Failure:
        return Failure.from_result(*self.identity(item), "embed", result)

    def failed(self, item, exc: BaseException) -> Failure:
        path, image_id = self.identity(item)
        return Failure.from_exception(ImageRecord(path, image_id), "embed", exc, retryable=True)

    def unsupported(self, batch: list, exc: BaseException) -> Optional[list]:
        """The batch's outputs when ``exc`` says the provider cannot embed such inputs."""
        return None


class EmbedBatch(ProviderDoFn):
    """Embeds each batch (``inputs``: what an item is and what it becomes; default the images
    job's ``ImageInputs``). With a provider whose ``submit_images`` returns at once (nvclip), up to
    ``max_pending`` batches (default: the provider's ``concurrency``) are in flight at once, so
    API latency overlaps; results are emitted as they complete, the rest in ``finish_bundle``
    (a bundle never ends with a batch pending, so streaming windows and checkpoints hold)."""

    def __init__(self, provider_config: ProviderConfig, max_pending: Optional[int] = None,
                 inputs=None, names: C.JobCounters = C.IMAGES):
        super().__init__(provider_config)
        # default: as many batches as the provider has requests in flight (--nvclip-concurrency)
        self.max_pending = max(1, int(max_pending or provider_config.settings.get(
            "concurrency") or NVCLIP_CONCURRENCY))
        self.inputs = inputs or ImageInputs()
        self.embedded = counter(names.ok("embed"))
        self.failed = counter(names.failed("embed"))
        self.batches = counter(names.prefix + C.EMBED_BATCHES)
        self._pending = collections.deque()

    def start_bundle(self):
        self._pending = collections.deque()

    def process(self, batch: list, window=beam.DoFn.WindowParam,
                timestamp=beam.DoFn.TimestampParam):
        self.batches.inc()
        self._pending.append((batch, self.inputs.submit(self.provider, batch), window,
                              timestamp))
        while self._pending and (len(self._pending) > self.max_pending
                                 or self._pending[0][1].done()):
            done_batch, future, _, _ = self._pending.popleft()
            yield from self._outputs(done_batch, future)

    def finish_bundle(self):
        while self._pending:
            batch, future, window, timestamp = self._pending.popleft()
            for out in self._outputs(batch, future):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(
                        out.tag, WindowedValue(out.value, timestamp, [window]))
                else:
                    yield WindowedValue(out, timestamp, [window])

    def _outputs(self, batch: list, future: cf.Future):
        try:
            results = future.result()
        except FatalProviderError:
            raise
        except Exception as exc:  # a provider bug must not lose the batch
            whole = self.inputs.unsupported(batch, exc)
            if whole is None:
                log.error("provider %s raised for a batch of %d: %s", self.provider.name,
                          len(batch), exc)
            for item in batch if whole is None else ():
                self.failed.inc()
                yield beam.pvalue.TaggedOutput(FAILED, self.inputs.failed(item, exc))
            self.report_stats()
            if whole:
                yield whole
            return
        embedded = []
        for item, result in zip(batch, results):
            if result.ok:
                embedded.append(self.inputs.embedded(self.provider, item, result.vector))
            else:
                self.failed.inc()
                yield beam.pvalue.TaggedOutput(FAILED, self.inputs.refused(item, result))
        self.embedded.inc(len(embedded))
        self.report_stats()
        if embedded:
            yield embedded
