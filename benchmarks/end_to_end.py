"""End-to-end throughput and per-worker memory on the local engine vs preprocessing alone.

On a synthetic MIMIC-size archive (``dicomvec.synthetic``: 3056×2544, 16-bit allocated, native
Explicit VR Little Endian; generated once into ``--cache`` and reused), measures in one run,
in interleaved rounds (each round runs every configuration once, so load changes hit all):

* **preprocessing only** (the baseline): the pipeline's decode → normalize → resize → encode
  path (``imaging.preprocess``, as ``benchmarks.preprocess`` times it) over the same files, in
  this process, pinned to one CPU;
* **end to end**: ``dicomvec run`` on the local engine (FnApiRunner) into a fresh SQLite file,
  ``--provider thumbnail`` and ``--provider nvclip`` against the NV-CLIP contract server
  (``tests.nvclip_server``, its own process, ``--latency`` s added to every request), with
  ``--direct_num_workers`` 1 (in-process worker) and 2 (two worker processes), batch 64.

Each end-to-end run is its own process (``--run-child``), so its memory is measured cleanly.
Images/s is the run summary's (stored images / wall time from pipeline construction to the
end, worker start-up included). Every configuration also runs on a small archive
(``--startup-count`` images) in the same round; the **startup-corrected** rate
(N − n) / (wall(N) − wall(n)) takes out the fixed cost (worker start-up, the last request's
latency), which a 377K-image run pays once. Both walls come from the same round; "best" is the
best round's corrected rate, "median" the median over rounds.

Peak RSS (``VmHWM``) per process: with 1 worker, of the run process itself (runner and worker
share it); with 2, of each ``sdk_worker_main`` process, polled from ``/proc`` while the run
lasts (the runner process is reported beside them).

    PYTHONPATH=. python -m benchmarks.end_to_end [--count 128] [--rounds 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from benchmarks.common import (REPO, Rounds, cached_archive, command_line, cpu_seconds,
                               descendants, dicom_paths, ingest_argv, machine, server_process,
                               status_mb)
from dicomvec import synthetic

#: targets from issue 8
TARGET_NVCLIP_VS_PREP = 0.8
TARGET_RSS_MB = 300.0


# --------------------------------------------------------------------------- baseline


def preprocessing_only(paths: List[Path], size: int, cpu: int) -> Dict[str, float]:
    """The pipeline's per-image path over ``paths`` in this process, pinned to ``cpu``
    (-1: not pinned); images/s (wall) and CPU ms/image."""
    from benchmarks.preprocess import fast_once
    pinned = cpu >= 0 and hasattr(os, "sched_setaffinity")
    if pinned:
        previous = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu})
    try:
        wall, cpu_time = time.perf_counter(), time.process_time()
        for path in paths:
            fast_once(path, size)
        wall, cpu_time = time.perf_counter() - wall, time.process_time() - cpu_time
    finally:
        if pinned:
            os.sched_setaffinity(0, previous)
    return {"images": len(paths), "wall_s": round(wall, 3),
            "img_s": round(len(paths) / wall, 2),
            "cpu_ms_per_image": round(cpu_time * 1000 / len(paths), 2)}


# --------------------------------------------------------------------------- end to end


def run_child(argv: List[str]) -> None:
    """In the run's own process: run the pipeline, print its summary, this process's peak RSS
    and the CPU it used during the run (imports excluded) as one JSON line."""
    from dicomvec.pipeline.run import run_ingest
    before = resource.getrusage(resource.RUSAGE_SELF)
    summary = run_ingest(argv)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
    print(json.dumps({"stored": summary.stored, "dead_lettered": summary.dead_lettered_total,
                      "wall_s": round(summary.wall_time_s, 3),
                      "img_s": round(summary.images_per_s, 2),
                      "run_process_peak_mb": status_mb("VmHWM"),
                      "run_process_cpu_s": round(cpu, 2)}))


def _is_worker(cmd: List[str]) -> bool:
    """A Beam SDK worker process (not the ``/bin/sh -c`` that may start it): Beam's
    ``sdk_worker_main``, or ``dicomvec.pipeline.worker_main`` (the local engine's, which wraps it)."""
    return (bool(cmd) and not Path(cmd[0]).name.endswith("sh")
            and bool({"apache_beam.runners.worker.sdk_worker_main",
                      "dicomvec.pipeline.worker_main"} & set(cmd)))


def measured_run(work: Path, name: str, argv: List[str], poll_s: float = 0.1) -> Dict:
    """One pipeline run in a child process; its summary plus peak RSS of the run process and
    of every Beam worker process below it (``VmHWM`` polled while they live)."""
    out, err = work / f"{name}.out", work / f"{name}.err"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("NVIDIA_API_KEY", None)  # the contract server is self-hosted style: no key
    workers: Dict[int, float] = {}
    worker_cpu: Dict[int, float] = {}  # last reading: CPU a worker used, start-up included
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.end_to_end", "--run-child",
                                 json.dumps(argv)], cwd=REPO, env=env, stdout=stdout,
                                stderr=stderr)
        while proc.poll() is None:
            for pid in descendants(proc.pid):
                if _is_worker(command_line(pid)):
                    peak, cpu = status_mb("VmHWM", pid), cpu_seconds(pid)
                    if peak is not None:
                        workers[pid] = max(workers.get(pid, 0.0), peak)
                    if cpu is not None:
                        worker_cpu[pid] = cpu
            time.sleep(poll_s)
    if proc.returncode != 0:
        raise RuntimeError(f"run {name} failed ({proc.returncode}):\n"
                           + err.read_text()[-3000:])
    result = json.loads(out.read_text().strip().splitlines()[-1])
    result["worker_process_peaks_mb"] = sorted(workers.values())
    result["worker_process_cpu_s"] = sorted(round(c, 2) for c in worker_cpu.values())
    return result


def configurations(workers: List[int]) -> List[Dict[str, object]]:
    return [{"name": f"{provider}_w{n}", "provider": provider, "workers": n}
            for provider in ("thumbnail", "nvclip") for n in workers]


def provider_flags(provider: str, url: str, concurrency: int) -> List[str]:
    if provider == "nvclip":
        return ["--provider", "nvclip", "--nvclip-url", url,
                "--nvclip-concurrency", str(concurrency)]
    return ["--provider", provider]


# --------------------------------------------------------------------------- summary


def _ratio(a: float, b: float) -> Optional[float]:
    return round(a / b, 3) if b else None


def summarize(configs, rounds: Rounds, prep: Rounds, count: int, startup_count: int) -> Dict:
    prep_best = prep.best("prep")["img_s"]
    prep_median = prep.median("prep")
    out: Dict[str, Dict] = {}
    for config in configs:
        name = config["name"]
        full, small = rounds.samples[name], rounds.samples[name + "_startup"]
        walls, small_walls = [s["wall_s"] for s in full], [s["wall_s"] for s in small]

        def corrected(wall_n: float, wall_small: float) -> Optional[float]:
            extra = wall_n - wall_small
            return round((count - startup_count) / extra, 2) if extra > 0 else None

        # startup correction pairs the two walls of ONE round (never walls of different rounds)
        per_round = [corrected(w, w_small) for w, w_small in zip(walls, small_walls)]
        valid = [c for c in per_round if c is not None]
        best = rounds.best(name)
        row = {**config, "rounds": len(full), "img_s_best": best["img_s"],
               "img_s_median": round(rounds.median(name), 2),
               "img_s_all": rounds.values(name),
               "stored": best["stored"], "dead_lettered": max(s["dead_lettered"] for s in full),
               "startup_run_wall_s_median": round(statistics.median(small_walls), 3),
               "wall_s_all": walls, "startup_run_wall_s_all": small_walls,
               "corrected_img_s_all": per_round,
               "corrected_img_s_best": max(valid) if valid else None,
               "corrected_best_round": per_round.index(max(valid)) + 1 if valid else None,
               "corrected_img_s_median": round(statistics.median(valid), 2) if valid else None,
               "run_process_peak_mb": max(s["run_process_peak_mb"] for s in full + small),
               "worker_process_peaks_mb": sorted({p for s in full
                                                  for p in s["worker_process_peaks_mb"]}),
               "run_process_cpu_s": best["run_process_cpu_s"],
               "worker_process_cpu_s": best["worker_process_cpu_s"]}
        # which process holds the worker: itself with 1 worker (in_memory), else the workers
        if config["workers"] == 1:
            row["worker_peak_mb"] = max(s["run_process_peak_mb"] for s in full)
            row["worker_measured"] = "run process (runner + in-process worker)"
        else:
            peaks = [p for s in full for p in s["worker_process_peaks_mb"]]
            row["worker_peak_mb"] = max(peaks) if peaks else None
            row["worker_measured"] = "each sdk_worker_main process (max)"
        row["vs_preprocessing_only"] = _ratio(row["img_s_best"], prep_best)
        row["vs_preprocessing_only_median"] = _ratio(row["img_s_median"], prep_median)
        row["corrected_vs_preprocessing_only"] = (
            _ratio(row["corrected_img_s_best"], prep_best) if row["corrected_img_s_best"]
            else None)
        out[name] = row
    for provider in ("thumbnail", "nvclip"):
        ones = [c for c in configs if c["provider"] == provider and c["workers"] == 1]
        for config in configs:
            if config["provider"] != provider or config["workers"] == 1 or not ones:
                continue
            row, base = out[config["name"]], out[ones[0]["name"]]
            row["vs_1_worker"] = _ratio(row["img_s_best"], base["img_s_best"])
            if row["corrected_img_s_best"] and base["corrected_img_s_best"]:
                row["corrected_vs_1_worker"] = _ratio(row["corrected_img_s_best"],
                                                      base["corrected_img_s_best"])
    for config in configs:
        if config["provider"] == "nvclip":
            twin = out.get(f"thumbnail_w{config['workers']}")
            if twin:
                out[config["name"]]["vs_thumbnail_same_workers"] = _ratio(
                    out[config["name"]]["img_s_best"], twin["img_s_best"])
    return out


def targets(rows: Dict[str, Dict]) -> List[Dict[str, object]]:
    verdicts = []
    nv = rows.get("nvclip_w1")
    if nv:
        for key in ("vs_preprocessing_only", "corrected_vs_preprocessing_only"):
            if nv.get(key) is not None:
                verdicts.append({"target": f"nvclip_w1 {key} >= {TARGET_NVCLIP_VS_PREP}",
                                 "value": nv[key], "met": nv[key] >= TARGET_NVCLIP_VS_PREP})
    peaks = [r["worker_peak_mb"] for r in rows.values() if r.get("worker_peak_mb")]
    if peaks:
        verdicts.append({"target": f"peak RSS per worker <= {TARGET_RSS_MB:.0f} MB (batch 64)",
                         "value": max(peaks), "met": max(peaks) <= TARGET_RSS_MB})
    return verdicts


def print_table(result: Dict) -> None:
    prep = result["preprocessing_only"]
    print()
    print(f"{result['images']} images {result['size'][0]}x{result['size'][1]} native, batch "
          f"{result['batch_size']}, NV-CLIP latency {result['latency_s']} s, "
          f"{result['rounds']} rounds (startup run: {result['startup_count']} images)")
    print("| configuration | images/s best | median | vs prep-only | startup-corrected img/s | "
          "vs prep-only | vs 1 worker | peak RSS per worker MB | runner MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| preprocessing only (in-process, 1 CPU) | {prep['img_s_best']} | "
          f"{prep['img_s_median']} | 1.0 | | | | | |")
    for row in result["end_to_end"].values():
        label = f"{row['provider']}, {row['workers']} worker{'s' if row['workers'] > 1 else ''}"
        print(f"| {label} | {row['img_s_best']} | {row['img_s_median']} | "
              f"{row['vs_preprocessing_only']} | {row['corrected_img_s_best']} | "
              f"{row['corrected_vs_preprocessing_only']} | {row.get('vs_1_worker', '')} | "
              f"{row['worker_peak_mb']} | {row['run_process_peak_mb']} |")
    print(f"preprocessing only: CPU {prep['cpu_ms_per_image_median']} ms/image (median)")
    for verdict in result["targets"]:
        print(f"target {verdict['target']}: {verdict['value']} → "
              f"{'MET' if verdict['met'] else 'MISSED'}")
    print(f"load average: start {result['machine']['loadavg_start']}, per round "
          f"{result['loadavg_rounds']}, end {result['machine']['loadavg_end']}")


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=128, help="images in the archive")
    parser.add_argument("--size", default="3056x2544", type=synthetic.parse_size)
    parser.add_argument("--startup-count", type=int, default=8,
                        help="images in the small archive that measures the fixed cost")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", default="1,2", help="--direct_num_workers values")
    parser.add_argument("--latency", type=float, default=0.3, help="NV-CLIP server s/request")
    parser.add_argument("--concurrency", type=int, default=4, help="NV-CLIP requests in flight")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--cpu", type=int, default=0,
                        help="CPU for the preprocessing-only baseline (-1: not pinned)")
    parser.add_argument("--cache", default=str(REPO / ".cache" / "bench-e2e"),
                        help="synthetic archives are generated here once and reused")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--run-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_child:
        run_child(json.loads(args.run_child))
        return 0

    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GiB; "
          f"load average at start {info['loadavg_start']}", flush=True)
    cache = Path(args.cache)
    main_root = cached_archive(cache, args.count, args.size, ("native",), seed=0)
    small_root = cached_archive(cache, args.startup_count, args.size, ("native",), seed=1)
    paths = dicom_paths(main_root)
    configs = configurations([int(w) for w in args.workers.split(",")])
    rounds, prep, loads = Rounds(), Rounds(), []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp, \
            server_process(args.latency) as server:
        work = Path(tmp)

        def run(name: str, config: Dict, root: Path) -> Dict:
            argv_ = ingest_argv(work, name, root / "files", args.batch_size, config["workers"],
                                "--image-size", str(args.image_size),
                                *provider_flags(config["provider"], server.url,
                                                args.concurrency))
            return measured_run(work, name, argv_)

        preprocessing_only(paths, args.image_size, args.cpu)  # warm-up: page cache, imports
        run("warmup", configs[0], small_root)
        for round_ in range(args.rounds):
            prep.add("prep", preprocessing_only(paths, args.image_size, args.cpu))
            for config in configs:
                rounds.add(config["name"] + "_startup",
                           run(f"{config['name']}-small-{round_}", config, small_root))
                rounds.add(config["name"], run(f"{config['name']}-{round_}", config, main_root))
            loads.append(round(os.getloadavg()[0], 2))
            print(f"round {round_ + 1}/{args.rounds}: prep-only "
                  f"{prep.samples['prep'][-1]['img_s']} img/s; " + ", ".join(
                      f"{c['name']} {rounds.samples[c['name']][-1]['img_s']}" for c in configs)
                  + f" img/s; load {loads[-1]}", flush=True)
    info["loadavg_end"] = os.getloadavg()
    rows = summarize(configs, rounds, prep, args.count, args.startup_count)
    result = {
        "machine": info, "images": args.count, "size": list(args.size),
        "startup_count": args.startup_count, "batch_size": args.batch_size,
        "latency_s": args.latency, "concurrency": args.concurrency, "rounds": args.rounds,
        "loadavg_rounds": loads,
        "preprocessing_only": {"img_s_best": prep.best("prep")["img_s"],
                               "img_s_median": round(prep.median("prep"), 2),
                               "img_s_all": prep.values("prep"),
                               "cpu_ms_per_image_median": round(
                                   prep.median("prep", "cpu_ms_per_image"), 2),
                               "pinned_cpu": args.cpu},
        "end_to_end": rows,
        "targets": targets(rows),
    }
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
