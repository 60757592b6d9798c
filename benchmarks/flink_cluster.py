"""A private local Flink session cluster for benchmarks: ``scripts/flink/start.sh`` / ``stop.sh``
on free ports with its own run folder, the REST API, the flags that send ``dicomvec run`` to it,
and the TaskManager's JVM (pid, heap, live-object histogram) for memory measurements.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

from benchmarks.common import REPO

SCRIPTS = REPO / "scripts" / "flink"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """start.sh / stop.sh with its own ports and run folder (``env`` adds settings such as
    ``FLINK_TM_MEMORY`` or ``FLINK_JOB_SERVER_JAR``)."""

    def __init__(self, run_dir: Path, **env: str):
        self.run_dir = Path(run_dir)
        self.ports = {name: _free_port() for name in ("rest", "rpc", "pool", "job")}
        self.env = dict(os.environ, PYTHON=sys.executable, FLINK_RUN_DIR=str(run_dir),
                        FLINK_REST_PORT=str(self.ports["rest"]),
                        FLINK_RPC_PORT=str(self.ports["rpc"]),
                        BEAM_WORKER_POOL_PORT=str(self.ports["pool"]),
                        BEAM_JOB_PORT=str(self.ports["job"]), **env)

    def script(self, name: str, *args: str) -> None:
        subprocess.run(["bash", str(SCRIPTS / name), *args], env=self.env, check=True,
                       timeout=600)

    def get(self, path: str):
        url = f"http://127.0.0.1:{self.ports['rest']}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def flags(self, parallelism: int) -> List[str]:
        return ["--runner", "PortableRunner", "--job_endpoint", f"127.0.0.1:{self.ports['job']}",
                "--flink_master", f"127.0.0.1:{self.ports['rest']}",
                "--environment_type", "EXTERNAL",
                "--environment_config", f"127.0.0.1:{self.ports['pool']}",
                "--parallelism", str(parallelism), "--sdk_worker_parallelism", str(parallelism)]

    def job(self, run_id: str) -> Dict:
        jobs = [j for j in self.get("/jobs/overview")["jobs"]
                if j["name"].startswith(f"dicomvec-{run_id}-")]
        return max(jobs, key=lambda j: j["start-time"])

    def decode_records(self, run_id: str) -> List[int]:
        """Records read by each subtask of the job's Decode vertex."""
        jid = self.job(run_id)["jid"]
        for vertex in self.get(f"/jobs/{jid}")["vertices"]:
            if "Decode" in vertex["name"]:
                subtasks = self.get(f"/jobs/{jid}/vertices/{vertex['id']}")["subtasks"]
                return [s["metrics"]["read-records"] for s in subtasks]
        return []

    # --- the TaskManager's JVM -------------------------------------------------------------
    def pid(self, component: str) -> Optional[int]:
        pidfile = self.run_dir / "pid" / f"{component}.pid"
        try:
            pid = int(pidfile.read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def taskmanager_metrics(self, *names: str) -> Dict[str, float]:
        """Flink REST metrics of the (one) TaskManager, e.g. ``Status.JVM.Memory.Heap.Used``."""
        tms = self.get("/taskmanagers")["taskmanagers"]
        if not tms:
            return {}
        got = self.get(f"/taskmanagers/{tms[0]['id']}/metrics?get={','.join(names)}")
        return {m["id"]: float(m["value"]) for m in got}

    def live_histogram(self) -> Dict[str, object]:
        """A full GC, then the live objects by class (``jcmd GC.class_histogram``): total live
        bytes and instances, and the top classes by bytes."""
        pid = self.pid("taskmanager")
        if pid is None:
            return {}
        out = subprocess.run(["jcmd", str(pid), "GC.class_histogram"], capture_output=True,
                             text=True, timeout=300).stdout
        rows, total = [], None
        for line in out.splitlines():
            row = re.match(r"\s*\d+:\s+(\d+)\s+(\d+)\s+(\S+)", line)
            if row:
                rows.append((row.group(3), int(row.group(1)), int(row.group(2))))
            elif line.startswith("Total"):
                _, instances, size = line.split()
                total = (int(instances), int(size))
        by_class = {name: {"instances": n, "bytes": b} for name, n, b in rows}
        return {"live_bytes": total[1] if total else None,
                "live_instances": total[0] if total else None,
                "top": dict(list(by_class.items())[:15]),
                "by_class": by_class}
