"""The shared shape of a pipeline stage: a DoFn that turns a record into a record, and turns any
exception into a ``Failure`` on the ``failed`` tagged output (never a crash, never a lost image).
"""
from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.metrics import Metrics

from dicomvec import counters as C
from dicomvec.record import Failure, ImageRecord

FAILED = "failed"
log = logging.getLogger(__name__)


def counter(name: str, scope: str = ""):
    """The Beam counter ``name`` (a ``dicomvec.counters`` name). ``scope`` tells apart two
    steps that count under the same name and may run fused in one operator: Flink exports a
    user counter per operator by its name alone, so two steps would share (overwrite) one
    metric there. Readers add scoped counters up under their name (``counters.base_name``)."""
    return Metrics.counter(C.NAMESPACE, C.scoped(name, scope))


class RecordStage(beam.DoFn):
    """Subclasses set ``stage`` and implement ``process_record(record) -> ImageRecord``.

    In: ImageRecord. Out: ImageRecord (main output) or Failure (tag ``failed``).
    """

    stage = ""

    def __init__(self):
        super().__init__()
        self.ok = counter(C.IMAGES.ok(self.stage))
        self.failed = counter(C.IMAGES.failed(self.stage))

    def process_record(self, record: ImageRecord) -> ImageRecord:
        raise NotImplementedError

    def process(self, record: ImageRecord):
        try:
            result = self.process_record(record)
        except Exception as exc:  # every failure becomes a dead letter with stage and reason
            self.failed.inc()
            log.warning("%s failed for %s: %s: %s", self.stage, record.path,
                        type(exc).__name__, exc)
            yield beam.pvalue.TaggedOutput(FAILED, Failure.from_exception(record, self.stage, exc))
            return
        self.ok.inc()
        yield result
