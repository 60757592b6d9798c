"""Streaming soak: ``dicomvec run --streaming`` on the local Flink cluster for a long time with
files arriving all along; does the TaskManager's memory stay flat, and does every file end
somewhere?

The run (all on this machine):

* a private cluster (``scripts/flink/start.sh`` on free ports: one TaskManager, 2 slots, the
  EXTERNAL Python worker pool, the Beam job server ``setup.sh`` installed);
* the NV-CLIP contract server in its own process, with ``--latency`` per request (slow
  embedding builds a backlog) and ``--fault-rate`` of requests answered 500 / 429 / dropped;
* ``dicomvec run --streaming --provider nvclip`` into SQLite, ``--parallelism 2``;
* a feeder copying ``--files`` files into the watched folder at a steady rate over
  ``--minutes`` (copied beside the pattern, then renamed in): new synthetic DICOMs, with about
  2 % each of broken files (truncated, not DICOM), duplicate copies (same ImageID in another
  study folder) and rewrites (a stored file written again);
* a sampler: every ``--sample-every`` s the TaskManager's heap and GC counts (Flink REST) and
  the RSS of the TaskManager and of the Python workers; every ``--histogram-every`` s a full GC
  and the live objects by class (``jcmd GC.class_histogram``): live heap, and the keyed state
  the TaskManager holds (registered state tables, entries);
* when the feeder is done and every file is stored or dead-lettered, the driver stops the job
  (``--stop idle``: ``--stop-after-idle``; ``--stop sigterm``: SIGTERM) and must cancel it.

Results (``--json``): the samples over time, the histograms, the end-to-end delay per file
(copy → row written), the accounting (every fed path stored, duplicate or dead-lettered), job
restarts, and the targets: live heap at the end within 10 % of live heap at 5 minutes (only
for runs of ≥ 10 minutes), no restart, every file accounted for, the job cancelled cleanly.

    PYTHONPATH=. .venv/bin/python -m benchmarks.streaming_soak --minutes 30 --files 5000

``run_soak()`` is what ``tests/flink/test_streaming_soak.py`` runs (a few minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

from benchmarks.common import REPO, cached_archive, descendants, machine, server_process, \
    status_mb
from benchmarks.flink_cluster import SCRIPTS, Cluster
from dicomvec import synthetic

HEAP_METRICS = ("Status.JVM.Memory.Heap.Used", "Status.JVM.Memory.Heap.Max",
                "Status.JVM.GarbageCollector.G1_Young_Generation.Count",
                "Status.JVM.GarbageCollector.G1_Old_Generation.Count")
# Flink's heap keyed-state classes: one StateTable per registered state, one entry per key
STATE_CLASSES = {
    "state_tables": "org.apache.flink.runtime.state.heap.CopyOnWriteStateTable",
    "state_maps": "org.apache.flink.runtime.state.heap.CopyOnWriteStateMap",
    "state_entries": "org.apache.flink.runtime.state.heap.CopyOnWriteStateMap$StateMapEntry",
}
TARGET_HEAP_GROWTH = 0.10
IMAGE_SIZE = (256, 208)


def _now() -> float:
    return time.time()


class Feeder(threading.Thread):
    """Copies the planned files into ``watch`` at a steady rate; records when each landed."""

    def __init__(self, plan: List[Dict], watch: Path, seconds: float):
        super().__init__(daemon=True)
        self.plan, self.watch, self.seconds = plan, watch, seconds
        self.landed: List[Dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        start = _now()
        for index, item in enumerate(self.plan):
            due = start + self.seconds * index / max(1, len(self.plan))
            if self.stop.wait(max(0.0, due - _now())):
                return
            target = self.watch / item["target"]
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".part")  # outside the *.dcm pattern
            shutil.copyfile(item["source"], partial)
            os.replace(partial, target)
            self.landed.append({**item, "landed_at": _now()})


def make_plan(pool: List[Path], broken: List[Path], count: int, seed: int) -> List[Dict]:
    """``count`` arrivals: new good files, with ~2 % broken, ~2 % duplicate copies (same stem
    in another study folder) and ~2 % rewrites of a file already fed."""
    rng = random.Random(seed)
    plan, fed, goods = [], [], iter(pool)
    broken_left = list(broken)
    for index in range(count):
        roll = rng.random()
        if roll < 0.02 and broken_left:
            source = broken_left.pop()
            plan.append({"kind": "broken", "source": source,
                         "target": str(source.relative_to(source.parents[4]))})
        elif roll < 0.04 and fed:
            original = rng.choice(fed)
            target = Path(original["target"])
            copy = target.parent.with_name(target.parent.name + f"9{index}") / target.name
            plan.append({"kind": "duplicate", "source": original["source"], "target": str(copy)})
        elif roll < 0.06 and fed:
            original = rng.choice(fed)
            plan.append({"kind": "rewrite", "source": original["source"],
                         "target": original["target"]})
        else:
            source = next(goods)
            item = {"kind": "new", "source": source,
                    "target": str(source.relative_to(source.parents[4]))}
            plan.append(item)
            fed.append(item)
    return plan


class Sampler(threading.Thread):
    """Heap / GC / RSS every ``every`` s; a live histogram every ``histogram_every`` s."""

    def __init__(self, cluster: Cluster, every: float, histogram_every: float,
                 rows: "callable"):
        super().__init__(daemon=True)
        self.cluster, self.every, self.histogram_every = cluster, every, histogram_every
        self.rows = rows
        self.samples: List[Dict] = []
        self.histograms: List[Dict] = []
        self.stop = threading.Event()
        self.start_time = _now()

    def histogram(self, label: str) -> Dict:
        hist = self.cluster.live_histogram()
        by_class = hist.pop("by_class", {})
        state = {name: by_class.get(cls, {"instances": 0, "bytes": 0})
                 for name, cls in STATE_CLASSES.items()}
        entry = {"t_s": round(_now() - self.start_time, 1), "label": label,
                 "rows": self.rows(), **hist, "state": state}
        self.histograms.append(entry)
        return entry

    def run(self) -> None:
        next_hist = self.start_time + self.histogram_every
        while not self.stop.wait(self.every):
            sample = {"t_s": round(_now() - self.start_time, 1), "rows": self.rows()}
            try:
                metrics = self.cluster.taskmanager_metrics(*HEAP_METRICS)
                sample.update({k.replace("Status.JVM.", ""): v for k, v in metrics.items()})
            except OSError as exc:
                sample["rest_error"] = str(exc)
            tm = self.cluster.pid("taskmanager")
            pool = self.cluster.pid("workerpool")
            sample["taskmanager_rss_mb"] = status_mb("VmRSS", tm) if tm else None
            if pool:
                workers = [status_mb("VmRSS", pid) or 0 for pid in descendants(pool)]
                sample["python_workers_rss_mb"] = round(sum(workers), 1)
                sample["python_worker_max_rss_mb"] = round(max(workers or [0]), 1)
            self.samples.append(sample)
            if _now() >= next_hist:
                self.histogram(f"{round((_now() - self.start_time) / 60, 1)} min")
                next_hist += self.histogram_every


def _store_rows(db: Path) -> Dict[str, Dict]:
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return {image_id: {"path": path, "created_at": created}
                    for image_id, path, created in conn.execute(
                        "SELECT ImageID, ImagePath, CreatedAt FROM MIMICCXRImages")}
    except sqlite3.OperationalError:
        return {}


def _row_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return conn.execute("SELECT COUNT(*) FROM MIMICCXRImages").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _dead_letters(out: Path) -> List[Dict]:
    from dicomvec.io.dead_letter import read_dead_letters
    try:
        return read_dead_letters(str(out / "dead_letter"))
    except (OSError, ValueError):  # a Parquet file being written
        return []


def _epoch(created_at: str) -> float:
    return datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()


def _percentile(values: List[float], share: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1)


def account(landed: List[Dict], watch: Path, rows: Dict[str, Dict], dead: List[Dict]) -> Dict:
    """Every fed path stored (its ImageID has a row), a duplicate copy, or dead-lettered."""
    dead_paths = {row["path"] for row in dead}
    stem = lambda item: Path(item["target"]).stem  # noqa: E731 (MIMIC: ImageID = file stem)
    missing, delays = [], []
    kinds: Dict[str, int] = {}
    for item in landed:
        kinds[item["kind"]] = kinds.get(item["kind"], 0) + 1
        path = str(watch / item["target"])
        if item["kind"] == "broken":
            if path not in dead_paths:
                missing.append(path)
            continue
        row = rows.get(stem(item))
        if row is None and path not in dead_paths:
            missing.append(path)
        if row is not None and item["kind"] == "new":
            delays.append(_epoch(row["created_at"]) - item["landed_at"])
    rewrites_rewritten = sum(
        1 for item in landed if item["kind"] == "rewrite" and stem(item) in rows
        and _epoch(rows[stem(item)]["created_at"]) >= item["landed_at"])
    return {"fed": kinds, "rows": len(rows), "dead_lettered_paths": len(dead_paths),
            "dead_letters_by_stage": _by_stage(dead), "not_accounted": len(missing),
            "not_accounted_examples": missing[:10],
            "rewrites_written_again": rewrites_rewritten,
            "delay_s": {"p50": _percentile(delays, 0.5), "p95": _percentile(delays, 0.95),
                        "max": round(max(delays), 1) if delays else None,
                        "files": len(delays)}}


def _by_stage(dead: List[Dict]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for row in dead:
        out[row["stage"]] = out.get(row["stage"], 0) + 1
    return out


def _flink_job(cluster: Cluster, run_id: str) -> Dict:
    job = cluster.job(run_id)
    detail = cluster.get(f"/jobs/{job['jid']}")
    exceptions = cluster.get(f"/jobs/{job['jid']}/exceptions")
    restarts = None
    try:
        got = cluster.get(f"/jobs/{job['jid']}/metrics?get=numRestarts")
        restarts = int(float(got[0]["value"])) if got else None
    except (OSError, IndexError, KeyError, ValueError):
        pass
    return {"state": detail["state"], "duration_s": round(detail["duration"] / 1000, 1),
            "restarts": restarts,
            "exception_history": len(exceptions.get("exceptionHistory", {}).get("entries", [])),
            "root_exception": (exceptions.get("root-exception") or "")[:500]}


def run_soak(work: Path, minutes: float, files: int, *, watch_interval: float = 10.0,
             latency: float = 0.2, fault_rate: float = 0.03, sample_every: float = 10.0,
             histogram_every: float = 300.0, stop: str = "idle", parallelism: int = 2,
             cache: Optional[Path] = None, cluster_env: Optional[Dict[str, str]] = None,
             drain_timeout: float = 900.0, seed: int = 0) -> Dict:
    """One soak run; returns the results (see the module docstring). Starts and stops its own
    cluster and contract server."""
    work = Path(work)
    cache = Path(cache or REPO / ".cache" / "bench-soak")
    n_good = int(files * 0.95) + 10
    pool_root = cached_archive(cache, n_good, IMAGE_SIZE, ("native",), seed=seed)
    broken_root = work / "broken"
    synthetic.generate(broken_root, 0, IMAGE_SIZE, ("native",), broken=max(2, files // 40),
                       seed=seed + 1)
    plan = make_plan(sorted((pool_root / "files").rglob("*.dcm")),
                     sorted((broken_root / "files").rglob("*.dcm")), files, seed)
    watch, out = work / "watch", work / "out"
    watch.mkdir(parents=True)
    # the input must match at start: the first planned good file is there before the job
    first = next(item for item in plan if item["kind"] == "new")
    plan.remove(first)
    (watch / first["target"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(first["source"], watch / first["target"])
    seeded = [{**first, "landed_at": _now()}]
    db = out / "db.sqlite"
    run_id = "soak"
    cluster = Cluster(work / "flink-run", **(cluster_env or {}))
    subprocess.run(["bash", str(SCRIPTS / "setup.sh")], check=True,
                   env=dict(os.environ, PYTHON=sys.executable), capture_output=True)
    cluster.script("start.sh")
    result: Dict[str, object] = {}
    try:
        with server_process(latency, fault_rate) as server:
            argv = [sys.executable, "-m", "dicomvec.cli", "run", "--streaming",
                    "--input", str(watch / "**" / "*.dcm"), "--sink", f"sqlite:///{db}",
                    "--dead-letter", str(out / "dead_letter"), "--run-id", run_id,
                    "--provider", "nvclip", "--nvclip-url", server.url,
                    "--nvclip-timeout", "10", "--batch-size", "16",
                    "--watch-interval", str(watch_interval), "--settle-seconds", "2",
                    "--batch-wait", "5", "--dead-letter-frequency", "30",
                    "--stop-after-idle", str(max(60.0, 4 * watch_interval) if stop == "idle"
                                             else 10 ** 6),
                    *cluster.flags(parallelism)]
            log = open(work / "driver.log", "w")
            driver = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True,
                                      env=dict(os.environ, PYTHONPATH=str(REPO)))
            deadline = _now() + 300
            while _now() < deadline and not _row_count(db):
                assert driver.poll() is None, f"the driver ended first: {driver.stdout.read()}"
                time.sleep(1)
            assert _row_count(db), "no row stored within 5 minutes of submission"
            sampler = Sampler(cluster, sample_every, histogram_every, lambda: _row_count(db))
            sampler.histogram("start")
            sampler.start()
            feeder = Feeder(plan, watch, minutes * 60)
            feeder.start()
            feeder.join()
            fed_at = _now() - sampler.start_time
            landed = seeded + feeder.landed
            deadline = _now() + drain_timeout
            while _now() < deadline and account(landed, watch, _store_rows(db),
                                                 _dead_letters(out))["not_accounted"]:
                time.sleep(5)
            drained_at = _now() - sampler.start_time
            sampler.histogram("end of feed + drain")
            if stop == "sigterm":
                driver.send_signal(signal.SIGTERM)
            try:
                stdout, _ = driver.communicate(timeout=600)
            except subprocess.TimeoutExpired:
                driver.kill()
                stdout, _ = driver.communicate()
            sampler.stop.set()
            sampler.join()
            log.close()
        dead = _dead_letters(out)
        job = _flink_job(cluster, run_id)
    finally:
        cluster.script("stop.sh")
    accounting = account(landed, watch, _store_rows(db), dead)
    result.update({
        "minutes": minutes, "files": files, "fed_seconds": round(fed_at, 1),
        "drained_seconds": round(drained_at, 1),
        "watch_interval_s": watch_interval, "embedding_latency_s": latency,
        "fault_rate": fault_rate, "parallelism": parallelism, "stop": stop,
        "image": f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} native", "cluster_env": cluster_env or {},
        "driver": {"exit": driver.returncode, "summary": stdout[-3000:]},
        "job": job, "accounting": accounting,
        "samples": sampler.samples, "histograms": sampler.histograms})
    result["targets"] = targets(result)
    return result


def _live_at(histograms: List[Dict], minute: float) -> Optional[Dict]:
    """The histogram taken closest after ``minute`` minutes."""
    later = [h for h in histograms if h["t_s"] >= minute * 60 - 30]
    return later[0] if later else None


def targets(result: Dict) -> Dict:
    hists = result["histograms"]
    at5, end = _live_at(hists, 5), hists[-1] if hists else None
    growth = None
    if at5 and end and at5 is not end and at5.get("live_bytes") and end.get("live_bytes"):
        growth = round(end["live_bytes"] / at5["live_bytes"] - 1, 3)
    first, last = (hists[1] if len(hists) > 1 else None), end
    tables = ([h["state"]["state_tables"]["instances"] for h in hists] if hists else [])
    job, acc = result["job"], result["accounting"]
    return {
        "live_heap_growth_5min_to_end": growth,
        "live_heap_growth_ok": (growth is not None and growth <= TARGET_HEAP_GROWTH)
        if result["minutes"] >= 10 else "run too short for the 5-minute comparison",
        "state_tables_over_time": tables,
        "state_tables_flat": bool(tables) and first is not None
        and last["state"]["state_tables"]["instances"]
        <= first["state"]["state_tables"]["instances"],
        "every_file_accounted": acc["not_accounted"] == 0,
        "no_restart": (job["restarts"] in (0, None)) and job["exception_history"] == 0,
        "cancelled_cleanly": job["state"] == "CANCELED" and result["driver"]["exit"] == 0,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--watch-interval", type=float, default=10)
    parser.add_argument("--latency", type=float, default=0.2,
                        help="contract server: seconds per embeddings request")
    parser.add_argument("--fault-rate", type=float, default=0.03)
    parser.add_argument("--sample-every", type=float, default=10)
    parser.add_argument("--histogram-every", type=float, default=300)
    parser.add_argument("--stop", choices=("idle", "sigterm"), default="idle")
    parser.add_argument("--job-server-jar", default=None,
                        help="FLINK_JOB_SERVER_JAR for the cluster (default: setup.sh's)")
    parser.add_argument("--tm-memory", default=None, help="FLINK_TM_MEMORY (default: env.sh's)")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" /
                                              "streaming_soak.json"))
    args = parser.parse_args(argv)
    info = machine()
    env = {}
    if args.job_server_jar:
        env["FLINK_JOB_SERVER_JAR"] = args.job_server_jar
    if args.tm_memory:
        env["FLINK_TM_MEMORY"] = args.tm_memory
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        result = run_soak(Path(tmp), args.minutes, args.files,
                          watch_interval=args.watch_interval, latency=args.latency,
                          fault_rate=args.fault_rate, sample_every=args.sample_every,
                          histogram_every=args.histogram_every, stop=args.stop,
                          cluster_env=env)
    report = {"benchmark": "streaming_soak", "machine": info, "loadavg_end": os.getloadavg(),
              "command": "PYTHONPATH=. .venv/bin/python -m benchmarks.streaming_soak "
                         + " ".join(argv if argv is not None else sys.argv[1:]),
              **result}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    heap = [(s["t_s"], s.get("Memory.Heap.Used")) for s in result["samples"]]
    print("heap used (MB) over time:",
          " ".join(f"{t / 60:.0f}m:{(h or 0) / 2**20:.0f}" for t, h in heap[::6]))
    print("live heap (MB) by histogram:",
          " ".join(f"{h['label']}:{(h.get('live_bytes') or 0) / 2**20:.0f}"
                   for h in result["histograms"]))
    print(json.dumps({"accounting": result["accounting"], "job": result["job"],
                      "targets": result["targets"]}, indent=2, default=str))
    print(f"written to {args.json}")
    return 0 if all(v for v in result["targets"].values() if isinstance(v, bool)) else 1


if __name__ == "__main__":
    sys.exit(main())
