"""Sink URLs, name validation, redaction and the PostgreSQL statements."""
from __future__ import annotations

import logging

import pytest

from dicomvec.io.stores import VectorStore
from dicomvec.io.stores.base import COLUMNS
from dicomvec.io.stores.dialects import dialect_for_url, redact_url
from dicomvec.io.stores.postgres import PostgresDialect
from dicomvec.io.stores.sqlite import SQLiteDialect


@pytest.mark.parametrize("url,expected", [
    ("postgresql://bob:pa55@db:5432/cxr", "postgresql://bob:***@db:5432/cxr"),
    ("postgresql://bob@db/cxr?password=pa55&sslmode=require",
     "postgresql://bob@db/cxr?password=***&sslmode=require"),
    ("postgresql://bob@db/cxr", "postgresql://bob@db/cxr"),
    ("sqlite:///out/dicomvec.db", "sqlite:///out/dicomvec.db"),
])
def test_redact_url(url, expected):
    assert redact_url(url) == expected
    assert "pa55" not in redact_url(url)


def test_scheme_lookup_and_unknown_scheme_is_redacted():
    assert isinstance(dialect_for_url("sqlite:///x.db", "VectorSearch", "T"), SQLiteDialect)
    for url in ("postgresql://u@h/db", "postgres://u@h/db"):
        assert isinstance(dialect_for_url(url, "VectorSearch", "T"), PostgresDialect)
    with pytest.raises(ValueError) as err:
        dialect_for_url("mysql://u:topsecret@h/db", "VectorSearch", "T")
    assert "topsecret" not in str(err.value) and "sqlite" in str(err.value)


def test_sqlite_has_no_schema():
    assert dialect_for_url("sqlite:///x.db", "VectorSearch", "Imgs").qualified_table == "Imgs"


def test_postgres_password_never_logged(caplog):
    store = VectorStore("postgresql://bob:pa55w0rd@127.0.0.1:1/cxr", max_attempts=2,
                        retry_delay_s=0.0)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(Exception) as err:
            store.count()  # nothing listens on port 1: fails after the retries
    assert "pa55w0rd" not in repr(store) and "pa55w0rd" not in repr(store.dialect)
    assert "pa55w0rd" not in caplog.text and "pa55w0rd" not in str(err.value)
    assert "reconnecting" in caplog.text


def test_postgres_statements():
    d = dialect_for_url("postgresql://u@h/db", "VectorSearch", "MIMICCXRImages")
    statements = d.create_table_statements(1024, with_report_fk=False)
    assert statements[:2] == ["CREATE EXTENSION IF NOT EXISTS vector",
                              "CREATE SCHEMA IF NOT EXISTS VectorSearch"]
    assert "  Vector vector(1024) NOT NULL," in statements[2]
    assert "PRIMARY KEY (ImageID, Provider)" in statements[2]
    sql = d.upsert_sql(COLUMNS, 1024)
    assert sql.startswith("INSERT INTO VectorSearch.MIMICCXRImages (")
    assert sql.count("%b") == 1 and sql.count("%s") == len(COLUMNS) - 1
    assert "ON CONFLICT (ImageID, Provider) DO UPDATE SET" in sql
    assert "ImageID = EXCLUDED" not in sql and "Vector = EXCLUDED.Vector" in sql
    assert d.create_index_statements() == [
        "CREATE INDEX IF NOT EXISTS MIMICCXRImages_vector_hnsw ON VectorSearch.MIMICCXRImages "
        "USING hnsw (Vector vector_cosine_ops)"]
    sql, params = d.nearest_sql([0.1] * 4, 7, "nvclip", None)
    assert "1 - (Vector <=> %b) AS score" in sql
    assert sql.endswith("WHERE Provider = %s ORDER BY Vector <=> %b LIMIT 7")
    assert params[1] == "nvclip" and len(params) == 3


def test_postgres_transient_classification():
    import psycopg
    from psycopg import errors
    d = dialect_for_url("postgresql://u@h/db", "VectorSearch", "T")
    assert d.is_transient(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert d.is_transient(psycopg.InterfaceError("the connection is closed"))
    assert d.is_transient(errors.AdminShutdown("terminating connection due to administrator"))
    assert d.is_transient(errors.ConnectionFailure("connection failure"))
    assert not d.is_transient(errors.NotNullViolation("null value in column"))
    assert not d.is_transient(errors.DataException("expected 1024 dimensions, not 3"))
    assert not d.is_transient(ValueError("x"))
