"""Parquet dead letters: one row per failed image, written with Beam's ``WriteToParquet``.

Layout: ``<dead_letter_dir>/run=<run_id>/dead_letter-SSSSS-of-NNNNN.parquet`` (streaming: one
file per bundle that had failures, ``dead_letter-<UTC time>-<id>.parquet``). Each run is a new
generation folder; nothing is overwritten. Rows hold paths, IDs and reasons — never pixels or
patient names.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Dict, List

import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
import pyarrow as pa

import dicomvec
from dicomvec.record import Failure

SCHEMA = pa.schema([
    ("path", pa.string()),
    ("image_id", pa.string()),
    ("stage", pa.string()),
    ("error_type", pa.string()),
    ("error_message", pa.string()),
    ("attempts", pa.int32()),
    ("retryable", pa.bool_()),
    ("run_id", pa.string()),
    ("failed_at", pa.string()),
    ("dicomvec_version", pa.string()),
])


def generation_dir(dead_letter_dir: str, run_id: str) -> str:
    return os.path.join(dead_letter_dir, f"run={run_id}")


def failure_to_row(failure: Failure, run_id: str) -> Dict:
    row = dataclasses.asdict(failure)
    row.update(run_id=run_id, dicomvec_version=dicomvec.__version__)
    return {name: row[name] for name in SCHEMA.names}


class WriteDeadLetters(beam.PTransform):
    """PCollection[Failure] → Parquet files in this run's generation folder."""

    def __init__(self, dead_letter_dir: str, run_id: str, triggering_frequency: float = None):
        super().__init__()
        self.triggering_frequency = triggering_frequency  # streaming: write every N seconds
        self.prefix = os.path.join(generation_dir(dead_letter_dir, run_id), "dead_letter")
        self.run_id = run_id

    def expand(self, failures):
        rows = failures | "ToRow" >> beam.Map(failure_to_row, self.run_id)
        if self.triggering_frequency:
            return rows | "ParquetEveryBundle" >> beam.ParDo(
                _WriteParquetPerBundle(self.prefix, self.triggering_frequency))
        return rows | "Parquet" >> beam.io.WriteToParquet(self.prefix, SCHEMA,
                                                          file_name_suffix=".parquet")


class _WriteParquetPerBundle(beam.DoFn):
    """Streaming dead letters: rows → one Parquet file per bundle (or per ``max_wait_s`` within
    a long bundle), written to a temporary name and renamed into place.

    Beam's ``WriteToParquet(triggering_frequency=…)`` writes nothing on the local streaming
    engine (Prism) before the job is cancelled, and a streaming job here ends by cancellation;
    flushing at every bundle end means a dead letter is on disk as soon as its bundle commits.
    """

    def __init__(self, prefix: str, max_wait_s: float):
        super().__init__()
        self.prefix = prefix
        self.max_wait_s = max_wait_s

    def start_bundle(self):
        self.rows = []
        self.started = time.monotonic()

    def process(self, row):
        self.rows.append(row)
        if time.monotonic() - self.started >= self.max_wait_s:
            self._flush()

    def finish_bundle(self):
        self._flush()

    def _flush(self):
        if not self.rows:
            return
        import pyarrow.parquet as pq
        final = f"{self.prefix}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.parquet"
        temporary = final.replace("dead_letter-", ".tmp-dead_letter-")
        directory = os.path.dirname(final)
        if not FileSystems.exists(directory):
            try:
                FileSystems.mkdirs(directory)
            except IOError:  # another worker made it first
                pass
        with FileSystems.create(temporary) as handle:
            pq.write_table(pa.Table.from_pylist(self.rows, schema=SCHEMA), handle)
        FileSystems.rename([temporary], [final])
        self.rows = []
        self.started = time.monotonic()


def read_parquet(source, columns=None):
    """One Parquet file (a local path or an open file object) as a pyarrow Table, read on the
    calling thread: pyarrow's own reader threads, still alive when the driver exits after a
    Beam run, made the process abort ("terminate called without an active exception", exit
    134) in about one run out of four."""
    import pyarrow.parquet as pq
    return pq.read_table(source, columns=columns, use_threads=False)


def read_dead_letters(dead_letter_dir: str, run_id: str = "*") -> List[Dict]:
    """All dead-letter rows under ``dead_letter_dir`` (one generation or all), for reports and
    tests. A ``scheme://`` folder (e.g. ``s3://``) is read through Beam's ``FileSystems``
    (whose options must be set: ``FileSystems.set_options``)."""
    rows: List[Dict] = []
    pattern = os.path.join(generation_dir(dead_letter_dir, run_id), "*.parquet")
    if "://" not in dead_letter_dir:
        for path in sorted(glob.glob(pattern)):
            rows.extend(read_parquet(path).to_pylist())
        return rows
    for metadata in sorted(FileSystems.match([pattern])[0].metadata_list,
                           key=lambda m: m.path):
        with FileSystems.open(metadata.path) as handle:
            rows.extend(read_parquet(pa.BufferReader(handle.read())).to_pylist())
    return rows
