"""Beam Python pipelines on the standalone Flink 1.19 cluster: trivial pipelines, the dicomvec job
(``--runner FlinkRunner``, the driver starting the Beam Flink job server from its jar; EXTERNAL
workers from the worker pool) with exact counts, a correct summary and work on both slots in
every stage that can be parallel, a TaskManager crash during a job, and ``dicomvec reprocess``
on the cluster.

Needs the Beam Flink job server (``scripts/flink/setup.sh``: the released jar, or the one built
from ``../shared/flink-jobserver``); without one the tests skip with the reason, and fail in CI.
"""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import List

import pyarrow.parquet as pq
import pytest

from dicomvec.io.dead_letter import SCHEMA, read_dead_letters
from dicomvec.io.stores import VectorStore
from tests.conftest import REAL_CXR
from tests.flink.conftest import runner_flags, subtasks_with_records, summary_numbers
from tests.flink.mimic_sample import make_sample
from tests.local_run import thumbnail_flags

pytestmark = [pytest.mark.slow, pytest.mark.flink]


def flink_flags(cluster, jar: Path) -> List[str]:
    return runner_flags(cluster, jar, "FlinkRunner", "EXTERNAL")


def finished_jobs(cluster) -> dict:
    return {job["jid"]: job for job in cluster.get("/jobs/overview")["jobs"]
            if job["state"] == "FINISHED"}


TRIVIAL = textwrap.dedent("""
    import sys
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    out = sys.argv[1]
    with beam.Pipeline(options=PipelineOptions(sys.argv[2:])) as p:
        nums = p | beam.Create(list(range(40)))
        (nums | "Square" >> beam.Map(lambda x: x * x)
              | "WriteSquares" >> beam.io.WriteToText(out + "/squares"))
        (nums | "Key" >> beam.Map(lambda x: (x % 4, x))
              | beam.GroupIntoBatches.WithShardedKey(5)
              | "Sizes" >> beam.Map(lambda kv: len(kv[1]))
              | "WriteBatches" >> beam.io.WriteToText(out + "/batches"))
""")


def test_trivial_pipelines_run_on_the_cluster(idle_cluster, job_server_jar, tmp_path):
    flink_cluster = idle_cluster
    script = tmp_path / "trivial.py"
    script.write_text(TRIVIAL)
    before = set(finished_jobs(flink_cluster))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "out"),
                           *flink_flags(flink_cluster, job_server_jar)],
                          text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:] + flink_cluster.tail_logs()
    squares = sorted(int(line) for f in (tmp_path / "out").glob("squares*")
                     for line in f.read_text().split())
    assert squares == sorted(x * x for x in range(40))
    sizes = [int(line) for f in (tmp_path / "out").glob("batches*") for line in f.read_text().split()]
    assert sum(sizes) == 40 and max(sizes) <= 5
    assert len(set(finished_jobs(flink_cluster)) - before) == 1   # it ran on the cluster


def _run_args(sample, out: Path, run_id: str) -> List[str]:
    return ["run", *thumbnail_flags(out, run_id, input=sample.pattern,
                                    sink=f"sqlite:///{out}/dicomvec.db",
                                    dead_letter=out / "dead_letter", batch_size=4)]


def _assert_outcome(sample, out: Path, run_id: str):
    with VectorStore(f"sqlite:///{out}/dicomvec.db") as store:
        ids = [row[0] for row in store.conn.execute("SELECT ImageID FROM MIMICCXRImages")]
    assert len(ids) == len(set(ids)) == sample.stored
    rows = read_dead_letters(str(out / "dead_letter"), run_id)
    assert sorted(r["path"] for r in rows) == sorted(sample.broken_paths)
    assert {s: sum(r["stage"] == s for r in rows) for s in sample.dead_letters} == \
        sample.dead_letters
    # the DirectRunner's layout: <dead-letter>/run=<id>/dead_letter-SSSSS-of-NNNNN.parquet
    files = sorted((out / "dead_letter").rglob("*"))
    layout = re.compile(rf"run={run_id}/dead_letter-\d{{5}}-of-\d{{5}}\.parquet")
    parquet = [f for f in files if f.is_file()]
    assert parquet and all(layout.fullmatch(str(f.relative_to(out / "dead_letter")))
                           for f in parquet), parquet
    for path in parquet:
        assert pq.read_schema(path).remove_metadata().equals(SCHEMA)


def _assert_summary(stdout: str, sample, matched: int):
    """The driver's summary counts what happened on the cluster (Beam metrics via Flink)."""
    numbers = summary_numbers(stdout)
    assert numbers["files matched"] == matched, stdout
    assert numbers["images stored"] == sample.stored, stdout
    assert numbers["dead-lettered"] == len(sample.broken_paths), stdout
    assert numbers["decode"] == sample.dead_letters["decode"], stdout
    assert numbers["rows in store"] == sample.stored, stdout


# the stages that do per-file work, each a Flink vertex after a shuffle: all must use both slots
PARALLEL_STAGES = ("Identify", "Decode", "Embed")


def test_dicomvec_run_on_flink_exact_counts_on_both_slots(idle_cluster, job_server_jar,
                                                          tmp_path):
    real = REAL_CXR if REAL_CXR.is_dir() and list(REAL_CXR.glob("*.dcm")) else None
    sample = make_sample(tmp_path / "in", 24, real_dir=real)
    out = tmp_path / "out"
    run_id = f"flink{uuid.uuid4().hex[:8]}"   # unique: the test is also run 10 times in a row
    proc = subprocess.run([sys.executable, "-m", "dicomvec.cli",
                           *_run_args(sample, out, run_id),
                           *flink_flags(idle_cluster, job_server_jar)],
                          text=True, capture_output=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:] + idle_cluster.tail_logs()
    _assert_summary(proc.stdout, sample, matched=24 + 2 + (6 if real else 0))
    _assert_outcome(sample, out, run_id)
    (job,) = idle_cluster.jobs(f"dicomvec-{run_id}-")
    assert job["state"] == "FINISHED"
    for stage in PARALLEL_STAGES:   # keys spread by crc32(ImageID) % --parallelism
        assert subtasks_with_records(idle_cluster, job["jid"], stage) == [2], stage


def _distinct_outcome(sample, out: Path, run_id: str):
    """After a restart: exactly one row per distinct image, none missing; every broken file
    dead-lettered (a restarted task may write a file's dead letter twice)."""
    with VectorStore(f"sqlite:///{out}/dicomvec.db") as store:
        ids = [row[0] for row in store.conn.execute("SELECT ImageID FROM MIMICCXRImages")]
    assert len(ids) == len(set(ids)) == sample.stored
    rows = read_dead_letters(str(out / "dead_letter"), run_id)
    assert {r["path"] for r in rows} == set(sample.broken_paths)
    assert {r["stage"] for r in rows} == {"decode"}
    return rows


def test_taskmanager_crash_during_a_job_then_reprocess_on_flink(idle_cluster, job_server_jar,
                                                                tmp_path):
    cluster = idle_cluster
    sample = make_sample(tmp_path / "in", 200, broken=4)
    out = tmp_path / "out"
    job = subprocess.Popen([sys.executable, "-m", "dicomvec.cli", *_run_args(sample, out, "crash"),
                            *flink_flags(cluster, job_server_jar)],
                           text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        def running_job():
            for entry in cluster.jobs("dicomvec-crash-"):
                if entry["state"] == "RUNNING" and entry["tasks"]["running"] > 0:
                    return entry["jid"]
            assert job.poll() is None, "the job ended before the TaskManager could be killed"
            return None
        jid = cluster.wait_for(running_job, 300, "the dicomvec job to run", interval=0.2)
        cluster.stop("taskmanager", kill=True)       # crash mid-job
        time.sleep(2)
        cluster.start("taskmanager")                 # a replacement registers
        stdout, stderr = job.communicate(timeout=900)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, stderr[-4000:] + cluster.tail_logs()
    assert cluster.final_state(jid) == "FINISHED"
    history = cluster.get(f"/jobs/{jid}/exceptions")["exceptionHistory"]["entries"]
    assert history, "the job finished without a restart: the TaskManager was not killed mid-job"
    _distinct_outcome(sample, out, "crash")

    # reprocess on Flink: each dead-lettered file is tried once, however many rows it has
    proc = subprocess.run([sys.executable, "-m", "dicomvec.cli", "reprocess",
                           "--sink", f"sqlite:///{out}/dicomvec.db",
                           "--dead-letter", str(out / "dead_letter"), "--provider", "thumbnail",
                           "--batch-size", "4", "--run-id", "again",
                           *flink_flags(cluster, job_server_jar)],
                          text=True, capture_output=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:] + cluster.tail_logs()
    broken = len(sample.broken_paths)
    assert f"reprocessed {broken} files: 0 fixed, {broken} still failing" in proc.stdout, \
        proc.stdout
    numbers = summary_numbers(proc.stdout)
    assert numbers["files matched"] == broken and numbers["decode"] == broken, proc.stdout
    again = read_dead_letters(str(out / "dead_letter"), "again")
    assert sorted(r["path"] for r in again) == sorted(sample.broken_paths)
    (entry,) = cluster.jobs("dicomvec-again-")
    assert entry["state"] == "FINISHED"
    with VectorStore(f"sqlite:///{out}/dicomvec.db") as store:
        assert store.count("thumbnail") == sample.stored
