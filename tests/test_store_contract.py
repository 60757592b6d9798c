"""The sink contract, run unchanged against every database the core supports.

SQLite (file in a temp dir) and PostgreSQL + pgvector (``postgres_server`` from
``tests/pg_fixtures.py``) always run; InterSystems IRIS runs when ``DICOMVEC_IRIS_URL`` (and
``DICOMVEC_IRIS_PASSWORD``) point at a live server and is reported as skipped otherwise. Each
test gets its own table, dropped afterwards.
"""
from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest

from dicomvec.io.stores import VectorStore
from tests.sinks import WITH_IRIS, check_iris_url, iris_url, sink_url
from tests.store_rows import DIM, make_row, unit

class Backend:
    """Where one test's table lives, and how to open stores on it."""

    def __init__(self, name: str, url: str, schema: str, table: str, server=None):
        self.name, self.url, self.schema, self.table, self.server = name, url, schema, table, server
        self.opened = []

    def store(self, **kwargs) -> VectorStore:
        store = VectorStore(self.url, schema=self.schema, table=self.table, **kwargs)
        self.opened.append(store)
        return store.open()

    def close(self) -> None:
        for store in self.opened:
            store.close()
        if self.name != "sqlite":
            cleaner = VectorStore(self.url, schema=self.schema, table=self.table).open()
            try:
                cur = cleaner.conn.cursor()
                cur.execute(f"DROP TABLE IF EXISTS {cleaner.dialect.qualified_table}")
                cleaner.conn.commit()
            finally:
                cleaner.close()


def _open_backend(name: str, request, tmp_path) -> Backend:
    table = f"T{uuid.uuid4().hex[:12]}"
    url = sink_url(name, request, tmp_path, "store", new_database=False)
    server = request.getfixturevalue("postgres_server") if name == "postgresql" else None
    return Backend(name, url, "DicomvecTest", table, server)


@pytest.fixture(params=WITH_IRIS)
def backend(request, tmp_path):
    """The contract's target: one fresh table on each database."""
    b = _open_backend(request.param, request, tmp_path)
    yield b
    b.close()


@pytest.fixture
def pg_backend(request, tmp_path):
    """A fresh table on the local PostgreSQL, for fault tests a server must take part in."""
    b = _open_backend("postgresql", request, tmp_path)
    yield b
    b.close()


def test_init_schema_is_idempotent(backend):
    store = backend.store()
    assert store.init_schema(DIM) is False
    store.upsert([make_row(1)])
    store.init_schema(DIM)  # second run must neither fail nor drop data
    assert backend.store().count() == 1


def test_upsert_twice_updates_in_place(backend):
    store = backend.store()
    store.init_schema(DIM)
    rows = [make_row(i) for i in range(12)]
    assert store.upsert(rows) == []
    changed = [make_row(i, view="AP", vector=unit(1000 + i)) for i in range(12)]
    assert store.upsert(changed) == []
    # the same image under another provider is another row, not an overwrite
    assert store.upsert([make_row(0, provider="thumbnail")]) == []

    reader = backend.store()
    assert reader.count() == 13
    assert reader.count(provider="nvclip") == 12
    stored = reader.vectors([r.ImageID for r in rows], "nvclip")
    assert sorted(stored) == sorted(r.ImageID for r in rows)
    for row in changed:
        np.testing.assert_allclose(stored[row.ImageID], row.Vector, rtol=1e-6, atol=1e-7)
    hits = reader.nearest(unit(1003), k=1, provider="nvclip")
    assert hits[0].ImageID == "img-00003" and hits[0].ViewPosition == "AP"


def test_duplicate_key_within_a_batch_keeps_the_last(backend):
    store = backend.store()
    store.init_schema(DIM)
    rows = [make_row(1), make_row(2), make_row(1, view="AP", vector=unit(77))]
    assert store.upsert(rows) == []
    assert store.count() == 2
    np.testing.assert_allclose(store.vectors(["img-00001"], "nvclip")["img-00001"], unit(77),
                               rtol=1e-6, atol=1e-7)


def test_bad_rows_fail_alone(backend):
    """One NOT NULL violation (found by the database, isolated by bisection) and one
    wrong-length vector (refused before the database) fail; their 10 neighbours are stored."""
    store = backend.store()
    store.init_schema(DIM)
    rows = [make_row(i) for i in range(12)]
    rows[5] = make_row(5, SubjectID=None)
    rows[9] = make_row(9, vector=unit(9, DIM - 1))
    failed = store.upsert(rows)

    assert sorted(row.ImageID for row, _ in failed) == ["img-00005", "img-00009"]
    for _, exc in failed:
        assert not store.dialect.is_transient(exc)
    assert "dimensions" in str(dict((r.ImageID, e) for r, e in failed)["img-00009"])
    assert store.count() == 10
    assert store.existing_ids([r.ImageID for r in rows], "nvclip") == \
        {r.ImageID for i, r in enumerate(rows) if i not in (5, 9)}


def test_writer_that_did_not_create_the_table(backend):
    """Workers open the store without init_schema: the vector length comes from the catalog
    (PostgreSQL) or the batch, and a wrong-length vector still fails alone."""
    backend.store().init_schema(DIM)
    writer = backend.store()
    assert writer.dimension is None
    rows = [make_row(i) for i in range(5)] + [make_row(5, vector=unit(5, 512))]
    failed = writer.upsert(rows)
    assert [row.ImageID for row, _ in failed] == ["img-00005"]
    assert writer.count() == 5
    if backend.name == "postgresql":
        assert writer.dimension == DIM  # read from pg_attribute


@pytest.mark.parametrize("column,value", [("ImageID", "x" * 65), ("ViewPosition", "V" * 21)])
def test_overlong_text_fails_alone(backend, column, value):
    if backend.name == "sqlite":
        pytest.skip("SQLite does not enforce VARCHAR lengths")
    store = backend.store()
    store.init_schema(DIM)
    rows = [make_row(i) for i in range(7)]
    rows[3] = make_row(3, **{column: value})
    failed = store.upsert(rows)
    assert [row for row, _ in failed] == [rows[3]]
    assert store.count() == 6


def test_nearest_finds_the_neighbour_and_respects_filters(backend):
    store = backend.store()
    store.init_schema(DIM)
    rows = [make_row(i, view="PA" if i % 2 else "LATERAL") for i in range(20)]
    rows.append(make_row(100, provider="thumbnail", vector=unit(7), view="PA"))
    assert store.upsert(rows) == []

    query = unit(7) + 0.05 * unit(999)  # close to row 7, not identical
    hits = store.nearest(query, k=5)
    assert {hits[0].ImageID, hits[1].ImageID} == {"img-00007", "img-00100"}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(hits) == 5 and 0.95 < hits[0].score <= 1.0 + 1e-6

    only_nvclip = store.nearest(query, k=3, provider="nvclip")
    assert only_nvclip[0].ImageID == "img-00007"
    assert only_nvclip[0].SubjectID == "10000007" and only_nvclip[0].Provider == "nvclip"
    assert all(h.Provider == "nvclip" for h in only_nvclip)

    lateral = store.nearest(query, k=50, provider="nvclip", view_position="LATERAL")
    assert len(lateral) == 10 and all(h.ViewPosition == "LATERAL" for h in lateral)
    assert "img-00007" not in {h.ImageID for h in lateral}
    assert store.nearest(query, k=3, provider="nobody") == []


def test_existing_ids_in_chunks(backend):
    store = backend.store()
    store.init_schema(DIM)
    store.id_chunk = 7  # force several queries
    stored = [make_row(i, version="v1" if i < 15 else "v2") for i in range(23)]
    assert store.upsert(stored) == []
    asked = [f"img-{i:05d}" for i in range(40)] + ["img-00003", "img-00003"]
    assert store.existing_ids(asked, "nvclip") == {r.ImageID for r in stored}
    assert store.existing_ids(asked, "nvclip", preprocess_version="v2") == \
        {f"img-{i:05d}" for i in range(15, 23)}
    assert store.existing_ids(asked, "thumbnail") == set()
    assert store.existing_ids([], "nvclip") == set()


def test_report_foreign_key_when_reports_table_exists(backend):
    if backend.name == "iris":
        pytest.skip("not run on a live IRIS: it would create a reports table there")
    store = backend.store()
    reports = store.dialect.reports_table
    cur = store.conn.cursor()
    # the reports table lives in the images table's schema (VectorSearch by default)
    if backend.name == "postgresql":
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {store.dialect.schema}")
    cur.execute(f"CREATE TABLE IF NOT EXISTS {reports} (StudyID VARCHAR(50) PRIMARY KEY)")
    cur.execute(f"DELETE FROM {reports}")
    for i in range(5):
        cur.execute(f"INSERT INTO {reports} (StudyID) VALUES ({store.dialect.marker})",
                    [f"5{i:07d}"])
    store.conn.commit()
    try:
        assert store.init_schema(DIM, with_report_fk=True) is True
        rows = [make_row(i) for i in range(6)]  # study of row 5 has no report
        failed = store.upsert(rows)
        assert [row.ImageID for row, _ in failed] == ["img-00005"]
        assert store.count() == 5
    finally:
        backend.close()  # drops the images table (and its FK) on server databases
        if backend.name == "sqlite":
            return
        cleaner = backend.store()
        cleaner.conn.cursor().execute(f"DROP TABLE IF EXISTS {reports}")
        cleaner.conn.commit()


# -- reconnects (PostgreSQL: a real server we can terminate backends on) ---------------------

@pytest.mark.postgres
def test_reconnect_after_terminate_between_batches(pg_backend):
    store = pg_backend.store(retry_delay_s=0.01)
    store.init_schema(DIM)
    assert store.upsert([make_row(i) for i in range(40)]) == []
    with pg_backend.server.admin() as admin:
        pid = store.conn.info.backend_pid
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0] is True
    # the next batch overlaps the first: retried on a new connection, upserted, not duplicated
    assert store.upsert([make_row(i, view="AP") for i in range(30, 70)]) == []
    assert store.reconnects == 1 and store.conn.info.backend_pid != pid
    assert store.count() == 70
    assert len(store.nearest(unit(35), k=70)) == 70
    assert store.nearest(unit(35), k=1)[0].ViewPosition == "AP"


@pytest.mark.postgres
def test_reconnect_when_backend_dies_mid_batch(pg_backend):
    """A trigger terminates the writing backend while it is half-way through a batch (once):
    the uncommitted half is rolled back, the core reconnects, the retry writes every row once."""
    store = pg_backend.store(retry_delay_s=0.01)
    store.init_schema(DIM)
    table = store.dialect.qualified_table
    seq = f"{pg_backend.table}_kill"
    with pg_backend.server.admin() as admin:
        admin.execute(f"CREATE SEQUENCE {pg_backend.schema}.{seq}")
        admin.execute(f"""CREATE FUNCTION {pg_backend.schema}.{seq}_fn() RETURNS trigger AS $$
            BEGIN
              IF NEW.ImageID = 'img-00032' AND nextval('{pg_backend.schema}.{seq}') = 1 THEN
                PERFORM pg_terminate_backend(pg_backend_pid());
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        admin.execute(f"CREATE TRIGGER {seq}_t BEFORE INSERT ON {table} FOR EACH ROW "
                      f"EXECUTE FUNCTION {pg_backend.schema}.{seq}_fn()")
    assert store.upsert([make_row(i) for i in range(20)]) == []
    first_pid = store.conn.info.backend_pid
    assert store.upsert([make_row(i) for i in range(10, 64)]) == []  # dies at row 32
    assert store.reconnects == 1 and store.conn.info.backend_pid != first_pid
    with pg_backend.server.admin() as admin:
        assert admin.execute(f"SELECT last_value FROM {pg_backend.schema}.{seq}").fetchone()[0] == 2
        dupes = admin.execute(f"SELECT count(*) - count(DISTINCT (ImageID, Provider)) "
                              f"FROM {table}").fetchone()[0]
        admin.execute(f"DROP TRIGGER {seq}_t ON {table}")
        admin.execute(f"DROP FUNCTION {pg_backend.schema}.{seq}_fn()")
        admin.execute(f"DROP SEQUENCE {pg_backend.schema}.{seq}")
    assert dupes == 0
    assert store.count() == 64


KILLS = 6


@pytest.mark.slow
@pytest.mark.postgres
def test_terminations_during_concurrent_writes_lose_nothing(pg_backend):
    """Another session terminates the writer's backend while batches are written: each new
    connection at most once, KILLS times in all, fewer than the store's attempts per batch.

    The test used to kill every 30 ms without bound; on a loaded machine a reconnect plus a
    64-row write can take longer than that, so one batch could lose all 10 attempts and come
    back failed (192 rows with AdminShutdown, seen once). That outcome is the product's
    contract — rows that cannot be written after the retries come back failed and transient,
    see test_relentless_terminations_return_rows_failed_and_transient — so the fault here is
    bounded to make the test deterministic: no batch can meet more than KILLS < max_attempts
    terminations."""
    store = pg_backend.store(retry_delay_s=0.005, max_attempts=KILLS + 4)
    store.init_schema(DIM)
    stop = threading.Event()
    killed = []

    def killer():
        with pg_backend.server.admin() as admin:
            while not stop.is_set() and len(killed) < KILLS:
                rows = admin.execute(
                    "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                    "application_name = 'dicomvec' AND pid <> pg_backend_pid() "
                    "AND NOT (pid = ANY(%s))", [[pid for pid, _ in killed] or [0]]).fetchall()
                killed.extend(r for r in rows if r[1])
                stop.wait(0.03)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    failed, batch = [], 0
    try:
        while batch < 30 or (store.reconnects < KILLS and batch < 2000):
            failed += store.upsert([make_row((batch % 30) * 64 + j) for j in range(64)])
            batch += 1
    finally:
        stop.set()
        thread.join(10)
    assert failed == []
    assert len(killed) == KILLS and store.reconnects == KILLS
    assert store.count() == 30 * 64
    ids = [f"img-{i:05d}" for i in range(30 * 64)]
    assert store.existing_ids(ids, "nvclip") == set(ids)


@pytest.mark.postgres
def test_relentless_terminations_return_rows_failed_and_transient(pg_backend):
    """A trigger terminates the writing backend on every insert: after its attempts the batch
    comes back failed with a transient error (the write stage makes retryable dead letters of
    them), never silently lost, and nothing half-written stays behind."""
    store = pg_backend.store(retry_delay_s=0.005, max_attempts=3)
    store.init_schema(DIM)
    assert store.upsert([make_row(i) for i in range(5)]) == []
    table = store.dialect.qualified_table
    fn = f"{pg_backend.schema}.{pg_backend.table}_die"
    with pg_backend.server.admin() as admin:
        admin.execute(f"""CREATE FUNCTION {fn}() RETURNS trigger AS $$
            BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END
            $$ LANGUAGE plpgsql""")
        admin.execute(f"CREATE TRIGGER {pg_backend.table}_die_t BEFORE INSERT ON {table} "
                      f"FOR EACH ROW EXECUTE FUNCTION {fn}()")
    try:
        rows = [make_row(i) for i in range(5, 12)]
        failed = store.upsert(rows)
    finally:
        with pg_backend.server.admin() as admin:
            admin.execute(f"DROP TRIGGER {pg_backend.table}_die_t ON {table}")
            admin.execute(f"DROP FUNCTION {fn}()")
    assert [row for row, _ in failed] == rows
    assert all(store.dialect.is_transient(exc) for _, exc in failed)
    assert store.reconnects == 2  # between its 3 attempts
    assert backend_count(pg_backend) == 5


def backend_count(backend) -> int:
    reader = backend.store()
    return reader.count()


@pytest.mark.postgres
def test_reads_leave_no_open_transaction(pg_backend):
    store = pg_backend.store()
    store.init_schema(DIM)
    store.upsert([make_row(i) for i in range(3)])
    store.count()
    store.existing_ids(["img-00001"], "nvclip")
    store.nearest(unit(1), k=2)
    store.vectors(["img-00002"], "nvclip")
    with pg_backend.server.admin() as admin:
        state = admin.execute("SELECT state FROM pg_stat_activity WHERE pid = %s",
                              [store.conn.info.backend_pid]).fetchone()[0]
    assert state == "idle"


@pytest.mark.postgres
def test_unreachable_server_fails_rows_as_transient(pg_backend):
    """Nothing listening: the rows come back failed with a transient error after the retries,
    never silently dropped."""
    from tests.pg_fixtures import free_port
    store = VectorStore(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
                        schema=pg_backend.schema, table=pg_backend.table, max_attempts=2,
                        retry_delay_s=0.01)
    rows = [make_row(i) for i in range(3)]
    failed = store.upsert(rows)
    assert [row for row, _ in failed] == rows
    assert all(store.dialect.is_transient(exc) for _, exc in failed)
    assert store.reconnects == 1


@pytest.mark.parametrize("url", ["iris://host-without-user:1972/USER", "postgresql://x@h/db",
                                 "iris://u@host:notaport/USER"])
def test_an_unparseable_iris_url_fails_rather_than_skips(url):
    with pytest.raises(pytest.fail.Exception, match="DICOMVEC_IRIS_URL"):
        check_iris_url(url)


def test_the_configured_iris_url_parses():
    """With DICOMVEC_IRIS_URL set, a typo in it fails here, whatever the live suites do."""
    iris_url()  # unset: skipped, saying how to set it
