"""``dicomvec run --runner PortableRunner`` against the cluster's long-running Beam Flink job
server (``start.sh jobserver``): EXTERNAL Python workers from the worker pool into the embedded
SQLite store (same rows, dead letters and Parquet layout as the DirectRunner), and LOOPBACK
workers (inside the driver) into PostgreSQL + pgvector. Both finish as Flink jobs.

The worker pool (``scripts/flink/worker_pool.py``) is the process that starts the Python SDK
workers beside each TaskManager. Same command line as on the DirectRunner plus runner flags.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dicomvec.io.dead_letter import SCHEMA, read_dead_letters
from dicomvec.io.stores import VectorStore
from dicomvec.pipeline.run import run_ingest
from tests.conftest import REAL_CXR
from tests.flink.conftest import runner_flags, summary_numbers
from tests.flink.mimic_sample import make_sample

pytestmark = [pytest.mark.slow, pytest.mark.flink]

SYNTHETIC = 8


def _dicomvec_run(sample, out: Path, run_id: str, *runner_flags: str, sink: str = ""):
    return ["--input", sample.pattern, "--sink", sink or f"sqlite:///{out}/dicomvec.db",
            "--dead-letter", str(out / "dead_letter"), "--provider", "thumbnail",
            "--batch-size", "3", "--run-id", run_id, *runner_flags]


def _layout(dead_letter_dir: Path):
    return sorted(str(p.relative_to(dead_letter_dir)) for p in dead_letter_dir.rglob("*.parquet"))


def _real_dir():
    return REAL_CXR if REAL_CXR.is_dir() and list(REAL_CXR.glob("*.dcm")) else None


def _run_on_flink(cluster, sample, out: Path, run_id: str, environment: str, sink: str = ""):
    """``dicomvec run`` as a user types it, with the portable runner flags; returns stdout."""
    starts_before = cluster.log("workerpool.out").count("Starting worker")
    proc = subprocess.run(
        [sys.executable, "-m", "dicomvec.cli", "run", *_dicomvec_run(
            sample, out, run_id, *runner_flags(cluster, None, "PortableRunner", environment),
            sink=sink)],
        text=True, capture_output=True, timeout=900, cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-4000:] + cluster.tail_logs()
    numbers = summary_numbers(proc.stdout)
    assert numbers["images stored"] == numbers["rows in store"] == sample.stored, proc.stdout
    assert numbers["dead-lettered"] == numbers["decode"] == len(sample.broken_paths), proc.stdout
    (job,) = cluster.jobs(f"dicomvec-{run_id}-")
    assert job["state"] == "FINISHED"
    started = cluster.log("workerpool.out").count("Starting worker") - starts_before
    if environment == "EXTERNAL":   # the work ran in processes started by the worker pool
        assert started > 0
    else:                           # LOOPBACK: in the driver, the pool is not asked
        assert started == 0
    return proc.stdout


def _assert_dead_letters(sample, dead_letter_dir: Path, run_id: str):
    rows = read_dead_letters(str(dead_letter_dir), run_id)
    by_stage = {stage: sum(r["stage"] == stage for r in rows) for stage in sample.dead_letters}
    assert by_stage == sample.dead_letters
    assert sorted(r["path"] for r in rows) == sorted(sample.broken_paths)
    return rows


def test_external_workers_match_the_direct_runner(idle_cluster, job_server_jar, tmp_path):
    sample = make_sample(tmp_path / "in", SYNTHETIC, real_dir=_real_dir())
    portable = tmp_path / "portable"
    _run_on_flink(idle_cluster, sample, portable, "ext", "EXTERNAL")

    with VectorStore(f"sqlite:///{portable}/dicomvec.db") as store:
        assert store.count("thumbnail") == sample.stored
        ids = [row[0] for row in store.conn.execute("SELECT ImageID FROM MIMICCXRImages")]
    assert len(ids) == len(set(ids)) == sample.stored

    rows = _assert_dead_letters(sample, portable / "dead_letter", "ext")

    # the same job on the DirectRunner (local engine): same rows, same Parquet layout and schema
    direct = tmp_path / "direct"
    summary = run_ingest(_dicomvec_run(sample, direct, "ext"))
    assert summary.stored == sample.stored
    assert summary.dead_lettered == sample.dead_letters
    direct_rows = read_dead_letters(str(direct / "dead_letter"), "ext")
    key = lambda r: (r["path"], r["stage"], r["error_type"])  # noqa: E731
    assert sorted(map(key, rows)) == sorted(map(key, direct_rows))
    # same layout; Flink writes one shard per parallel subtask that had dead letters
    pattern = re.compile(r"run=ext/dead_letter-\d{5}-of-\d{5}\.parquet")
    assert _layout(direct / "dead_letter") and _layout(portable / "dead_letter")
    assert all(pattern.fullmatch(f) for f in _layout(portable / "dead_letter")
               + _layout(direct / "dead_letter"))
    for path in (portable / "dead_letter").rglob("*.parquet"):
        assert pq.read_schema(path).remove_metadata().equals(SCHEMA)
    with VectorStore(f"sqlite:///{direct}/dicomvec.db") as store:
        direct_ids = [row[0] for row in store.conn.execute("SELECT ImageID FROM MIMICCXRImages")]
    assert sorted(direct_ids) == sorted(ids)


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    """A private PostgreSQL + pgvector server (tests/pg_fixtures.py) for this module."""
    from tests.pg_fixtures import LocalPostgres, PostgresUnavailable
    try:
        server = LocalPostgres(durable=False).start()
    except PostgresUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"PostgreSQL is required in CI but cannot run: {exc}")
        pytest.skip(f"PostgreSQL binaries cannot run here: {exc}")
    try:
        yield server.create_database("flink_workers")
    finally:
        server.stop()


@pytest.mark.postgres
def test_loopback_workers_write_to_postgres(idle_cluster, job_server_jar, postgres_url, tmp_path):
    # MIMIC-layout files only: the real test radiographs are not MIMIC paths, so their ImageID
    # is the SOPInstanceUID (up to 64 characters), which the PostgreSQL schema's VARCHAR(50)
    # ImageID/StudyID columns reject (two of them land in the dead letters at stage write).
    sample = make_sample(tmp_path / "in", SYNTHETIC, seed=9)
    out = tmp_path / "pg"
    _run_on_flink(idle_cluster, sample, out, "pg", "LOOPBACK", sink=postgres_url)
    with VectorStore(postgres_url) as store:
        assert store.count("thumbnail") == sample.stored
    _assert_dead_letters(sample, out / "dead_letter", "pg")

