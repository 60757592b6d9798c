"""The IRIS dialect, statement by statement (no IRIS server can be installed here).

What IRIS itself does with these statements is covered by the contract suite
(``test_store_contract.py``), which runs against a live IRIS when ``DICOMVEC_IRIS_URL`` is set.
Here: the exact SQL text, how parameters are bound, URL/password rules, and how the real driver's
errors are classified.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from dicomvec.io.stores import VectorStore
from dicomvec.io.stores.base import COLUMNS
from dicomvec.io.stores.dialects import dialect_for_url
from dicomvec.io.stores.iris import (IrisDialect, parse_zversion, read_password, require_hnsw,
                                     sqlcode)
from tests.store_rows import make_row, unit

URL = "iris://dicomvec@iris.example.org:1972/MIMIC"


@pytest.fixture
def iris_env(monkeypatch):
    monkeypatch.setenv("DICOMVEC_IRIS_PASSWORD", "s3cret-Pw")
    monkeypatch.delenv("DICOMVEC_IRIS_PASSWORD_FILE", raising=False)


def dialect(url: str = URL, schema: str = "VectorSearch",
            table: str = "MIMICCXRImages") -> IrisDialect:
    d = dialect_for_url(url, schema=schema, table=table)
    assert isinstance(d, IrisDialect)
    return d


def test_url_parts_and_defaults():
    d = dialect()
    assert (d.username, d.hostname, d.port, d.namespace) == ("dicomvec", "iris.example.org",
                                                            1972, "MIMIC")
    bare = dialect("iris://_SYSTEM@localhost")
    assert (bare.port, bare.namespace) == (1972, "USER")
    assert d.qualified_table == "VectorSearch.MIMICCXRImages"


def test_password_in_url_is_refused_without_echoing_it():
    with pytest.raises(ValueError) as err:
        dialect("iris://dicomvec:hunter2@host:1972/USER")
    message = str(err.value)
    assert "hunter2" not in message
    assert "DICOMVEC_IRIS_PASSWORD" in message and "***" in message


@pytest.mark.parametrize("url", ["iris://host:1972/USER", "iris://u@:1972/USER",
                                 "iris://u@host:1972/A/B"])
def test_malformed_urls_are_refused(url):
    with pytest.raises(ValueError):
        dialect(url)


@pytest.mark.parametrize("schema,table", [("VectorSearch;DROP", "T"), ("S", "T x"), ("", "T")])
def test_names_are_validated(schema, table):
    with pytest.raises(ValueError):
        dialect(schema=schema, table=table)


def test_password_from_env_or_file(monkeypatch, tmp_path):
    monkeypatch.delenv("DICOMVEC_IRIS_PASSWORD", raising=False)
    monkeypatch.delenv("DICOMVEC_IRIS_PASSWORD_FILE", raising=False)
    with pytest.raises(ValueError, match="DICOMVEC_IRIS_PASSWORD"):
        read_password()
    secret = tmp_path / "iris.pw"
    secret.write_text("from-file\n")
    monkeypatch.setenv("DICOMVEC_IRIS_PASSWORD_FILE", str(secret))
    assert read_password() == "from-file"
    monkeypatch.setenv("DICOMVEC_IRIS_PASSWORD", "from-env")
    assert read_password() == "from-env"
    monkeypatch.delenv("DICOMVEC_IRIS_PASSWORD")
    secret.write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_password()


def test_create_table_ddl():
    (table_sql,) = dialect().create_table_statements(1024, with_report_fk=False)
    assert table_sql.startswith("CREATE TABLE VectorSearch.MIMICCXRImages (")
    assert "  Vector VECTOR(DOUBLE, 1024) NOT NULL," in table_sql
    assert "PRIMARY KEY (ImageID, Provider)" in table_sql
    for column in COLUMNS:
        assert re.search(rf"^  {column} ", table_sql, re.M), column
    assert "FOREIGN KEY" not in table_sql
    (with_fk,) = dialect().create_table_statements(512, with_report_fk=True)
    assert "VECTOR(DOUBLE, 512)" in with_fk
    assert "FOREIGN KEY (StudyID) REFERENCES VectorSearch.MIMICCXRReports(StudyID)" in with_fk


def test_upsert_is_insert_or_update_with_bound_to_vector():
    sql = dialect().upsert_sql(COLUMNS, 1024)
    assert sql.startswith("INSERT OR UPDATE INTO VectorSearch.MIMICCXRImages (")
    listed = re.search(r"\(([^)]*)\) VALUES", sql).group(1).split(", ")
    assert listed == COLUMNS
    values = sql.split(" VALUES (", 1)[1][:-1]
    markers = re.findall(r"TO_VECTOR\(\?, DOUBLE, 1024\)|\?", values)
    assert len(markers) == len(COLUMNS)
    assert markers[COLUMNS.index("Vector")] == "TO_VECTOR(?, DOUBLE, 1024)"
    assert values.count("TO_VECTOR") == 1
    assert "%NOCHECK" not in sql and "ON CONFLICT" not in sql


def test_vector_is_a_bound_string_never_inlined():
    d = dialect()
    row = make_row(3)
    params = d.row_params(row, COLUMNS)
    assert len(params) == len(COLUMNS)
    bound = params[COLUMNS.index("Vector")]
    assert isinstance(bound, str) and len(bound.split(",")) == 1024
    # float32 values survive the text round trip exactly
    np.testing.assert_array_equal(np.array(bound.split(","), dtype=np.float32), row.Vector)
    np.testing.assert_array_equal(d.decode_vector("[" + bound + "]"), row.Vector)
    sql = d.upsert_sql(COLUMNS, 1024)
    assert bound[:12] not in sql and len(sql) < 1000
    assert [p for i, p in enumerate(params) if i != COLUMNS.index("Vector")] == \
        [getattr(row, c) for c in COLUMNS if c != "Vector"]


def test_nearest_uses_top_and_vector_cosine():
    d = dialect()
    query = unit(1)
    sql, params = d.nearest_sql(query, 5, "nvclip", "PA")
    # issue 14 #4: the documented HNSW-eligible form repeats the distance in ORDER BY (no alias)
    assert sql == ("SELECT TOP 5 ImageID, SubjectID, StudyID, ImagePath, ViewPosition, Provider,"
                   " VECTOR_COSINE(Vector, TO_VECTOR(?, DOUBLE, 1024)) AS score "
                   "FROM VectorSearch.MIMICCXRImages WHERE Provider = ? AND ViewPosition = ? "
                   "ORDER BY VECTOR_COSINE(Vector, TO_VECTOR(?, DOUBLE, 1024)) DESC")
    assert "ORDER BY score" not in sql
    assert params[1:3] == ["nvclip", "PA"] and params[3] == params[0]  # bound twice
    np.testing.assert_array_equal(d.decode_vector(params[0]), query)
    unfiltered, params = d.nearest_sql(query, 3, None, None)
    assert " WHERE " not in unfiltered and unfiltered.startswith("SELECT TOP 3 ") \
        and len(params) == 2
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            d.nearest_sql(query, bad_k, None, None)


def test_hnsw_index_ddl_and_version_gate():
    d = dialect()
    assert d.create_index_statements() == [
        "CREATE INDEX MIMICCXRImagesHNSW ON TABLE VectorSearch.MIMICCXRImages (Vector) "
        "AS HNSW(Distance='Cosine')"]
    assert parse_zversion("IRIS for UNIX (Ubuntu Server LTS for x86-64 Containers) 2024.1 "
                          "(Build 267.2U) Tue Apr 30 2024 16:06:39 EDT") == (2024, 1)
    assert parse_zversion("IRIS for UNIX (Ubuntu Server LTS for ARM64 Containers) 2025.1 "
                          "(Build 223U) Tue Mar 11 2025 18:14:42 EDT") == (2025, 1)
    assert parse_zversion("something else") is None
    with pytest.raises(RuntimeError, match=r"2024\.3.*2025\.1 or newer"):
        require_hnsw((2024, 3))
    require_hnsw((2025, 1))
    require_hnsw(None)  # unknown: try, and explain if CREATE INDEX fails
    message = str(d.index_error(Exception("[SQLCODE: <-1>:<Invalid SQL statement>]"), conn=None))
    assert "2025.1" in message and "SQLCODE: <-1>" in message


def test_other_statements_use_qmark_parameters():
    d = dialect()
    sql, params = d.existing_sql(["a", "b"], "nvclip", "v1")
    assert sql == ("SELECT ImageID FROM VectorSearch.MIMICCXRImages WHERE Provider = ? AND "
                   "ImageID IN (?, ?) AND (PreprocessVersion = ? OR PreprocessVersion IS NULL)")
    assert params == ["nvclip", "a", "b", "v1"]
    sql, params = d.find_table_sql()
    assert "INFORMATION_SCHEMA.TABLES" in sql and params == ["VectorSearch", "MIMICCXRImages"]


def test_error_classification():
    import iris.dbapi
    assert sqlcode(iris.dbapi.OperationalError("[SQLCODE: <-114>:<One or more matching rows "
                                               "is locked by another user>]")) == -114
    d = dialect()
    assert d.is_transient(iris.dbapi.OperationalError(
        "[SQLCODE: <-114>:<One or more matching rows is locked by another user>]"))
    assert d.is_transient(iris.dbapi.OperationalError("<COMMUNICATION LINK ERROR> Failed to "
                                                      "send message"))
    assert not d.is_transient(iris.dbapi.IntegrityError(
        "[SQLCODE: <-119>:<UNIQUE or PRIMARY KEY Constraint failed uniqueness check>]"))
    assert not d.is_transient(iris.dbapi.ProgrammingError("[SQLCODE: <-30>:<Table not found>]"))


def test_real_driver_connection_failure_is_retried_then_dead_lettered(iris_env):
    """Nothing listens on the port: the official driver raises its COMMUNICATION LINK ERROR,
    the store reconnects up to max_attempts, then hands every row back as failed (transient)."""
    from tests.pg_fixtures import free_port
    store = VectorStore(f"iris://_SYSTEM@127.0.0.1:{free_port()}/USER", max_attempts=2,
                        retry_delay_s=0.01, dimension=1024)
    rows = [make_row(i) for i in range(3)]
    failed = store.upsert(rows)
    assert [row for row, _ in failed] == rows
    exc = failed[0][1]
    assert "COMMUNICATION LINK ERROR" in str(exc) and store.dialect.is_transient(exc)
    assert "s3cret" not in repr(store) and "s3cret" not in str(exc)
    assert store.reconnects == 1


def test_store_refuses_wrong_dimension_before_sending(iris_env):
    """With the table dimension known, a wrong-length vector never reaches TO_VECTOR."""
    store = VectorStore(URL, dimension=1024)
    failed = store.upsert([make_row(1, vector=unit(1, 768))])
    assert len(failed) == 1 and "768 dimensions" in str(failed[0][1])
    assert store._conn is None  # nothing was sent: no connection was even opened


# -- issue 14: each fix against the statements and driver calls the store makes ---------------

from dicomvec.io.stores.dialects import SinkAuthenticationError, StoredVectorError  # noqa: E402
from tests.iris_recorder import Recorder, connect_to  # noqa: E402


def _sent(recorder):
    return [sql for sql, _ in recorder.statements if sql not in ("COMMIT", "ROLLBACK")]


def test_1_init_schema_sends_no_create_schema_and_creates_only_a_missing_table(monkeypatch):
    """No CREATE SCHEMA (IRIS makes it with the first table), no IF NOT EXISTS: the catalog
    is read first. An existing table of our shape gets no DDL at all."""
    fresh, existing = Recorder(dimension=1024), Recorder(table_exists=True, dimension=1024,
                                                         stored=[])
    monkeypatch.setattr(IrisDialect, "connect", connect_to([fresh, existing]))
    VectorStore(URL).init_schema(1024)
    sent = _sent(fresh)
    assert not [s for s in sent if "SCHEMA" in s.split("FROM")[0] and s.startswith("CREATE")]
    assert sent[0].startswith("SELECT COLUMN_NAME, DATA_TYPE") and \
        "INFORMATION_SCHEMA.COLUMNS" in sent[0]
    assert [s.split(" (")[0] for s in sent if s.startswith("CREATE")] == \
        ["CREATE TABLE VectorSearch.MIMICCXRImages"]
    VectorStore(URL).init_schema(1024)
    assert not [s for s in _sent(existing) if s.startswith("CREATE")]


def test_1_table_created_meanwhile_by_another_process_counts_as_done(monkeypatch):
    import iris.dbapi
    racing = Recorder(dimension=1024).fail_on(
        "CREATE TABLE", iris.dbapi.ProgrammingError(
            "[SQLCODE: <-201>:<Table or view name not unique>]"))
    monkeypatch.setattr(IrisDialect, "connect", connect_to([racing]))
    VectorStore(URL).init_schema(1024)  # no error


def test_2_wrong_password_fails_fast_with_one_line_never_retried(monkeypatch, iris_env):
    """The real driver's refusal arrives as <COMMUNICATION LINK ERROR> ... Access Denied: one
    connection attempt, a SinkAuthenticationError (CLI: one line, exit 2), no dead letters."""
    import iris.dbapi
    attempts = []

    def refuse(**kwargs):
        attempts.append(kwargs["username"])
        raise iris.dbapi.OperationalError("<COMMUNICATION LINK ERROR> Failed to connect to "
                                          "server; Details: <Access Denied>")
    monkeypatch.setattr(iris.dbapi, "connect", refuse)
    store = VectorStore(URL, dimension=1024, max_attempts=4, retry_delay_s=0.0)
    with pytest.raises(SinkAuthenticationError) as err:
        store.upsert([make_row(1)])
    assert attempts == ["dicomvec"] and store.reconnects == 0
    message = str(err.value)
    assert "\n" not in message and "Access Denied" in message and "s3cret" not in message
    assert not store.dialect.is_transient(iris.dbapi.OperationalError(
        "<COMMUNICATION LINK ERROR> Invalid Message received"))
    from dicomvec.cli import main
    assert main(["init-db", "--sink", URL]) == 2  # the CLI's one line, exit 2


def test_3_driver_pinned_to_5_2_where_dbapi_connect_exists():
    setup = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    pins = re.findall(r'"intersystems-irispython([^"]*)"', setup)
    assert pins and all(pin == ">=5.2" for pin in pins), pins
    import iris.dbapi
    assert callable(iris.dbapi.connect) and issubclass(iris.dbapi.OperationalError, Exception)


def test_4_search_sends_the_order_by_distance_form(monkeypatch):
    recorder = Recorder(table_exists=True)
    monkeypatch.setattr(IrisDialect, "connect", connect_to([recorder]))
    VectorStore(URL).nearest(unit(3), k=4, provider="nvclip")
    (sql, params), = [(s, p) for s, p in recorder.statements if s.startswith("SELECT TOP 4")]
    assert sql.endswith("ORDER BY VECTOR_COSINE(Vector, TO_VECTOR(?, DOUBLE, 1024)) DESC")
    assert len(params) == 3 and params[0] == params[2] and params[1] == "nvclip"


def test_5_create_index_twice_treats_sqlcode_324_as_already_there(monkeypatch):
    """INFORMATION_SCHEMA.INDEXES does not list the HNSW index: CREATE INDEX runs again and
    IRIS answers -324; that is success, not a failed create-index."""
    import iris.dbapi
    recorder = Recorder(table_exists=True).fail_on(
        "CREATE INDEX", iris.dbapi.ProgrammingError(
            "[SQLCODE: <-324>:<Index with this name already defined for this table>]"))
    monkeypatch.setattr(IrisDialect, "connect", connect_to([recorder]))
    VectorStore(URL).create_index()
    assert [s for s in _sent(recorder) if s.startswith("CREATE INDEX")] == \
        ["CREATE INDEX MIMICCXRImagesHNSW ON TABLE VectorSearch.MIMICCXRImages (Vector) "
         "AS HNSW(Distance='Cosine')"]


def test_6_lock_timeout_110_is_retried_on_a_new_connection(monkeypatch):
    import iris.dbapi
    locked = Recorder(table_exists=True, dimension=1024).fail_on(
        "INSERT OR UPDATE", iris.dbapi.OperationalError(
            "[SQLCODE: <-110>:<Lock timeout occurred>]"))
    retried = Recorder(table_exists=True, dimension=1024)
    monkeypatch.setattr(IrisDialect, "connect", connect_to([locked, retried]))
    store = VectorStore(URL, dimension=1024, retry_delay_s=0.0)
    assert store.upsert([make_row(i) for i in range(3)]) == []
    assert store.reconnects == 1
    (sql, batch), = [(s, p) for s, p in retried.statements if s.startswith("INSERT OR UPDATE")]
    assert len(batch) == 3 and retried.statements[-1] == ("COMMIT", None)


def test_7_a_truncated_stored_vector_is_an_error_not_a_short_vector(monkeypatch):
    d = dialect()
    good = d.encode_vector(unit(1, 8))
    truncated = ",".join(good.split(",")[:5])
    recorder = Recorder(table_exists=True, stored=[("img-1", good), ("img-2", truncated)])
    monkeypatch.setattr(IrisDialect, "connect", connect_to([recorder]))
    with pytest.raises(StoredVectorError, match="img-2 has 5 values.*stores 8"):
        VectorStore(URL, dimension=8).vectors(["img-1", "img-2"], "nvclip")


def test_8_password_change_is_a_login_status_not_sqlcode_853(monkeypatch, iris_env):
    import iris.dbapi

    def change_required(**kwargs):
        raise iris.dbapi.OperationalError("<COMMUNICATION LINK ERROR> Failed to connect to "
                                          "server; Details: <Password change required>")
    monkeypatch.setattr(iris.dbapi, "connect", change_required)
    with pytest.raises(SinkAuthenticationError) as err:
        dialect().connect()
    assert "-853" not in str(err.value) and "change its password" in str(err.value)
    docs = (Path(__file__).resolve().parents[1] / "docs" / "iris.md").read_text()
    assert "-853" not in docs


def test_primary_key_found_in_indexes_when_key_column_usage_lists_none(monkeypatch):
    """Not verified live which catalog view lists the key: an existing dicomvec table whose
    key only INFORMATION_SCHEMA.INDEXES reports is still recognised as ours."""
    recorder = Recorder(table_exists=True, key=(), index_key=("ImageID", "Provider"))
    monkeypatch.setattr(IrisDialect, "connect", connect_to([recorder]))
    shape = VectorStore(URL).shape()
    assert shape.key == ("imageid", "provider")
    assert any("PRIMARY_KEY = 1" in s for s in _sent(recorder))


def test_check_db_finds_an_hnsw_index_the_catalog_does_not_list(monkeypatch):
    """INFORMATION_SCHEMA.INDEXES may not list HNSW indexes: check-db then looks at the plan
    of the nearest-neighbour query (the recorder's plan names MIMICCXRImagesHNSW)."""
    from dicomvec.io.stores.health import _index_checks
    stored = [("img-1", dialect().encode_vector(unit(1)))]
    recorder = Recorder(table_exists=True, index_exists=False, stored=stored)
    monkeypatch.setattr(IrisDialect, "connect", connect_to([recorder]))
    checks = _index_checks(VectorStore(URL))
    assert [(c.name, c.ok) for c in checks] == [("vector index", True), ("query plan", True)]
    assert "does not list it" in checks[0].detail
    assert any(s.startswith("EXPLAIN SELECT TOP 10") for s in _sent(recorder))


def test_check_db_without_a_listed_index_and_no_readable_plan_is_not_a_failure(monkeypatch):
    import iris.dbapi
    from dicomvec.io.stores.health import _index_checks
    stored = [("img-1", dialect().encode_vector(unit(1)))]
    recorder = Recorder(table_exists=True, stored=stored).fail_on(
        "EXPLAIN", iris.dbapi.ProgrammingError("[SQLCODE: <-1>:<Invalid SQL statement>]"))
    monkeypatch.setattr(IrisDialect, "connect", connect_to([recorder]))
    (check,) = _index_checks(VectorStore(URL))
    assert check.ok is None and "could not be read" in check.detail
