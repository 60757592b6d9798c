"""Beam Python pipelines on the standalone Flink cluster (``--runner FlinkRunner`` with the Beam
Flink job server jar, EXTERNAL workers from the worker pool): trivial pipelines, the dicomvec job
with exact counts and work spread over both slots, and a TaskManager crash during a job.

Needs the job server jar ``beam-runners-flink-1.20-job-server-<apache-beam version>.jar``
(fetched by setup.sh from Maven Central, or FLINK_JOB_SERVER_JAR); skipped, with that reason,
where the registry does not serve it.
"""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import List

import pyarrow.parquet as pq
import pytest

from dicomvec.io.dead_letter import SCHEMA, read_dead_letters
from dicomvec.io.stores import VectorStore
from tests.conftest import REAL_CXR
from tests.flink.conftest import FLINK_MINOR
from tests.flink.mimic_sample import make_sample

pytestmark = [pytest.mark.slow, pytest.mark.flink]


def flink_flags(cluster, jar: Path) -> List[str]:
    """The runner flags that turn the DirectRunner command into a Flink one."""
    return ["--runner", "FlinkRunner", "--flink_master", f"127.0.0.1:{cluster.rest_port}",
            "--flink_version", FLINK_MINOR, "--flink_job_server_jar", str(jar),
            "--environment_type", "EXTERNAL", "--environment_config", cluster.worker_pool,
            "--parallelism", "2", "--sdk_worker_parallelism", "2"]


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


def test_trivial_pipelines_run_on_the_cluster(flink_cluster, job_server_jar, tmp_path):
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
    return ["run", "--input", sample.pattern, "--sink", f"sqlite:///{out}/dicomvec.db",
            "--dead-letter", str(out / "dead_letter"), "--provider", "thumbnail",
            "--batch-size", "4", "--run-id", run_id]


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


def _subtasks_with_records(cluster, jid: str, name_part: str) -> int:
    """How many parallel subtasks of the job vertex whose name contains ``name_part`` read
    records (Flink REST, per-subtask metrics of the finished job)."""
    vertices = [v for v in cluster.get(f"/jobs/{jid}")["vertices"] if name_part in v["name"]]
    assert vertices, [v["name"] for v in cluster.get(f"/jobs/{jid}")["vertices"]]
    busiest = 0
    for vertex in vertices:
        subtasks = cluster.get(f"/jobs/{jid}/vertices/{vertex['id']}")["subtasks"]
        busiest = max(busiest, sum(1 for s in subtasks if s["metrics"]["read-records"] > 0))
    return busiest


def test_dicomvec_run_on_flink_exact_counts_on_both_slots(flink_cluster, job_server_jar,
                                                          tmp_path):
    real = REAL_CXR if REAL_CXR.is_dir() and list(REAL_CXR.glob("*.dcm")) else None
    sample = make_sample(tmp_path / "in", 24, real_dir=real)
    before = set(finished_jobs(flink_cluster))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "dicomvec.cli",
                           *_run_args(sample, out, "flink"),
                           *flink_flags(flink_cluster, job_server_jar)],
                          text=True, capture_output=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:] + flink_cluster.tail_logs()
    assert f"images stored        {sample.stored}" in proc.stdout, proc.stdout
    _assert_outcome(sample, out, "flink")
    (jid,) = set(finished_jobs(flink_cluster)) - before
    # GroupIntoBatches with sharded keys: the embedding stage ran on both slots
    assert _subtasks_with_records(flink_cluster, jid, "Embed") >= 2


def test_taskmanager_crash_during_a_job_ends_finished_with_exact_rows(flink_cluster,
                                                                      job_server_jar, tmp_path):
    sample = make_sample(tmp_path / "in", 200)
    out = tmp_path / "out"
    before = {job["jid"] for job in flink_cluster.get("/jobs/overview")["jobs"]}
    job = subprocess.Popen([sys.executable, "-m", "dicomvec.cli", *_run_args(sample, out, "crash"),
                            *flink_flags(flink_cluster, job_server_jar)],
                           text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        def running_job():
            for entry in flink_cluster.get("/jobs/overview")["jobs"]:
                if entry["jid"] not in before and entry["state"] == "RUNNING" \
                        and entry["tasks"]["running"] > 0:
                    return entry["jid"]
            assert job.poll() is None, "the job ended before the TaskManager could be killed"
            return None
        jid = flink_cluster.wait_for(running_job, 300, "the dicomvec job to run", interval=0.2)
        flink_cluster.stop("taskmanager", kill=True)       # crash mid-job
        time.sleep(2)
        flink_cluster.start("taskmanager")                 # a replacement registers
        stdout, stderr = job.communicate(timeout=900)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, stderr[-4000:] + flink_cluster.tail_logs()
    assert flink_cluster.get(f"/jobs/{jid}")["state"] == "FINISHED"
    history = flink_cluster.get(f"/jobs/{jid}/exceptions")["exceptionHistory"]["entries"]
    assert history, "the job finished without a restart: the TaskManager was not killed mid-job"
    _assert_outcome(sample, out, "crash")
