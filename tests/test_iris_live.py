"""The live IRIS contract for issue 14: run with a real server, skipped (saying why) without.

    DICOMVEC_IRIS_URL=iris://_SYSTEM@localhost:1972/USER DICOMVEC_IRIS_PASSWORD=... \\
        python -m pytest tests/test_iris_live.py tests/test_store_contract.py -k iris -v

Covers, on the server: init-db without CREATE SCHEMA on a fresh schema (and twice), a wrong
password failing fast with one line, the nearest-neighbour query in the documented form,
create-index twice (SQLCODE -324 or the catalog), the -110/-114 classification of a real lock
(not provoked here: see docs/iris.md), stored vectors decoding to the table's length, the error
for a password change (not provoked: it needs a fresh container), check-db passing and failing
(missing table, wrong dimension, wrong password) including the HNSW query plan, the schema
guard against a predecessor-shaped reports table, and migrate on an older-shaped images table.
Every table lives in schema ``DicomvecLive`` with a random name and is dropped afterwards.
"""
from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from dicomvec.cli import main
from dicomvec.io.stores import VectorStore
from dicomvec.io.stores.dialects import SinkAuthenticationError
from dicomvec.io.stores.iris import HNSW_MIN_VERSION, parse_zversion
from dicomvec.io.stores.schema_check import NeedsMigrationError, SchemaMismatchError
from dicomvec.io.stores.tables import REPORTS
from tests.store_rows import make_row, unit

URL = os.environ.get("DICOMVEC_IRIS_URL")
SCHEMA = "DicomvecLive"
DIM = 1024

pytestmark = [pytest.mark.iris, pytest.mark.skipif(
    not URL, reason="live IRIS contract not run: no IRIS server can be installed here. Set "
                    "DICOMVEC_IRIS_URL=iris://USER@HOST:1972/NAMESPACE and "
                    "DICOMVEC_IRIS_PASSWORD to run it against your server")]


@pytest.fixture
def table():
    """A fresh table name in DicomvecLive; every table made under that prefix is dropped."""
    name = f"T{uuid.uuid4().hex[:10]}"
    yield name
    with VectorStore(URL, schema=SCHEMA, table=name) as store:
        cur = store.conn.cursor()
        for suffix in ("", "Reports", "Old"):
            try:
                cur.execute(f"DROP TABLE {SCHEMA}.{name}{suffix}")
                store.conn.commit()
            except Exception:
                store.conn.rollback()


def _args(table, *more):
    return ["--sink", URL, "--schema", SCHEMA, "--table", table, *more]


def _server_version():
    with VectorStore(URL, schema=SCHEMA) as store:
        return store.dialect.server_version(store.conn)


def test_init_db_on_a_fresh_schema_twice_without_create_schema(table):
    assert main(["init-db", *_args(table), "--dimension", str(DIM)]) == 0
    assert main(["init-db", *_args(table), "--dimension", str(DIM)]) == 0
    with VectorStore(URL, schema=SCHEMA, table=table) as store:
        shape = store.shape()
        assert shape is not None and shape.key == ("imageid", "provider")
        assert store.upsert([make_row(i) for i in range(3)]) == []
        assert store.shape().dimension == DIM  # what check-db and the guard rely on


def test_wrong_password_fails_fast(table, monkeypatch, capsys):
    monkeypatch.setenv("DICOMVEC_IRIS_PASSWORD", "certainly-not-the-password")
    monkeypatch.delenv("DICOMVEC_IRIS_PASSWORD_FILE", raising=False)
    store = VectorStore(URL, schema=SCHEMA, table=table, dimension=DIM, retry_delay_s=0)
    with pytest.raises(SinkAuthenticationError):
        store.upsert([make_row(1)])
    assert store.reconnects == 0
    assert main(["check-db", *_args(table)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("✗ connect") and "certainly-not" not in out


def test_search_form_stored_vectors_and_create_index_twice(table, capsys):
    store = VectorStore(URL, schema=SCHEMA, table=table)
    store.init_schema(DIM)
    assert store.upsert([make_row(i) for i in range(40)]) == []
    hits = store.nearest(unit(7) + 0.05 * unit(999), k=3, provider="nvclip")
    assert hits[0].ImageID == "img-00007" and hits[0].score > 0.95
    got = store.vectors(["img-00003"], "nvclip")["img-00003"]
    assert got.shape == (DIM,)
    np.testing.assert_allclose(got, unit(3), rtol=1e-6, atol=1e-7)
    store.close()
    version = _server_version()
    if version is not None and version < HNSW_MIN_VERSION:
        assert main(["create-index", *_args(table)]) == 1
        assert "2025.1" in capsys.readouterr().err
        return
    assert main(["create-index", *_args(table)]) == 0
    assert main(["create-index", *_args(table)]) == 0  # -324 or the catalog: already there
    assert main(["check-db", *_args(table)]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "✓ query plan" in out, out  # the nearest-neighbour query uses the HNSW index


def test_check_db_passes_and_names_missing_table_and_wrong_dimension(table, capsys):
    assert main(["check-db", *_args(table)]) == 1
    out = capsys.readouterr().out
    assert "✗ images table" in out and "does not exist" in out
    assert "✓ server version" in out and "✓ VECTOR type" in out and "✓ create rights" in out
    version = parse_zversion(next(line for line in out.splitlines()
                                  if "server version" in line))
    assert version is not None, out
    assert main(["init-db", *_args(table), "--dimension", "512"]) == 0
    with VectorStore(URL, schema=SCHEMA, table=table) as store:
        store.upsert([make_row(i, vector=unit(i, 512)) for i in range(3)])
    assert main(["check-db", *_args(table)]) == 1
    assert "Vector is 512-d, we write 1024-d" in capsys.readouterr().out
    assert main(["check-db", *_args(table), "--dimension", "512"]) == 0, \
        capsys.readouterr().out


def test_guard_refuses_a_predecessor_reports_table(table):
    with VectorStore(URL, schema=SCHEMA, table=table) as store:
        cur = store.conn.cursor()
        cur.execute(f"CREATE TABLE {SCHEMA}.{table}Reports (SubjectID VARCHAR(50), StudyID "
                    "VARCHAR(50), Findings VARCHAR(30000), Impression VARCHAR(30000), "
                    "Vector VECTOR(DOUBLE, 3072))")
        cur.execute(f"INSERT INTO {SCHEMA}.{table}Reports (SubjectID, StudyID, Findings, "
                    "Impression, Vector) VALUES (?, ?, ?, ?, TO_VECTOR(?, DOUBLE, 3072))",
                    ["1", "2", "f", "i", ",".join(["0.5"] * 3072)])
        store.conn.commit()
    reports = VectorStore(URL, schema=SCHEMA, table=f"{table}Reports", spec=REPORTS)
    with pytest.raises(SchemaMismatchError, match="3072-d"):
        reports.init_schema(DIM)
    assert reports.count() == 1
    reports.close()


def test_migrate_an_older_images_table(table, capsys):
    with VectorStore(URL, schema=SCHEMA, table=table) as store:
        cur = store.conn.cursor()
        cur.execute(f"CREATE TABLE {SCHEMA}.{table} (SubjectID VARCHAR(50) NOT NULL, StudyID "
                    "VARCHAR(50) NOT NULL, ImageID VARCHAR(50) NOT NULL, ImagePath VARCHAR(500), "
                    "DicomFile VARCHAR(255), ViewPosition VARCHAR(20), Vector VECTOR(DOUBLE, "
                    "1024) NOT NULL, EmbeddingModel VARCHAR(100), Provider VARCHAR(50) NOT NULL,"
                    " CreatedAt TIMESTAMP DEFAULT CURRENT_TIMESTAMP, "
                    "PRIMARY KEY (ImageID, Provider))")
        store.conn.commit()
    with pytest.raises(NeedsMigrationError):
        VectorStore(URL, schema=SCHEMA, table=table).init_schema(DIM)
    assert main(["migrate", *_args(table), "--apply"]) == 0
    assert main(["migrate", *_args(table)]) == 0
    assert f"{SCHEMA}.{table}: up to date" in capsys.readouterr().out
    store = VectorStore(URL, schema=SCHEMA, table=table)
    store.init_schema(DIM)
    assert store.upsert([make_row(1, ImageID="x" * 64)]) == []
    store.close()
