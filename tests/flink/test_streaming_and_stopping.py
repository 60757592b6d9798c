"""``dicomvec run --streaming`` on Flink, and stopping jobs: files copied into the watched folder
during the run are stored within two watch intervals; the driver's progress, idle detection and
summary work although the portable runner reports no metrics while the job runs (dicomvec reads
Flink's REST metrics); an idle stop, Ctrl-C (SIGINT) or SIGTERM cancels the Flink job (checked
through Flink's REST API: never left RUNNING); a batch job interrupted mid-way is cancelled and
the driver exits non-zero saying so.
"""
from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dicomvec.io.dead_letter import read_dead_letters
from tests.flink.conftest import runner_flags, summary_numbers
from tests.flink.mimic_sample import make_sample

pytestmark = [pytest.mark.slow, pytest.mark.flink]

WATCH_INTERVAL = 15.0


def _rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM MIMICCXRImages").fetchone()[0]
    except sqlite3.OperationalError:   # table not created yet / locked by a writer
        return 0


def _dicomvec(args, tmp_path):
    return subprocess.Popen([sys.executable, "-m", "dicomvec.cli", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)


def _running_job(cluster, prefix: str, proc):
    def find():
        for job in cluster.jobs(prefix):
            if job["state"] == "RUNNING" and job["tasks"]["running"] > 0:
                return job["jid"]
        assert proc.poll() is None, f"the driver ended first: {proc.communicate()}"
        return None
    return cluster.wait_for(find, 300, f"a running Flink job {prefix}*", interval=0.5)


def _streaming_args(watch: Path, out: Path, run_id: str, idle: float):
    return ["run", "--input", str(watch / "**" / "*.dcm"), "--sink", f"sqlite:///{out}/db.sqlite",
            "--dead-letter", str(out / "dead_letter"), "--provider", "thumbnail",
            "--batch-size", "4", "--run-id", run_id, "--streaming",
            "--watch-interval", str(WATCH_INTERVAL), "--settle-seconds", "2", "--batch-wait", "2",
            "--dead-letter-frequency", "5", "--stop-after-idle", str(idle)]


def _seed(sample, watch: Path) -> Path:
    """Copy one good synthetic file into the watched folder (the input must match at start)."""
    first = min(p for p in (sample.root / "files").rglob("*.dcm")
                if str(p) not in sample.broken_paths)
    target = watch / first.relative_to(sample.root)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(first, target)
    return first


def test_streaming_on_flink_stores_new_files_and_stops_when_idle(idle_cluster, job_server_jar,
                                                                 tmp_path):
    cluster = idle_cluster
    sample = make_sample(tmp_path / "src", 12, broken=2, seed=21)
    watch, out = tmp_path / "watch", tmp_path / "out"
    seeded = _seed(sample, watch)
    proc = _dicomvec([*_streaming_args(watch, out, "stream", idle=25),
                      *runner_flags(cluster, job_server_jar, "PortableRunner", "EXTERNAL")],
                     tmp_path)
    try:
        jid = _running_job(cluster, "dicomvec-stream-", proc)
        cluster.wait_for(lambda: _rows(out / "db.sqlite") == 1, 180, "the first file stored")
        copied = time.monotonic()                       # the rest arrive during the run
        for path in sorted((sample.root / "files").rglob("*.dcm")):
            if path != seeded:
                target = watch / path.relative_to(sample.root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
        cluster.wait_for(lambda: _rows(out / "db.sqlite") == sample.stored, 2 * WATCH_INTERVAL,
                         "the copied files stored within two watch intervals")
        latency = time.monotonic() - copied
        stdout, stderr = proc.communicate(timeout=300)  # idle stop
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-4000:] + cluster.tail_logs()
    assert cluster.get(f"/jobs/{jid}")["state"] == "CANCELED"
    assert "idle for" in stderr and "progress: matched" in stderr, stderr[-3000:]
    numbers = summary_numbers(stdout)
    assert numbers["files matched"] == sample.stored + len(sample.broken_paths), stdout
    assert numbers["images stored"] == numbers["rows in store"] == sample.stored, stdout
    assert numbers["decode"] == len(sample.broken_paths), stdout
    rows = read_dead_letters(str(out / "dead_letter"), "stream")
    assert {r["path"] for r in rows} == {str(watch / Path(p).relative_to(sample.root))
                                         for p in sample.broken_paths}
    print(f"copied files stored {latency:.1f} s after the copy (watch interval {WATCH_INTERVAL})")


@pytest.mark.parametrize("streaming, sig, environment", [
    (True, signal.SIGINT, "LOOPBACK"),
    (False, signal.SIGTERM, "EXTERNAL"),
], ids=["streaming-SIGINT-loopback", "batch-SIGTERM-external"])
def test_a_signal_cancels_the_flink_job(idle_cluster, job_server_jar, tmp_path, streaming, sig,
                                        environment):
    cluster = idle_cluster
    out = tmp_path / "out"
    run_id = f"sig{int(sig)}"
    if streaming:
        sample = make_sample(tmp_path / "src", 4, broken=0, seed=23)
        watch = tmp_path / "watch"
        _seed(sample, watch)
        args = _streaming_args(watch, out, run_id, idle=0)
        flags = runner_flags(cluster, job_server_jar, "PortableRunner", environment)
    else:
        sample = make_sample(tmp_path / "src", 300, broken=0, seed=24)
        args = ["run", "--input", sample.pattern, "--sink", f"sqlite:///{out}/db.sqlite",
                "--dead-letter", str(out / "dead_letter"), "--provider", "thumbnail",
                "--batch-size", "4", "--run-id", run_id]
        flags = runner_flags(cluster, job_server_jar, "FlinkRunner", environment)
    proc = _dicomvec([*args, *flags], tmp_path)
    try:
        jid = _running_job(cluster, f"dicomvec-{run_id}-", proc)
        if streaming:   # signal a job that is working, not one still starting
            cluster.wait_for(lambda: _rows(out / "db.sqlite") >= 1, 180, "the first file stored")
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    name = signal.Signals(sig).name
    if streaming:   # the documented end of a stream: the job is cancelled, the summary printed
        assert proc.returncode == 0, (proc.returncode, stderr[-4000:])
        assert f"stopped by {name}: Flink job {jid} CANCELED" in stderr, stderr[-3000:]
        assert summary_numbers(stdout)["rows in store"] >= 1, stdout
    else:
        assert proc.returncode == 128 + int(sig), (proc.returncode, stderr[-4000:])
        assert f"interrupted by {name}: Flink job {jid} CANCELED" in stderr, stderr[-3000:]
    assert cluster.get(f"/jobs/{jid}")["state"] == "CANCELED"
    assert not cluster.running()
    if not streaming:   # stopped mid-way: not everything is stored, and the summary says so
        assert _rows(out / "db.sqlite") < sample.stored
        assert "images stored" not in stdout
