"""Resume against the NV-CLIP contract server: a finished input costs 0 requests; a run killed
half-way and started again pays only for what is missing, and the store ends exact."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dicomvec.io.stores import VectorStore
from dicomvec.pipeline.run import run_ingest
from dicomvec.synthetic import generate

REPO = Path(__file__).resolve().parents[1]
IMAGES = 40
BATCH = 4


@pytest.fixture
def archive(tmp_path):
    generate(tmp_path / "archive", IMAGES, size=(256, 212), syntaxes=("native",), seed=3)
    return tmp_path / "archive"


def _flags(tmp_path, archive, server, run_id):
    return ["--input", str(archive / "files" / "**" / "*.dcm"),
            "--sink", f"sqlite:///{tmp_path}/{run_id.split('-')[0]}.db",
            "--dead-letter", str(tmp_path / "dl"), "--run-id", run_id,
            "--provider", "nvclip", "--nvclip-url", server.url, "--batch-size", str(BATCH),
            "--nvclip-concurrency", "1", "--nvclip-timeout", "5"]


def _rows(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT COUNT(*) FROM MIMICCXRImages").fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0


@pytest.mark.slow  # several seconds: the fast suite stays under two minutes
def test_finished_input_costs_nothing_and_killed_run_pays_only_the_rest(
        tmp_path, archive, nvclip_server):
    clean = run_ingest(_flags(tmp_path, archive, nvclip_server, "clean-1"))
    clean_requests = nvclip_server.request_count
    assert clean.stored == IMAGES and clean_requests >= IMAGES // BATCH

    again = run_ingest(_flags(tmp_path, archive, nvclip_server, "clean-2"))
    assert nvclip_server.request_count == clean_requests  # 0 new requests
    assert again.skipped_existing == IMAGES and again.rows_in_store == IMAGES

    # a second store, filled by a run that is killed once about half of the images are in it
    # 0.5 s a request, one at a time: once half is stored, ≥ 2.5 s of work remain, so the kill
    # cannot lose its race with a 20 ms poll even on a loaded machine
    nvclip_server.latency_s = 0.5
    before = nvclip_server.request_count
    db = tmp_path / "killed.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomvec.cli", "run",
         *_flags(tmp_path, archive, nvclip_server, "killed-1")],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _rows(db) < IMAGES // 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored_before_kill = _rows(db)
    assert IMAGES // 2 <= stored_before_kill < IMAGES, "the run was not killed half-way"

    nvclip_server.latency_s = 0.0
    before_rerun = nvclip_server.request_count
    rerun = run_ingest(_flags(tmp_path, archive, nvclip_server, "killed-2"))
    rerun_requests = nvclip_server.request_count - before_rerun
    assert rerun.skipped_existing == stored_before_kill
    assert rerun_requests <= 0.55 * clean_requests, (rerun_requests, clean_requests)
    with VectorStore(f"sqlite:///{db}") as store:
        assert store.count() == IMAGES
        ids = [r[0] for r in store.conn.execute("SELECT ImageID FROM MIMICCXRImages")]
    assert len(set(ids)) == IMAGES
    assert before_rerun > before  # the killed run did pay for its half
