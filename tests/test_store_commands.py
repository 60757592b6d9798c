"""``dicomvec init-db`` and ``dicomvec create-index`` against SQLite and the local PostgreSQL."""
from __future__ import annotations

import sqlite3
import uuid

import pytest

from dicomvec.cli import main
from dicomvec.io.stores import VectorStore
from tests.store_rows import make_row, unit


def cli(*argv: str) -> int:
    return main(list(argv))


def test_init_db_sqlite_twice_with_provider_dimension(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/out/dicomvec.db"
    assert cli("init-db", "--sink", url, "--provider", "thumbnail") == 0
    assert cli("init-db", "--sink", url, "--provider", "thumbnail") == 0
    assert "MIMICCXRImages ready" in capsys.readouterr().out
    ddl = sqlite3.connect(f"{tmp_path}/out/dicomvec.db").execute(
        "SELECT sql FROM sqlite_master WHERE name = 'MIMICCXRImages'").fetchone()[0]
    assert "length(Vector) = 4096" in ddl  # 1024 float32 from the thumbnail provider
    assert cli("create-index", "--sink", url) == 0
    assert "no vector index" in capsys.readouterr().out


def test_init_db_reports_errors_without_secrets(capsys, monkeypatch):
    assert cli("init-db", "--sink", "iris://me:Sup3rSecret@host:1972/USER") == 2
    err = capsys.readouterr().err
    assert "Sup3rSecret" not in err and "DICOMVEC_IRIS_PASSWORD" in err
    assert cli("init-db", "--sink", "sqlite:///x.db", "--provider", "no-such-model") == 2
    assert "no-such-model" in capsys.readouterr().err
    monkeypatch.delenv("DICOMVEC_IRIS_PASSWORD", raising=False)
    monkeypatch.delenv("DICOMVEC_IRIS_PASSWORD_FILE", raising=False)
    assert cli("create-index", "--sink", "iris://me@127.0.0.1:1/USER") == 2
    assert "set DICOMVEC_IRIS_PASSWORD" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        cli("init-db", "--sink", "sqlite:///x.db", "--dimension", "8", "--provider", "thumbnail")


@pytest.mark.postgres
def test_init_db_and_create_index_on_postgres(postgres_server, capsys):
    table = f"cmd_{uuid.uuid4().hex[:8]}"
    url = postgres_server.url()
    args = ("--sink", url, "--schema", "DicomvecTest", "--table", table)
    # the database refusing is exit status 1 and one line (no table yet)
    assert cli("create-index", *args) == 1
    assert "create-index failed for " + url in capsys.readouterr().err
    assert cli("init-db", *args, "--dimension", "1024", "--with-report-fk") == 0
    assert "without the foreign key" in capsys.readouterr().out
    assert cli("init-db", *args, "--dimension", "1024") == 0

    store = VectorStore(url, schema="DicomvecTest", table=table).open()
    try:
        assert store.upsert([make_row(i) for i in range(60)]) == []
        assert cli("create-index", *args) == 0
        assert cli("create-index", *args) == 0  # idempotent
        assert "(60 rows)" in capsys.readouterr().out
        with postgres_server.admin() as admin:
            indexdef = admin.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = 'dicomvectest' "
                "AND tablename = %s AND indexname = %s",
                [table.lower(), f"{table}_vector_hnsw"]).fetchone()[0]
            assert "USING hnsw (vector vector_cosine_ops)" in indexdef
            # the index serves the search query
            admin.execute("SET enable_seqscan = off")
            plan = "\n".join(r[0] for r in admin.execute(
                f"EXPLAIN SELECT imageid FROM dicomvectest.{table} ORDER BY vector <=> %s::vector "
                "LIMIT 5", [str(unit(1).tolist())]).fetchall())
            assert f"{table}_vector_hnsw" in plan
        assert store.nearest(unit(7), k=1)[0].ImageID == "img-00007"
        # through the index: more than hnsw.ef_search's default 40, and filtered
        store.conn.execute("SET enable_seqscan = off")  # a 60-row table would be scanned
        store.conn.commit()
        assert len(store.nearest(unit(7), k=50)) == 50
        assert len(store.nearest(unit(7), k=20, provider="nvclip", view_position="PA")) == 20
    finally:
        store.conn.cursor().execute(f"DROP TABLE DicomvecTest.{table}")
        store.conn.commit()
        store.close()
