"""s3:// end to end through Beam's own S3 filesystem against a real S3-compatible server (moto,
its own process on 127.0.0.1, IAM credentials enforced): exact counts, the same vectors as from
local files, resume, dead letters on s3://, reprocess, search --image s3://, bytes read per
image (identify: bounded ranged reads; decode: each object once), and one-line errors."""
from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest

from dicomvec import cli
from dicomvec.io.dead_letter import read_dead_letters
from dicomvec.io.stores import VectorStore
from dicomvec.pipeline.reprocess import run_reprocess
from dicomvec.pipeline.run import run_ingest
from tests.local_run import thumbnail_flags
from tests.s3_fixtures import SYNTH_BROKEN, SYNTH_COUNT

#: the issue's target for identify, per image
IDENTIFY_MAX_BYTES = 128 * 1024


def _argv(pattern, tmp_path, run_id, sample, *extra, dead_letter=None, db="db"):
    return thumbnail_flags(tmp_path, run_id, *sample.flags(), *extra, input=pattern,
                           sink=f"sqlite:///{tmp_path}/{db}.sqlite", dead_letter=dead_letter,
                           batch_size=4)


def _vectors(tmp_path, db="db"):
    with VectorStore(f"sqlite:///{tmp_path}/{db}.sqlite") as store:
        ids = [r[0] for r in store.conn.execute("SELECT ImageID FROM MIMICCXRImages")]
        paths = dict(store.conn.execute("SELECT ImageID, ImagePath FROM MIMICCXRImages"))
        return store.vectors(ids, "thumbnail"), paths


def _object_traffic(traffic, bucket):
    """GET requests per object key: [(range header, bytes sent)]."""
    per_key = collections.defaultdict(list)
    for entry in traffic:
        if entry["method"] == "GET" and entry["path"].startswith(f"/{bucket}/") \
                and entry["path"].endswith(".dcm"):
            per_key[entry["path"][len(bucket) + 2:]].append((entry["range"], entry["bytes"]))
    return per_key


@pytest.mark.slow  # several seconds: the fast suite stays under two minutes
def test_bucket_run_counts_vectors_bytes_resume_and_s3_dead_letters(s3_env, tmp_path):
    sample = s3_env
    dead_letter = f"s3://{sample.bucket}/dead_letter/{tmp_path.name}"
    sample.server.reset_traffic()
    first = run_ingest(_argv(sample.synthetic_pattern, tmp_path, "s3-first", sample,
                             dead_letter=dead_letter))
    traffic = sample.server.traffic()
    assert first.matched == SYNTH_COUNT + SYNTH_BROKEN
    assert first.stored == SYNTH_COUNT and first.rows_in_store == SYNTH_COUNT
    assert first.dead_lettered["decode"] == SYNTH_BROKEN
    assert first.dead_lettered_total == SYNTH_BROKEN

    # the same files read from local disk give the same rows and the same vectors
    local = run_ingest(_argv(str(sample.local_root / "files" / "**" / "*.dcm"), tmp_path,
                             "local", sample, db="local"))
    assert local.stored == SYNTH_COUNT
    from_s3, s3_paths = _vectors(tmp_path)
    from_disk, _ = _vectors(tmp_path, "local")
    assert sorted(from_s3) == sorted(from_disk)
    assert all(np.array_equal(from_s3[i], from_disk[i]) for i in from_s3)
    assert all(p.startswith(f"s3://{sample.bucket}/files/") for p in s3_paths.values())

    # bytes per object: identify fetches bounded ranges only (no open-ended GET), at most
    # 128 KB; decode reads each good object exactly once, in full
    sizes = {Path(f.path).relative_to(sample.local_root).as_posix():
             (f.broken, Path(f.path).stat().st_size) for f in sample.synthetic}
    per_key = _object_traffic(traffic, sample.bucket)
    assert set(per_key) == set(sizes)
    for key, (broken, size) in sizes.items():
        bounded = [b for r, b in per_key[key] if r and not r.endswith("-")]
        open_ended = [b for r, b in per_key[key] if not r or r.endswith("-")]
        assert bounded and sum(bounded) <= IDENTIFY_MAX_BYTES, (key, per_key[key])
        if broken == "not-dicom":
            assert open_ended == [], (key, per_key[key])  # never reaches decode
        else:
            assert len(open_ended) == 1 and open_ended[0] == size, (key, size, per_key[key])

    # dead letters were written to the bucket, and read back from it
    rows = read_dead_letters(dead_letter, "s3-first")
    assert sorted(r["path"] for r in rows) == sorted(
        sample.s3_path(f.path) for f in sample.synthetic if f.broken)
    assert {r["stage"] for r in rows} == {"decode"}

    # resume: nothing embedded again
    again = run_ingest(_argv(sample.synthetic_pattern, tmp_path, "s3-again", sample,
                             dead_letter=dead_letter))
    assert again.stored == 0 and again.skipped_existing == SYNTH_COUNT
    assert again.rows_in_store == SYNTH_COUNT

    # reprocess from the s3:// dead letters after "fixing" one file in the bucket
    truncated = next(f for f in sample.synthetic if f.broken == "truncated")
    good = next(f for f in sample.synthetic if not f.broken and f.syntax == "native")
    bucket, key = sample.s3_path(truncated.path)[5:].split("/", 1)
    client = sample.client()
    client.put_object(Bucket=bucket, Key=key, Body=Path(good.path).read_bytes())
    try:
        report = run_reprocess(_argv(sample.synthetic_pattern, tmp_path, "s3-reprocess",
                                     sample, dead_letter=dead_letter))
    finally:  # the bucket is shared by the session's tests
        client.put_object(Bucket=bucket, Key=key, Body=Path(truncated.path).read_bytes())
    assert report.selected == SYNTH_BROKEN
    assert report.fixed == 1  # the replaced object decodes now; the not-DICOM one still fails
    assert sum(report.still_failing.values()) == 1
    # its ImageID comes from its MIMIC path: one new row
    assert report.run.stored == 1 and report.run.rows_in_store == SYNTH_COUNT + 1


@pytest.mark.slow  # several seconds: the fast suite stays under two minutes
def test_real_files_from_the_bucket_match_local(s3_env, real_cxr_dir, tmp_path):
    sample = s3_env
    assert len(sample.real_files) == len(list(real_cxr_dir.glob("*.dcm")))
    remote = run_ingest(_argv(f"s3://{sample.bucket}/real/*.dcm", tmp_path, "real-s3", sample))
    local = run_ingest(_argv(str(real_cxr_dir / "*.dcm"), tmp_path, "real-local", sample,
                             db="local"))
    assert (remote.matched, remote.stored, remote.dead_lettered["decode"]) == (6, 5, 1)
    assert (local.matched, local.stored) == (6, 5)
    from_s3, _ = _vectors(tmp_path)
    from_disk, _ = _vectors(tmp_path, "local")
    assert sorted(from_s3) == sorted(from_disk)
    assert all(np.array_equal(from_s3[i], from_disk[i]) for i in from_s3)


@pytest.mark.slow  # several seconds: the fast suite stays under two minutes
def test_search_with_an_s3_query_image(s3_env, tmp_path, capsys):
    sample = s3_env
    run_ingest(_argv(sample.synthetic_pattern, tmp_path, "for-search", sample))
    query = next(f for f in sample.synthetic if not f.broken and f.syntax == "j2k")
    rc = cli.main(["search", "--image", sample.s3_path(query.path), "--sink",
                   f"sqlite:///{tmp_path}/db.sqlite", "--provider", "thumbnail", "--k", "3",
                   "--json", *sample.flags()])
    assert rc == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert results[0]["ImageID"] == query.dicom_id
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-6)


def _cli_error(argv, capsys):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    errors = [line for line in err.splitlines() if line.startswith("dicomvec: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("case", ["no credentials", "wrong credentials", "missing bucket",
                                  "nothing matches"])
def test_storage_mistakes_are_one_line_and_exit_2_before_anything_is_created(
        case, s3_env, tmp_path, monkeypatch, capsys):
    sample = s3_env
    pattern = sample.synthetic_pattern
    if case == "no credentials":
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        expected = "no AWS credentials to read s3://mimic-cxr"
    elif case == "wrong credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        expected = "refused the AWS credentials for s3://mimic-cxr (SignatureDoesNotMatch)"
    elif case == "missing bucket":
        pattern = "s3://no-such-bucket/files/**/*.dcm"
        expected = "S3 bucket 'no-such-bucket' does not exist"
    else:
        pattern = f"s3://{sample.bucket}/files/**/*.png"
        expected = f"no files match --input '{pattern}'"
    err = _cli_error(["run", *_argv(pattern, tmp_path, "mistake", sample)], capsys)
    assert expected in err
    assert sample.secret_key not in err
    assert not (tmp_path / "db.sqlite").exists() and not (tmp_path / "dl").exists()


def test_unknown_access_key_is_refused_too(s3_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    err = _cli_error(["run", *_argv(s3_env.synthetic_pattern, tmp_path, "x", s3_env)], capsys)
    assert "refused the AWS credentials" in err and "InvalidAccessKeyId" in err


@pytest.mark.slow
def test_streaming_over_a_bucket_prefix(s3_env, tmp_path, streaming_runner):
    """--streaming watches an s3:// prefix: objects uploaded during the run are stored, a
    broken one dead-lettered, and the job stops by itself once idle."""
    import threading
    import time
    sample = s3_env
    prefix = f"incoming/{tmp_path.name}"
    good = [f for f in sample.synthetic if not f.broken]
    broken = next(f for f in sample.synthetic if f.broken == "not-dicom")
    client = sample.client()
    client.upload_file(good[0].path, sample.bucket, f"{prefix}/first.dcm")

    def arrive():
        time.sleep(6)
        for index, item in enumerate(good[1:3], 1):
            client.upload_file(item.path, sample.bucket, f"{prefix}/later{index}.dcm")
        client.upload_file(broken.path, sample.bucket, f"{prefix}/bad.dcm")

    writer = threading.Thread(target=arrive)
    writer.start()
    summary = run_ingest(_argv(f"s3://{sample.bucket}/{prefix}/*.dcm", tmp_path, "stream",
                               sample, "--streaming", *streaming_runner,
                               "--watch-interval", "2", "--dead-letter-frequency", "2",
                               "--stop-after-idle", "8"))
    writer.join()
    with VectorStore(f"sqlite:///{tmp_path}/db.sqlite") as store:
        files = {r[0] for r in store.conn.execute("SELECT DicomFile FROM MIMICCXRImages")}
    assert files == {"first.dcm", "later1.dcm", "later2.dcm"}
    assert summary.stored == 3
    dead = read_dead_letters(str(tmp_path / "dl"))
    assert [(r["stage"], r["path"]) for r in dead] == [
        ("decode", f"s3://{sample.bucket}/{prefix}/bad.dcm")]


def test_search_and_reprocess_refuse_bad_credentials_in_one_line(s3_env, tmp_path, monkeypatch,
                                                                 capsys):
    """Commands that read listed s3:// paths check the bucket first (Beam itself would retry a
    refused request for minutes)."""
    sample = s3_env
    query = next(f for f in sample.synthetic if not f.broken)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    err = _cli_error(["search", "--image", sample.s3_path(query.path), "--sink",
                      f"sqlite:///{tmp_path}/db.sqlite", "--provider", "thumbnail",
                      *sample.flags()], capsys)
    assert "no AWS credentials to read s3://mimic-cxr" in err
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", sample.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    err = _cli_error(["reprocess", *_argv(sample.synthetic_pattern, tmp_path, "re", sample,
                                          dead_letter=f"s3://{sample.bucket}/dead_letter")],
                     capsys)
    assert "refused the AWS credentials" in err and "wrong" not in err


@pytest.mark.slow  # several seconds: the fast suite stays under two minutes
def test_local_worker_processes_read_the_bucket(s3_env, tmp_path):
    """--direct_num_workers 2: Beam starts the worker processes without pipeline options, so
    the S3 options reach them through the environment (object_storage.worker_environment)."""
    import os
    sample = s3_env
    dead_letter = f"s3://{sample.bucket}/dead_letter/{tmp_path.name}"
    summary = run_ingest(_argv(sample.synthetic_pattern, tmp_path, "w2", sample,
                               "--direct_num_workers", "2", dead_letter=dead_letter))
    assert summary.stored == SYNTH_COUNT and summary.dead_lettered_total == SYNTH_BROKEN
    assert len(read_dead_letters(dead_letter, "w2")) == SYNTH_BROKEN
    assert "AWS_ENDPOINT_URL_S3" not in os.environ  # set for the run only


def test_dead_letters_summary_reads_a_bucket_folder(s3_env, tmp_path, monkeypatch, capsys):
    """`dicomvec dead-letters summary s3://…` reads the bucket (Beam's S3 options pass through),
    or says in one line why it cannot; never Beam's "Must provide one of client or options"."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from dicomvec.io.dead_letter import SCHEMA
    sample = s3_env
    folder = f"dl-summary-{tmp_path.name}"
    row = {"path": f"s3://{sample.bucket}/files/x.dcm", "image_id": "x", "stage": "decode",
           "error_type": "DicomReadError", "error_message": "not DICOM", "attempts": 1,
           "retryable": False, "run_id": "g1", "failed_at": "2026-01-31T12:00:00+00:00",
           "dicomvec_version": "test"}
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([row], schema=SCHEMA), buffer)
    sample.client().put_object(Bucket=sample.bucket, Key=f"{folder}/run=g1/dead_letter-0.parquet",
                               Body=buffer.getvalue())
    rc = cli.main(["dead-letters", "summary", f"s3://{sample.bucket}/{folder}", *sample.flags()])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "g1" in out and "DicomReadError" in out
    assert "total over 1 generation: rows: 1, distinct files: 1" in out
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    err = _cli_error(["dead-letters", "summary", f"s3://{sample.bucket}/{folder}",
                      *sample.flags()], capsys)
    assert "no AWS credentials to read s3://mimic-cxr" in err
