"""The SQLite store's vector index: an inverted-file (IVF) index kept in files beside the
database, synchronised with the table through a change log the database keeps itself.

Why this method (measured in ``benchmarks/search.py``): the exact scan reads every BLOB per query
(377,110 × 4 KB = 1.5 GB); an HNSW graph (usearch) built at ~230 vectors/s here (2 shared
cores), i.e. hours at MIMIC-CXR's size. An IVF index builds with a few BLAS products: k-means
centroids on a sample, every vector assigned to its nearest centroid, vectors kept as int8 codes
(1 byte per value, one float32 scale per row: 386 MB at 377K × 1024, memory-mapped, so the RSS
stays below it), stored **list by list** (each list's codes one contiguous block of the file).
A query scores the centroids, scores the contiguous blocks of the nearest lists (a few % of the
rows; each block converted to float32 in a reused buffer and multiplied on ONE BLAS thread —
OpenBLAS's threads, fighting other processes on a shared machine, made the same product 4-5×
slower), and re-scores the best candidates **exactly** from the table's float32 BLOBs: the
scores shown are the exact cosine, and a row is returned only if the table still has it.

Never disagreeing with the table: three triggers (insert, update, delete) on the table append
the changed rowid to ``<table>_VectorChanges``; whatever writes the table (run, reprocess,
``--replace-invalid``, migrate, another SQLite client) is logged by the database itself. Before
each query the index compares the log's head with the sequence number it reflects (two tiny
queries) and applies the changes: old slots of a changed rowid are tombstoned, its current
vector (if any, of this provider) is appended. A token (``<table>_VectorChangesId``) ties an
index to one log: a new database at the same path, a dropped log or missing triggers mean a
full rebuild, logged as such. Many changes (more than half the indexed rows) rebuild too.

Files: ``<db>.vectors/<table>.<provider>/`` = ``meta.json``, ``centroids.npy``, ``ids.npy``
(rowid per slot, -1 = tombstone), ``lists.npy`` (list per slot), ``scales.npy``, ``codes.i8``
(slots ``[0, meta.sorted)`` grouped by list, then the appended tail). Writers hold an exclusive
``flock``; files are replaced by rename; a sync never rewrites a slot a reader may be scoring.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)
_BLAS = None  # threadpoolctl's controller, made on first use


@contextlib.contextmanager
def one_blas_thread():
    """Matrix products on one BLAS thread inside the block (a query's products are small:
    OpenBLAS's threads cost more than they give, most of all on a busy machine)."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController
        _BLAS = ThreadpoolController()
    with _BLAS.limit(limits=1, user_api="blas"):
        yield


#: below this many rows (max rowid, an upper bound) the exact scan is fast enough: no index
MIN_ROWS = 2_000
#: share of the indexed rows a query's probed lists cover at least, and the least rows
PROBE_FRACTION = 0.04
PROBE_MIN_ROWS = 4_000
#: rows per k-means training sample and list; iterations
TRAIN_PER_LIST = 32
TRAIN_ITERATIONS = 8
#: rows read from the table per chunk while building
CHUNK = 8_192
#: appended (unordered) slots beyond this share of the list-ordered ones: rebuild
TAIL_SHARE = 0.25
#: an index not synced for this long no longer holds back the pruning of the change log
CONSUMER_EXPIRY_S = 30 * 86_400
#: the consumers table's row that records how far the log has been pruned
PRUNED = "(pruned up to)"
FORMAT = 2

_CACHE: Dict[Tuple[str, str, str], "IvfIndex"] = {}
_CACHE_LOCK = threading.Lock()


def _safe(name: str) -> str:
    """``name`` as a file name part: unchanged when it is one already (``thumbnail``), else
    with ``_`` for each other character and a digest of the name, so two store keys
    (``openclip:a/b``, ``openclip:a_b``) never share a folder."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    if safe == name:
        return name
    return f"{safe[:80]}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:12]}"


def n_lists_for(rows: int) -> int:
    return int(min(1024, max(4, round(np.sqrt(max(rows, 1))))))


# -- the change log in the database ------------------------------------------------------------

class ChangeLog:
    """The triggers and tables that record every changed rowid of ``table``."""

    def __init__(self, table: str):
        self.table = table
        self.log = f"{table}_VectorChanges"
        self.ident = f"{table}_VectorChangesId"
        self.consumers = f"{table}_VectorIndexes"
        self.triggers = tuple(f"{table}_vector_changes_{op}" for op in ("ins", "upd", "del"))

    def token(self, conn) -> Optional[str]:
        """The log's token, or None when the log or any trigger is missing."""
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE (type = 'trigger' AND name IN (?, ?, ?)) "
            "OR (type = 'table' AND name IN (?, ?))",
            [*self.triggers, self.log, self.ident])]
        if len(names) != 5:
            return None
        row = conn.execute(f"SELECT token FROM {self.ident}").fetchone()
        return row[0] if row else None

    def install(self, conn) -> str:
        """(Re)create the log, its token and the triggers; one transaction. A new token."""
        token = uuid.uuid4().hex
        t = self.table
        conn.execute("BEGIN IMMEDIATE")
        try:
            for trigger in self.triggers:
                conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
            conn.execute(f"DROP TABLE IF EXISTS {self.log}")
            conn.execute(f"DROP TABLE IF EXISTS {self.ident}")
            conn.execute(f"DROP TABLE IF EXISTS {self.consumers}")
            conn.execute(f"CREATE TABLE {self.log} (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "rid INTEGER NOT NULL)")
            conn.execute(f"CREATE TABLE {self.ident} (token TEXT NOT NULL)")
            conn.execute(f"INSERT INTO {self.ident} (token) VALUES (?)", [token])
            ins, upd, dele = self.triggers
            conn.execute(f"CREATE TRIGGER {ins} AFTER INSERT ON {t} BEGIN "
                         f"INSERT INTO {self.log} (rid) VALUES (NEW.rowid); END")
            conn.execute(f"CREATE TRIGGER {upd} AFTER UPDATE ON {t} BEGIN "
                         f"INSERT INTO {self.log} (rid) VALUES (OLD.rowid); "
                         f"INSERT INTO {self.log} (rid) SELECT NEW.rowid "
                         f"WHERE NEW.rowid <> OLD.rowid; END")
            conn.execute(f"CREATE TRIGGER {dele} AFTER DELETE ON {t} BEGIN "
                         f"INSERT INTO {self.log} (rid) VALUES (OLD.rowid); END")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return token

    def head(self, conn) -> int:
        """The last sequence number handed out (pruning deletes entries, not this counter)."""
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?",
                           [self.log]).fetchone()
        if row is not None:
            return int(row[0])
        return int(conn.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {self.log}").fetchone()[0])

    def _consumers_table(self, conn) -> None:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {self.consumers} (consumer TEXT PRIMARY KEY, "
                     "seq INTEGER NOT NULL, synced REAL NOT NULL)")

    def pruned_up_to(self, conn) -> int:
        """Every entry up to this sequence number may have been deleted (0: none)."""
        try:
            row = conn.execute(f"SELECT seq FROM {self.consumers} WHERE consumer = ?",
                               [PRUNED]).fetchone()
        except sqlite3.OperationalError:  # no such table yet
            return 0
        return int(row[0]) if row else 0

    def register(self, conn, consumer: str, seq: Optional[int] = None) -> int:
        """Register ``consumer`` as having folded in every change up to ``seq`` (default: the
        head now, read in the same write transaction), so no later pruning deletes what it
        has not seen; then forget consumers not seen for ``CONSUMER_EXPIRY_S`` and delete the
        entries every registered consumer has folded in (recording how far: ``PRUNED``).
        One transaction; returns the entries deleted."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self.consumers} (consumer TEXT PRIMARY "
                         "KEY, seq INTEGER NOT NULL, synced REAL NOT NULL)")
            seq = self.head(conn) if seq is None else seq
            now = time.time()
            conn.execute(f"INSERT OR REPLACE INTO {self.consumers} (consumer, seq, synced) "
                         "VALUES (?, ?, ?)", [consumer, int(seq), now])
            conn.execute(f"DELETE FROM {self.consumers} WHERE synced < ? AND consumer <> ?",
                         [now - CONSUMER_EXPIRY_S, PRUNED])
            upto = conn.execute(f"SELECT MIN(seq) FROM {self.consumers} WHERE consumer <> ?",
                                [PRUNED]).fetchone()[0]
            deleted = conn.execute(f"DELETE FROM {self.log} WHERE seq <= ?", [upto]).rowcount
            if upto > self.pruned_up_to(conn):
                conn.execute(f"INSERT OR REPLACE INTO {self.consumers} (consumer, seq, synced) "
                             "VALUES (?, ?, ?)", [PRUNED, upto, now])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return deleted

    def changed_since(self, conn, seq: int) -> List[int]:
        return [int(r[0]) for r in conn.execute(
            f"SELECT DISTINCT rid FROM {self.log} WHERE seq > ?", [seq])]


# -- the index ---------------------------------------------------------------------------------

def _quantize(vectors: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Unit vectors → int8 codes and per-row scale (code · scale ≈ unit vector)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    unit = vectors / norms
    peak = np.maximum(np.abs(unit).max(axis=1, keepdims=True), 1e-12)
    codes = np.rint(unit * (127.0 / peak)).astype(np.int8)
    return codes, (peak[:, 0] / 127.0).astype(np.float32)


def _kmeans(sample: np.ndarray, n_lists: int, seed: int = 0) -> np.ndarray:
    """Spherical k-means (cosine) centroids of unit rows."""
    rng = np.random.default_rng(seed)
    centroids = sample[rng.choice(len(sample), n_lists, replace=False)].copy()
    for _ in range(TRAIN_ITERATIONS):
        assign = np.argmax(sample @ centroids.T, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, sample)
        empty = np.linalg.norm(sums, axis=1) == 0
        sums[empty] = sample[rng.choice(len(sample), int(empty.sum()))]
        centroids = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    return centroids.astype(np.float32)


def _assign(unit: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return np.argmax(unit @ centroids.T, axis=1).astype(np.int32)


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What a query reads, from one version of the files: ``live`` rows; slots
    ``[0, ordered)`` grouped by list (list i at ``[starts[i], starts[i+1])``), then the tail
    (``tail_lists``: the list of each); ``ids`` -1 = tombstone."""

    live: int
    ordered: int
    centroids: np.ndarray
    ids: np.ndarray
    scales: np.ndarray
    codes: np.ndarray
    starts: np.ndarray
    tail_lists: np.ndarray
    live_per_list: np.ndarray


class IvfIndex:
    """One table's (and provider's) index files, opened for queries and kept in sync."""

    def __init__(self, db_path: str, table: str, provider: str, vector: str = "Vector"):
        self.db_path = os.path.abspath(db_path)
        self.table = table
        self.provider = provider
        self.vector = vector
        self.dir = os.path.join(self.db_path + ".vectors", f"{_safe(table)}.{_safe(provider)}")
        self.changes = ChangeLog(table)
        self.meta: Optional[dict] = None
        self.snapshot: Optional[Snapshot] = None
        self._loaded_stamp = None
        self.last_action = ""  # what the last sync did: "", "updated", "built", "rebuilt: ..."

    # -- files ---------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _read_meta(self) -> Optional[dict]:
        try:
            with open(self._path("meta.json")) as handle:
                meta = json.load(handle)
            return meta if meta.get("format") == FORMAT else None
        except (OSError, ValueError):
            return None

    def _write_meta(self, meta: dict) -> None:
        tmp = self._path(f"meta.json.{os.getpid()}.tmp")
        with open(tmp, "w") as handle:
            json.dump(meta, handle)
        os.replace(tmp, self._path("meta.json"))

    def _save_array(self, name: str, array: np.ndarray) -> None:
        tmp = self._path(f"{name}.{os.getpid()}.tmp.npy")
        np.save(tmp, array)
        os.replace(tmp, self._path(name))

    def _lock(self):
        os.makedirs(self.dir, exist_ok=True)
        handle = open(self._path("lock"), "a+")
        fcntl.flock(handle, fcntl.LOCK_EX)
        return handle

    def _load(self) -> None:
        """Open the files the meta names (codes memory-mapped, the rest in memory)."""
        meta = self._read_meta()
        stamp = (meta or {}).get("stamp")
        if stamp == self._loaded_stamp and self.meta is not None:
            return
        self.meta = meta
        self._loaded_stamp = stamp
        if meta is None:
            self.snapshot = None
            return
        n, dim = meta["slots"], meta["dim"]
        self.centroids = np.load(self._path("centroids.npy"))
        self.ids = np.load(self._path("ids.npy"))[:n]
        self.lists = np.load(self._path("lists.npy"))[:n]
        self.scales = np.load(self._path("scales.npy"))[:n]
        self.codes = (np.memmap(self._path(meta["codes"]), dtype=np.int8, mode="r",
                                shape=(n, dim)) if n else np.zeros((0, dim), np.int8))
        n_lists, ordered = len(self.centroids), meta["sorted"]
        counts = np.bincount(self.lists[:ordered], minlength=n_lists)
        # one object swapped in at once: a query in another thread never mixes two versions
        self.snapshot = Snapshot(
            live=meta["live"], ordered=ordered, centroids=self.centroids, ids=self.ids,
            scales=self.scales, codes=self.codes,
            starts=np.concatenate([[0], np.cumsum(counts)]), tail_lists=self.lists[ordered:],
            live_per_list=np.bincount(self.lists[self.ids >= 0], minlength=n_lists))

    # -- sync ------------------------------------------------------------------------------
    def sync(self, conn) -> str:
        """Bring the index up to the table (build, rebuild or apply the logged changes).
        Returns what was done ('' when it was current). Raises sqlite3 errors (e.g. a
        read-only database while installing the change log)."""
        self._load()
        token = self.changes.token(conn)
        conn.rollback()
        if self.meta is not None and token == self.meta["token"] and \
                self.changes.head(conn) == self.meta["seq"]:
            conn.rollback()
            self.last_action = ""
            return ""
        conn.rollback()
        with self._lock():  # another process may have synced meanwhile
            self._load()
            token = self.changes.token(conn)
            conn.rollback()
            if token is None:
                token = self.changes.install(conn)
                return self._build(conn, token, "built (change log installed)"
                                   if self.meta is None else
                                   "rebuilt: the table's change log was missing")
            if self.meta is None:
                return self._build(conn, token, "built")
            if self.meta["token"] != token:
                return self._build(conn, token, "rebuilt: the index belongs to another "
                                                "change log (a new database?)")
            if self.changes.pruned_up_to(conn) > self.meta["seq"]:
                conn.rollback()
                return self._build(conn, token, "rebuilt: unused for a long time, its changes "
                                                "were pruned from the change log")
            conn.execute("BEGIN")  # one snapshot: the log head and the rows it describes
            try:
                head = self.changes.head(conn)
                if head == self.meta["seq"]:
                    return ""
                changed = self.changes.changed_since(conn, self.meta["seq"])
                tail = self.meta["slots"] - self.meta["sorted"] + len(changed)
                why = None
                if len(changed) > max(1000, self.meta["live"] // 2):
                    why = f"rebuilt: {len(changed):,} rows changed"
                elif tail > max(1000, TAIL_SHARE * self.meta["sorted"]):
                    why = f"rebuilt: {tail:,} rows appended since the build"
                if why:
                    conn.rollback()
                    return self._build(conn, token, why)
                rows = self._rows(conn, changed)
            finally:
                conn.rollback()
            self._apply(changed, rows, head)
            self._prune(conn, head)
            return self._done(f"updated: {len(changed):,} changed rows")

    def _prune(self, conn, seq: int) -> None:
        """Record that this index has folded in the log up to ``seq``; entries every index
        has folded in are deleted (a read-only database keeps its log)."""
        try:
            self.changes.register(conn, self.dir, seq)
        except sqlite3.OperationalError as exc:
            log.debug("change log of %s not pruned: %s", self.table, exc)

    def _done(self, action: str) -> str:
        self.last_action = action
        log.info("vector index %s: %s (%s rows)", self.dir, action,
                 f"{self.meta['live']:,}" if self.meta else "0")
        return action

    def _select(self) -> str:
        return (f"SELECT rowid, {self.vector} FROM {self.table} WHERE Provider = ? AND "
                f"{self.vector} IS NOT NULL")

    def _rows(self, conn, rowids: Sequence[int]) -> List[tuple]:
        found = []
        for start in range(0, len(rowids), 900):
            chunk = list(rowids[start:start + 900])
            found += conn.execute(f"{self._select()} AND rowid IN "
                                  f"({', '.join('?' * len(chunk))})",
                                  [self.provider, *chunk]).fetchall()
        return found

    def _decode(self, rows) -> Tuple[np.ndarray, np.ndarray]:
        dim = self.meta["dim"] if self.meta else None
        keep = [r for r in rows if dim is None or len(r[1]) == 4 * dim]
        if not keep:
            return np.zeros(0, np.int64), np.zeros((0, dim or 0), np.float32)
        ids = np.fromiter((r[0] for r in keep), np.int64, len(keep))
        return ids, np.frombuffer(b"".join(r[1] for r in keep), "<f4").reshape(len(keep), -1)

    def _build(self, conn, token: str, why: str) -> str:
        started = time.perf_counter()
        # registered at the head before the snapshot below: nothing after it can be pruned
        # before this index has folded it in
        self._prune(conn, None)
        conn.execute("BEGIN")
        try:
            head = self.changes.head(conn)
            total = conn.execute(f"SELECT COUNT(*) FROM {self.table} WHERE Provider = ?",
                                 [self.provider]).fetchone()[0]
            n_lists = n_lists_for(total)
            # training sample: every step-th row (deterministic)
            step = max(1, total // max(1, n_lists * TRAIN_PER_LIST))
            cursor = conn.execute(self._select(), [self.provider])
            ids_parts, sample_parts = [], []
            dim = None
            codes_name = f"codes.{uuid.uuid4().hex[:8]}.i8"
            os.makedirs(self.dir, exist_ok=True)
            scales_parts = []
            tmp_codes = self._path(codes_name + ".tmp")
            seen = 0
            with open(tmp_codes, "wb") as codes_file:
                while True:
                    rows = cursor.fetchmany(CHUNK)
                    if not rows:
                        break
                    if dim is None:
                        dim = len(rows[0][1]) // 4
                    rows = [r for r in rows if len(r[1]) == 4 * dim]
                    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
                    unit = _unit(np.frombuffer(b"".join(r[1] for r in rows),
                                               "<f4").reshape(len(rows), dim))
                    codes, scales = _quantize(unit)
                    codes_file.write(codes.tobytes())
                    ids_parts.append(ids)
                    scales_parts.append(scales)
                    positions = np.arange(seen, seen + len(rows))
                    sample_parts.append(unit[(positions % step) == 0])
                    seen += len(rows)
        finally:
            conn.rollback()
        if dim is None:  # nothing of this provider
            dim = 0
        ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int64)
        scales = np.concatenate(scales_parts) if scales_parts else np.zeros(0, np.float32)
        sample = np.concatenate(sample_parts) if sample_parts else np.zeros((0, dim), np.float32)
        n_lists = min(n_lists_for(len(ids)), max(1, len(sample)))
        centroids = _kmeans(sample, n_lists) if len(sample) else np.zeros((1, dim), np.float32)
        lists = self._group_by_list(tmp_codes, self._path(codes_name), len(ids), dim,
                                    centroids)
        order = np.argsort(lists, kind="stable")
        ids, scales, lists = ids[order], scales[order], lists[order]
        self._save_array("centroids.npy", centroids)
        self._save_array("ids.npy", ids)
        self._save_array("lists.npy", lists)
        self._save_array("scales.npy", scales)
        old = (self.meta or {}).get("codes")
        meta = {"format": FORMAT, "token": token, "seq": head, "dim": dim, "slots": len(ids),
                "sorted": len(ids), "live": len(ids), "codes": codes_name,
                "lists": int(len(centroids)),
                "built_rows": len(ids), "stamp": uuid.uuid4().hex,
                "built_s": round(time.perf_counter() - started, 2)}
        self._write_meta(meta)
        self._prune(conn, head)
        if old and old != codes_name:
            try:
                os.remove(self._path(old))  # readers holding a map keep their pages
            except OSError:
                pass
        self._load()
        return self._done(f"{why} in {meta['built_s']:.1f} s")

    @staticmethod
    def _group_by_list(source: str, target: str, n: int, dim: int,
                       centroids: np.ndarray) -> np.ndarray:
        """Assign each of the ``n`` codes in ``source`` (table order) to its nearest centroid
        and write them to ``target`` grouped by list (stable); ``source`` is removed. Both
        files are read and written in chunks, never mapped (the build's memory stays a few
        chunks, not the 386 MB of codes). Returns each source row's list."""
        lists = np.zeros(n, np.int32)
        step = CHUNK * 4
        with open(source, "rb") as codes, one_blas_thread():
            for start in range(0, n, step):
                part = np.fromfile(codes, np.int8, count=min(step, n - start) * dim)
                lists[start:start + step] = _assign(part.reshape(-1, dim).astype(np.float32),
                                                    centroids)
        position = np.empty(n, np.int64)  # where each source row goes
        position[np.argsort(lists, kind="stable")] = np.arange(n)
        with open(source, "rb") as codes, open(target, "wb") as out:
            out.truncate(n * dim)
            for start in range(0, n, step):
                part = np.fromfile(codes, np.int8, count=min(step, n - start) * dim)
                part = part.reshape(-1, dim)
                where = position[start:start + len(part)]
                by_place = np.argsort(where)
                where, part = where[by_place], part[by_place]
                # runs of consecutive places (one list's rows of this chunk): one write each
                cuts = np.flatnonzero(np.diff(where) != 1) + 1
                for a, b in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(part)]])):
                    os.pwrite(out.fileno(), part[a:b].tobytes(), int(where[a]) * dim)
        os.remove(source)
        return lists

    def _apply(self, changed: Sequence[int], rows: List[tuple], head: int) -> None:
        meta = dict(self.meta)
        ids = np.array(self.ids)
        ids[np.isin(ids, np.asarray(changed, np.int64))] = -1  # tombstones
        new_ids, vectors = self._decode(rows)
        unit = _unit(vectors) if len(new_ids) else vectors
        codes, scales = _quantize(unit) if len(new_ids) else (np.zeros((0, meta["dim"]),
                                                                       np.int8),
                                                              np.zeros(0, np.float32))
        with one_blas_thread():
            lists = _assign(unit, self.centroids) if len(new_ids) else np.zeros(0, np.int32)
        codes_path = self._path(meta["codes"])
        with open(codes_path, "r+b") as handle:  # drop any tail a failed sync left
            handle.truncate(meta["slots"] * meta["dim"])
            handle.seek(0, os.SEEK_END)
            handle.write(codes.tobytes())
        self._save_array("ids.npy", np.concatenate([ids, new_ids]))
        self._save_array("lists.npy", np.concatenate([self.lists, lists]))
        self._save_array("scales.npy", np.concatenate([self.scales, scales]))
        meta.update(seq=head, slots=meta["slots"] + len(new_ids),
                    live=int((ids >= 0).sum()) + len(new_ids), stamp=uuid.uuid4().hex)
        self._write_meta(meta)
        self._load()

    # -- search ------------------------------------------------------------------------------
    def candidates(self, query: np.ndarray, n: int) -> np.ndarray:
        """Rowids of the ``n`` best rows by the approximate (int8) score in the probed lists,
        best first."""
        s = self.snapshot
        if s is None or not s.live:
            return np.zeros(0, np.int64)
        q = _unit(query.reshape(1, -1))[0]
        with one_blas_thread():
            order = np.argsort(-(s.centroids @ q))
            wanted = max(PROBE_MIN_ROWS, int(PROBE_FRACTION * s.live), n)
            cumulative = np.cumsum(s.live_per_list[order])
            probe = order[:int(np.searchsorted(cumulative, wanted)) + 1]
            slots, scores = _score_lists(s, probe, q)
        live = s.ids[slots] >= 0
        slots, scores = slots[live], scores[live]
        if not len(slots):
            return np.zeros(0, np.int64)
        n = min(n, len(slots))
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top], kind="stable")]
        return s.ids[slots[top]]


def _score_lists(s: "Snapshot", probe: np.ndarray, q: np.ndarray
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """(slots, approximate scores) of every slot of the lists in ``probe``: each list's
    contiguous block dequantized into one reused float32 buffer and multiplied; the tail's
    slots of those lists gathered."""
    blocks = [(int(s.starts[i]), int(s.starts[i + 1])) for i in probe]
    blocks = [(a, b) for a, b in blocks if b > a]
    tail = s.ordered + np.flatnonzero(np.isin(s.tail_lists, probe))
    size = max([b - a for a, b in blocks] + [len(tail), 1])
    buffer = np.empty((size, s.codes.shape[1]), np.float32)
    slots, scores = [], []
    for a, b in blocks:
        np.copyto(buffer[:b - a], s.codes[a:b], casting="unsafe")
        scores.append(buffer[:b - a] @ q)
        slots.append(np.arange(a, b))
    if len(tail):
        np.copyto(buffer[:len(tail)], s.codes[tail], casting="unsafe")
        scores.append(buffer[:len(tail)] @ q)
        slots.append(tail)
    if not slots:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    slots = np.concatenate(slots)
    return slots, np.concatenate(scores) * s.scales[slots]


def index_for(db_path: str, table: str, provider: str, vector: str = "Vector") -> IvfIndex:
    """The process's index object for (database, table, provider): opened once, reused."""
    key = (os.path.abspath(db_path), table, provider)
    with _CACHE_LOCK:
        index = _CACHE.get(key)
        if index is None:
            index = _CACHE[key] = IvfIndex(db_path, table, provider, vector)
        return index
