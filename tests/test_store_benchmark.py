"""The sink benchmark still runs end to end (tiny sizes; no figures are asserted)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sink.py"


@pytest.mark.slow
@pytest.mark.postgres
def test_sink_benchmark_smoke(capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_sink", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "sink.json"
    assert bench.main(["--rows", "192", "--baseline-rows", "16", "--repeat", "1", "--json",
                       "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == report
    assert report["machine"]["commit"] and len(report["machine"]["loadavg_end"]) == 3
    assert set(report["median"]) == {"sqlite", "postgresql"}
    for figures in report["median"].values():
        assert figures["batched_rows_per_s"] > 0 and figures["baseline_rows_per_s"] > 0
