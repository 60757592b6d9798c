"""Streaming input: watch a pattern and hand on only files that have finished arriving.

``WatchForCompleteFiles``: pipeline root → PCollection[FileMetadata]. ``fileio.MatchContinuously``
lists the pattern every ``interval`` seconds (without its own de-duplication: its Watch-based
variant does not run on the local streaming runner, and keeps every path ever seen in its
restriction); ``DropUnchangedSinceLastListing`` passes on only the files whose (size, mtime) the
listing worker has not passed on before, so what flows on per listing is what arrived or
changed, not the whole archive again; the stateful ``EmitWhenSettled`` DoFn, keyed by path,
drops versions already emitted (after a restart the worker's memory is empty) and waits until a
file has not changed for ``settle_seconds`` (a processing-time timer re-checks it) before
emitting it, so a file still being copied or downloaded is never read half-way. A file that
changes after it was emitted is emitted again (and upserted again).

Memory per watched file (measured by ``benchmarks/streaming_soak.py``, see BENCHMARKS.md): one
entry of two integers in the listing worker's ``DropUnchangedSinceLastListing`` and one keyed
state entry (``emitted``) in the runner.
"""
from __future__ import annotations

import time
from typing import Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from dicomvec import counters as C
from dicomvec.transforms.stage import counter


def _stat(path):
    found = FileSystems.match([path])[0].metadata_list
    if not found:
        return None
    return found[0], (found[0].size_in_bytes, found[0].last_updated_in_seconds)


class EmitWhenSettled(beam.DoFn):
    """In: (path, FileMetadata). Out: FileMetadata once the file has stopped changing."""

    LAST_SEEN = ReadModifyWriteStateSpec("last_seen", PickleCoder())
    EMITTED = ReadModifyWriteStateSpec("emitted", PickleCoder())
    SETTLE = TimerSpec("settle", TimeDomain.REAL_TIME)

    def __init__(self, settle_seconds: float):
        super().__init__()
        self.settle_seconds = settle_seconds
        self.waiting = counter(C.FILES_STILL_ARRIVING)
        self.arriving = counter(C.ARRIVING)  # versions waiting to settle (idle detection)
        self.arrived = counter(C.ARRIVED)

    def process(self, element, last_seen=beam.DoFn.StateParam(LAST_SEEN),
                emitted=beam.DoFn.StateParam(EMITTED),
                settle=beam.DoFn.TimerParam(SETTLE)):
        _, metadata = element
        version = (metadata.size_in_bytes, metadata.last_updated_in_seconds)
        if emitted.read() == version:
            return
        if last_seen.read() is None:
            self.arriving.inc()
        last_seen.write(version)
        settle.set(Timestamp.of(time.time() + self.settle_seconds))

    @on_timer(SETTLE)
    def settled(self, key=beam.DoFn.KeyParam, last_seen=beam.DoFn.StateParam(LAST_SEEN),
                emitted=beam.DoFn.StateParam(EMITTED), settle=beam.DoFn.TimerParam(SETTLE)):
        found = _stat(key)
        if found is None:  # deleted while arriving: nothing to read
            last_seen.clear()
            self.arrived.inc()
            return
        metadata, version = found
        if version != last_seen.read():
            self.waiting.inc()
            last_seen.write(version)
            settle.set(Timestamp.of(time.time() + self.settle_seconds))
            return
        emitted.write(version)
        last_seen.clear()
        self.arrived.inc()
        yield metadata


class DropUnchangedSinceLastListing(beam.DoFn):
    """In: FileMetadata of every file, at every listing. Out: the files whose (size, mtime)
    this worker has not passed on yet. Holds one pair of integers (hashes of the path and of the
    version) per file, in the worker's memory only: a new worker starts empty and passes
    everything on once, which ``EmitWhenSettled`` and the resume check absorb."""

    def setup(self):
        self._passed: dict = {}

    def process(self, metadata):
        version = hash((metadata.size_in_bytes, metadata.last_updated_in_seconds))
        key = hash(metadata.path)
        if self._passed.get(key) != version:
            self._passed[key] = version
            yield metadata


class WatchForCompleteFiles(beam.PTransform):
    def __init__(self, pattern: str, interval: float, settle_seconds: float):
        super().__init__()
        self.pattern = pattern
        self.interval = interval
        self.settle_seconds = settle_seconds

    def expand(self, pbegin):
        return (pbegin
                | "MatchContinuously" >> fileio.MatchContinuously(
                    self.pattern, interval=self.interval, start_timestamp=Timestamp.now(),
                    has_deduplication=False)
                | "DropUnchanged" >> beam.ParDo(DropUnchangedSinceLastListing())
                | "KeyByPath" >> beam.Map(lambda metadata: (metadata.path, metadata))
                .with_output_types(Tuple[str, FileMetadata])
                | "EmitWhenSettled" >> beam.ParDo(EmitWhenSettled(self.settle_seconds)))
