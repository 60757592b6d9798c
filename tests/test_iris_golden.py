"""Every statement the IRIS dialect sends, compared with ``tests/golden/iris_statements.sql``.

The store runs each operation (init-db, writes, resume lookups, searches, create-index,
check-db, migrate) against a recording connection (``tests/iris_recorder.py``); the SQL text it
sent, in order, must equal the golden file. A change to any IRIS statement therefore shows up as
a diff of that file in review. After an intended change, regenerate it with
``DICOMVEC_UPDATE_GOLDEN=1 python -m pytest tests/test_iris_golden.py`` and review the diff.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from dicomvec.io.stores import VectorStore
from dicomvec.io.stores.iris import IrisDialect
from dicomvec.io.stores.tables import IMAGES, REPORTS
from tests.iris_recorder import Recorder, connect_to, spec_columns
from tests.store_rows import lookup, make_report_row, make_row, unit

GOLDEN = Path(__file__).with_name("golden") / "iris_statements.sql"
URL = "iris://dicomvec@iris.example.org:1972/MIMIC"
DIM = 1024


def _report(study, vector=None):
    return make_report_row(study, vector, ReportPath=f"s{study}.txt", Findings="f",
                           Impression="i", EmbeddedText="i")


def _old_images_columns():
    """An images table from an older dicomvec: VARCHAR(50) IDs, no PreprocessVersion."""
    rows = []
    for row in spec_columns(IMAGES, DIM):
        if row[0] == "PreprocessVersion":
            continue
        if row[0] in ("SubjectID", "StudyID", "ImageID"):
            row = (row[0], row[1], 50, row[3], row[4])
        rows.append(row)
    return rows


def scenario(monkeypatch):
    """(operation, recorder) in order; each recorder is one connection."""
    steps = []

    def use(name, *recorders):
        steps.extend((name, r) for r in recorders)
        monkeypatch.setattr(IrisDialect, "connect", connect_to(list(recorders)))

    stored = [("img-00001", IrisDialect(URL, "VectorSearch").encode_vector(unit(1)))]
    use("init-db: table missing", Recorder(dimension=DIM))
    VectorStore(URL).init_schema(DIM)
    use("init-db --with-report-fk: table missing, no reports table yet",
        Recorder(dimension=DIM))
    VectorStore(URL).init_schema(DIM, with_report_fk=True)
    use("init-db: table exists", Recorder(table_exists=True, dimension=DIM))
    VectorStore(URL).init_schema(DIM)
    use("run: write a batch (worker, dimension known)",
        Recorder(table_exists=True, dimension=DIM, stored=stored))
    VectorStore(URL, dimension=DIM).upsert([make_row(1), make_row(2)])
    use("run: resume lookup", Recorder(table_exists=True, dimension=DIM))
    VectorStore(URL).existing_ids(["img-00001", "img-00002"], "nvclip", "v1")
    use("run --replace-invalid: resume lookup", Recorder(table_exists=True, dimension=DIM))
    VectorStore(URL).existing_ids(["img-00001"], "nvclip", "v1", valid_dimension=DIM)
    use("summary and reads", Recorder(table_exists=True, dimension=DIM, stored=stored))
    store = VectorStore(URL)
    store.count()
    store.count("nvclip")
    store.vectors(["img-00001"], "nvclip")
    store.nearest(unit(5), k=10, provider="nvclip", view_position="PA")
    store.nearest(unit(5), k=3)
    use("reports: init, write text-only and embedded rows, search, lookup",
        Recorder(spec=REPORTS, dimension=DIM))
    reports = VectorStore(URL, spec=REPORTS)
    reports.init_schema(DIM)
    reports.upsert([_report("50000001"), _report("50000002", unit(2))])
    reports.nearest(unit(2), k=5, provider="nvclip")
    lookup(reports, ["50000001", "50000002"])
    use("create-index: index missing", Recorder(table_exists=True, dimension=DIM,
                                                stored=stored))
    store = VectorStore(URL)
    store.create_index()
    store.count()
    use("check-db", Recorder(table_exists=True, dimension=DIM, stored=stored,
                             index_exists=True),
        Recorder(spec=REPORTS, dimension=DIM))
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=0xC0FFEE))
    from dicomvec.io.stores import SinkConfig
    from dicomvec.io.stores.health import run_checks
    checks = run_checks(SinkConfig(URL, "VectorSearch", "MIMICCXRImages", "MIMICCXRReports"),
                        DIM)
    use("migrate: older dicomvec images table", Recorder(table_exists=True, dimension=DIM,
                                                         columns=_old_images_columns(),
                                                         stored=stored),
        Recorder(spec=REPORTS, dimension=DIM))
    from dicomvec.commands.migrate import plan
    statements = []
    for spec_store in (VectorStore(URL), VectorStore(URL, spec=REPORTS)):
        statements += plan(spec_store, DIM)[0]

    # a 512-d model beside NV-CLIP: tables of its own length, no DDL by the user (issue 20)
    sink512 = SinkConfig.for_dimension(512, URL, "VectorSearch")
    use("512-d model: reports table of its length", Recorder(spec=REPORTS, dimension=512))
    sink512.reports().init_schema(512)
    use("512-d model: images table, foreign key to the reports table of its length",
        Recorder(dimension=512, reports_table="MIMICCXRReports512"))
    sink512.images().init_schema(512, with_report_fk=True)
    use("512-d model: resume lookup and search filtered on the model's store_key",
        Recorder(table_exists=True, dimension=512,
                 catalog_name=("VectorSearch", "MIMICCXRImages512")))
    store = sink512.images(dimension=512)
    store.existing_ids(["img-00001"], "openclip:biomedclip", "v1")
    store.nearest(unit(5, 512), k=3, provider="openclip:biomedclip")
    return steps, checks, statements


def render(steps, statements) -> str:
    lines = ["-- Every statement the IRIS dialect sends, by operation (generated by",
             "-- tests/test_iris_golden.py; parameters are bound, shown as ? in the SQL).", ""]
    last = None
    for name, recorder in steps:
        if name != last:
            lines.append(f"-- {name}")
            last = name
        for sql, _params in recorder.statements:
            lines.append(f"{sql};")
    lines.append("-- migrate (dry run prints, --apply runs)")
    lines += [f"{sql};" for sql in statements]
    return "\n".join(lines) + "\n"


def test_iris_statements_match_the_golden_file(monkeypatch):
    steps, checks, statements = scenario(monkeypatch)
    assert all(c.ok is not False for c in checks), [c.line() for c in checks]
    text = render(steps, statements)
    if os.environ.get("DICOMVEC_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} missing: run with DICOMVEC_UPDATE_GOLDEN=1 and review it")
    assert text == GOLDEN.read_text(), (
        "the IRIS statements changed: regenerate tests/golden/iris_statements.sql with "
        "DICOMVEC_UPDATE_GOLDEN=1 and review the diff")


def test_golden_file_holds_the_reviewed_forms():
    """The fixes of issue 14 as they appear in the golden file."""
    golden = GOLDEN.read_text()
    assert "CREATE SCHEMA" not in golden and "IF NOT EXISTS" not in golden
    assert "ORDER BY score" not in golden
    assert "ORDER BY VECTOR_COSINE(Vector, TO_VECTOR(?, DOUBLE, 1024)) DESC" in golden
    assert "EXPLAIN SELECT TOP 10" in golden
    assert "ALTER TABLE VectorSearch.MIMICCXRImages ADD COLUMN PreprocessVersion " \
        "VARCHAR(20);" in golden
    assert "ALTER TABLE VectorSearch.MIMICCXRImages ALTER COLUMN ImageID VARCHAR(64);" in golden


def test_golden_file_holds_a_table_per_vector_length():
    """Issue 20: a 512-d model gets MIMICCXRImages512, whose foreign key points at the reports
    table of the same length, and its reads filter on the model's store_key."""
    golden = GOLDEN.read_text()
    assert "CREATE TABLE VectorSearch.MIMICCXRImages512 (" in golden
    assert "  Vector VECTOR(DOUBLE, 512) NOT NULL," in golden
    assert "FOREIGN KEY (StudyID) REFERENCES VectorSearch.MIMICCXRReports512(StudyID)" in golden
    assert ("SELECT ImageID FROM VectorSearch.MIMICCXRImages512 WHERE Provider = ? AND "
            "ImageID IN (?)") in golden
