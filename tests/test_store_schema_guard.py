"""Meeting the tables a user already has (SQLite and PostgreSQL, for real).

1. A reports table shaped like the predecessor project's (VectorSearch.MIMICCXRReports:
   SubjectID, StudyID, Findings, Impression, a 3072-d OpenAI Vector; no primary key) holding
   rows survives every dicomvec command byte for byte: writers refuse it with one line (exit 2)
   and ``--reports-table`` writes a table of our own.
2. An images table from an older dicomvec (VARCHAR(50) IDs, no PreprocessVersion, no declared
   vector length) with rows another tool broke (a zero vector, a 512-d vector): ``run`` refuses
   to start, ``check-db`` names what is wrong, ``migrate`` prints and then applies the upgrade
   (idempotent), the resumed run re-embeds 0 valid rows, and ``run --replace-invalid``
   re-embeds exactly the 2 broken ones.
"""
from __future__ import annotations

import hashlib
import sqlite3

import numpy as np
import pytest

from dicomvec.cli import main
from dicomvec.io.stores import VectorStore
from dicomvec.io.stores.schema_check import NeedsMigrationError, SchemaMismatchError
from dicomvec.io.stores.tables import REPORTS
from dicomvec.pipeline.run import run_ingest
from dicomvec.reports.samples import sample_texts
from dicomvec.synthetic import generate
from tests.local_run import thumbnail_flags

PREDECESSOR_DIM = 3072
IMAGES_N = 6


class Sink:
    """One database on one engine, with raw SQL access for setting up foreign tables."""

    def __init__(self, kind, url, raw):
        self.kind, self.url, self._raw = kind, url, raw

    def execute(self, sql, params=()):
        with self._raw() as conn:
            cur = conn.cursor()
            cur.execute(sql, params)
            rows = cur.fetchall() if cur.description else []
            conn.commit()
            return rows

    @property
    def reports(self):  # the predecessor table's name as this engine spells it
        return "MIMICCXRReports" if self.kind == "sqlite" else "VectorSearch.MIMICCXRReports"

    @property
    def images(self):
        return "MIMICCXRImages" if self.kind == "sqlite" else "VectorSearch.MIMICCXRImages"

    def vector_literal(self, values):
        if self.kind == "sqlite":
            return np.asarray(values, dtype="<f4").tobytes()
        return "[" + ",".join(repr(float(v)) for v in values) + "]"

    @property
    def marker(self):
        return "?" if self.kind == "sqlite" else "%s"


@pytest.fixture
def sink(sink_url):
    if sink_url.startswith("sqlite:///"):
        return Sink("sqlite", sink_url, lambda: sqlite3.connect(sink_url[len("sqlite:///"):]))
    import psycopg
    return Sink("postgresql", sink_url, lambda: psycopg.connect(sink_url))


def error_lines(capsys):
    """The CLI's error lines on stderr (log lines aside)."""
    return [line for line in capsys.readouterr().err.splitlines()
            if line.startswith("dicomvec: error:")]


# -- 1. the predecessor's reports table ---------------------------------------------------------

def make_predecessor_reports(sink: Sink) -> None:
    vector = "BLOB" if sink.kind == "sqlite" else f"vector({PREDECESSOR_DIM})"
    if sink.kind == "postgresql":
        sink.execute("CREATE EXTENSION IF NOT EXISTS vector")
        sink.execute("CREATE SCHEMA VectorSearch")
    sink.execute(f"CREATE TABLE {sink.reports} (SubjectID VARCHAR(50), StudyID VARCHAR(50), "
                 f"Findings TEXT, Impression TEXT, Vector {vector})")
    rng = np.random.default_rng(7)
    for i in range(3):
        m = sink.marker
        sink.execute(f"INSERT INTO {sink.reports} VALUES ({m}, {m}, {m}, {m}, {m})",
                     [f"1000000{i}", f"5000000{i}", f"findings {i}", f"impression {i}",
                      sink.vector_literal(rng.standard_normal(PREDECESSOR_DIM))])


def snapshot(sink: Sink) -> str:
    """A digest of the predecessor table: its definition and every byte of every row."""
    if sink.kind == "sqlite":
        ddl = sink.execute("SELECT sql FROM sqlite_master WHERE name = 'MIMICCXRReports'")
        rows = sink.execute("SELECT * FROM MIMICCXRReports ORDER BY StudyID")
    else:
        ddl = sink.execute("SELECT column_name, data_type, character_maximum_length FROM "
                           "information_schema.columns WHERE table_schema = 'vectorsearch' AND "
                           "table_name = 'mimiccxrreports' ORDER BY ordinal_position")
        rows = sink.execute("SELECT SubjectID, StudyID, Findings, Impression, Vector::text "
                            "FROM VectorSearch.MIMICCXRReports ORDER BY StudyID")
    assert len(rows) == 3
    return hashlib.sha256(repr((ddl, rows)).encode()).hexdigest()


@pytest.fixture
def report_files(tmp_path):
    root = tmp_path / "reports" / "files"
    for index, text in enumerate(list(sample_texts().values())[:3]):
        folder = root / "p10" / f"p1000000{index}"
        folder.mkdir(parents=True)
        (folder / f"s5000000{index}.txt").write_text(text)
    return str(root / "**" / "s*.txt")


@pytest.fixture
def archive(tmp_path):
    generate(tmp_path / "archive", IMAGES_N, size=(128, 106), syntaxes=("native",), seed=5)
    return str(tmp_path / "archive" / "files" / "**" / "*.dcm")


def test_predecessor_reports_table_survives_every_command(sink, tmp_path, report_files,
                                                          archive, capsys):
    make_predecessor_reports(sink)
    before = snapshot(sink)
    common = thumbnail_flags(tmp_path, sink=sink.url)

    # the reports job refuses the table: one line, exit 2, nothing written
    assert main(["reports", "--input", report_files, *common, "--run-id", "r1"]) == 2
    (err,) = error_lines(capsys)
    assert "is not a dicomvec reports table" in err
    assert f"Vector is {PREDECESSOR_DIM}-d, we write 1024-d" in err
    assert "primary key is none" in err and "--reports-table NAME" in err
    assert snapshot(sink) == before

    # with a table of our own the job runs, next to theirs
    assert main(["reports", "--input", report_files, *common, "--run-id", "r2",
                 "--reports-table", "DicomvecReports"]) == 0
    with VectorStore(sink.url, table="DicomvecReports", spec=REPORTS) as ours:
        assert ours.count() == 3
    assert snapshot(sink) == before

    junk = tmp_path / "archive" / "files" / "p10" / "junk.dcm"  # dead-lettered, reprocessed
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"\x00" * 300)
    for argv in (["init-db", "--sink", sink.url, "--with-report-fk"],
                 ["run", "--input", archive, *common, "--run-id", "i1"],
                 ["reprocess", *common, "--run-id", "i2"],
                 ["create-index", "--sink", sink.url],
                 ["migrate", "--sink", sink.url],
                 ["migrate", "--sink", sink.url, "--apply"],
                 ["check-db", "--sink", sink.url]):
        code = main(argv)
        out = capsys.readouterr().out
        assert code == 0, (argv, out)
        assert snapshot(sink) == before, argv
        if argv[0] == "migrate":
            assert "MIMICCXRReports: left alone, not a dicomvec table" in out
        if argv[0] == "check-db":
            assert "– reports table" in out and "search reads it as-is" in out

    # the store-level guard itself (what workers and pre-flight checks call)
    with pytest.raises(SchemaMismatchError):
        VectorStore(sink.url, spec=REPORTS).init_schema(1024)
    with VectorStore(sink.url, spec=REPORTS) as store:
        with pytest.raises(SchemaMismatchError):
            store.upsert([REPORTS.row_type(SubjectID="1", StudyID="2", ReportPath="p",
                                           Findings="f", Impression="i", EmbeddedText="i",
                                           Vector=None, EmbeddingModel=None, Provider=None)])
    assert snapshot(sink) == before


# -- 2. an images table from an older dicomvec ----------------------------------------------

def make_old_shaped(sink: Sink) -> None:
    """Turn the table a current run made into what an older dicomvec made."""
    if sink.kind == "sqlite":
        sink.execute("CREATE TABLE Old (SubjectID VARCHAR(50) NOT NULL, StudyID VARCHAR(50) "
                     "NOT NULL, ImageID VARCHAR(50) NOT NULL, ImagePath VARCHAR(500), DicomFile "
                     "VARCHAR(255), ViewPosition VARCHAR(20), Vector BLOB NOT NULL, "
                     "EmbeddingModel VARCHAR(100), Provider VARCHAR(50) NOT NULL, CreatedAt "
                     "TIMESTAMP DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (ImageID, Provider))")
        sink.execute("INSERT INTO Old SELECT SubjectID, StudyID, ImageID, ImagePath, DicomFile, "
                     "ViewPosition, Vector, EmbeddingModel, Provider, CreatedAt "
                     "FROM MIMICCXRImages")
        sink.execute("DROP TABLE MIMICCXRImages")
        sink.execute("ALTER TABLE Old RENAME TO MIMICCXRImages")
    else:
        t = sink.images
        sink.execute(f"ALTER TABLE {t} DROP COLUMN PreprocessVersion")
        for column in ("SubjectID", "StudyID", "ImageID"):
            sink.execute(f"ALTER TABLE {t} ALTER COLUMN {column} TYPE VARCHAR(50)")
        sink.execute(f"ALTER TABLE {t} ALTER COLUMN Vector TYPE vector")


def break_two_rows(sink: Sink):
    """Another tool writes a zero vector and a 512-d vector into two rows."""
    ids = [r[0] for r in sink.execute(f"SELECT ImageID FROM {sink.images} ORDER BY ImageID")]
    m = sink.marker
    sink.execute(f"UPDATE {sink.images} SET Vector = {m} WHERE ImageID = {m}",
                 [sink.vector_literal(np.zeros(1024)), ids[1]])
    sink.execute(f"UPDATE {sink.images} SET Vector = {m} WHERE ImageID = {m}",
                 [sink.vector_literal(np.ones(512)), ids[4]])
    return sorted([ids[1], ids[4]])


def test_old_images_table_is_migrated_then_resumed_without_re_embedding(sink, tmp_path,
                                                                       archive, capsys):
    def flags(run_id, *extra):
        return thumbnail_flags(tmp_path, run_id, *extra, input=archive, sink=sink.url)

    first = run_ingest(flags("old"))
    assert first.stored == IMAGES_N
    make_old_shaped(sink)
    broken = break_two_rows(sink)
    rows_before = sink.execute(f"SELECT * FROM {sink.images} ORDER BY ImageID")

    # run refuses to start, one line, exit 2, nothing written
    assert main(["run", *flags("refused")]) == 2
    (err,) = error_lines(capsys)
    assert "was made by an older dicomvec and needs migrating" in err
    assert "no PreprocessVersion column" in err and "dicomvec migrate --sink" in err
    if sink.kind == "postgresql":
        assert "ImageID is VARCHAR(50), we write up to 64" in err
    with pytest.raises(NeedsMigrationError):
        VectorStore(sink.url).init_schema(1024)
    assert sink.execute(f"SELECT * FROM {sink.images} ORDER BY ImageID") == rows_before

    # check-db names both problems
    assert main(["check-db", "--sink", sink.url]) == 1
    out = capsys.readouterr().out
    assert "✗ images table" in out and "needs migrating" in out
    assert f"✗ vectors          2 rows with a zero or non-1024-d vector: {broken[0]}/thumbnail, "\
        f"{broken[1]}/thumbnail" in out

    # migrate: dry run prints the statements and changes nothing
    assert main(["migrate", "--sink", sink.url]) == 0
    out = capsys.readouterr().out
    assert "ADD COLUMN PreprocessVersion VARCHAR(20);" in out and "add --apply" in out
    if sink.kind == "postgresql":
        assert "ALTER COLUMN ImageID TYPE VARCHAR(64);" in out
    assert sink.execute(f"SELECT * FROM {sink.images} ORDER BY ImageID") == rows_before
    assert main(["migrate", "--sink", sink.url, "--apply"]) == 0
    assert "applied" in capsys.readouterr().out
    assert main(["migrate", "--sink", sink.url, "--apply"]) == 0  # idempotent
    assert "MIMICCXRImages: up to date" in capsys.readouterr().out

    # resumed: 0 re-embeddings (the broken rows still count as stored without the flag)
    resumed = run_ingest(flags("resumed"))
    assert (resumed.stored, resumed.skipped_existing) == (0, IMAGES_N)
    # --replace-invalid re-embeds exactly the two broken rows
    repaired = run_ingest(flags("repaired", "--replace-invalid"))
    assert (repaired.stored, repaired.skipped_existing) == (2, IMAGES_N - 2)
    assert repaired.rows_in_store == IMAGES_N
    with VectorStore(sink.url) as store:
        assert store.invalid_rows(1024) == []
        vectors = store.vectors(broken, "thumbnail")
        assert all(np.linalg.norm(v) > 0.5 and v.shape == (1024,) for v in vectors.values())
    assert main(["check-db", "--sink", sink.url]) == 0, capsys.readouterr().out
