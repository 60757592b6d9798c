"""Reading another tool's reports table: stored vector forms, ID spellings, view order and the
search SQL per database (``Dialect.foreign_nearest_sql``) (IRIS statement text; no IRIS server can be installed here — the
SQLite and PostgreSQL paths run for real in test_search_via_reports.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dicomvec.io.stores.dialects import dialect_for_url
from dicomvec.io.stores.tables import REPORTS, VectorColumn
from dicomvec.search.reports_table import (ReportsTable, canonical_id, decode_vector,
                                           study_forms, view_rank)

VEC = np.array([0.25, -1.5, 3.0, 1e-7], dtype=np.float64)
PREDECESSOR = {"subjectid": ("SubjectID", "VARCHAR"), "studyid": ("StudyID", "VARCHAR"),
               "findings": ("Findings", "VARCHAR"), "impression": ("Impression", "VARCHAR"),
               "vector": ("Vector", "VECTOR")}


@pytest.mark.parametrize("value", [
    json.dumps(VEC.tolist()), "[0.25, -1.5, 3.0, 1e-07]", "0.25,-1.5,3,1e-7",
    VEC.astype("<f4").tobytes(), memoryview(VEC.astype("<f4").tobytes()),
    VEC.astype("<f8").tobytes(), VEC.tolist(), tuple(VEC.tolist())])
def test_every_stored_form_decodes_to_the_vector(value):
    np.testing.assert_allclose(decode_vector(value, expected=4), VEC, rtol=1e-6)


def test_blob_width_follows_the_expected_length():
    blob = VEC.astype("<f8").tobytes()  # 32 bytes: 4 float64 or 8 float32
    assert decode_vector(blob, expected=4).shape == (4,)
    assert decode_vector(blob, expected=8).shape == (8,)
    for bad in (b"\x00" * 7, "", "[]", None, "not,a,vector"):
        with pytest.raises((ValueError, TypeError)):
            decode_vector(bad, expected=4)


def test_ids_and_view_order():
    assert canonical_id("StudyID", "s50414267") == "50414267"
    assert canonical_id("SubjectID", "p10000032") == "10000032"
    assert canonical_id("StudyID", "1.2.840.5") == "1.2.840.5"  # a UID is left alone
    assert study_forms("50414267") == ["50414267", "s50414267"]
    assert study_forms("s50414267") == ["50414267", "s50414267"]
    views = ["LATERAL", "", "AP", "LL", "SWIMMERS", "PA", None]
    assert sorted(views, key=view_rank)[:5] == ["PA", "AP", "LATERAL", "LL", "SWIMMERS"]


def _table(url: str, columns=PREDECESSOR, qualified="VectorSearch.MIMICCXRReports"):
    spec_dialect = dialect_for_url(url, schema="VectorSearch", spec=REPORTS)
    return ReportsTable(spec_dialect, qualified, dict(columns))


def nearest_reports_sql(table, column, query, n):
    """The database-side search of ``nearest_reports`` (None: scanned in numpy)."""
    if column.kind == "scan":
        return None
    return table.dialect.foreign_nearest_sql(table.select_list(), table.qualified, column,
                                             query, n)


def test_missing_columns_get_stand_ins_and_the_table_is_not_ours():
    table = _table("sqlite:///x.db")
    assert not table.ours
    assert table.missing == ["ReportPath", "EmbeddedText", "EmbeddingModel", "Provider",
                             "CreatedAt"]
    assert table.select_list() == ("StudyID, SubjectID, '' AS ReportPath, Findings, "
                                   "Impression, '' AS EmbeddedText, NULL AS Provider")
    hit = table.hit(("s5001", "p1001", None, "F", "I", None, None), 0.5)
    assert (hit.StudyID, hit.SubjectID, hit.ReportPath, hit.Provider, hit.score) == \
        ("5001", "1001", "", None, 0.5)


def test_iris_search_sql_binds_the_vector_and_uses_vector_cosine():
    table = _table("iris://dicomvec@iris.example.org:1972/USER")
    column = VectorColumn("Vector", "iris-vector", 4, "IRIS VECTOR")
    sql, params = nearest_reports_sql(table, column, VEC, 7)
    assert sql == ("SELECT TOP 7 StudyID, SubjectID, '' AS ReportPath, Findings, Impression, "
                   "'' AS EmbeddedText, NULL AS Provider, VECTOR_COSINE(Vector, "
                   "TO_VECTOR(?, DOUBLE, 4)) AS score FROM VectorSearch.MIMICCXRReports "
                   "WHERE Vector IS NOT NULL ORDER BY score DESC")
    assert params == ["0.25,-1.5,3,1e-07"]
    text = VectorColumn("Vector", "iris-text", 4, "IRIS VARCHAR")
    sql, _ = nearest_reports_sql(table, text, VEC, 7)
    assert "VECTOR_COSINE(TO_VECTOR(Vector, DOUBLE, 4), TO_VECTOR(?, DOUBLE, 4))" in sql


def test_postgres_search_sql_casts_the_bound_text_and_quotes_mixed_case_names():
    columns = {k: (v[0], "vector" if k == "vector" else "varchar")
               for k, v in PREDECESSOR.items()}
    table = _table("postgresql://u@h/db", columns, '"VectorSearch"."MIMICCXRReports"')
    column = VectorColumn('"Vector"', "pgvector", 4, "pgvector vector(4)")
    sql, params = nearest_reports_sql(table, column, VEC, 3)
    assert sql.startswith('SELECT "StudyID", "SubjectID", \'\' AS ReportPath, "Findings"')
    assert 'ORDER BY "Vector" <=> %s::vector LIMIT 3' in sql
    assert params == ["[0.25,-1.5,3,1e-07]"] * 2
    lower = _table("postgresql://u@h/db", {k: (k, t) for k, (_, t) in columns.items()},
                   "vectorsearch.mimiccxrreports")
    assert lower.column("StudyID") == "studyid"
    assert nearest_reports_sql(lower, VectorColumn("vector", "scan", 4, "text"), VEC, 3) is None


def test_iris_reports_table_is_read_with_the_schema_guards_catalog_reader(monkeypatch):
    """The table is looked up ignoring case, then described by the dialect's one catalog reader
    (the schema guard's statements) under the catalog's own spelling."""
    import dataclasses

    from dicomvec.io.stores import VectorStore
    from dicomvec.io.stores.iris import IrisDialect
    from dicomvec.search.reports_table import inspect_reports
    from tests.iris_recorder import Recorder, connect_to
    monkeypatch.setenv("DICOMVEC_IRIS_PASSWORD", "pw")
    columns = [("SubjectID", "VARCHAR", 50, "YES", None), ("StudyID", "VARCHAR", 50, "NO", None),
               ("Findings", "VARCHAR", 2000, "YES", None),
               ("Impression", "VARCHAR", 2000, "YES", None),
               ("Vector", "VECTOR", None, "YES", None)]
    recorder = Recorder(spec=REPORTS, table_exists=True, columns=columns, key=("StudyID",),
                        catalog_name=("VectorSearch", "MIMICCXRReports"))
    monkeypatch.setattr(IrisDialect, "connect", connect_to([recorder]))
    spec = dataclasses.replace(REPORTS, table="mimiccxrreports")
    with VectorStore("iris://dicomvec@iris.example.org:1972/USER", schema="vectorsearch",
                     spec=spec) as store:
        table = inspect_reports(store)
    assert table.qualified == "VectorSearch.MIMICCXRReports"
    assert table.missing == ["ReportPath", "EmbeddedText", "EmbeddingModel", "Provider",
                             "CreatedAt"]
    assert (table.column("studyid"), table.declared_type("VECTOR")) == ("StudyID", "vector")
    sent = [(sql, params) for sql, params in recorder.statements if params is not None]
    assert "UPPER(TABLE_NAME) = UPPER(?)" in sent[0][0]
    assert sent[0][1] == ["vectorsearch", "mimiccxrreports"]
    assert [sql.split(" FROM ")[1].split()[0] for sql, _ in sent[1:]] == [
        "INFORMATION_SCHEMA.COLUMNS", "INFORMATION_SCHEMA.KEY_COLUMN_USAGE"]
    assert all(params == ["VectorSearch", "MIMICCXRReports"] for _, params in sent[1:])
