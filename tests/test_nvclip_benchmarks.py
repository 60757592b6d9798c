"""The NV-CLIP benchmarks still run end to end (tiny sizes; no timing is asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


@pytest.mark.slow
def test_client_benchmark_runs():
    result = run_benchmark("nvclip_client_throughput.py", "--latency", "0.05", "--images", "128",
                           "--baseline-images", "4", "--concurrency", "2")
    assert result["images"] == 128 and result["max_in_flight"] == 2
    assert result["baseline_img_s"] > 0 and result["concurrent_img_s"] > 0


@pytest.mark.slow
def test_pipeline_benchmark_runs():
    result = run_benchmark("nvclip_pipeline_throughput.py", "--images", "6", "--size", "128x128",
                           "--latency", "0.05", "--batch-sizes", "4", "--repeats", "1",
                           "--naive-images", "2")
    assert result["preprocessing_only_batch4"]["stored"] == 6
    assert result["nvclip_batch4"]["stored"] == 6
    assert result["nvclip_batch4"]["dead_lettered"] == 0
