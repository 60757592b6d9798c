"""gs:// on the local Flink cluster: the workers list and read the archive from a GCS-API server.

fake-gcs-server (``tests/bucket_tools.py``, built by ``scripts/bucket/install.sh``, its own
process on 127.0.0.1) holds the synthetic archive of ``tests/test_gcs.py``. The dicomvec job is
submitted with ``--runner FlinkRunner`` and EXTERNAL workers from the cluster's worker pool. The
server's URL reaches the workers ONLY through the job's options (``--gcs_emulator_host``): the
pool is restarted without ``STORAGE_EMULATOR_HOST`` (and without Google credentials), and so is
the driver — as an S3 endpoint reaches them through ``--s3_endpoint_url``. Asserted: exact
counts in the driver's summary, the job FINISHED on the cluster, the same rows and vectors as a
local run over the same files on disk, the broken files' ``decode`` dead letters, and resume (a
second run on Flink stores 0 and skips every stored image). Dead letters stay on local disk:
Beam's GCS rename (the Parquet sink's finalisation) uses the JSON batch API, which
fake-gcs-server does not speak.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from dicomvec.io.dead_letter import read_dead_letters
from dicomvec.io.stores import VectorStore
from dicomvec.pipeline.run import run_ingest
from tests.flink.conftest import runner_flags, summary_numbers
from tests.flink.worker_env import worker_pool_env
from tests.s3_fixtures import SYNTH_BROKEN, SYNTH_COUNT, SYNTH_SIZE

pytestmark = [pytest.mark.slow, pytest.mark.flink]
BUCKET = "mimic-cxr-flink"
#: what must NOT reach the workers from their environment: the server's URL comes from the
#: job's options, and no Google credentials are there at all
GCS_VARIABLES = ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")


@pytest.fixture(scope="module")
def gcs_archive(tmp_path_factory):
    from tests.bucket_tools import FakeGcsServer, require_tool
    require_tool("fake-gcs-server")
    import apache_beam.io.gcp.gcsio  # noqa: F401 (the gcp extra: a failure here is an error)
    from dicomvec import synthetic
    root = tmp_path_factory.mktemp("gcs-flink-archive")
    files = synthetic.generate(root, SYNTH_COUNT, SYNTH_SIZE, ("native", "j2k", "rle"),
                               SYNTH_BROKEN, seed=11)
    with FakeGcsServer() as server:
        server.create_bucket(BUCKET)
        server.upload_tree(root, BUCKET, "")
        yield server, root, files


def _args(pattern, db: Path, dead_letter: str, run_id: str):
    return ["--input", pattern, "--sink", f"sqlite:///{db}", "--dead-letter", dead_letter,
            "--provider", "thumbnail", "--batch-size", "4", "--run-id", run_id]


def _vectors(db: Path):
    with VectorStore(f"sqlite:///{db}") as store:
        paths = dict(store.conn.execute("SELECT ImageID, ImagePath FROM MIMICCXRImages"))
        return store.vectors(list(paths), "thumbnail"), paths


def test_gcs_run_on_flink_counts_vectors_dead_letters_and_resume(
        idle_cluster, job_server_jar, gcs_archive, tmp_path):
    cluster = idle_cluster
    server, root, files = gcs_archive
    run_id = f"gcsflink{uuid.uuid4().hex[:8]}"
    db = tmp_path / "flink.sqlite"
    # not a name Python can import: the driver runs in tmp_path, and a "dl" folder there
    # shadows the module some libraries probe for (``import dl``)
    dead_letter = str(tmp_path / "dead-letters")
    pattern = f"gs://{BUCKET}/files/**/*.dcm"
    flink = runner_flags(cluster, job_server_jar, "FlinkRunner", "EXTERNAL")
    driver_env = {k: v for k, v in os.environ.items() if k not in GCS_VARIABLES}
    driver_env["CLOUDSDK_CONFIG"] = "/nonexistent/gcloud"  # no user credentials either

    def submit(rid):
        proc = subprocess.run(
            [sys.executable, "-m", "dicomvec.cli", "run", *_args(pattern, db, dead_letter, rid),
             "--gcs_emulator_host", server.endpoint, *flink],
            text=True, capture_output=True, timeout=900, cwd=tmp_path, env=driver_env)
        assert proc.returncode == 0, proc.stderr[-4000:] + cluster.tail_logs()
        (job,) = cluster.jobs(f"dicomvec-{rid}-")
        assert job["state"] == "FINISHED"            # it ran on the cluster
        return summary_numbers(proc.stdout), proc.stdout

    with worker_pool_env(cluster, {"CLOUDSDK_CONFIG": "/nonexistent/gcloud"},
                         unset=GCS_VARIABLES):
        numbers, stdout = submit(run_id)
        assert numbers["files matched"] == SYNTH_COUNT + SYNTH_BROKEN, stdout
        assert numbers["images stored"] == SYNTH_COUNT, stdout
        assert numbers["dead-lettered"] == SYNTH_BROKEN, stdout
        assert numbers["decode"] == SYNTH_BROKEN, stdout
        assert numbers["rows in store"] == SYNTH_COUNT, stdout

        # resume on Flink: nothing stored again, every stored image skipped
        again, stdout = submit(f"{run_id}again")
        assert again["images stored"] == 0, stdout
        assert again["already stored"] == SYNTH_COUNT, stdout
        assert again["rows in store"] == SYNTH_COUNT, stdout

    # the same files from local disk, on the local engine: the same rows, the same vectors
    local_db = tmp_path / "local.sqlite"
    local = run_ingest(_args(str(root / "files" / "**" / "*.dcm"), local_db,
                             str(tmp_path / "local-dead-letters"), "local"))
    assert local.stored == SYNTH_COUNT
    from_flink, flink_paths = _vectors(db)
    from_disk, _ = _vectors(local_db)
    assert len(from_flink) == SYNTH_COUNT and sorted(from_flink) == sorted(from_disk)
    assert all(np.array_equal(from_flink[i], from_disk[i]) for i in from_flink)
    assert all(p.startswith(f"gs://{BUCKET}/files/") for p in flink_paths.values())

    # one decode dead letter per broken file, with its gs:// path
    rows = read_dead_letters(dead_letter, run_id)
    assert sorted(r["path"] for r in rows) == sorted(
        f"gs://{BUCKET}/{Path(f.path).relative_to(root).as_posix()}"
        for f in files if f.broken)
    assert {r["stage"] for r in rows} == {"decode"}
