"""``dicomvec check-db`` for real: a local PostgreSQL + pgvector and SQLite. A good database
passes (exit 0); a wrong password, a missing table, a wrong vector dimension, a user without
CREATE rights and zero vectors each give a clear ✗ (exit 1)."""
from __future__ import annotations

import sqlite3
import uuid

import pytest

from dicomvec.cli import main
from dicomvec.io.stores import VectorStore
from tests.store_rows import make_row


def check(capsys, *argv):
    code = main(["check-db", *argv])
    out = capsys.readouterr().out
    return code, out


def lines(out, mark):
    return [line for line in out.splitlines() if line.startswith(mark)]


@pytest.fixture
def pg_url(postgres_server):
    return postgres_server.create_database(f"chk_{uuid.uuid4().hex[:8]}")


@pytest.mark.postgres
def test_good_postgres_passes_every_check(pg_url, capsys):
    assert main(["init-db", "--sink", pg_url]) == 0
    with VectorStore(pg_url) as store:
        assert store.upsert([make_row(i) for i in range(30)]) == []
        assert store.upsert([make_row(i, provider="thumbnail") for i in range(4)]) == []
    assert main(["create-index", "--sink", pg_url]) == 0
    code, out = check(capsys, "--sink", pg_url)
    assert code == 0, out
    assert not lines(out, "✗")
    names = [line[2:18].strip() for line in lines(out, "✓")]
    assert names == ["connect", "server version", "VECTOR type", "HNSW index", "schema",
                     "images table", "create rights", "rows", "vectors", "vector index",
                     "query plan"]
    assert "pgvector 0." in out and "34 (nvclip 30, thumbnail 4)" in out
    assert "1024-d vectors" in out and "MIMICCXRImages_vector_hnsw" in out
    assert out.strip().endswith("all checks passed")
    # the create-rights probe left nothing behind
    with VectorStore(pg_url) as store:
        cur = store.conn.cursor()
        cur.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'dicomveccheck%'")
        assert cur.fetchone()[0] == 0


@pytest.mark.postgres
def test_wrong_password_is_one_clear_cross(postgres_server, pg_url, capsys, monkeypatch):
    url = postgres_server.add_password_role("dvchecker", "right-pw")
    monkeypatch.setenv("PGPASSWORD", "wrong-pw")
    code, out = check(capsys, "--sink", url)
    assert code == 1
    (cross,) = lines(out, "✗")
    assert cross.startswith("✗ connect") and "password authentication failed" in cross
    assert out.startswith("model: any (1024-d vectors), table ")  # what it would check
    assert "wrong-pw" not in out and len(out.splitlines()) == 3  # nothing runs unconnected
    # a writing command stops at once with one line, exit 2 (no retries, no dead letters)
    assert main(["init-db", "--sink", url]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "refused the login" in err


@pytest.mark.postgres
def test_user_without_create_rights(postgres_server, pg_url, capsys, monkeypatch):
    assert main(["init-db", "--sink", pg_url]) == 0
    url = postgres_server.add_password_role("dvreader", "pw")
    monkeypatch.setenv("PGPASSWORD", "pw")
    code, out = check(capsys, "--sink", url.rsplit("/", 1)[0] + "/" + pg_url.rsplit("/", 1)[1])
    assert code == 1
    assert any(c.startswith("✗ create rights") and "permission denied" in c
               for c in lines(out, "✗")), out


@pytest.mark.postgres
def test_missing_table_and_wrong_dimension_on_postgres(pg_url, capsys):
    code, out = check(capsys, "--sink", pg_url, "--table", "NoSuchTable")
    assert code == 1
    assert any("NoSuchTable does not exist: run `dicomvec init-db" in c
               for c in lines(out, "✗ images table")), out

    # 512-d vectors get a table of their own: the 1024-d one is not made by it
    assert main(["init-db", "--sink", pg_url, "--dimension", "512"]) == 0
    assert "VectorSearch.MIMICCXRImages512 ready" in capsys.readouterr().out
    code, out = check(capsys, "--sink", pg_url, "--dimension", "512")
    assert code == 0 and out.startswith(
        "model: any (512-d vectors), table VectorSearch.MIMICCXRImages512\n"), out
    code, out = check(capsys, "--sink", pg_url)  # expects 1024 (NV-CLIP) by default
    assert code == 1 and "MIMICCXRImages does not exist" in lines(out, "✗ images table")[0]

    # a 512-d table under the 1024-d name (made by naming it): named as not ours
    assert main(["init-db", "--sink", pg_url, "--dimension", "512",
                 "--table", "MIMICCXRImages"]) == 0
    code, out = check(capsys, "--sink", pg_url)
    assert code == 1
    (table_line,) = lines(out, "✗ images table")
    assert "Vector is 512-d, we write 1024-d" in table_line and "--sink-table" in table_line


def test_sqlite_good_missing_wrong_dimension_and_zero_vectors(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    code, out = check(capsys, "--sink", url)
    assert code == 1 and lines(out, "✗ images table")[0].endswith("(or check --schema/--table)")
    assert main(["init-db", "--sink", url, "--dimension", "1024"]) == 0
    with VectorStore(url) as store:
        store.upsert([make_row(i) for i in range(5)])
    code, out = check(capsys, "--sink", url)
    assert code == 0 and "– HNSW index       none on SQLite: an IVF index" in out
    assert main(["check-iris", "--sink", url]) == 0  # the alias
    capsys.readouterr()
    code, out = check(capsys, "--sink", url, "--dimension", "768")  # its own table: not yet
    assert code == 1 and "MIMICCXRImages768 does not exist" in out
    code, out = check(capsys, "--sink", url, "--dimension", "768", "--table", "MIMICCXRImages")
    (table_line,) = lines(out, "✗ images table")
    assert code == 1 and "Vector is 1024-d, we write 768-d" in table_line
    assert "leave --sink-table (init-db, check-db, migrate: --table) out" in table_line
    assert "their own table MIMICCXRImages768" in table_line

    with sqlite3.connect(f"{tmp_path}/db.sqlite") as conn:  # another tool writes zeros
        conn.execute("UPDATE MIMICCXRImages SET Vector = zeroblob(4096) WHERE ImageID IN "
                     "('img-00001', 'img-00003')")
    code, out = check(capsys, "--sink", url)
    assert code == 1
    (vectors,) = lines(out, "✗ vectors")
    assert "2 rows with a zero or non-1024-d vector: img-00001/nvclip, img-00003/nvclip" \
        in vectors and "--replace-invalid" in vectors


def test_unwritable_sqlite_path_fails_connect(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out = check(capsys, "--sink", f"sqlite:///{blocker}/sub/db.sqlite")
    assert code == 1 and lines(out, "✗ connect")
