"""Fixtures for the Flink tests: a standalone session cluster (JobManager + one TaskManager with
2 slots + the Beam worker pool, all on 127.0.0.1) started by ``scripts/flink/start.sh`` on free
ports with its run directory in a temp folder, and stopped by ``stop.sh`` afterwards.

``scripts/flink/setup.sh`` runs first (idempotent: downloads Flink from PyPI on a fresh machine).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "flink"
FLINK_MINOR = "1.20"
COMPONENTS = ("jobmanager", "taskmanager", "workerpool", "jobserver")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FlinkCluster:
    """Handle on the running cluster: its scripts, REST API, pids and logs."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.rest_port, self.rpc_port, self.pool_port = free_port(), free_port(), free_port()
        self.env = dict(os.environ,
                        PYTHON=sys.executable,
                        FLINK_RUN_DIR=str(run_dir),
                        FLINK_REST_PORT=str(self.rest_port),
                        FLINK_RPC_PORT=str(self.rpc_port),
                        BEAM_WORKER_POOL_PORT=str(self.pool_port),
                        BEAM_JOB_PORT=str(free_port()))

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

    def get(self, path: str):
        with urllib.request.urlopen(self.rest + path, timeout=10) as response:
            return json.loads(response.read())

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

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 0.5):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
                if last:
                    return last
            except OSError as exc:  # REST not answering (yet)
                last = exc
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
    try:
        cluster.start()
        yield cluster
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop.sh")], env=cluster.env, timeout=120)
        for component in COMPONENTS:
            assert cluster.pid(component) is None, f"{component} still running after stop.sh"


@pytest.fixture
def job_server_jar(flink_cluster) -> Path:
    """The Beam Flink job server jar; the test is skipped (with the reason) when there is none."""
    jar = flink_cluster.job_server_jar()
    if jar is None:
        pytest.skip("no Beam Flink job server jar: the Maven registry did not serve "
                    "org.apache.beam:beam-runners-flink-1.20-job-server for this apache-beam "
                    "version (see .cache/flink/jobserver/mvn.log); set FLINK_JOB_SERVER_JAR")
    return jar
