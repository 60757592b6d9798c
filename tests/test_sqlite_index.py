"""The SQLite store's vector index (``io/stores/sqlite_index.py``): the indexed search agrees
with the exact scan, follows every change of the table (rows added, replaced, deleted after the
index was built; a new change log), and keeps the provider and view filters."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from benchmarks.clustered import Clustered
from dicomvec.io.stores import VectorStore, sqlite_index
from tests.store_rows import make_row

N = 3000


@pytest.fixture()
def small_index(monkeypatch):
    """Index tables of any size (the default leaves small ones to the exact scan)."""
    monkeypatch.setattr(sqlite_index, "MIN_ROWS", 1)
    monkeypatch.setattr(sqlite_index, "PROBE_MIN_ROWS", 300)
    sqlite_index._CACHE.clear()
    yield
    sqlite_index._CACHE.clear()


@pytest.fixture(scope="module")
def vectors():
    return Clustered(dim=64, clusters=60, rank=8).sample(N + 50, seed=3)


def fill(url, vectors, n=N, start=0, provider="nvclip"):
    store = VectorStore(url)
    store.init_schema(vectors.shape[1])
    rows = [make_row(i, provider=provider, view=("PA", "AP", "LATERAL")[i % 3],
                     vector=vectors[i]) for i in range(start, start + n)]
    for begin in range(0, len(rows), 500):
        assert store.upsert(rows[begin:begin + 500]) == []
    return store


def ids(hits):
    return [h.ImageID for h in hits]


def exact(store, q, k, view=None, provider="nvclip"):
    return store.read(lambda conn: store.dialect.scan_nearest(conn, q, k, provider, view),
                      "scan")


def test_indexed_search_matches_the_exact_scan(tmp_path, small_index, vectors):
    store = fill(f"sqlite:///{tmp_path}/db.sqlite", vectors)
    queries = vectors[N:N + 20]
    recall = []
    for q in queries:
        hits = store.nearest(q, 10, "nvclip")
        truth = exact(store, q, 10)
        recall.append(len(set(ids(hits)) & set(ids(truth))) / 10)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        by_id = {h.ImageID: h.score for h in truth}
        for h in hits:  # scores are the exact cosine
            if h.ImageID in by_id:
                assert h.score == pytest.approx(by_id[h.ImageID], abs=1e-6)
    assert np.mean(recall) >= 0.95
    index = sqlite_index.index_for(store.dialect.path, store.dialect.table, "nvclip")
    assert index.meta["live"] == N
    # a stored vector finds itself first with score 1
    hit = store.nearest(vectors[7], 1, "nvclip")[0]
    assert hit.ImageID == "img-00007" and hit.score == pytest.approx(1.0, abs=1e-6)


def test_rows_added_replaced_deleted_after_the_build(tmp_path, small_index, vectors):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    store = fill(url, vectors)
    store.nearest(vectors[0], 5, "nvclip")  # builds the index
    index = sqlite_index.index_for(store.dialect.path, store.dialect.table, "nvclip")
    built = index.meta["stamp"]
    # added: a new row equal to a query vector is found first
    new = vectors[N + 1]
    assert store.upsert([make_row(90001, vector=new)]) == []
    assert ids(store.nearest(new, 3, "nvclip"))[0] == "img-90001"
    assert index.last_action.startswith("updated")
    # replaced (the pipeline's upsert on the same key): found at its new place, not the old
    assert store.upsert([make_row(5, vector=vectors[N + 2])]) == []
    assert ids(store.nearest(vectors[N + 2], 1, "nvclip")) == ["img-00005"]
    assert "img-00005" not in ids(store.nearest(vectors[5], 3, "nvclip"))
    # deleted: never returned
    store.conn.execute("DELETE FROM MIMICCXRImages WHERE ImageID = 'img-00011'")
    store.conn.commit()
    assert "img-00011" not in ids(store.nearest(vectors[11], 5, "nvclip"))
    assert index.meta["stamp"] != built and index.meta["live"] == N  # +1 -1, updated in place
    # another process's writes (plain sqlite3, no dicomvec code) are logged by the triggers
    other = sqlite3.connect(f"{tmp_path}/db.sqlite")
    other.execute("UPDATE MIMICCXRImages SET ViewPosition = 'LL' WHERE ImageID = 'img-00020'")
    other.commit()
    other.close()
    hit = store.nearest(vectors[20], 1, "nvclip", "LL")
    assert ids(hit) == ["img-00020"]


def test_a_lost_change_log_rebuilds_and_says_so(tmp_path, small_index, vectors, caplog):
    store = fill(f"sqlite:///{tmp_path}/db.sqlite", vectors, n=1000)
    store.nearest(vectors[0], 5, "nvclip")
    store.conn.execute("DROP TRIGGER MIMICCXRImages_vector_changes_ins")
    store.conn.commit()
    assert store.upsert([make_row(90002, vector=vectors[N + 3])]) == []  # not logged
    caplog.set_level("INFO", logger="dicomvec.io.stores.sqlite_index")
    assert ids(store.nearest(vectors[N + 3], 1, "nvclip")) == ["img-90002"]
    assert "rebuilt: the table's change log was missing" in caplog.text


def test_a_new_database_at_the_same_path_is_not_searched_with_the_old_index(
        tmp_path, small_index, vectors):
    path = tmp_path / "db.sqlite"
    store = fill(f"sqlite:///{path}", vectors, n=1000)
    store.nearest(vectors[0], 5, "nvclip")
    store.close()
    path.unlink()
    store = fill(f"sqlite:///{path}", vectors, n=1000, start=1000)
    hits = store.nearest(vectors[0], 5, "nvclip")
    assert all(int(h.ImageID[4:]) >= 1000 for h in hits)
    index = sqlite_index.index_for(str(path), "MIMICCXRImages", "nvclip")
    assert "another change log" in index.last_action or "built" in index.last_action


def test_filters_hold(tmp_path, small_index, vectors):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    store = fill(url, vectors, n=2000)
    fill(url, vectors, n=500, provider="thumbnail")  # same ImageIDs, another provider
    for q in vectors[N:N + 5]:
        for view in ("PA", "LATERAL"):
            hits = store.nearest(q, 10, "nvclip", view)
            assert len(hits) == 10
            assert {h.ViewPosition for h in hits} == {view}
            assert {h.Provider for h in hits} == {"nvclip"}
            truth = exact(store, q, 10, view)
            assert len(set(ids(hits)) & set(ids(truth))) >= 8
        assert {h.Provider for h in store.nearest(q, 10, "thumbnail")} == {"thumbnail"}
    # a view with fewer rows than k: all of them, from the scan
    store.conn.execute("UPDATE MIMICCXRImages SET ViewPosition = 'LL' "
                       "WHERE ImageID IN ('img-00001', 'img-00002') AND Provider = 'nvclip'")
    store.conn.commit()
    assert sorted(ids(store.nearest(vectors[N], 10, "nvclip", "LL"))) == \
        ["img-00001", "img-00002"]


def test_small_tables_are_scanned_without_an_index(tmp_path, vectors):
    store = fill(f"sqlite:///{tmp_path}/db.sqlite", vectors, n=200)
    assert ids(store.nearest(vectors[3], 1, "nvclip")) == ["img-00003"]
    assert not (tmp_path / "db.sqlite.vectors").exists()


def test_create_index_builds_it(tmp_path, vectors):
    store = fill(f"sqlite:///{tmp_path}/db.sqlite", vectors, n=300)
    lines = store.create_index()
    assert len(lines) == 1 and "300 rows" in lines[0]
    assert (tmp_path / "db.sqlite.vectors" / "MIMICCXRImages.nvclip" / "meta.json").exists()


def _codes_match_the_table(store, index):
    """Every live slot's int8 code is the quantized vector of the row its ``ids`` names."""
    live = np.flatnonzero(index.ids >= 0)
    rows = dict(store.conn.execute("SELECT rowid, Vector FROM MIMICCXRImages "
                                   "WHERE Provider = 'nvclip'").fetchall())
    store.conn.rollback()
    table = np.stack([np.frombuffer(rows[int(r)], "<f4") for r in index.ids[live]])
    codes, _ = sqlite_index._quantize(table)
    assert np.array_equal(np.asarray(index.codes[live]), codes)


def test_codes_are_grouped_by_list_and_a_long_tail_rebuilds(tmp_path, small_index, vectors,
                                                            caplog):
    """The build writes each list's codes as one block (the query scores blocks); rows added
    later go to the tail, are found, and once the tail passes ``TAIL_SHARE`` the index is
    rebuilt (and says so), grouped again."""
    store = fill(f"sqlite:///{tmp_path}/db.sqlite", vectors, n=1500)
    store.nearest(vectors[0], 5, "nvclip")
    index = sqlite_index.index_for(store.dialect.path, store.dialect.table, "nvclip")
    assert index.meta["sorted"] == index.meta["slots"] == 1500
    assert np.all(np.diff(index.lists) >= 0)  # grouped: one block per list
    _codes_match_the_table(store, index)
    caplog.set_level("INFO", logger="dicomvec.io.stores.sqlite_index")
    # 4 × 300 rows: the tail holds 300, 600, 900, then 1200 > max(1000, TAIL_SHARE × 1500)
    for batch in range(4):
        start = 1500 + 300 * batch
        rows = [make_row(i, vector=vectors[i]) for i in range(start, start + 300)]
        assert store.upsert(rows) == []
        assert ids(store.nearest(vectors[start + 7], 1, "nvclip")) == [f"img-{start + 7:05d}"]
        if batch < 3:
            assert index.last_action.startswith("updated")
            assert index.meta["slots"] - index.meta["sorted"] == 300 * (batch + 1)
            _codes_match_the_table(store, index)
    assert index.last_action.startswith("rebuilt")
    assert "rebuilt: 1,200 rows appended since the build" in caplog.text
    assert index.meta["sorted"] == index.meta["slots"] == 2700
    assert np.all(np.diff(index.lists) >= 0)
    _codes_match_the_table(store, index)


def _log_size(store):
    count = store.conn.execute("SELECT COUNT(*) FROM MIMICCXRImages_VectorChanges").fetchone()[0]
    store.conn.rollback()
    return count


def test_the_change_log_is_pruned_once_every_index_has_folded_it_in(
        tmp_path, small_index, vectors, caplog):
    """Entries are deleted once every registered index (one per provider here) has folded them
    in: many rounds of writes leave the log as small as one round; an index unused past the
    expiry stops holding the log back and, used again, rebuilds (and finds the new rows)."""
    url = f"sqlite:///{tmp_path}/db.sqlite"
    store = fill(url, vectors, n=1200)
    fill(url, vectors, n=1200, provider="thumbnail")
    store.nearest(vectors[0], 5, "nvclip")
    store.nearest(vectors[0], 5, "thumbnail")
    assert _log_size(store) == 0
    sizes = []
    for round_ in range(8):
        start = 1200 + 100 * round_
        rows = [make_row(i, vector=vectors[i]) for i in range(start, start + 100)]
        assert store.upsert(rows) == []
        assert ids(store.nearest(vectors[start], 1, "nvclip")) == [f"img-{start:05d}"]
        sizes.append(_log_size(store))  # thumbnail's index has not folded this round in yet
        store.nearest(vectors[0], 5, "thumbnail")
        assert _log_size(store) == 0
    assert sizes == [100] * 8  # bounded by one round, not 800 rows and growing
    # the thumbnail index, unused past the expiry, no longer keeps entries for itself
    assert store.upsert([make_row(5000, provider="thumbnail", vector=vectors[3040])]) == []
    store.conn.execute("UPDATE MIMICCXRImages_VectorIndexes SET synced = 0 "
                       "WHERE consumer LIKE '%.thumbnail'")
    store.conn.commit()
    assert store.upsert([make_row(5001, vector=vectors[3041])]) == []
    store.nearest(vectors[3041], 1, "nvclip")
    assert _log_size(store) == 0
    caplog.set_level("INFO", logger="dicomvec.io.stores.sqlite_index")
    assert ids(store.nearest(vectors[3040], 1, "thumbnail")) == ["img-05000"]
    assert "unused for a long time" in caplog.text
