"""A cluster that cannot run the job is said so, at once, in one line: no free task slot or no
TaskManager at submission (exit 2, nothing created), and a TaskManager lost while the job runs
(the driver, or Flink once its restarts are spent, ends the job, and the driver exits 1 within
about a minute, in one line naming the missing TaskManager, instead of waiting forever).
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.flink.conftest import runner_flags
from tests.flink.mimic_sample import make_sample
from tests.flink.test_streaming_and_stopping import (_dicomvec, _running_job, _seed,
                                                     _streaming_args)

pytestmark = [pytest.mark.slow, pytest.mark.flink]


def _batch_args(sample, out: Path):
    return ["run", "--input", str(sample.root / "files"), "--sink", f"sqlite:///{out}/db.sqlite",
            "--dead-letter", str(out / "dead_letter"), "--provider", "thumbnail"]


def _one_line_refusal(proc, started: float, limit_s: float):
    stdout, stderr = proc.communicate(timeout=limit_s + 60)
    took = time.monotonic() - started
    assert proc.returncode == 2, (stdout, stderr)
    assert took < limit_s, f"took {took:.0f} s"
    lines = [line for line in stderr.splitlines() if line.startswith("dicomvec")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_no_free_slot_then_a_lost_taskmanager(idle_cluster, job_server_jar, tmp_path):
    cluster = idle_cluster
    sample = make_sample(tmp_path / "src", 6, broken=0, seed=5)
    watch, out = tmp_path / "watch", tmp_path / "out"
    _seed(sample, watch)
    stream = _dicomvec([*_streaming_args(watch, out, "holder", idle=10 ** 6),
                        *runner_flags(cluster, job_server_jar, "PortableRunner", "EXTERNAL")],
                       tmp_path)
    try:
        jid = _running_job(cluster, "dicomvec-holder-", stream)
        cluster.wait_for(lambda: cluster.get("/overview")["slots-available"] == 0, 120,
                         "the stream to hold both slots")

        # a second job: no free slot → one line, exit 2, nothing created
        second = tmp_path / "second"
        started = time.monotonic()
        proc = _dicomvec([*_batch_args(sample, second),
                          *runner_flags(cluster, job_server_jar, "PortableRunner", "EXTERNAL")],
                         tmp_path)
        line = _one_line_refusal(proc, started, 60)
        assert "0 free task slot(s) of 2" in line and "--parallelism" in line, line
        assert not second.exists(), list(second.rglob("*"))

        # the TaskManager dies for good: the running job's driver says so within ~a minute
        cluster.stop("taskmanager", kill=True)
        lost = time.monotonic()
        stdout, stderr = stream.communicate(timeout=240)
        took = time.monotonic() - lost
        assert stream.returncode == 1, (stdout, stderr[-3000:])
        assert took < 150, f"the driver noticed the lost TaskManager after {took:.0f} s"
        # Two routes, both one line naming the missing TaskManager: dicomvec's own watch
        # cancels the job after its grace ("has had no TaskManager for 60 s") while Flink keeps
        # restarting it (its ResourceManager's start-up period, or restart attempts left), or
        # Flink fails the job first, its restarts spent on slot requests that fail at once
        # ("NoResourceAvailableException", beside which dicomvec says the cluster has none).
        errors = [line for line in stderr.splitlines() if line.startswith("dicomvec: error:")]
        assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
        assert re.search(r"has (had )?no TaskManager", errors[0]), errors[0]
        assert cluster.get(f"/jobs/{jid}")["state"] in ("CANCELED", "FAILED")

        # submitting now: no TaskManager → one line, exit 2, nothing created
        third = tmp_path / "third"
        started = time.monotonic()
        proc = _dicomvec([*_batch_args(sample, third),
                          *runner_flags(cluster, job_server_jar, "PortableRunner", "EXTERNAL")],
                         tmp_path)
        line = _one_line_refusal(proc, started, 60)
        assert "has no TaskManager" in line, line
        assert not third.exists()

        # what the driver adds to a failed job's line when the cluster has no TaskManager (the
        # second route above), read from this cluster's REST API; nothing when it has one
        from apache_beam.options.pipeline_options import PipelineOptions

        from dicomvec.pipeline.job_monitor import JobMonitor
        options = PipelineOptions(["--flink_master", f"127.0.0.1:{cluster.rest_port}"])
        monitor = JobMonitor(None, options, "any", submitted_ms=0)
        assert monitor._cluster_note().startswith(
            f"the Flink cluster at http://127.0.0.1:{cluster.rest_port} has no TaskManager now")
        cluster.start("taskmanager")
        cluster.wait_for(lambda: cluster.get("/overview")["taskmanagers"] == 1, 120,
                         "a new TaskManager")
        assert monitor._cluster_note() == ""
    finally:
        if stream.poll() is None:
            stream.kill()
        if cluster.pid("taskmanager") is None:
            cluster.start("taskmanager")
