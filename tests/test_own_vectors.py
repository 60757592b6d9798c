"""Every stored vector is the provider's vector for THAT row's image, end to end.

The NV-CLIP contract server derives each vector from the decoded pixels it received
(``tests/nvclip_server.py``); this test recomputes, per ImageID, the model input from the
DICOM file itself (``dicomvec.imaging.preprocess``, outside the pipeline) and the vector the
server gives those pixels, and compares it with the stored row. A pipeline that handed a
neighbour's vector to an image — a shifted index inside a batch, a mix-up after a retry or a
422 bisection — fails here. Faults: clean batches; one image refused (422, bisected); a 500 on
a request (retried); a dropped connection (retried); a request that fails on every attempt (its
images, and only those, dead-lettered as retryable).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from dicomvec import imaging
from dicomvec.io.dead_letter import read_dead_letters
from dicomvec.io.stores import VectorStore
from dicomvec.pipeline.run import run_ingest
from dicomvec.synthetic import generate
from tests.nvclip_server import Fault, content_key, image_input_string, image_vector

IMAGES = 11
BATCH = 4


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Dict[str, Path]:
    """ImageID → file: a small MIMIC-layout archive of distinct synthetic images."""
    root = tmp_path_factory.mktemp("own-vectors")
    files = generate(root, IMAGES, size=(160, 128), syntaxes=["native", "rle"], seed=21)
    return {f.dicom_id: Path(f.path) for f in files}


def model_input(path: Path) -> bytes:
    return imaging.preprocess(path.read_bytes(), size=224, method="standard",
                              image_format="png").data


def run(server, archive, tmp_path, run_id="own", *extra):
    root = next(iter(archive.values())).parents[4]
    return run_ingest([
        "--input", str(root / "files" / "**" / "*.dcm"),
        "--sink", f"sqlite:///{tmp_path}/db.sqlite", "--dead-letter", str(tmp_path / "dl"),
        "--provider", "nvclip", "--nvclip-url", server.url, "--nvclip-timeout", "5",
        "--nvclip-max-attempts", "3", "--run-id", run_id, "--batch-size", str(BATCH), *extra])


def check(archive, tmp_path, run_id="own", dead_expected=()):
    """Each stored row's vector is the server's vector for its own image; the dead letters are
    exactly ``dead_expected`` (ImageIDs); together they cover every image once."""
    with VectorStore(f"sqlite:///{tmp_path}/db.sqlite") as store:
        vectors = store.vectors(list(archive), "nvclip")
    dead = {row["image_id"]: row for row in read_dead_letters(str(tmp_path / "dl"), run_id)}
    assert set(dead) == set(dead_expected)
    assert set(vectors) == set(archive) - set(dead)
    for image_id, vector in vectors.items():
        want = image_vector(model_input(archive[image_id]))
        assert np.allclose(vector, want, atol=1e-6), \
            f"{image_id}: its stored vector is not the server's vector for its own image"
    return dead


def test_clean_batches(nvclip_server, archive, tmp_path):
    summary = run(nvclip_server, archive, tmp_path)
    assert summary.stored == IMAGES and nvclip_server.request_count == -(-IMAGES // BATCH)
    check(archive, tmp_path)


def test_one_image_refused_is_the_one_dead_lettered(nvclip_server, archive, tmp_path):
    victim = sorted(archive)[5]
    nvclip_server.reject_image(model_input(archive[victim]))
    summary = run(nvclip_server, archive, tmp_path)
    assert summary.stored == IMAGES - 1
    dead = check(archive, tmp_path, dead_expected=[victim])
    assert dead[victim]["stage"] == "embed" and dead[victim]["retryable"] is False
    assert "422" in dead[victim]["error_message"]


@pytest.mark.parametrize("fault", [Fault.http(500), Fault.drop()], ids=["500", "drop"])
def test_a_retried_request_still_gives_each_image_its_own_vector(nvclip_server, archive,
                                                                  tmp_path, fault):
    victim = sorted(archive)[2]
    nvclip_server.reject_image(model_input(archive[victim]))
    nvclip_server.inject(fault)
    summary = run(nvclip_server, archive, tmp_path)
    assert summary.provider_stats["retries"] >= 1
    check(archive, tmp_path, dead_expected=[victim])


@pytest.mark.slow  # several seconds: the fast suite stays under two minutes
def test_a_request_failing_every_attempt_dead_letters_its_own_images(nvclip_server, archive,
                                                                     tmp_path):
    """One request at a time, so the first request takes all three 500s: its images, and only
    those — the ones the server never answered — are dead-lettered as retryable."""
    nvclip_server.inject(*[Fault.http(500)] * 3)
    summary = run(nvclip_server, archive, tmp_path, "own", "--nvclip-concurrency", "1")
    failed = [entry for entry in nvclip_server.log if entry.status == 500]
    assert len(failed) == 3 and {entry.batch_size for entry in failed} == {BATCH}
    answered = {content_key(text) for text in nvclip_server.received}
    never_answered = [image_id for image_id, path in archive.items()
                      if content_key(image_input_string(model_input(path), "image/png"))
                      not in answered]
    assert len(never_answered) == BATCH and summary.stored == IMAGES - BATCH
    dead = check(archive, tmp_path, dead_expected=never_answered)
    assert all(row["retryable"] and "500" in row["error_message"] for row in dead.values())
