"""The reports table on the shared sink core: idempotent upserts on StudyID, text-only rows that
never erase a vector, bisection of bad rows, cosine search, lookups; SQL for every dialect."""
from __future__ import annotations

import numpy as np
import pytest

from dicomvec.io.stores import VectorStore
from dicomvec.io.stores.dialects import dialect_for_url
from dicomvec.io.stores.tables import REPORTS, ReportRow
from tests.store_rows import lookup, make_report_row, make_row, unit

DIM = 8


def _unit(seed: int) -> np.ndarray:
    return unit(seed, DIM)


@pytest.fixture
def store(sink_url):
    """A fresh reports table on each available database."""
    with VectorStore(sink_url, spec=REPORTS) as store:
        store.init_schema(DIM)
        yield store


def test_upsert_is_idempotent_on_study_id(store):
    rows = [make_report_row(str(50000000 + i), _unit(i)) for i in range(5)]
    assert store.upsert(rows) == []
    assert store.upsert(rows) == []
    assert store.count() == 5
    assert store.upsert([make_report_row("50000001", _unit(99), text="new text")]) == []
    assert store.count() == 5
    assert lookup(store, ["50000001"])["50000001"].EmbeddedText == "new text"


def test_text_only_rows_have_no_vector_and_never_erase_one(store):
    assert store.upsert([make_report_row("50000001", _unit(1)), make_report_row("50000002", _unit(2))]) == []
    assert store.upsert([make_report_row("50000001", None, text="rewritten"),
                         make_report_row("50000003", None)]) == []
    assert store.count() == 3 and store.count("nvclip") == 2
    hits = store.nearest(_unit(1), k=5, provider="nvclip")
    assert [h.StudyID for h in hits] == ["50000001", "50000002"]  # text-only row not searched
    assert hits[0].EmbeddedText == "rewritten"  # text updated, vector kept
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert lookup(store, ["50000003"])["50000003"].Provider is None


def test_nearest_ranks_by_cosine_and_filters_provider(store):
    vectors = {str(50000000 + i): _unit(i) for i in range(6)}
    store.upsert([make_report_row(study, vec) for study, vec in vectors.items()])
    store.upsert([make_report_row("59999999", _unit(3), provider="other")])
    query = vectors["50000003"] + 0.05 * _unit(42)
    hits = store.nearest(query, k=3, provider="nvclip")
    expected = sorted(vectors, key=lambda s: -float(vectors[s] @ query / np.linalg.norm(query)))
    assert [h.StudyID for h in hits] == expected[:3]
    assert hits[0].StudyID == "50000003"
    assert all(h.Provider == "nvclip" for h in hits)
    assert hits[0].score >= hits[1].score >= hits[2].score
    with pytest.raises(ValueError, match="no view position"):
        store.nearest(query, k=3, provider="nvclip", view_position="PA")


def test_a_bad_row_is_isolated_and_good_neighbours_are_written(store):
    rows = [make_report_row(str(50000000 + i), _unit(i)) for i in range(6)]
    rows[4] = make_report_row("50000004", np.ones(DIM - 1, dtype=np.float32))  # wrong dimension
    failed = store.upsert(rows)
    assert [row.StudyID for row, _ in failed] == ["50000004"]
    assert store.count() == 5


def test_ids_as_long_as_a_dicom_uid_are_stored(store):
    """StudyID/SubjectID are VARCHAR(64), like the images table's: a 64-character DICOM UID
    fits (PostgreSQL enforces the length; a 65-character ID fails alone)."""
    uid = "1.2.840.113619.2.55.3." + "1" * 42
    assert len(uid) == 64
    rows = [make_report_row(uid, _unit(1)), make_report_row("50000002", _unit(2))]
    rows[0] = ReportRow(**{**rows[0].__dict__, "SubjectID": uid})
    assert store.upsert(rows) == []
    assert lookup(store, [uid])[uid].SubjectID == uid
    if store.dialect.name == "postgresql":
        failed = store.upsert([make_report_row(uid + "9", _unit(3)), make_report_row("50000003", _unit(3))])
        assert [row.StudyID for row, _ in failed] == [uid + "9"]
        assert store.count() == 3


def test_lookup_returns_only_known_studies(store):
    store.upsert([make_report_row("50000001", _unit(1)), make_report_row("50000002", None)])
    found = lookup(store, ["50000001", "50000002", "59999999", ""])
    assert sorted(found) == ["50000001", "50000002"]
    assert found["50000001"].Impression == "impression 50000001"


def _dialect(url):
    # the IRIS dialect builds its SQL offline: a failure here is a bug, not a reason to skip
    return dialect_for_url(url, schema="VectorSearch", spec=REPORTS)


def test_iris_sql_uses_insert_or_update_to_vector_and_top():
    dialect = _dialect("iris://demo@127.0.0.1:1972/USER")
    ddl = "\n".join(dialect.create_table_statements(1024))
    assert "CREATE TABLE VectorSearch.MIMICCXRReports (" in ddl  # created only when missing
    assert "Vector VECTOR(DOUBLE, 1024)" in ddl and "PRIMARY KEY (StudyID)" in ddl
    sql = dialect.upsert_sql(REPORTS.column_names, 1024)
    assert sql.startswith("INSERT OR UPDATE INTO VectorSearch.MIMICCXRReports")
    assert "TO_VECTOR(?, DOUBLE, 1024)" in sql and sql.count("?") == len(REPORTS.column_names)
    text_only = dialect.upsert_sql(REPORTS.write_columns(make_report_row("1")), 0)
    assert ("(SubjectID, StudyID, ReportPath, Findings, Impression, EmbeddedText, CreatedAt) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)") in text_only
    query, params = dialect.nearest_sql(_unit(0), 7, "nvclip")
    assert query.startswith("SELECT TOP 7 StudyID")
    assert "VECTOR_COSINE(Vector, TO_VECTOR(?, DOUBLE, 8)) AS score" in query
    assert query.endswith("ORDER BY VECTOR_COSINE(Vector, TO_VECTOR(?, DOUBLE, 8)) DESC")
    assert params[1] == "nvclip" and params[0] == params[2]


def test_postgres_sql_uses_on_conflict_and_cosine_distance():
    dialect = _dialect("postgresql://demo@127.0.0.1:5432/db")
    ddl = dialect.create_table_statements(1024)
    assert "CREATE EXTENSION IF NOT EXISTS vector" in ddl
    assert any("Vector vector(1024)" in s and "PRIMARY KEY (StudyID)" in s for s in ddl)
    sql = dialect.upsert_sql(REPORTS.column_names, 1024)
    assert "ON CONFLICT (StudyID) DO UPDATE SET" in sql and "%b" in sql
    assert "StudyID = EXCLUDED.StudyID" not in sql
    query, params = dialect.nearest_sql(_unit(0), 3, "nvclip")
    assert "1 - (Vector <=> %b) AS score" in query and query.endswith("LIMIT 3")
    assert len(params) == 3


def test_a_mixed_batch_writes_text_only_rows_without_touching_vectors(store):
    assert store.upsert([make_report_row("50000001", _unit(1))]) == []
    assert store.upsert([make_report_row("50000001", None, text="text only"), make_report_row("50000002", _unit(2)),
                         make_report_row("50000003", None)]) == []
    assert store.count() == 3 and store.count("nvclip") == 2
    hit = store.nearest(_unit(1), k=1, provider="nvclip")[0]
    assert (hit.StudyID, hit.EmbeddedText) == ("50000001", "text only")
    assert hit.score == pytest.approx(1.0, abs=1e-5)


def test_reports_table_is_the_images_tables_foreign_key_target(store):
    """The images table can declare FOREIGN KEY (StudyID) REFERENCES the reports table."""
    store.upsert([make_report_row("50000001", _unit(1))])
    schema = store.dialect.schema or "VectorSearch"
    with VectorStore(store.url, schema=schema) as images:
        assert images.init_schema(DIM, with_report_fk=True) is True

        def image(image_id, study):
            return make_row(7, SubjectID="10000001", StudyID=study, ImageID=image_id,
                            ImagePath=f"{image_id}.dcm", DicomFile=f"{image_id}.dcm",
                            Vector=_unit(7), EmbeddingModel="m", PreprocessVersion="pp1")
        failed = images.upsert([image("with-report", "50000001"), image("orphan", "59999999")])
        assert [row.ImageID for row, _ in failed] == ["orphan"]
        assert images.count() == 1
