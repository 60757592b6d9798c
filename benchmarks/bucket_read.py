"""Images/s from a bucket behind a network that behaves like one, against local disk.

One S3 server (moto, ``tests.s3_server``: its own process on 127.0.0.1, IAM credentials
enforced) holds ``--count`` MIMIC-size synthetic objects (``dicomvec.synthetic``, 3056×2544
16-bit native, ~15.5 MB each, as ``dicomvec synth`` makes them). toxiproxy (built from the Go
module proxy by ``scripts/bucket/install.sh``, on 127.0.0.1) sits between the pipeline and the
server on two proxies: **50 ms / 85 MB/s** and **150 ms / 85 MB/s** (latency toxic on every
answer, i.e. before its first byte; bandwidth toxic per connection; both downstream).

Configurations, each a fresh ``dicomvec run`` (local engine, one worker, thumbnail provider,
fresh SQLite) in its own process, interleaved round by round:

* ``local``: the same files from local disk;
* ``direct``: the bucket, straight to the server;
* ``net50`` / ``net150``: the bucket through the toxics, with the read-ahead (defaults);
* ``net50_serial`` / ``net150_serial``: the same with ``--prefetch_objects 1`` (one object
  at a time, what the pipeline did before the read-ahead);
* ``net50_o16m48`` / ``net150_o16m48``: ``--prefetch_objects 16 --prefetch_mb 48`` (any
  ``<net>_o<N>m<MB>`` works): one more MIMIC object in the window than the default, what it
  buys in rate and costs in memory.

Each configuration runs over all ``--count`` objects and over the first ``--small`` of them;
the rate reported is the marginal rate, (count − small) / (wall(count) − wall(small)), so the
fixed cost of starting a job (~3 s here) does not flatter the slow configurations.

Memory is measured per WORKER: every run uses ``--direct_num_workers 1
--direct_running_mode multi_processing``, so the one worker (``dicomvec.pipeline.worker_main``)
is its own process, apart from the driver; a thread samples the workers' ``VmHWM`` (peak RSS)
every 50 ms. The driver's own peak is reported beside it. The RSS target judges the
configurations with the default read-ahead only (``DEFAULT_CONFIGS``).

Writes ``benchmarks/results/bucket_read.json`` (commit, load average at start and end) and
prints a table. Run from the repository root:

    PYTHONPATH=. python -m benchmarks.bucket_read [--count 48] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (REPO, cached_archive, command_line, descendants,  # noqa: E402
                               dicom_paths, machine, status_mb)
from dicomvec.io.prefetch import DEFAULT_PREFETCH_MB, DEFAULT_PREFETCH_OBJECTS  # noqa: E402

BUCKET = "mimic-cxr"
TARGETS = {"net50": 0.8, "net150": 0.6}
RSS_TARGET_MB = 300
NETWORKS = {"net50": (50, 85), "net150": (150, 85)}
#: configuration suffix → flags: no read-ahead (as before), or a wider window than the default
VARIANTS = {"serial": ["--prefetch_objects", "1"], "wide": ["--prefetch_mb", "192"]}
#: the configurations that run with the default read-ahead (the RSS target judges these)
DEFAULT_CONFIGS = ("local", "direct", "net50", "net150")


def variant_flags(suffix: str) -> List[str]:
    """``serial``, ``wide``, or ``o<objects>m<MB>`` (any window, for sizing it)."""
    if suffix in VARIANTS or not suffix:
        return list(VARIANTS.get(suffix, []))
    objects, _, mb = suffix[1:].partition("m")
    if not suffix.startswith("o") or not objects.isdigit() or not mb.isdigit():
        raise SystemExit(f"unknown configuration suffix {suffix!r}")
    return ["--prefetch_objects", objects, "--prefetch_mb", mb]


#: the local engine's worker process (``--direct_running_mode multi_processing``)
WORKER_MODULE = "dicomvec.pipeline.worker_main"
#: every run: ONE worker in its own process, so its RSS is the worker's alone (the driver —
#: job graph, FnApiRunner, matching, the summary — stays in the run's own process)
WORKER_FLAGS = ["--direct_num_workers", "1", "--direct_running_mode", "multi_processing"]


class WorkerPeak:
    """Peak RSS (``VmHWM``) of the worker processes below this one, sampled every
    ``interval`` s on a thread while the run lasts (VmHWM is the high-water mark, so a sample
    shortly before the worker exits holds its peak)."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peaks: Dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "WorkerPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid in descendants(os.getpid()):
                if WORKER_MODULE in " ".join(command_line(pid)):  # (sh -c "python -m ...")
                    peak = status_mb("VmHWM", pid)
                    if peak is not None:
                        self.peaks[pid] = max(peak, self.peaks.get(pid, 0.0))
            self._stop.wait(self.interval)


def child(spec: Dict) -> None:
    """One run in this (fresh) process; prints its figures as JSON on the last line."""
    import logging
    logging.disable(logging.WARNING)
    from dicomvec.pipeline.run import run_ingest
    with WorkerPeak() as workers:
        summary = run_ingest(spec["argv"])
    if not workers.peaks:
        raise RuntimeError(f"no worker process seen: is the run in multi_processing mode?")
    print(json.dumps({"stored": summary.stored, "matched": summary.matched,
                      "dead_lettered": summary.dead_lettered_total,
                      "wall_s": summary.wall_time_s,
                      "worker_peak_rss_mb": max(workers.peaks.values()),
                      "workers": len(workers.peaks),
                      "driver_peak_rss_mb": status_mb("VmHWM")}))


def run_one(work: Path, name: str, pattern: str, flags: List[str], env: Dict[str, str],
            tag: str) -> Dict:
    db = work / f"{name}-{tag}-{time.monotonic_ns()}.sqlite"
    argv = ["--input", pattern, "--sink", f"sqlite:///{db}", "--dead-letter",
            str(work / "dl"), "--provider", "thumbnail", "--run-id", f"{name}-{tag}",
            *WORKER_FLAGS, *flags]
    result = subprocess.run([sys.executable, "-m", "benchmarks.bucket_read", "--child",
                             json.dumps({"argv": argv})], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed: {result.stderr[-2000:]}")
    db.unlink(missing_ok=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=48, help="objects (MIMIC size)")
    parser.add_argument("--small", type=int, default=8,
                        help="objects of the short run that measures the fixed start-up cost")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", default="3056x2544")
    parser.add_argument("--configs", default="local,direct,net50,net150,net50_serial,"
                                             "net150_serial,net50_o16m48,net150_o16m48")
    parser.add_argument("--cache", default=str(REPO / ".cache" / "bench-bucket"))
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" /
                                              "bucket_read.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0

    from dicomvec import synthetic
    from tests.bucket_tools import Toxiproxy
    from tests.s3_server import REGION, S3Server
    info = machine()
    size = synthetic.parse_size(args.size)
    root = cached_archive(Path(args.cache), args.count, size, ("native",), seed=0)
    files = dicom_paths(root)
    small_root = Path(args.cache) / f"small-{args.small}-of-{root.name}"
    if not small_root.exists():  # the first --small files, same bytes, for the short runs
        for path in files[:args.small]:
            target = small_root / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    configs = [c for c in args.configs.split(",") if c]
    samples: Dict[str, List[Dict]] = {c: [] for c in configs}
    with S3Server() as server, Toxiproxy() as toxiproxy, \
            tempfile.TemporaryDirectory(prefix="bench-bucket-") as tmp:
        key, secret = server.create_credentials()
        admin = server.admin_client()
        admin.create_bucket(Bucket=BUCKET)
        server.upload_tree(admin, root, BUCKET, "all")
        server.upload_tree(admin, small_root, BUCKET, "small")
        server.enforce_auth()
        upstream = server.endpoint.split("://", 1)[1]
        endpoints = {"direct": server.endpoint}
        for name, (latency, rate) in NETWORKS.items():
            endpoints[name] = "http://" + toxiproxy.proxy(name, upstream)
            toxiproxy.network(name, latency, rate)
        env = {**os.environ, **server.env(key, secret), "PYTHONPATH": str(REPO),
               "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
               "AWS_EC2_METADATA_DISABLED": "true"}
        for round_ in range(args.rounds):
            for config in configs:
                network = config.split("_")[0]
                flags = variant_flags(config.partition("_")[2])
                if network == "local":
                    patterns = {"all": str(root / "files" / "**" / "*.dcm"),
                                "small": str(small_root / "files" / "**" / "*.dcm")}
                else:
                    flags += ["--s3_endpoint_url", endpoints[network], "--s3_region_name",
                              REGION]
                    patterns = {tag: f"s3://{BUCKET}/{tag}/files/**/*.dcm"
                                for tag in ("all", "small")}
                small = run_one(Path(tmp), config, patterns["small"], flags, env, "small")
                full = run_one(Path(tmp), config, patterns["all"], flags, env, "all")
                assert full["stored"] == args.count and small["stored"] == args.small, \
                    (config, full, small)
                # no marginal rate when the short run took as long as the full one (the shared
                # machine's load changed between them): that sample is left out of the median
                marginal = ((args.count - args.small) / (full["wall_s"] - small["wall_s"])
                            if full["wall_s"] - small["wall_s"] > 0.2 else None)
                sample = {"round": round_, "wall_s": full["wall_s"],
                          "wall_small_s": small["wall_s"],
                          "images_per_s_marginal": round(marginal, 2) if marginal else None,
                          "images_per_s_raw": round(args.count / full["wall_s"], 2),
                          "worker_peak_rss_mb": max(full["worker_peak_rss_mb"],
                                                    small["worker_peak_rss_mb"]),
                          "driver_peak_rss_mb": max(full["driver_peak_rss_mb"],
                                                    small["driver_peak_rss_mb"])}
                samples[config].append(sample)
                print(f"round {round_} {config:14s} {sample}", flush=True)
    info["loadavg_end"] = os.getloadavg()
    summary = {}
    for config, runs in samples.items():
        rates = [r["images_per_s_marginal"] for r in runs]
        valid = [r for r in rates if r] or [0.0]
        summary[config] = {"images_per_s_median": round(statistics.median(valid), 2),
                           "images_per_s_all": rates,
                           "images_per_s_raw_median": round(statistics.median(
                               [r["images_per_s_raw"] for r in runs]), 2),
                           "worker_peak_rss_mb_max": max(r["worker_peak_rss_mb"]
                                                         for r in runs),
                           "driver_peak_rss_mb_max": max(r["driver_peak_rss_mb"]
                                                         for r in runs)}
    targets = []
    direct = summary.get("direct", {}).get("images_per_s_median")
    local = summary.get("local", {}).get("images_per_s_median")
    for config, ratio in TARGETS.items():
        if config in summary and direct:
            value = round(summary[config]["images_per_s_median"] / direct, 3)
            targets.append({"target": f"{config} >= {ratio} x direct", "value": value,
                            "met": value >= ratio,
                            "vs_local_disk": round(summary[config]["images_per_s_median"]
                                                   / local, 3) if local else None})
    # memory: judged on the DEFAULT window only (the serial / wide / other variants are there
    # to show what the window costs and buys, not candidates for the target)
    defaults = [c for c in summary if c in DEFAULT_CONFIGS]
    if defaults:
        rss = max(summary[c]["worker_peak_rss_mb_max"] for c in defaults)
        targets.append({"target": f"peak RSS per worker <= {RSS_TARGET_MB} MB with the default "
                                  f"read-ahead ({', '.join(defaults)})", "value": rss,
                        "met": rss <= RSS_TARGET_MB})
    result = {"machine": info, "objects": args.count, "small": args.small,
              "object_bytes": statistics.median(p.stat().st_size for p in files),
              "size": list(size), "rounds": args.rounds,
              "server": "moto[server] (tests.s3_server, own process, 127.0.0.1)",
              "network": {name: {"latency_ms": lat, "bandwidth_mb_s_per_connection": rate}
                          for name, (lat, rate) in NETWORKS.items()},
              "proxy": "toxiproxy-server (scripts/bucket/install.sh), latency + bandwidth "
                       "toxics downstream",
              "read_ahead_defaults": {"prefetch_objects": DEFAULT_PREFETCH_OBJECTS,
                                      "prefetch_mb": DEFAULT_PREFETCH_MB},
              "rate": "marginal images/s = (objects - small) / (wall(objects) - wall(small))",
              "summary": summary, "samples": samples, "targets": targets}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps({"summary": summary, "targets": targets}, indent=1))
    print(f"commit {info['commit']}; load average start {info['loadavg_start']}, "
          f"end {info['loadavg_end']}; written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
