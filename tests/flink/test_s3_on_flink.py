"""s3:// on the local Flink cluster: the workers read the archive from the bucket.

The same bucket as ``tests/test_s3.py`` (moto's server on 127.0.0.1, IAM credentials enforced,
``tests/s3_fixtures.py``), the dicomvec job submitted with ``--runner FlinkRunner`` and EXTERNAL
workers from the cluster's worker pool. The pool is restarted with the AWS credentials in its
environment (``worker_pool_env``), as on a real cluster: Beam's S3 options carry only the
endpoint and the region. Asserted: exact counts in the driver's summary, the same rows and the
same vectors as a local run over the same files on disk, every image read from the bucket by the
workers (each good object fetched once in full), dead letters written to and read back from
``s3://``, and resume (a second run on Flink stores 0 and skips every stored image).
"""
from __future__ import annotations

import collections
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
from tests.s3_fixtures import AWS_VARIABLES, SYNTH_BROKEN, SYNTH_COUNT

pytestmark = [pytest.mark.slow, pytest.mark.flink]


def _args(pattern, db: Path, dead_letter: str, run_id: str, sample):
    return ["--input", pattern, "--sink", f"sqlite:///{db}", "--dead-letter", dead_letter,
            "--provider", "thumbnail", "--batch-size", "4", "--run-id", run_id, *sample.flags()]


def _vectors(db: Path):
    with VectorStore(f"sqlite:///{db}") as store:
        paths = dict(store.conn.execute("SELECT ImageID, ImagePath FROM MIMICCXRImages"))
        return store.vectors(list(paths), "thumbnail"), paths


def _full_gets(traffic, bucket):
    """Open-ended (whole-object) GETs per .dcm key: what decode fetched."""
    gets = collections.Counter()
    for entry in traffic:
        if entry["method"] == "GET" and entry["path"].startswith(f"/{bucket}/") \
                and entry["path"].endswith(".dcm") \
                and (not entry["range"] or entry["range"].endswith("-")):
            gets[entry["path"][len(bucket) + 2:]] += 1
    return gets


def test_bucket_run_on_flink_counts_vectors_dead_letters_and_resume(
        idle_cluster, job_server_jar, s3_env, tmp_path):
    cluster, sample = idle_cluster, s3_env
    run_id = f"s3flink{uuid.uuid4().hex[:8]}"
    db = tmp_path / "flink.sqlite"
    dead_letter = f"s3://{sample.bucket}/dead_letter/{run_id}"
    flink = runner_flags(cluster, job_server_jar, "FlinkRunner", "EXTERNAL")

    def submit(rid):
        proc = subprocess.run(
            [sys.executable, "-m", "dicomvec.cli", "run",
             *_args(sample.synthetic_pattern, db, dead_letter, rid, sample), *flink],
            text=True, capture_output=True, timeout=900, cwd=tmp_path, env=dict(os.environ))
        assert proc.returncode == 0, proc.stderr[-4000:] + cluster.tail_logs()
        assert sample.secret_key not in proc.stdout + proc.stderr
        (job,) = cluster.jobs(f"dicomvec-{rid}-")
        assert job["state"] == "FINISHED"            # it ran on the cluster
        return summary_numbers(proc.stdout), proc.stdout

    # the workers get the credentials from their own environment, as on a real cluster
    with worker_pool_env(cluster, sample.env(), unset=AWS_VARIABLES):
        sample.server.reset_traffic()
        numbers, stdout = submit(run_id)
        traffic = sample.server.traffic()
        assert numbers["files matched"] == SYNTH_COUNT + SYNTH_BROKEN, stdout
        assert numbers["images stored"] == SYNTH_COUNT, stdout
        assert numbers["dead-lettered"] == SYNTH_BROKEN, stdout
        assert numbers["decode"] == SYNTH_BROKEN, stdout
        assert numbers["rows in store"] == SYNTH_COUNT, stdout

        # the workers decoded from the bucket: each good object fetched whole exactly once
        # (identify reads bounded ranges only; the not-DICOM file never reaches decode)
        gets = _full_gets(traffic, sample.bucket)
        decodable = {Path(f.path).relative_to(sample.local_root).as_posix()
                     for f in sample.synthetic if f.broken != "not-dicom"}
        assert dict(gets) == {key: 1 for key in decodable}, gets

        # resume on Flink: nothing stored again, every stored image skipped
        again, stdout = submit(f"{run_id}again")
        assert again["images stored"] == 0, stdout
        assert again["already stored"] == SYNTH_COUNT, stdout
        assert again["rows in store"] == SYNTH_COUNT, stdout

    # the same files from local disk, on the local engine: the same rows, the same vectors
    local_db = tmp_path / "local.sqlite"
    local = run_ingest(_args(str(sample.local_root / "files" / "**" / "*.dcm"), local_db,
                             str(tmp_path / "local_dl"), "local", sample))
    assert local.stored == SYNTH_COUNT
    from_flink, flink_paths = _vectors(db)
    from_disk, _ = _vectors(local_db)
    assert len(from_flink) == SYNTH_COUNT and sorted(from_flink) == sorted(from_disk)
    assert all(np.array_equal(from_flink[i], from_disk[i]) for i in from_flink)
    assert all(p.startswith(f"s3://{sample.bucket}/files/") for p in flink_paths.values())

    # the workers wrote the dead letters to the bucket: one per broken file, stage decode
    rows = read_dead_letters(dead_letter, run_id)
    assert sorted(r["path"] for r in rows) == sorted(
        sample.s3_path(f.path) for f in sample.synthetic if f.broken)
    assert {r["stage"] for r in rows} == {"decode"}
    keys = [o["Key"] for o in sample.client().list_objects_v2(
        Bucket=sample.bucket, Prefix=f"dead_letter/{run_id}/run={run_id}/")["Contents"]]
    assert keys and all(k.endswith(".parquet") for k in keys), keys
