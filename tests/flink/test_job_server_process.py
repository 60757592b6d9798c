"""With ``--runner FlinkRunner --flink_job_server_jar JAR`` Beam's SDK starts the job server as a
child of the driver (``java -jar JAR --flink-master … --job-port …``). Whatever way the driver
ends — a streaming run stopped by Ctrl-C (SIGINT to the process group), SIGINT or SIGTERM to
the driver, or when idle; a batch run stopped the same ways or that finishes; a signal while the
job is still being submitted — that JVM must be gone when the driver is: none may be left running
with no parent (issue 24, item 4). Before the fix SIGTERM during the submission killed the driver
outright (no handler yet) and left the JVM behind; SIGINT there ended in a traceback.

The job-server JVMs are found by scanning ``/proc``: java processes whose command line names the
jar, that the driver started (their parent was the driver while it ran) or that appeared after the
test began (the cluster's own long-running job server is excluded).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Set

import pytest

from tests.flink.conftest import runner_flags, summary_numbers
from tests.flink.mimic_sample import make_sample
from tests.flink.test_streaming_and_stopping import _rows, _running_job, _seed, _streaming_args

pytestmark = [pytest.mark.slow, pytest.mark.flink]

GONE_WITHIN_S = 15.0  # after the driver's exit (Beam's own stop waits up to ~5 s)


def _ppid(pid: int) -> Optional[int]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    if fields[0] == "Z":  # a zombie has exited: not left running
        return None
    return int(fields[1])


def job_server_jvms(jar: Path) -> Dict[int, int]:
    """{pid: parent pid} of the running java processes that are Beam job servers of ``jar``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if not args or os.path.basename(args[0]) != "java" or str(jar) not in args:
            continue
        if not any(a in ("--job-port", "--flink-master") or "FlinkJobServerDriver" in a
                   or "job-server" in a for a in args):
            continue
        ppid = _ppid(int(entry))
        if ppid is not None:
            found[int(entry)] = ppid
    return found


class JobServerWatch:
    """The job-server JVMs of one test: those running before it (not its business), and those
    the driver started (seen as its children while it runs)."""

    def __init__(self, cluster, jar: Path):
        self.jar = jar
        self.before: Set[int] = set(job_server_jvms(jar))
        own = cluster.pid("jobserver")
        if own:
            self.before.add(own)
        self.children: Set[int] = set()

    def note_children(self, driver_pid: int) -> Set[int]:
        self.children |= {pid for pid, ppid in job_server_jvms(self.jar).items()
                          if ppid == driver_pid}
        return self.children

    def wait_for_child(self, proc, timeout: float = 180.0) -> int:
        """The pid of the job server the driver started (fails if it never starts one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.note_children(proc.pid):
                return min(self.children)
            assert proc.poll() is None, f"the driver ended first: {proc.communicate()}"
            time.sleep(0.2)
        raise AssertionError("the driver started no job server JVM")

    def left_behind(self) -> Dict[int, int]:
        """{pid: parent} of the job servers this test's driver started that still run
        ``GONE_WITHIN_S`` after it ended."""
        deadline = time.monotonic() + GONE_WITHIN_S
        while True:
            left = {pid: ppid for pid, ppid in job_server_jvms(self.jar).items()
                    if pid in self.children or pid not in self.before}
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.5)

    def kill_left_behind(self, left: Dict[int, int]) -> None:
        """End what the test's driver left (by pid), so the next tests have a clean machine."""
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _finish(proc, watch: JobServerWatch, timeout: float = 240.0):
    """Wait for the driver (noting its job server children meanwhile); returns its output and
    the job servers it left running."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        watch.note_children(proc.pid)
        time.sleep(0.2)
    try:
        stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return stdout, stderr


def _assert_nothing_left(watch: JobServerWatch, stderr: str) -> None:
    left = watch.left_behind()
    watch.kill_left_behind(left)
    assert not left, (f"job server JVM(s) left running after the driver ended "
                      f"(pid: parent pid): {left}; the driver started {sorted(watch.children)}"
                      f"\n{stderr[-3000:]}")


def _dicomvec(args, tmp_path):
    """The driver in a process group of its own, as a shell starts a command: Ctrl-C in a
    terminal is SIGINT to the whole group (the driver and the job server it started)."""
    return subprocess.Popen([sys.executable, "-m", "dicomvec.cli", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            start_new_session=True)


def _stop(proc, how: str) -> None:
    """``Ctrl-C``: SIGINT to the driver's process group (a terminal's Ctrl-C); ``SIGINT`` /
    ``SIGTERM``: to the driver alone (kill PID)."""
    if how == "Ctrl-C":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(getattr(signal, how))


def _exit_code(how: str) -> int:
    return 128 + int(signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)


def _batch_args(sample, out: Path, run_id: str):
    return ["run", "--input", sample.pattern, "--sink", f"sqlite:///{out}/db.sqlite",
            "--dead-letter", str(out / "dead_letter"), "--provider", "thumbnail",
            "--batch-size", "4", "--run-id", run_id]


@pytest.mark.parametrize("how", ["Ctrl-C", "idle"])  # SIGINT/SIGTERM: the same path
def test_streaming_run_leaves_no_job_server(idle_cluster, job_server_jar, tmp_path, how):
    cluster = idle_cluster
    watch_jvms = JobServerWatch(cluster, job_server_jar)
    sample = make_sample(tmp_path / "src", 4, broken=0, seed=31)
    watch, out = tmp_path / "watch", tmp_path / "out"
    _seed(sample, watch)
    run_id = f"js{how.lower().replace('-', '')}"
    args = _streaming_args(watch, out, run_id, idle=20 if how == "idle" else 0)
    proc = _dicomvec([*args, *runner_flags(cluster, job_server_jar, "FlinkRunner", "EXTERNAL")],
                     tmp_path)
    try:
        watch_jvms.wait_for_child(proc)
        jid = _running_job(cluster, f"dicomvec-{run_id}-", proc)
        cluster.wait_for(lambda: _rows(out / "db.sqlite") >= 1, 180, "the first file stored")
        watch_jvms.note_children(proc.pid)
        if how != "idle":
            _stop(proc, how)
    finally:
        stdout, stderr = _finish(proc, watch_jvms)
    _assert_nothing_left(watch_jvms, stderr)
    assert proc.returncode == 0, (proc.returncode, stderr[-4000:])
    assert summary_numbers(stdout)["rows in store"] >= 1, stdout
    assert cluster.get(f"/jobs/{jid}")["state"] == "CANCELED"


@pytest.mark.parametrize("how", ["SIGTERM", "end"])  # Ctrl-C/SIGINT: the same path
def test_batch_run_leaves_no_job_server(idle_cluster, job_server_jar, tmp_path, how):
    cluster = idle_cluster
    watch_jvms = JobServerWatch(cluster, job_server_jar)
    sample = make_sample(tmp_path / "src", 300 if how != "end" else 8, broken=0, seed=32)
    out = tmp_path / "out"
    run_id = f"jb{how.lower().replace('-', '')}"
    proc = _dicomvec([*_batch_args(sample, out, run_id),
                      *runner_flags(cluster, job_server_jar, "FlinkRunner", "EXTERNAL")],
                     tmp_path)
    try:
        watch_jvms.wait_for_child(proc)
        if how != "end":
            jid = _running_job(cluster, f"dicomvec-{run_id}-", proc)
            watch_jvms.note_children(proc.pid)
            _stop(proc, how)
    finally:
        stdout, stderr = _finish(proc, watch_jvms)
    _assert_nothing_left(watch_jvms, stderr)
    if how == "end":
        assert proc.returncode == 0, (proc.returncode, stderr[-4000:])
        assert summary_numbers(stdout)["images stored"] == sample.stored, stdout
    else:
        assert proc.returncode == _exit_code(how), (proc.returncode, stderr[-4000:])
        assert cluster.get(f"/jobs/{jid}")["state"] == "CANCELED"


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])  # Ctrl-C = SIGINT to the group
def test_a_signal_while_submitting_leaves_no_job_server(idle_cluster, job_server_jar, tmp_path,
                                                        how):
    """The signal comes once the job server is started, before the Flink job runs (the driver
    is still in ``pipeline.run()``): the driver stops, says so, and takes its job server along;
    no Flink job is left running (``idle_cluster`` checks)."""
    cluster = idle_cluster
    watch_jvms = JobServerWatch(cluster, job_server_jar)
    sample = make_sample(tmp_path / "src", 8, broken=0, seed=33)
    out = tmp_path / "out"
    run_id = f"jsub{how.lower().replace('-', '')}"
    proc = _dicomvec([*_batch_args(sample, out, run_id),
                      *runner_flags(cluster, job_server_jar, "FlinkRunner", "EXTERNAL")],
                     tmp_path)
    try:
        watch_jvms.wait_for_child(proc)
        _stop(proc, how)
    finally:
        stdout, stderr = _finish(proc, watch_jvms)
    _assert_nothing_left(watch_jvms, stderr)
    assert proc.returncode == _exit_code(how), (proc.returncode, stderr[-4000:])
    assert "Traceback" not in stderr, stderr[-4000:]
    assert "images stored" not in stdout
    cluster.wait_for(lambda: not cluster.running(), 60, "no Flink job left running")
