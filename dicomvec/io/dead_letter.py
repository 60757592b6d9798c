"""Parquet dead letters: one row per failed image, written with Beam's ``WriteToParquet``.

Layout: ``<dead_letter_dir>/run=<run_id>/dead_letter-SSSSS-of-NNNNN.parquet`` (streaming: one
file per triggering period, ``dead_letter-<window start>-<window end>-SSSSS-of-NNNNN.parquet``). Each run is a new
generation folder; nothing is overwritten. Rows hold paths, IDs and reasons — never pixels or
patient names.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Dict, List

import apache_beam as beam
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
        run_id = self.run_id
        return (failures
                | "ToRow" >> beam.Map(failure_to_row, run_id)
                | "Parquet" >> beam.io.WriteToParquet(self.prefix, SCHEMA,
                                                      file_name_suffix=".parquet",
                                                      **self._streaming_args()))

    def _streaming_args(self):
        if not self.triggering_frequency:
            return {}
        return {"triggering_frequency": int(max(1, self.triggering_frequency)), "num_shards": 1,
                "shard_name_template": "-V-SSSSS-of-NNNNN"}


def read_dead_letters(dead_letter_dir: str, run_id: str = "*") -> List[Dict]:
    """All dead-letter rows under ``dead_letter_dir`` (one generation or all), for reports and
    tests."""
    import pyarrow.parquet as pq
    rows: List[Dict] = []
    pattern = os.path.join(generation_dir(dead_letter_dir, run_id), "*.parquet")
    for path in sorted(glob.glob(pattern)):
        rows.extend(pq.read_table(path).to_pylist())
    return rows
