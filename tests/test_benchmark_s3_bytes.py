"""The S3 bytes benchmark still runs end to end (tiny images; the byte targets it reports are
structural — bounded header reads, one full read per object — so they are asserted)."""
from __future__ import annotations

import json

import pytest

from benchmarks import s3_bytes


@pytest.mark.slow
def test_s3_bytes_benchmark_smoke(s3_server, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, "restored-after-the-test")  # the benchmark sets them
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    out = tmp_path / "s3.json"
    assert s3_bytes.main(["--count", "2", "--size", "400x300", "--cache",
                          str(tmp_path / "cache"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["commit"] and len(result["machine"]["loadavg_end"]) == 3
    assert result["pipeline"]["stored"] == 2
    assert all(r.startswith("bytes=0-") and not r.endswith("-")
               for r in result["identify_header_read"]["ranges"])
    assert all(target["met"] for target in result["targets"]), result["targets"]
