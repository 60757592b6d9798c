"""Fixtures for the Flink tests: a standalone session cluster (JobManager + one TaskManager with
2 slots + the Beam worker pool, all on 127.0.0.1) started by ``scripts/flink/start.sh`` on free
ports with its run directory in a temp folder, and stopped by ``stop.sh`` afterwards.

``scripts/flink/setup.sh`` runs first (idempotent: downloads Flink from PyPI on a fresh machine).
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "flink"
FLINK_MINOR = "1.19"
COMPONENTS = ("jobmanager", "taskmanager", "workerpool", "jobserver")
TERMINAL = {"FINISHED", "CANCELED", "FAILED", "SUSPENDED"}
NO_TASKMANAGER_GRACE_S = 30.0  # a TaskManager gone this long fails the waiting test at once


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FlinkCluster:
    """Handle on the running cluster: its scripts, REST API, pids and logs."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.setup_log = ""
        self.rest_port, self.rpc_port, self.pool_port = free_port(), free_port(), free_port()
        self.job_port = free_port()
        self.env = dict(os.environ,
                        PYTHON=sys.executable,
                        FLINK_RUN_DIR=str(run_dir),
                        FLINK_REST_PORT=str(self.rest_port),
                        FLINK_RPC_PORT=str(self.rpc_port),
                        BEAM_WORKER_POOL_PORT=str(self.pool_port),
                        BEAM_JOB_PORT=str(self.job_port))

    # --- scripts -------------------------------------------------------------------------
    def script(self, name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", str(SCRIPTS / name), *args], env=self.env, text=True,
                              capture_output=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"{name} {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}\n{self.tail_logs()}")
        return proc

    def start(self, *components: str):
        return self.script("start.sh", *components)

    def stop(self, *components: str, kill: bool = False):
        return self.script("stop.sh", *(["--kill"] if kill else []), *components)

    # --- state ---------------------------------------------------------------------------
    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def worker_pool(self) -> str:
        return f"127.0.0.1:{self.pool_port}"

    @property
    def job_endpoint(self) -> str:
        return f"127.0.0.1:{self.job_port}"

    def get(self, path: str):
        with urllib.request.urlopen(self.rest + path, timeout=10) as response:
            return json.loads(response.read())

    def jobs(self, name_prefix: str = "") -> List[dict]:
        """Flink jobs (REST /jobs/overview) whose name starts with ``name_prefix``."""
        return [job for job in self.get("/jobs/overview")["jobs"]
                if job["name"].startswith(name_prefix)]

    def final_state(self, jid: str, timeout: float = 20.0) -> str:
        """The job's state once ``/jobs/<jid>`` reports a terminal one. That endpoint serves a
        cached execution graph, refreshed every ``web.refresh-interval`` (3 s by default): right
        after the driver saw the job end it may still say RUNNING."""
        return self.wait_for(lambda: (lambda state: state if state in TERMINAL else None)(
            self.get(f"/jobs/{jid}")["state"]), timeout, f"job {jid} to reach a final state")

    def running(self) -> List[dict]:
        return [job for job in self.jobs() if job["state"] not in TERMINAL]

    def cancel_all(self) -> None:
        """Cancel whatever a failed test left running (so the next test has the slots)."""
        for job in self.running():
            request = urllib.request.Request(f"{self.rest}/jobs/{job['jid']}?mode=cancel",
                                             method="PATCH")
            urllib.request.urlopen(request, timeout=10).read()

    def pid(self, component: str) -> Optional[int]:
        pidfile = self.run_dir / "pid" / f"{component}.pid"
        if not pidfile.exists():
            return None
        pid = int(pidfile.read_text())
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def log(self, name: str) -> str:
        path = self.run_dir / "log" / name
        return path.read_text(errors="replace") if path.exists() else ""

    def tail_logs(self, lines: int = 40) -> str:
        out = []
        for path in sorted((self.run_dir / "log").glob("*")):
            out.append(f"--- {path.name}\n" + "\n".join(
                path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def taskmanager_problem(self) -> Optional[str]:
        """Why the cluster has no working TaskManager (its process is gone, or the JobManager
        lists none), or None."""
        if self.pid("taskmanager") is None:
            return "the TaskManager process is gone"
        try:
            if self.get("/overview")["taskmanagers"] == 0:
                return "the JobManager lists no TaskManager (lost: heartbeats timed out)"
        except OSError as exc:
            return f"the Flink REST API does not answer ({exc})"
        return None

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 0.5,
                 taskmanager_grace: Optional[float] = NO_TASKMANAGER_GRACE_S):
        """Poll ``predicate`` until it is truthy. Fails at once when the TaskManager has been
        gone for ``taskmanager_grace`` s (None: a test that kills it on purpose), rather than
        waiting out ``timeout`` on a cluster that cannot run anything."""
        deadline = time.monotonic() + timeout
        last, gone_since, next_check = None, None, 0.0
        while time.monotonic() < deadline:
            try:
                last = predicate()
                if last:
                    return last
            except OSError as exc:  # REST not answering (yet)
                last = exc
            if taskmanager_grace is not None and time.monotonic() >= next_check:
                next_check = time.monotonic() + 5
                problem = self.taskmanager_problem()
                gone_since = (gone_since or time.monotonic()) if problem else None
                if problem and time.monotonic() - gone_since >= taskmanager_grace:
                    raise AssertionError(f"{problem} (for {taskmanager_grace:.0f} s) while "
                                         f"waiting for {what}\n{self.tail_logs()}")
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last})\n"
                             f"{self.tail_logs()}")

    def job_server_jar(self) -> Optional[Path]:
        """The Beam Flink job server jar setup.sh installed (or FLINK_JOB_SERVER_JAR), if any."""
        proc = subprocess.run(
            ["bash", "-c", f'source "{SCRIPTS}/env.sh" && echo "$FLINK_JOB_SERVER_JAR"'],
            env=self.env, text=True, capture_output=True, check=True)
        jar = Path(proc.stdout.strip())
        return jar if jar.is_file() else None


@pytest.fixture(scope="session")
def flink_setup() -> Dict[str, str]:
    """Run scripts/flink/setup.sh (idempotent); fails the test if Flink cannot be installed."""
    proc = subprocess.run(["bash", str(SCRIPTS / "setup.sh")], env=dict(os.environ,
                          PYTHON=sys.executable), text=True, capture_output=True, timeout=1800)
    assert proc.returncode == 0, f"setup.sh failed:\n{proc.stdout}\n{proc.stderr}"
    return {"log": proc.stderr}


@pytest.fixture(scope="session")
def flink_cluster(flink_setup, tmp_path_factory) -> FlinkCluster:
    """A running cluster for the whole session; everything it started is stopped at the end."""
    cluster = FlinkCluster(tmp_path_factory.mktemp("flink-run"))
    cluster.setup_log = flink_setup["log"]
    try:
        cluster.start()
        yield cluster
        assert not cluster.running(), "a test left a Flink job running"
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop.sh")], env=cluster.env, timeout=120)
        for component in COMPONENTS:
            assert cluster.pid(component) is None, f"{component} still running after stop.sh"


@pytest.fixture
def job_server_jar(flink_cluster) -> Path:
    """The Beam Flink job server jar; the test is skipped (with the reason) when there is none."""
    jar = flink_cluster.job_server_jar()
    if jar is None:
        reason = (f"no Beam Flink job server: the Maven registry did not serve "
                  f"beam-runners-flink-{FLINK_MINOR}-job-server for this apache-beam version and "
                  f"../shared/flink-jobserver (DICOMVEC_SHARED) could not be built; set "
                  f"FLINK_JOB_SERVER_JAR. setup.sh said:\n{flink_cluster.setup_log}")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI must run the Flink tests: " + reason)
        pytest.skip(reason)
    return jar


@pytest.fixture
def idle_cluster(flink_cluster):
    """The cluster with no job running before and after the test (a left-over job would hold
    the slots); a test that leaves one RUNNING fails here. A cluster that lost its TaskManager
    (e.g. to a crash in an earlier test) fails the test at once, saying so, and gets a new
    TaskManager for the tests after it."""
    problem = flink_cluster.taskmanager_problem()
    if problem:
        logs = flink_cluster.tail_logs()
        flink_cluster.cancel_all()
        flink_cluster.stop("taskmanager", kill=True)
        flink_cluster.start("taskmanager")
        pytest.fail(f"the Flink cluster had no working TaskManager before this test: {problem} "
                    f"(a new one was started for the next tests)\n{logs}")
    flink_cluster.wait_for(lambda: not flink_cluster.running(), 120, "no running Flink job")
    yield flink_cluster
    left = flink_cluster.running()
    flink_cluster.cancel_all()
    assert not left, f"the test left Flink jobs running: {left}"


def runner_flags(cluster, jar: Optional[Path], runner: str = "FlinkRunner",
                 environment: str = "EXTERNAL", parallelism: int = 2) -> List[str]:
    """Flags that turn the DirectRunner command line into a Flink one. ``FlinkRunner``: the
    driver starts the job server from ``jar``; ``PortableRunner``: the cluster's long-running
    job server. ``--flink_master`` in both, so dicomvec can watch and cancel the Flink job."""
    flags = ["--runner", runner, "--flink_master", f"127.0.0.1:{cluster.rest_port}",
             "--parallelism", str(parallelism), "--environment_type", environment]
    if runner == "FlinkRunner":
        flags += ["--flink_version", FLINK_MINOR, "--flink_job_server_jar", str(jar)]
    else:
        flags += ["--job_endpoint", cluster.job_endpoint]
    if environment == "EXTERNAL":
        flags += ["--environment_config", cluster.worker_pool,
                  "--sdk_worker_parallelism", str(parallelism)]
    return flags


def summary_numbers(stdout: str) -> Dict[str, int]:
    """The numbers of ``dicomvec run``'s summary: {"files matched": n, "images stored": n,
    "dead-lettered": n, "decode": n, ...}."""
    numbers = {}
    for line in stdout.splitlines():
        match = re.match(r"\s+([a-z][a-z -]*?)\s{2,}(\d+)\b", line)
        if match:
            numbers.setdefault(match.group(1), int(match.group(2)))
    return numbers


def subtasks_with_records(cluster, jid: str, name_part: str) -> List[int]:
    """For each job vertex whose name contains ``name_part``: how many of its parallel subtasks
    read records (Flink REST, per-subtask metrics)."""
    vertices = [v for v in cluster.get(f"/jobs/{jid}")["vertices"] if name_part in v["name"]]
    assert vertices, [v["name"] for v in cluster.get(f"/jobs/{jid}")["vertices"]]
    return [sum(1 for s in cluster.get(f"/jobs/{jid}/vertices/{v['id']}")["subtasks"]
                if s["metrics"]["read-records"] > 0) for v in vertices]
