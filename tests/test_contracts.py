"""Contracts pinned to the README, not to the code: the dead-letter columns and types and the
images table's columns and types are read from README.md's tables and compared with what a real
run writes. Every stage's dead letter is produced for real at least once, with the documented
``retryable``: read, decode, normalize, resize, embed (an unexpected provider exception),
write (the database refuses one row; the database goes away mid-run)."""
from __future__ import annotations

import glob
import io
import os
import re
from pathlib import Path
from typing import Dict, List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dicomvec.io.dead_letter import read_dead_letters
from dicomvec.io.providers.base import EmbeddingResult
from dicomvec.io.providers.registry import register_provider
from dicomvec.io.providers.thumbnail import ThumbnailProvider
from dicomvec.io.stores import VectorStore
from dicomvec.io.stores.dialects import dialect_for_url
from dicomvec.pipeline.run import run_ingest
from dicomvec.synthetic import synthetic_dataset
from tests.local_run import thumbnail_flags

README = Path(__file__).resolve().parents[1] / "README.md"
ARROW_TYPES = {"string": pa.string(), "int32": pa.int32(), "bool": pa.bool_()}


def readme_table(heading: str) -> List[Dict[str, str]]:
    """The first Markdown table under ``## heading`` in README.md, as dicts by header."""
    text = README.read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows.append(dict(zip(header, cells)))
    return rows


def write_dicom(path: Path, index: int, **changes) -> str:
    ds = synthetic_dataset(size=(96, 80), seed=9, index=index)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def flags(tmp_path: Path, run_id: str, sink: str = None, *extra: str) -> List[str]:
    return thumbnail_flags(tmp_path, run_id, *extra, sink=sink, batch_size=2)


def dead_by_name(tmp_path: Path, run_id: str) -> Dict[str, Dict]:
    return {row["path"].rsplit("/", 1)[-1]: row
            for row in read_dead_letters(str(tmp_path / "dl"), run_id)}


# -- the documented schemas ---------------------------------------------------------------

def test_dead_letter_files_have_exactly_the_documented_columns_and_types(tmp_path):
    documented = readme_table("Dead letters")
    assert [row["column"] for row in documented][:3] == ["path", "image_id", "stage"]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "junk.dcm").write_text("not a DICOM file")
    run_ingest(["--input", str(tmp_path / "in" / "*.dcm"), *flags(tmp_path, "schema")])
    (parquet,) = glob.glob(str(tmp_path / "dl" / "run=schema" / "*.parquet"))
    schema = pq.read_schema(parquet)
    assert schema.names == [row["column"] for row in documented]
    for row in documented:
        assert schema.field(row["column"]).type == ARROW_TYPES[row["type (Parquet)"]], row
    (written,) = pq.read_table(parquet).to_pylist()
    assert written["stage"] == "decode" and written["attempts"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", written["failed_at"])
    stages = re.findall(r"`(\w+)`", [r for r in documented if r["column"] == "stage"][0]["meaning"])
    from dicomvec.record import STAGES
    assert tuple(stages) == STAGES


def test_images_table_has_exactly_the_documented_columns(tmp_path):
    documented = readme_table("Output: the images table")
    names = [row["column"] for row in documented]
    store = VectorStore(f"sqlite:///{tmp_path}/db.sqlite")
    with store:
        store.init_schema(1024)
        columns = [r[1] for r in store.conn.execute("PRAGMA table_info(MIMICCXRImages)")]
    assert columns == names
    # the IRIS DDL (generated offline) uses the documented IRIS types
    iris = dialect_for_url("iris://U@host:1972/USER", schema="VectorSearch")
    ddl = iris.create_table_statements(1024, False)[-1]
    for row in documented:
        assert re.search(rf"\b{row['column']} {re.escape(row['type (IRIS)'])}", ddl), row


@pytest.mark.postgres
def test_postgres_images_table_has_the_documented_columns(postgres_server):
    documented = [row["column"].lower() for row in readme_table("Output: the images table")]
    store = VectorStore(postgres_server.url(), schema="ContractDocs", table="DocImages")
    with store:
        store.init_schema(1024)
    with postgres_server.admin() as admin:
        columns = [r[0] for r in admin.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "'contractdocs' AND table_name = 'docimages' ORDER BY ordinal_position")]
        admin.execute("DROP SCHEMA contractdocs CASCADE")
    assert columns == documented


# -- every stage's dead letter, for real --------------------------------------------------

def test_read_decode_normalize_and_a_refused_row(tmp_path):
    """One run: a dangling symbolic link (read), not DICOM (decode), a constant image
    (normalize), and a row the database refuses (a trigger, mid-run: write, not retryable);
    the neighbours are stored."""
    archive = tmp_path / "in"
    archive.mkdir()
    os.symlink(archive / "gone.dcm", archive / "link.dcm")
    (archive / "text.dcm").write_text("a note")
    write_dicom(archive / "flat.dcm", 1, PixelData=np.full((96, 80), 500, "<u2").tobytes())
    refused = write_dicom(archive / "refused.dcm", 2)
    good = [write_dicom(archive / f"good{i}.dcm", 10 + i) for i in range(4)]
    with VectorStore(f"sqlite:///{tmp_path}/db.sqlite") as store:
        store.init_schema(1024)
        store.conn.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON MIMICCXRImages "
                           f"WHEN NEW.ImageID = '{refused}' "
                           f"BEGIN SELECT RAISE(ABORT, 'row refused by policy'); END")
        store.conn.commit()
    summary = run_ingest(["--input", str(archive / "*.dcm"), *flags(tmp_path, "stages")])
    dead = dead_by_name(tmp_path, "stages")
    assert {name: row["stage"] for name, row in dead.items()} == {
        "link.dcm": "read", "text.dcm": "decode", "flat.dcm": "normalize",
        "refused.dcm": "write"}
    assert not any(row["retryable"] for row in dead.values())
    assert "row refused by policy" in dead["refused.dcm"]["error_message"]
    assert dead["refused.dcm"]["image_id"] == refused
    with VectorStore(f"sqlite:///{tmp_path}/db.sqlite") as store:
        assert store.existing_ids(good + [refused], "thumbnail") == set(good)
    assert summary.accounting.holds


@pytest.mark.slow  # several seconds: the fast suite stays under two minutes
def test_resize_dead_letter_when_the_model_input_is_over_the_limit(tmp_path):
    archive = tmp_path / "in"
    archive.mkdir()
    noise = np.random.default_rng(0).integers(0, 4096, size=(96, 80), dtype=np.uint16)
    write_dicom(archive / "noise.dcm", 1, PixelData=noise.tobytes())
    run_ingest(["--input", str(archive / "*.dcm"),
                *flags(tmp_path, "resize", None, "--image-size", "2048")])
    row = dead_by_name(tmp_path, "resize")["noise.dcm"]
    assert row["stage"] == "resize" and row["retryable"] is False
    assert "inline limit" in row["error_message"]


class ExplodingProvider(ThumbnailProvider):
    """The thumbnail descriptor, but its first call raises what no provider should."""

    name = "exploding-test-provider"
    calls = 0

    def embed_images(self, images):
        type(self).calls += 1
        if type(self).calls == 1:
            raise RuntimeError("provider bug: list index out of range")
        return super().embed_images(images)


def test_an_unexpected_provider_exception_dead_letters_its_batch_as_retryable(tmp_path):
    register_provider(ExplodingProvider.name, f"{__name__}:ExplodingProvider")
    ExplodingProvider.calls = 0
    archive = tmp_path / "in"
    archive.mkdir()
    for i in range(4):
        write_dicom(archive / f"img{i}.dcm", 20 + i)
    summary = run_ingest(["--input", str(archive / "*.dcm"),
                          *flags(tmp_path, "boom", None, "--provider", ExplodingProvider.name)])
    dead = dead_by_name(tmp_path, "boom")
    assert len(dead) == 2 and summary.stored == 2  # the batch of 2 that met the exception
    for row in dead.values():
        assert row["stage"] == "embed" and row["retryable"] is True
        assert row["error_type"] == "RuntimeError" and "provider bug" in row["error_message"]
    assert summary.accounting.holds


@pytest.mark.slow
@pytest.mark.postgres
def test_the_database_going_away_mid_run_gives_retryable_write_dead_letters(
        postgres_server, tmp_path):
    """After the first rows are committed, every insert terminates its own backend (the
    server is effectively gone for writes): the store retries, then the rows come back as
    retryable ``write`` dead letters — none lost, none half-written."""
    url = postgres_server.url()
    schema, table = "GoneMidRun", "Images"
    archive = tmp_path / "in"
    archive.mkdir()
    ids = [write_dicom(archive / f"img{i}.dcm", 30 + i) for i in range(6)]
    with VectorStore(url, schema=schema, table=table) as store:
        store.init_schema(1024)
    with postgres_server.admin() as admin:
        admin.execute("""CREATE FUNCTION gonemidrun.die() RETURNS trigger AS $$
            BEGIN
              IF (SELECT count(*) FROM gonemidrun.images) >= 2 THEN
                PERFORM pg_terminate_backend(pg_backend_pid());
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        admin.execute("CREATE TRIGGER die BEFORE INSERT ON gonemidrun.images "
                      "FOR EACH ROW EXECUTE FUNCTION gonemidrun.die()")
    try:
        summary = run_ingest(["--input", str(archive / "*.dcm"),
                              *flags(tmp_path, "gone", url, "--sink-schema", schema,
                                     "--sink-table", table)])
        dead = read_dead_letters(str(tmp_path / "dl"), "gone")
        with postgres_server.admin() as admin:
            stored = {r[0] for r in admin.execute("SELECT imageid FROM gonemidrun.images")}
    finally:
        with postgres_server.admin() as admin:
            admin.execute("DROP SCHEMA gonemidrun CASCADE")
    assert len(stored) == 2 and summary.stored == 2
    assert {row["image_id"] for row in dead} == set(ids) - stored
    for row in dead:
        assert row["stage"] == "write" and row["retryable"] is True, row
    assert summary.accounting.holds


class StopsTheDatabase(ThumbnailProvider):
    """The thumbnail descriptor; before its second batch it stops the test's PostgreSQL server
    (``pg_ctl stop -m immediate``), so the sink disappears in the middle of the run."""

    name = "stops-the-database-test-provider"
    server = None
    calls = 0

    def embed_images(self, images):
        type(self).calls += 1
        if type(self).calls == 2:
            server = type(self).server
            server._run(["pg_ctl", "-D", str(server.data_dir), "-m", "immediate", "-w", "stop"])
        return super().embed_images(images)


@pytest.mark.slow
@pytest.mark.postgres
def test_the_database_server_stopping_mid_run_gives_retryable_write_dead_letters(tmp_path):
    """A private PostgreSQL is stopped after the first batch was written: the later batches
    come back as retryable ``write`` dead letters, the run still prints its summary (rows in
    store unknown) and every path is accounted for."""
    from tests.pg_fixtures import LocalPostgres, PostgresUnavailable
    try:
        server = LocalPostgres().start()
    except PostgresUnavailable as exc:
        pytest.fail(f"PostgreSQL cannot run: {exc}")
    try:
        archive = tmp_path / "in"
        archive.mkdir()
        ids = [write_dicom(archive / f"img{i}.dcm", 40 + i) for i in range(6)]
        register_provider(StopsTheDatabase.name, f"{__name__}:StopsTheDatabase")
        StopsTheDatabase.server, StopsTheDatabase.calls = server, 0
        summary = run_ingest(["--input", str(archive / "*.dcm"),
                              *flags(tmp_path, "stopped", server.url(), "--provider",
                                     StopsTheDatabase.name)])
    finally:
        server.stop()
    dead = read_dead_letters(str(tmp_path / "dl"), "stopped")
    assert summary.stored == 2 and summary.rows_in_store == -1
    assert len(dead) == 4 and {row["image_id"] for row in dead} < set(ids)
    for row in dead:
        assert row["stage"] == "write" and row["retryable"] is True, row
    assert summary.accounting.holds
