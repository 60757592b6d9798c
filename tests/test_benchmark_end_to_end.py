"""Smoke test: the end-to-end benchmark runs on a tiny archive and reports every figure
BENCHMARKS.md quotes. No timing is asserted (performance claims come from running the benchmark
itself)."""
from __future__ import annotations

import json

import pytest

from benchmarks import end_to_end

CONFIGS = {"thumbnail_w1", "thumbnail_w2", "nvclip_w1", "nvclip_w2"}


@pytest.mark.slow
def test_end_to_end_benchmark_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "result.json"
    code = end_to_end.main(["--count", "4", "--size", "128x128", "--startup-count", "2",
                            "--rounds", "1", "--latency", "0.05", "--cpu", "-1",
                            "--cache", str(tmp_path / "cache"), "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["images"] == 4 and result["size"] == [128, 128]
    prep = result["preprocessing_only"]
    assert prep["img_s_best"] > 0 and prep["cpu_ms_per_image_median"] > 0
    assert set(result["end_to_end"]) == CONFIGS
    for name, row in result["end_to_end"].items():
        assert row["stored"] == 4 and row["dead_lettered"] == 0, name
        assert row["img_s_best"] > 0 and row["vs_preprocessing_only"] > 0, name
        assert row["run_process_peak_mb"] > 0 and row["worker_peak_mb"] > 0, name
    # 2 workers: two Beam worker processes were found and measured, apart from the runner
    for name in ("thumbnail_w2", "nvclip_w2"):
        row = result["end_to_end"][name]
        assert len(row["worker_process_peaks_mb"]) >= 1
        assert row["worker_measured"].startswith("each sdk_worker_main")
        assert row["vs_1_worker"] > 0
    assert result["end_to_end"]["nvclip_w1"]["vs_thumbnail_same_workers"] > 0
    assert {t["target"].split()[0] for t in result["targets"]} >= {"nvclip_w1", "peak"}
    assert "| nvclip, 2 workers |" in capsys.readouterr().out


def test_worker_processes_are_told_from_their_shell():
    worker = ["/usr/bin/python3", "-m", "apache_beam.runners.worker.sdk_worker_main"]
    shell = ["/bin/sh", "-c", "/usr/bin/python3 -m apache_beam.runners.worker.sdk_worker_main"]
    assert end_to_end._is_worker(worker)
    assert end_to_end._is_worker(["/usr/bin/python3", "-m", "dicomvec.pipeline.worker_main"])
    assert not end_to_end._is_worker(shell)
    assert not end_to_end._is_worker(["/usr/bin/python3", "-m", "benchmarks.end_to_end"])


def test_cached_archive_is_made_once_and_remade_when_incomplete(tmp_path):
    from benchmarks.common import cached_archive, dicom_paths
    root = cached_archive(tmp_path, 3, (32, 32), ("native",), seed=5)
    files = dicom_paths(root)
    assert len(files) == 3
    made = {f: f.stat().st_mtime_ns for f in files}
    assert cached_archive(tmp_path, 3, (32, 32), ("native",), seed=5) == root
    assert {f: f.stat().st_mtime_ns for f in dicom_paths(root)} == made  # reused, not rewritten
    files[0].unlink()
    assert len(dicom_paths(cached_archive(tmp_path, 3, (32, 32), ("native",), seed=5))) == 3
    (root / "complete.json").write_text('{"generator": "older code"}')
    cached_archive(tmp_path, 3, (32, 32), ("native",), seed=5)
    assert all(f.stat().st_mtime_ns != made[f] for f in files[1:])  # stale: made again
