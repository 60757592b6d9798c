"""Every stored vector is the provider's vector for THAT row's image — on the Flink cluster.

The Flink variant of ``tests/test_own_vectors.py``: the dicomvec job runs with ``--runner
FlinkRunner`` and EXTERNAL workers from the cluster's worker pool (restarted with
``NVIDIA_API_KEY`` in its environment, ``worker_pool_env``: the key never travels in pipeline
options). The workers call the NV-CLIP contract server in this test process on 127.0.0.1; the
server derives each vector from the decoded pixels it received, and the test recomputes, per
ImageID, the model input from the DICOM file and the vector the server gives it. Batches are
formed on the cluster (GroupIntoBatches over sharded keys on two slots), so a mix-up between
batch members, workers or retries shows as a wrong vector. Cases: clean batches; one image
refused (422, bisected) — that image, and only it, dead-lettered; a 500 and a dropped
connection on a request (retried) next to the 422.
"""
from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from tests.flink.conftest import runner_flags, summary_numbers
from tests.flink.worker_env import worker_pool_env
from tests.nvclip_server import Fault
from tests.test_own_vectors import BATCH, IMAGES, archive, check, model_input  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.flink]


@pytest.fixture
def flink_nvclip(idle_cluster, nvclip_server, nvclip_api_key):
    """The cluster whose worker pool has this test's NV-CLIP key, and the contract server."""
    with worker_pool_env(idle_cluster, {"NVIDIA_API_KEY": nvclip_api_key}):
        yield idle_cluster, nvclip_server


def run_on_flink(cluster, jar, server, archive, tmp_path, run_id):  # noqa: F811
    root = next(iter(archive.values())).parents[4]
    proc = subprocess.run(
        [sys.executable, "-m", "dicomvec.cli", "run",
         "--input", str(root / "files" / "**" / "*.dcm"),
         "--sink", f"sqlite:///{tmp_path}/db.sqlite", "--dead-letter", str(tmp_path / "dl"),
         "--provider", "nvclip", "--nvclip-url", server.url, "--nvclip-timeout", "5",
         "--nvclip-max-attempts", "3", "--run-id", run_id, "--batch-size", str(BATCH),
         *runner_flags(cluster, jar, "FlinkRunner", "EXTERNAL")],
        text=True, capture_output=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:] + cluster.tail_logs()
    (job,) = cluster.jobs(f"dicomvec-{run_id}-")
    assert job["state"] == "FINISHED"                    # it ran on the cluster
    embed_sizes = server.batch_sizes()
    assert embed_sizes and max(embed_sizes) <= BATCH, embed_sizes
    return summary_numbers(proc.stdout), proc.stdout


def test_clean_batches_on_flink(flink_nvclip, job_server_jar, archive, tmp_path):  # noqa: F811
    cluster, server = flink_nvclip
    run_id = f"own{uuid.uuid4().hex[:8]}"
    numbers, stdout = run_on_flink(cluster, job_server_jar, server, archive, tmp_path, run_id)
    assert numbers["images stored"] == IMAGES and numbers["dead-lettered"] == 0, stdout
    assert sum(server.batch_sizes()) == IMAGES       # each image embedded once, no retries
    check(archive, tmp_path, run_id)


def test_one_image_refused_on_flink_is_the_one_dead_lettered(flink_nvclip, job_server_jar,
                                                             archive, tmp_path):  # noqa: F811
    cluster, server = flink_nvclip
    victim = sorted(archive)[5]
    server.reject_image(model_input(archive[victim]))
    run_id = f"own{uuid.uuid4().hex[:8]}"
    numbers, stdout = run_on_flink(cluster, job_server_jar, server, archive, tmp_path, run_id)
    assert numbers["images stored"] == IMAGES - 1 and numbers["dead-lettered"] == 1, stdout
    dead = check(archive, tmp_path, run_id, dead_expected=[victim])
    assert dead[victim]["stage"] == "embed" and dead[victim]["retryable"] is False
    assert "422" in dead[victim]["error_message"]


@pytest.mark.parametrize("fault", [Fault.http(500), Fault.drop()], ids=["500", "drop"])
def test_a_retried_request_on_flink_still_gives_each_image_its_own_vector(
        flink_nvclip, job_server_jar, archive, tmp_path, fault):  # noqa: F811
    cluster, server = flink_nvclip
    victim = sorted(archive)[2]
    server.reject_image(model_input(archive[victim]))
    server.inject(fault)
    run_id = f"own{uuid.uuid4().hex[:8]}"
    numbers, stdout = run_on_flink(cluster, job_server_jar, server, archive, tmp_path, run_id)
    assert numbers["images stored"] == IMAGES - 1, stdout
    assert not server._faults, "the fault was never served"   # a request met it, and was retried
    if "provider retries" in numbers:
        assert numbers["provider retries"] >= 1, stdout
    check(archive, tmp_path, run_id, dead_expected=[victim])
