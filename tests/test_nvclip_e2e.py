"""End to end on the local engine with ``--provider nvclip`` against the contract server, with
faults: real DICOMs → NV-CLIP (local server) → SQLite + Parquet dead letters.

Each run checks: every stored row's vector is the server's vector for one input it really
received (so each image got its own vector, none zero), rows are distinct and unique per
ImageID, failed images are in the dead letters at stage ``embed`` with a reason, and the API key
is in none of the captured logs, dead-letter files or the database file.
"""
from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from dicomvec.io.dead_letter import read_dead_letters
from dicomvec.io.providers.base import FatalProviderError
from dicomvec.io.stores import VectorStore
from dicomvec.pipeline.reprocess import run_reprocess
from dicomvec.pipeline.run import RunSummary, run_ingest
from tests.nvclip_server import Fault, NVClipContractServer, expected_vector


GOOD_FILES = 5  # ../shared/testdata/cxr: six DICOMs, one of them corrupt (dead-lettered at decode)


def run(server: NVClipContractServer, cxr: Path, tmp_path: Path, run_id: str,
        *extra: str) -> RunSummary:
    return run_ingest([
        "--input", str(cxr / "*.dcm"),
        "--sink", f"sqlite:///{tmp_path}/dicomvec.db",
        "--dead-letter", str(tmp_path / "dead_letter"),
        "--provider", "nvclip",
        "--nvclip-url", server.url,
        "--nvclip-timeout", "5",  # only the injected 8 s fault times out, even under load
        "--nvclip-max-attempts", "3",
        "--run-id", run_id,
        "--batch-size", "4",
        *extra,
    ])


def stored_vectors(tmp_path: Path) -> Dict[str, np.ndarray]:
    with VectorStore(f"sqlite:///{tmp_path}/dicomvec.db") as store:
        ids = [row[0] for row in store.conn.execute("SELECT ImageID FROM MIMICCXRImages")]
        assert len(ids) == len(set(ids)), "duplicate rows"
        return store.vectors(ids, "nvclip")


def embed_dead_letters(tmp_path: Path, run_id: str) -> List[Dict]:
    return [row for row in read_dead_letters(str(tmp_path / "dead_letter"), run_id)
            if row["stage"] == "embed"]


def check_own_vectors(vectors: Dict[str, np.ndarray], server: NVClipContractServer) -> None:
    """Each stored vector equals the server's vector for exactly one input it received."""
    expected = {text: expected_vector(text) for text in server.received
                if text.startswith("data:")}
    matched = set()
    for image_id, vector in vectors.items():
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4, image_id
        hits = [text for text, want in expected.items()
                if np.allclose(vector, want, atol=1e-5)]
        assert len(hits) == 1, f"{image_id}: vector is not the server's vector for its input"
        matched.add(hits[0])
    assert len(matched) == len(vectors)  # no two images share an input's vector


def check_key_absent(key: str, caplog, tmp_path: Path) -> None:
    assert key not in caplog.text
    for path in glob.glob(str(tmp_path / "**" / "*"), recursive=True):
        if os.path.isfile(path):
            assert key.encode() not in Path(path).read_bytes(), path


@pytest.fixture(autouse=True)
def debug_logs(caplog):
    caplog.set_level(logging.DEBUG)


@pytest.mark.slow  # several seconds: the fast suite stays under two minutes
def test_clean_run_stores_every_good_image_with_its_own_vector(
        nvclip_server, nvclip_api_key, real_cxr_dir, tmp_path, caplog):
    summary = run(nvclip_server, real_cxr_dir, tmp_path, "clean")
    assert summary.stored == GOOD_FILES and summary.rows_in_store == GOOD_FILES
    assert summary.dead_lettered["embed"] == 0 and summary.dead_lettered["decode"] == 1
    assert summary.provider == "nvclip" and summary.embedding_model == "nvidia/nvclip"
    port = nvclip_server.url.split(":")[2].split("/")[0]
    assert f"  pixels sent to       self-hosted NIM at 127.0.0.1:{port}" in summary.render()
    assert summary.provider_stats["images_embedded"] == GOOD_FILES
    assert max(nvclip_server.batch_sizes()) <= 4
    check_own_vectors(stored_vectors(tmp_path), nvclip_server)
    check_key_absent(nvclip_api_key, caplog, tmp_path)

    again = run(nvclip_server, real_cxr_dir, tmp_path, "again")  # idempotent re-run
    assert again.rows_in_store == GOOD_FILES


@pytest.mark.slow
@pytest.mark.parametrize("fault", [
    Fault.http(429, retry_after="1"), Fault.http(429), Fault.http(500), Fault.http(503),
    Fault.drop(), Fault.slow(8.0), Fault.wrong_count(), Fault.non_finite()],
    ids=lambda f: f"{f.kind}{f.status or ''}{'-retry-after' if f.retry_after else ''}")
def test_fault_plus_one_rejected_image(nvclip_server, nvclip_api_key, real_cxr_dir, tmp_path,
                                       caplog, fault):
    nvclip_server.reject_first_images = 1
    nvclip_server.inject(fault)
    summary = run(nvclip_server, real_cxr_dir, tmp_path, "faults")
    failed = embed_dead_letters(tmp_path, "faults")
    rejected = [row for row in failed if row["error_type"] == "NVClipRejected"]
    assert len(rejected) == 1
    row = rejected[0]
    assert row["retryable"] is False
    assert "422" in row["error_message"] and "could not be processed" in row["error_message"]
    vectors = stored_vectors(tmp_path)
    assert row["image_id"] not in vectors
    if fault.kind == "non_finite":  # one more image got a NaN vector: dead-lettered, not stored
        assert len(failed) == 2 and summary.stored == GOOD_FILES - 2
        bad = [r for r in failed if r["error_type"] == "InvalidEmbedding"][0]
        assert "non-finite" in bad["error_message"] and bad["image_id"] not in vectors
    else:
        assert len(failed) == 1 and summary.stored == GOOD_FILES - 1
        assert summary.provider_stats["retries"] == 1
    assert len(vectors) == summary.stored == summary.rows_in_store
    check_own_vectors(vectors, nvclip_server)
    check_key_absent(nvclip_api_key, caplog, tmp_path)


@pytest.mark.slow
def test_outage_dead_letters_retryable_and_reprocess_recovers(nvclip_server, nvclip_api_key,
                                                              real_cxr_dir, tmp_path, caplog):
    nvclip_server.inject(*[Fault.http(503)] * 40)
    summary = run(nvclip_server, real_cxr_dir, tmp_path, "down", "--nvclip-max-attempts", "2")
    assert summary.stored == 0 and summary.rows_in_store == 0
    rows = embed_dead_letters(tmp_path, "down")
    assert len(rows) == GOOD_FILES
    assert len({row["image_id"] for row in rows}) == GOOD_FILES
    assert all(row["retryable"] and row["attempts"] == 2 and "503" in row["error_message"]
               for row in rows)

    # the outage ends: the retryable dead letters are re-run and every image is stored once
    nvclip_server.clear_faults()
    report = run_reprocess([
        "--sink", f"sqlite:///{tmp_path}/dicomvec.db", "--dead-letter",
        str(tmp_path / "dead_letter"), "--provider", "nvclip", "--nvclip-url", nvclip_server.url,
        "--run-id", "recovered", "--batch-size", "4"], stage="embed", retryable_only=True)
    assert report.selected == GOOD_FILES and report.fixed == GOOD_FILES
    assert report.run.stored == GOOD_FILES
    check_own_vectors(stored_vectors(tmp_path), nvclip_server)
    check_key_absent(nvclip_api_key, caplog, tmp_path)


@pytest.mark.slow
def test_bad_vectors_are_dead_lettered_never_stored(nvclip_server, nvclip_api_key, real_cxr_dir,
                                                    tmp_path, caplog):
    nvclip_server.inject(*[Fault.wrong_dimension()] * 10)
    summary = run(nvclip_server, real_cxr_dir, tmp_path, "baddim")
    assert summary.stored == 0 and summary.rows_in_store == 0
    rows = embed_dead_letters(tmp_path, "baddim")
    assert len(rows) == GOOD_FILES
    assert all(row["error_type"] == "InvalidEmbedding" and "dimensions" in row["error_message"]
               for row in rows)
    check_key_absent(nvclip_api_key, caplog, tmp_path)


@pytest.mark.slow  # several seconds: the fast suite stays under two minutes
def test_wrong_key_stops_the_job_with_a_plain_message(nvclip_server, real_cxr_dir, tmp_path,
                                                      monkeypatch, caplog):
    monkeypatch.setenv("NVIDIA_API_KEY", "testkey_nvapi_WRONG-KEY-e2e-0123456789")
    with pytest.raises(Exception) as info:
        run(nvclip_server, real_cxr_dir, tmp_path, "badkey")
    text = f"{info.value!r} {info.value}"
    assert isinstance(info.value, FatalProviderError) or "FatalProviderError" in text
    assert "rejected the API key (401)" in text
    assert "testkey_nvapi_WRONG-KEY-e2e-0123456789" not in text
    check_key_absent("testkey_nvapi_WRONG-KEY-e2e-0123456789", caplog, tmp_path)
    assert nvclip_server.request_count <= 4  # stopped at once, not once per image


@pytest.mark.slow  # several seconds: the fast suite stays under two minutes
def test_batches_are_in_flight_together(nvclip_server, nvclip_api_key, real_cxr_dir, tmp_path,
                                        caplog):
    nvclip_server.latency_s = 1.0  # wide windows: overlap is certain even on a loaded machine
    summary = run(nvclip_server, real_cxr_dir, tmp_path, "overlap", "--batch-size", "1")
    assert summary.stored == GOOD_FILES
    assert nvclip_server.batch_sizes() == [1] * GOOD_FILES
    assert nvclip_server.max_in_flight >= 2  # EmbedBatch keeps several batches pending
    check_own_vectors(stored_vectors(tmp_path), nvclip_server)
    check_key_absent(nvclip_api_key, caplog, tmp_path)
