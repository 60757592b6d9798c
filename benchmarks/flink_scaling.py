"""Flink scaling: the dicomvec job on the local Flink cluster at parallelism 1 and 2, against the
local engine's one-worker rate, in the same run.

On a synthetic MIMIC-size archive (``dicomvec.synthetic`` via ``benchmarks.common.cached_archive``:
3056×2544, 16-bit, native Explicit VR Little Endian, ~15.5 MB a file; generated once into
``--cache``), in interleaved rounds (each round runs every configuration once, so load changes
hit all of them):

* ``local_w1`` (the baseline): ``dicomvec run`` on the local engine (FnApiRunner, one worker);
* ``flink_p1`` / ``flink_p2``: ``dicomvec run --runner PortableRunner`` against the cluster's
  Beam Flink job server, EXTERNAL Python workers from the worker pool, ``--parallelism P
  --sdk_worker_parallelism P``, on a cluster this script starts (``scripts/flink/start.sh`` on
  free ports, one TaskManager with 2 slots) and stops.

Every configuration also runs on a small archive (``--startup-count`` images) in the same round;
the **startup-corrected** rate (N − n) / (t(N) − t(n)) removes the fixed cost (job submission,
Flink scheduling, worker start-up) that a 377K-image run pays once. t is the Flink job's own
duration (REST ``/jobs/overview``; the local engine: the run's wall time), since the driver's
submission (artifact staging, translation by the job server) varies by seconds on a loaded
machine and 512 images are only a few seconds of work; the driver-wall figure is in the JSON
too. Both times of a figure come from the same round; the headline is the median over rounds. Per-subtask records of the Decode vertex (Flink REST) show whether
the two slots shared the work. Thumbnail provider, SQLite sink, batch 64.

    PYTHONPATH=. .venv/bin/python -m benchmarks.flink_scaling [--count 512] [--rounds 3] \
        [--json benchmarks/results/flink_scaling.json]

Needs what ``scripts/flink/setup.sh`` installs (Flink 1.19.3 and a Beam Flink job server).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

from benchmarks.common import REPO, Rounds, cached_archive, machine
from benchmarks.flink_cluster import SCRIPTS, Cluster
from dicomvec import synthetic

TARGET_P2_VS_P1 = 1.5
TARGET_SLOT_VS_LOCAL = 0.7


def run_once(work: Path, name: str, files: Path, batch_size: int, flags: List[str]) -> Dict:
    """``dicomvec run`` in its own process; the summary's stored count and wall time."""
    out = work / name
    argv = [sys.executable, "-m", "dicomvec.cli", "run",
            "--input", str(files / "**" / "*.dcm"), "--sink", f"sqlite:///{out}/db.sqlite",
            "--dead-letter", str(out / "dead_letter"), "--provider", "thumbnail",
            "--batch-size", str(batch_size), "--run-id", name, *flags]
    proc = subprocess.run(argv, text=True, capture_output=True, timeout=3600,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    stored = int(re.search(r"images stored\s+(\d+)", proc.stdout).group(1))
    rows = int(re.search(r"rows in store\s+(\d+)", proc.stdout).group(1))
    wall = float(re.search(r"wall time\s+([\d.]+) s", proc.stdout).group(1))
    if stored != rows:
        raise RuntimeError(f"{name}: summary says {stored} stored, the store holds {rows}:\n"
                           f"{proc.stdout}\n{proc.stderr[-3000:]}")
    return {"stored": stored, "wall_s": wall, "img_s": round(stored / wall, 2),
            "loadavg_1m": os.getloadavg()[0]}


def corrected(big: Dict, small: Dict, n_big: int, n_small: int, key: str = "wall_s") -> float:
    """Startup-corrected images/s from two walls (``key``) of the same round."""
    return round((n_big - n_small) / max(1e-6, big[key] - small[key]), 2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--startup-count", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cache", default=str(REPO / ".cache" / "bench-e2e"),
                        help="synthetic archives are generated here once and reused")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" /
                                              "flink_scaling.json"))
    args = parser.parse_args(argv)

    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GiB; commit "
          f"{info['commit']}; load average at start {info['loadavg_start']}", flush=True)
    subprocess.run(["bash", str(SCRIPTS / "setup.sh")], check=True,
                   env=dict(os.environ, PYTHON=sys.executable))
    cache = Path(args.cache)
    big = cached_archive(cache, args.count, synthetic.MIMIC_SIZE, ("native",), seed=0)
    small = cached_archive(cache, args.startup_count, synthetic.MIMIC_SIZE, ("native",), seed=1)
    sizes = {"big": args.count, "small": args.startup_count}
    rounds, balance, loads = Rounds(), {}, []
    with tempfile.TemporaryDirectory(prefix="bench-flink-") as tmp:
        work = Path(tmp)
        cluster = Cluster(work / "flink-run")
        cluster.script("start.sh")
        try:
            configs = {"local_w1": ["--direct_num_workers", "1"],
                       "flink_p1": cluster.flags(1), "flink_p2": cluster.flags(2)}
            run_once(work, "warmup", small / "files", args.batch_size, configs["flink_p2"])
            for round_ in range(args.rounds):
                for name, flags in configs.items():
                    for size, root in (("small", small), ("big", big)):
                        tag = f"{name}_{size}_r{round_}"
                        sample = run_once(work, tag, root / "files", args.batch_size, flags)
                        assert sample["stored"] == sizes[size], (tag, sample)
                        # the Flink job's own duration (REST): without the driver's submission,
                        # artifact staging and translation, which vary by seconds under load
                        sample["job_s"] = (cluster.job(tag)["duration"] / 1000
                                           if name.startswith("flink") else sample["wall_s"])
                        if name.startswith("flink") and size == "big":
                            balance[tag] = cluster.decode_records(tag)
                        rounds.add(f"{name}_{size}", sample)
                        loads.append(sample["loadavg_1m"])
                        print(f"  {tag:<22} {sample['stored']:>4} images  "
                              f"{sample['wall_s']:>7.1f} s  {sample['img_s']:>6.2f} img/s  "
                              f"job {sample['job_s']:>6.1f} s  "
                              f"load {sample['loadavg_1m']:.2f}"
                              + (f"  decode per subtask {balance[tag]}" if tag in balance
                                 else ""), flush=True)
        finally:
            cluster.script("stop.sh")

    results = {}
    for name in configs:
        pairs = list(zip(rounds.samples[f"{name}_big"], rounds.samples[f"{name}_small"]))
        per_round = [corrected(b, s, args.count, args.startup_count, "job_s") for b, s in pairs]
        per_round_wall = [corrected(b, s, args.count, args.startup_count) for b, s in pairs]
        results[name] = {"startup_corrected_img_s": per_round,
                         "median": statistics.median(per_round), "best": max(per_round),
                         "startup_corrected_from_driver_wall_img_s": per_round_wall,
                         "raw_big_img_s": rounds.values(f"{name}_big"),
                         "job_big_s": rounds.values(f"{name}_big", "job_s"),
                         "job_small_s": rounds.values(f"{name}_small", "job_s"),
                         "wall_big_s": rounds.values(f"{name}_big", "wall_s"),
                         "wall_small_s": rounds.values(f"{name}_small", "wall_s")}
    local, p1, p2 = (results[n]["median"] for n in ("local_w1", "flink_p1", "flink_p2"))
    summary = {"figure": "median over rounds of the startup-corrected rate (job durations)",
               "p2_vs_p1": round(p2 / p1, 2), "per_slot_p1_vs_local": round(p1 / local, 2),
               "per_slot_p2_vs_local": round(p2 / 2 / local, 2),
               "target_p2_vs_p1": TARGET_P2_VS_P1, "target_slot_vs_local": TARGET_SLOT_VS_LOCAL}
    report = {"benchmark": "flink_scaling", "machine": info,
              "loadavg_end": os.getloadavg(), "loadavg_1m_per_run": loads,
              "count": args.count, "startup_count": args.startup_count,
              "rounds": args.rounds, "batch_size": args.batch_size,
              "image": f"{synthetic.MIMIC_SIZE[0]}x{synthetic.MIMIC_SIZE[1]} native 16-bit",
              "command": "PYTHONPATH=. .venv/bin/python -m benchmarks.flink_scaling "
                         f"--count {args.count} --rounds {args.rounds}",
              "results": results, "decode_records_per_subtask": balance, "summary": summary}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"median_startup_corrected_img_s": {"local_w1": local, "flink_p1": p1,
                                                       "flink_p2": p2}, **summary}, indent=2))
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
