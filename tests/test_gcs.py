"""gs:// end to end through Beam's own GCS filesystem against a real GCS JSON-API server
(fake-gcs-server, built by scripts/bucket/install.sh, its own process on 127.0.0.1, reached
through ``STORAGE_EMULATOR_HOST``): exact counts, the same vectors as from local files, resume,
reprocess (dead letters on local disk: fake-gcs-server has no batch API, which Beam's GCS rename needs), ``search --image gs://``, and
one-line errors. Slow suite (needs the Go-built server); fails in CI when it cannot be built."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dicomvec import cli
from dicomvec.io.dead_letter import read_dead_letters
from dicomvec.pipeline.reprocess import run_reprocess
from dicomvec.pipeline.run import run_ingest
from tests.s3_fixtures import SYNTH_BROKEN, SYNTH_COUNT, SYNTH_SIZE

pytestmark = pytest.mark.slow
BUCKET = "mimic-cxr-gcs"


@pytest.fixture(scope="session")
def gcs_sample(tmp_path_factory):
    from tests.bucket_tools import FakeGcsServer, require_tool
    require_tool("fake-gcs-server")
    try:
        import apache_beam.io.gcp.gcsio  # noqa: F401
    except ImportError as exc:
        import os
        if os.environ.get("CI"):
            raise
        pytest.skip(f"gs:// tests need apache-beam[gcp] (pip install -e '.[test]'): {exc}")
    from dicomvec import synthetic
    root = tmp_path_factory.mktemp("gcs-archive")
    files = synthetic.generate(root, SYNTH_COUNT, SYNTH_SIZE, ("native", "j2k", "rle"),
                               SYNTH_BROKEN, seed=7)
    with FakeGcsServer() as server:
        server.create_bucket(BUCKET)
        server.upload_tree(root, BUCKET, "")
        yield server, root, files


@pytest.fixture
def gcs(gcs_sample, monkeypatch):
    server, root, files = gcs_sample
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.endpoint)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", "/nonexistent/gcloud")  # no user credentials
    return gcs_sample


def _gs(root, local_path):
    return f"gs://{BUCKET}/{Path(local_path).relative_to(root).as_posix()}"


def _argv(pattern, tmp_path, run_id, *extra, dead_letter=None, db="db"):
    return ["--input", pattern, "--sink", f"sqlite:///{tmp_path}/{db}.sqlite",
            "--dead-letter", dead_letter or str(tmp_path / "dl"), "--provider", "thumbnail",
            "--run-id", run_id, "--batch-size", "4", *extra]


def test_gcs_run_resume_dead_letters_reprocess_and_vectors(gcs, tmp_path):
    from tests.test_s3 import _vectors
    server, root, files = gcs
    pattern = f"gs://{BUCKET}/files/**/*.dcm"
    # dead letters stay local: Beam's GCS rename (the Parquet sink's finalisation) uses the
    # JSON batch API, which fake-gcs-server does not speak ("Bad response: not multi-part")
    dead_letter = str(tmp_path / "dl")
    first = run_ingest(_argv(pattern, tmp_path, "gcs-first", dead_letter=dead_letter))
    assert first.matched == SYNTH_COUNT + SYNTH_BROKEN
    assert first.stored == SYNTH_COUNT and first.rows_in_store == SYNTH_COUNT
    assert first.dead_lettered["decode"] == SYNTH_BROKEN and first.accounting.holds

    local = run_ingest(_argv(str(root / "files" / "**" / "*.dcm"), tmp_path, "local",
                             db="local", dead_letter=str(tmp_path / "dl-local")))
    from_gcs, paths = _vectors(tmp_path)
    from_disk, _ = _vectors(tmp_path, "local")
    assert local.stored == SYNTH_COUNT and sorted(from_gcs) == sorted(from_disk)
    assert all(np.array_equal(from_gcs[i], from_disk[i]) for i in from_gcs)
    assert all(p.startswith(f"gs://{BUCKET}/files/") for p in paths.values())

    rows = read_dead_letters(dead_letter, "gcs-first")
    assert sorted(r["path"] for r in rows) == sorted(_gs(root, f.path) for f in files
                                                     if f.broken)

    again = run_ingest(_argv(pattern, tmp_path, "gcs-again", dead_letter=dead_letter))
    assert again.stored == 0 and again.skipped_existing == SYNTH_COUNT

    truncated = next(f for f in files if f.broken == "truncated")
    good = next(f for f in files if not f.broken and f.syntax == "native")
    name = _gs(root, truncated.path)[len(f"gs://{BUCKET}/"):]
    server.upload(BUCKET, name, Path(good.path).read_bytes())
    try:
        report = run_reprocess(_argv(pattern, tmp_path, "gcs-reprocess",
                                     dead_letter=dead_letter))
    finally:
        server.upload(BUCKET, name, Path(truncated.path).read_bytes())
    assert report.selected == SYNTH_BROKEN and report.fixed == 1
    assert report.run.stored == 1


def test_search_with_a_gcs_query_image(gcs, tmp_path, capsys):
    server, root, files = gcs
    run_ingest(_argv(f"gs://{BUCKET}/files/**/*.dcm", tmp_path, "for-search"))
    query = next(f for f in files if not f.broken and f.syntax == "j2k")
    rc = cli.main(["search", "--image", _gs(root, query.path), "--sink",
                   f"sqlite:///{tmp_path}/db.sqlite", "--provider", "thumbnail", "--k", "3",
                   "--json"])
    assert rc == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert results[0]["ImageID"] == query.dicom_id


def test_a_deleted_object_is_a_read_dead_letter_and_the_accounting_holds(gcs, tmp_path):
    """An object listed by the run but gone when it is read (deleted after listing: the
    pre-flight listing of a second prefix) is a ``read`` dead letter; nothing is lost."""
    from dicomvec.io.object_storage import storage_settings
    from dicomvec.io.remote import ObjectFetcher, ObjectReadError
    from apache_beam.options.pipeline_options import PipelineOptions
    server, root, files = gcs
    fetcher = ObjectFetcher(storage_settings(PipelineOptions([])))
    with pytest.raises(ObjectReadError) as caught:
        fetcher.whole(f"gs://{BUCKET}/files/no/such.dcm")
    assert not caught.value.retryable and "404" in str(caught.value)
    head = fetcher.range(_gs(root, files[0].path), 0, 65536)
    assert len(head) == min(65536, Path(files[0].path).stat().st_size)


def _cli_error(argv, capsys):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    errors = [line for line in err.splitlines() if line.startswith("dicomvec: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("case", ["missing bucket", "nothing matches", "broken credentials"])
def test_gcs_mistakes_are_one_line_and_exit_2_before_anything_is_created(
        case, gcs, tmp_path, monkeypatch, capsys):
    pattern = f"gs://{BUCKET}/files/**/*.dcm"
    if case == "missing bucket":
        pattern = "gs://no-such-bucket/files/**/*.dcm"
        expected = "GCS bucket 'no-such-bucket' does not exist"
    elif case == "nothing matches":
        pattern = f"gs://{BUCKET}/files/**/*.png"
        expected = f"no files match --input '{pattern}'"
    else:
        bad = tmp_path / "key.json"
        bad.write_text('{"type": "service_account", "private_key": "not-a-key"}')
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(bad))
        expected = "cannot use the Google credentials in GOOGLE_APPLICATION_CREDENTIALS"
    err = _cli_error(["run", *_argv(pattern, tmp_path, "mistake")], capsys)
    assert expected in err
    assert "not-a-key" not in err
    assert not (tmp_path / "db.sqlite").exists() and not (tmp_path / "dl").exists()


def test_streaming_over_a_gcs_prefix(gcs, tmp_path, streaming_runner):
    """--streaming (Prism, the local streaming engine) watches a gs:// prefix on the GCS-API
    server: objects uploaded during the run are stored, a broken one is dead-lettered, and the
    job stops by itself once idle."""
    import threading
    import time
    from dicomvec.io.stores import VectorStore
    server, root, files = gcs
    prefix = f"incoming/{tmp_path.name}"
    good = [f for f in files if not f.broken]
    broken = next(f for f in files if f.broken == "not-dicom")
    server.upload(BUCKET, f"{prefix}/first.dcm", Path(good[0].path).read_bytes())

    def arrive():
        time.sleep(6)
        for index, item in enumerate(good[1:3], 1):
            server.upload(BUCKET, f"{prefix}/later{index}.dcm", Path(item.path).read_bytes())
        server.upload(BUCKET, f"{prefix}/bad.dcm", Path(broken.path).read_bytes())

    writer = threading.Thread(target=arrive)
    writer.start()
    try:
        summary = run_ingest(_argv(f"gs://{BUCKET}/{prefix}/*.dcm", tmp_path, "stream",
                                   "--streaming", *streaming_runner, "--watch-interval", "2",
                                   "--dead-letter-frequency", "2", "--stop-after-idle", "8"))
    finally:
        writer.join()
    with VectorStore(f"sqlite:///{tmp_path}/db.sqlite") as store:
        stored = {r[0] for r in store.conn.execute("SELECT DicomFile FROM MIMICCXRImages")}
    assert stored == {"first.dcm", "later1.dcm", "later2.dcm"}
    assert summary.stored == 3
    dead = read_dead_letters(str(tmp_path / "dl"))
    assert [(r["stage"], r["path"]) for r in dead] == [
        ("decode", f"gs://{BUCKET}/{prefix}/bad.dcm")]


def test_whole_object_in_parallel_ranges_on_gcs(gcs):
    import os
    from apache_beam.options.pipeline_options import PipelineOptions
    from dicomvec.io.object_storage import storage_settings
    from dicomvec.io.remote import PART_BYTES, ObjectFetcher
    from tests.test_read_ahead import _ranged_read_cases
    server, root, files = gcs
    data = os.urandom(3 * PART_BYTES + 777)
    server.upload(BUCKET, "ranged/object.bin", data)
    fetcher = ObjectFetcher(storage_settings(PipelineOptions([])), connections=2,
                            part_threads=4)
    try:
        _ranged_read_cases(fetcher, f"gs://{BUCKET}/ranged/object.bin", data)
    finally:
        fetcher.close()
