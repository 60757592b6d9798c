"""Start-up of the ``dicomvec`` command: ``--help`` of every sub-command, and ``dicomvec run``
from process start to the first input file opened.

Each measurement is a fresh Python process running the console script's entry point
(``dicomvec.cli:main``) from a source tree. ``--baseline COMMIT`` also measures the code at
that commit (extracted with ``git archive`` into ``--cache``) in the same run, round by round
interleaved with the current tree, so load changes hit both alike.

"First file read" is seen from inside the process with a Python audit hook on the ``open``
event (no change to the product): the time from just before the process is started to the first
``open`` of a file under the input folder, and the CPU time the process had used by then (less
sensitive to other work on a shared machine than the wall time). The run is the local engine over a synthetic archive
(``--count`` images, 1024×1024, ``dicomvec.synthetic``, generated once into ``--cache``), thumbnail
provider, fresh SQLite file each time; the total wall time of the process is recorded too.
``--extra-files N`` adds N small files that the pattern does not match (``*.txt``) to the
archive's folders, as a real archive holds other files (MIMIC-CXR: the reports), so the cost of
listing the tree before the first read shows.

    PYTHONPATH=. python -m benchmarks.startup [--baseline 4ac95db] [--rounds 5] \
        [--json benchmarks/results/startup.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from benchmarks.common import REPO, cached_archive, machine

COMMANDS = ["", "run", "reprocess", "dead-letters", "synth", "init-db", "create-index",
            "check-nvclip", "reports", "search"]

# Runs the CLI like the console script does; with DICOMVEC_BENCH_WATCH set, records the time of
# the first open() of a path under that folder into DICOMVEC_BENCH_OUT.
CHILD = r"""
import os, sys, time
watch, out = os.environ.get("DICOMVEC_BENCH_WATCH"), os.environ.get("DICOMVEC_BENCH_OUT")
if watch:
    def hook(event, args, _seen=[]):
        if event == "open" and not _seen and isinstance(args[0], str) and args[0].startswith(watch):
            _seen.append(1)
            with open(out, "w") as f:
                f.write(f"{time.time()!r} {time.process_time()!r}")
    sys.addaudithook(hook)
from dicomvec.cli import main
sys.exit(main(sys.argv[1:]))
"""


# With DICOMVEC_BENCH_PHASES set: the wall and CPU time at which each phase of `dicomvec run`
# starts, up to the first file read, as JSON lines into DICOMVEC_BENCH_OUT (current tree only).
PHASES = r"""
import json, os, sys, time
watch, out = os.environ["DICOMVEC_BENCH_WATCH"], os.environ["DICOMVEC_BENCH_OUT"]
T0, C0 = time.perf_counter(), time.process_time()
marks = []
def mark(name):
    marks.append({"phase": name, "wall_s": round(time.perf_counter() - T0, 3),
                  "cpu_s": round(time.process_time() - C0, 3)})
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].startswith(watch):
        mark("first file read")
        with open(out, "w") as f:
            json.dump(marks, f)
        os._exit(0)
sys.addaudithook(hook)
import dicomvec.pipeline.run as run
import dicomvec.pipeline.preflight as preflight
import apache_beam as beam
mark("imports done (Beam, pydicom, dicomvec)")
def wrap(module, name, label):
    original = getattr(module, name)
    def wrapped(*a, **k):
        mark(label)
        return original(*a, **k)
    setattr(module, name, wrapped)
wrap(preflight, "check_job", "preflight checks")
wrap(run, "build_ingest", "graph construction")
wrap(beam.Pipeline, "run", "pipeline.run (runner: translate, fuse, list input)")
from dicomvec.cli import main
main(sys.argv[1:])
"""


def phases(files: Path, work: Path) -> List[Dict[str, float]]:
    """Where the time before the first file read goes, for the current tree."""
    marker = work / "phases.json"
    argv = ["run", "--input", f"{files}/**/*.dcm", "--sink", f"sqlite:///{work}/phases.db",
            "--dead-letter", str(work / "dl-phases"), "--provider", "thumbnail"]
    subprocess.run([sys.executable, "-c", PHASES, *argv], capture_output=True, text=True,
                   cwd=REPO, env=_env(REPO, DICOMVEC_BENCH_WATCH=str(files),
                            DICOMVEC_BENCH_OUT=str(marker)), timeout=600)
    return json.loads(marker.read_text())


def source_tree(commit: str, cache: Path) -> Path:
    """The repository's files at ``commit`` (``git archive``), extracted once under ``cache``."""
    target = cache / f"source-{commit}"
    if not (target / "dicomvec" / "cli.py").exists():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def _env(source: Path, **extra: str) -> Dict[str, str]:
    """The child's environment; children also run with ``cwd=source``: ``python -c`` puts the
    working directory first on sys.path, ahead of PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": str(source), **extra}


def add_other_files(files: Path, count: int) -> None:
    """``count`` small ``.txt`` files spread over the archive's study folders (made once)."""
    studies = sorted(p for p in files.glob("p*/p*/s*") if p.is_dir())
    existing = len(list(files.rglob("other-*.txt")))
    if existing == count or not studies:
        return
    for old in files.rglob("other-*.txt"):
        old.unlink()
    for index in range(count):
        (studies[index % len(studies)] / f"other-{index:06d}.txt").write_text("x")


def time_help(source: Path, command: str) -> float:
    argv = ([command] if command else []) + ["--help"]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], env=_env(source),
                          capture_output=True, text=True, cwd=source)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0 or "usage:" not in proc.stdout:
        raise RuntimeError(f"{argv} failed: {proc.stderr[-500:]}")
    return elapsed


def time_run(source: Path, files: Path, work: Path, name: str) -> Dict[str, float]:
    marker = work / f"{name}.first-read"
    argv = ["run", "--input", f"{files}/**/*.dcm", "--sink", f"sqlite:///{work}/{name}.db",
            "--dead-letter", str(work / f"dl-{name}"), "--provider", "thumbnail",
            "--run-id", name]
    started_epoch = time.time()
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True,
                          cwd=source, env=_env(source, DICOMVEC_BENCH_WATCH=str(files),
                                   DICOMVEC_BENCH_OUT=str(marker)))
    total = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"run failed: {proc.stderr[-2000:]}")
    wall_at, cpu_at = (float(v) for v in marker.read_text().split())
    return {"to_first_read_s": round(wall_at - started_epoch, 3),
            "cpu_to_first_read_s": round(cpu_at, 3), "total_s": round(total, 3)}


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="also measure the code at this commit")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=120, help="images in the run's input")
    parser.add_argument("--extra-files", type=int, default=20000,
                        help="files under the archive that --input does not match")
    parser.add_argument("--cache", default=str(REPO / ".cache" / "bench"))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    cache = Path(args.cache)
    sources = {"current": REPO}
    if args.baseline:
        sources[f"baseline {args.baseline}"] = source_tree(args.baseline, cache)
    files = cached_archive(cache / "startup", args.count, (1024, 1024)) / "files"
    add_other_files(files, args.extra_files)
    helps: Dict[str, Dict[str, List[float]]] = {s: {c: [] for c in COMMANDS} for s in sources}
    runs: Dict[str, List[Dict[str, float]]] = {s: [] for s in sources}
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.rounds):
            for label, source in sources.items():
                for command in COMMANDS:
                    helps[label][command].append(round(time_help(source, command), 3))
                runs[label].append(time_run(source, files, Path(tmp),
                                            f"r{round_no}-{label.split()[0]}"))
        phase_marks = phases(files, Path(tmp))
    result = {"machine": {**info, "loadavg_end": os.getloadavg()}, "count": args.count,
              "extra_files": args.extra_files, "phases_current": phase_marks,
              "rounds": args.rounds, "sources": {}}
    for label in sources:
        worst_help = max(statistics.median(v) for v in helps[label].values())
        result["sources"][label] = {
            "help_median_s": {c or "(top)": statistics.median(v)
                              for c, v in helps[label].items()},
            "help_worst_median_s": worst_help,
            "run_to_first_read_median_s": statistics.median(
                r["to_first_read_s"] for r in runs[label]),
            "run_cpu_to_first_read_median_s": statistics.median(
                r["cpu_to_first_read_s"] for r in runs[label]),
            "run_total_median_s": statistics.median(r["total_s"] for r in runs[label]),
            "runs": runs[label],
        }
        summary = result["sources"][label]
        print(f"{label:<22} --help worst median {worst_help:.2f} s   run: first file read "
              f"{summary['run_to_first_read_median_s']:.2f} s (CPU "
              f"{summary['run_cpu_to_first_read_median_s']:.2f} s), total "
              f"{summary['run_total_median_s']:.2f} s ({args.count} images)")
    for item in phase_marks:
        print(f"  at {item['wall_s']:5.2f} s (CPU {item['cpu_s']:5.2f} s)  {item['phase']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
