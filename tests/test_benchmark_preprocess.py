"""Smoke test: the preprocessing benchmark runs end to end and reports what BENCHMARKS.md quotes.

No timing is asserted here (performance claims come from running the benchmark itself)."""
from __future__ import annotations

import json

import pytest

from benchmarks import preprocess


@pytest.mark.slow
def test_benchmark_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "result.json"
    code = preprocess.main(["--cases", "native16,rle", "--rounds", "1", "--files-per-case", "1",
                            "--batch", "2", "--cpu", "-1", "--earlier-size", "0",
                            "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result["cases"]) == {"native16", "rle"}
    native = result["cases"]["native16"]
    assert native["decoder"] == "native+mean7" and native["fast_ms"] > 0 and native["ratio"] > 0
    assert native["rss_batch"]["fast"]["peak_mb"] >= native["rss_batch"]["fast"]["baseline_mb"]
    assert result["cases"]["rle"]["decoder"].startswith("rle")
    assert "| native 16-bit 3056x2544 |" in capsys.readouterr().out
