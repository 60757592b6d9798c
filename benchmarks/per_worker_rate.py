"""Per-worker throughput of the CPU side of the job (read → decode → normalize → resize/encode →
thumbnail "embedding" → SQLite), for sizing a Flink cluster (docs/flink.md).

Makes ``--count`` synthetic MIMIC-CXR-size DICOMs with the project's generator
(``dicomvec.synthetic``: 3056×2544, 16-bit, Explicit VR Little Endian like most MIMIC-CXR files,
~15.6 MB each; the real archive averages ~13.6 MB), then runs ``dicomvec run`` on
the local engine with 1 worker (the baseline) and with ``--workers`` workers, in the same run.
Prints images/s, MB/s and the speed-up ratio against the 1-worker baseline. The NV-CLIP call is
not measured here: it is remote and bounded by the rate limit (see docs/flink.md).

Usage: python benchmarks/per_worker_rate.py [--count 24] [--workers 2] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomvec import synthetic  # noqa: E402
from dicomvec.pipeline.run import run_ingest  # noqa: E402


def make_archive(root: Path, count: int) -> int:
    """Write the archive; returns its size in bytes."""
    files = synthetic.generate(root, count, synthetic.MIMIC_SIZE, ("native",), 0, seed=11)
    return sum(Path(f.path).stat().st_size for f in files)


def measure(root: Path, workers: int, tag: str) -> dict:
    out = root / f"out-{tag}"
    summary = run_ingest(["--input", str(root / "files" / "**" / "*.dcm"),
                          "--sink", f"sqlite:///{out}/dicomvec.db",
                          "--dead-letter", str(out / "dead_letter"), "--provider", "thumbnail",
                          "--batch-size", "16", "--run-id", tag,
                          "--direct_num_workers", str(workers)])
    assert summary.stored == summary.matched and summary.dead_lettered_total == 0, summary.render()
    return {"workers": workers, "images": summary.stored, "wall_s": round(summary.wall_time_s, 2),
            "images_per_s": round(summary.images_per_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", default=None, help="work folder to keep (default: temp)")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="dicomvec-rate-"))
    try:
        size = make_archive(root, args.count)
        mb_per_image = size / args.count / 1e6
        baseline = measure(root, 1, "w1")
        parallel = measure(root, args.workers, f"w{args.workers}")
        for result in (baseline, parallel):
            result["mb_per_s"] = round(result["images_per_s"] * mb_per_image, 1)
        report = {"mb_per_image": round(mb_per_image, 2), "cpus": os.cpu_count(),
                  "baseline_1_worker": baseline, "parallel": parallel,
                  "speedup_vs_1_worker": round(parallel["images_per_s"] /
                                               baseline["images_per_s"], 2)}
        print(json.dumps(report, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
