"""``sqlite:///path.db``: the embedded default store.

One SQLite file; vectors are little-endian float32 BLOBs (length checked by a CHECK constraint);
cosine search runs in numpy. SQLite has no schemas, so the table is just ``MIMICCXRImages`` (or
``MIMICCXRReports``).
"""
from __future__ import annotations

import logging
import os
import re
import sqlite3
from typing import Optional, Sequence, Tuple
from urllib.parse import urlparse

import numpy as np

from dicomvec.errors import PreflightError
from dicomvec.io.local_paths import folder_problem, writable_dir
from dicomvec.io.stores.dialects import Dialect, validate_k
from dicomvec.io.stores.tables import ColumnInfo, declared_length

log = logging.getLogger(__name__)


class SQLiteDialect(Dialect):
    name = "sqlite"
    enforces_varchar_length = False

    def __init__(self, url: str, schema: str, *args, **kwargs):
        super().__init__(url, "", *args, **kwargs)
        # sqlite:///rel/path.db -> rel/path.db ; sqlite:////abs/path.db -> /abs/path.db
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else urlparse(url).path
        if not path:
            raise ValueError(f"sqlite URL needs a file path: {url!r}")
        self.path = path

    def connect(self):
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        # Beam runs one bundle at a time per DoFn instance, but not always on the thread that
        # ran setup() (portable runners such as Prism): the connection is never shared
        # concurrently, so the same-thread check is off.
        conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=60000")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower()

    def check_reachable(self, must_exist: bool = False) -> None:
        """The file can be written, or created (its folder too); ``must_exist``: it is
        there."""
        path = self.path
        if os.path.isdir(path):
            raise PreflightError(f"sink {path!r} is a directory, not an SQLite file")
        if os.path.exists(path):
            try:
                with open(path, "r+b"):  # opened for writing, nothing written
                    pass
            except OSError as exc:
                raise PreflightError(f"sink file {path!r} is not writable: "
                                     f"{exc.strerror}") from None
            folder = os.path.dirname(os.path.abspath(path))
            if not writable_dir(folder):  # SQLite writes its journal (-wal, -shm) beside it
                raise PreflightError(f"sink file {path!r} cannot be used: its folder {folder!r} "
                                     "is not writable, and SQLite writes its journal files "
                                     "beside the database (make the folder writable, or move "
                                     "the file)")
            return
        if must_exist:
            raise PreflightError(f"no database at {path!r} (fill it with `dicomvec run` first, "
                                 "or pass --sink)")
        problem = folder_problem(os.path.dirname(path))
        if problem:
            raise PreflightError(f"cannot create the sink {path!r}: {problem}")

    def missing_database(self) -> Optional[str]:
        return None if os.path.exists(self.path) else \
            f"no SQLite database at {self.path} (check --sink)"

    # -- the shape of an existing table -----------------------------------------------------
    def find_table_sql(self) -> None:
        return None  # SQLite matches table names ignoring case

    def describe_sql(self, names: Tuple[str, str]) -> Tuple[str, list]:
        return "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?)", \
            [names[1]]

    def column_info(self, row) -> ColumnInfo:
        name, declared, notnull, default, _pk = row
        declared = str(declared or "").upper()
        return ColumnInfo(name=name, type=declared.split("(")[0].strip(),
                          length=declared_length(declared), nullable=not notnull,
                          has_default=default is not None, declared=str(row[1] or ""))

    def primary_key_sql(self, names: Tuple[str, str]) -> Tuple[str, list]:
        return "SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk", [names[1]]

    def declared_dimension(self, conn, columns: Sequence[ColumnInfo]) -> Optional[int]:
        """From the ``CHECK (length(Vector) = 4·n)`` constraint dicomvec declares."""
        row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                           [self.table]).fetchone()
        match = re.search(rf"length\(\s*{self.spec.vector}\s*\)\s*=\s*(\d+)",
                          (row or [""])[0] or "", re.I)
        return int(match.group(1)) // 4 if match else None

    def widen_column_sql(self, column) -> Optional[str]:
        return None  # SQLite does not enforce VARCHAR lengths

    def add_column_sql(self, column, dimension: int) -> str:
        # SQLite refuses ADD COLUMN with a non-constant default (CURRENT_TIMESTAMP); dicomvec
        # writes CreatedAt itself
        sql = super().add_column_sql(column, dimension)
        return sql.replace(" DEFAULT CURRENT_TIMESTAMP", "")

    def vector_features(self, conn, version_text: str):
        return [("VECTOR type", True, "float32 BLOB with a CHECK on its length; cosine in "
                 "numpy"), ("HNSW index", None, "none on SQLite: an IVF index kept in files "
                 "beside the database (tables of 2,000+ rows; exact scan below)")]

    def server_version_sql(self) -> str:
        return "SELECT 'SQLite ' || sqlite_version()"

    def valid_vector_sql(self, dimension: int) -> Tuple[str, list]:
        v = self.spec.vector
        return (f"{v} IS NOT NULL AND length({v}) = ? AND {v} <> zeroblob(?)",
                [4 * int(dimension), 4 * int(dimension)])

    def explain(self, conn, sql: str, params: list) -> str:
        return ("IVF index beside the database (int8 codes, exact re-score) for tables of "
                "2,000+ rows; exact scan in numpy below")

    def vector_type(self, dimension: int) -> str:
        return f"BLOB CHECK (length({self.spec.vector}) = {4 * int(dimension)})"

    def encode_vector(self, vector: np.ndarray):
        return np.asarray(vector, dtype="<f4").tobytes()

    def decode_vector(self, value) -> np.ndarray:
        return np.frombuffer(value, dtype="<f4").copy()

    #: use the vector index beside the database (``sqlite_index``) for searches of one
    #: provider on tables of at least ``sqlite_index.MIN_ROWS`` rows
    use_vector_index = True

    def nearest(self, conn, vector, k: int, provider: Optional[str],
                view_position: Optional[str] = None):
        """Cosine search: through the vector index beside the database (candidates from the
        int8 codes of the nearest lists, re-scored exactly from the table's BLOBs), or an
        exact scan in numpy for small tables, searches of every provider, or when the index
        cannot be kept (a read-only database)."""
        k = validate_k(k)
        index = self.vector_index(conn, provider)
        if index is not None:
            hits = self._indexed_nearest(conn, index, vector, k, provider, view_position)
            if hits is not None:
                return hits
        return self.scan_nearest(conn, vector, k, provider, view_position)

    def vector_index(self, conn, provider: Optional[str], force: bool = False):
        """The synced index for ``provider`` (None: search by exact scan instead)."""
        from dicomvec.io.stores import sqlite_index
        if not (self.use_vector_index and provider and self.spec.vector):
            return None
        if not force:
            top = conn.execute(f"SELECT MAX(rowid) FROM {self.qualified_table}").fetchone()[0]
            conn.rollback()
            if (top or 0) < sqlite_index.MIN_ROWS:
                return None
        index = sqlite_index.index_for(self.path, self.table, provider, self.spec.vector)
        try:
            index.sync(conn)
        except sqlite3.Error as exc:
            conn.rollback()
            log.warning("searching %s by exact scan: its vector index cannot be kept in sync "
                        "(%s: %s)", self.qualified_table, type(exc).__name__, exc)
            return None
        return index

    def build_vector_index(self, conn, provider: Optional[str]) -> Optional[str]:
        index = self.vector_index(conn, provider, force=True)
        if index is None:
            return None
        return f"{index.dir}: {index.last_action or 'up to date'} ({index.meta['live']:,} rows)"

    def _fetch(self, conn, rowids, provider, view_position):
        where, params = self.filters_sql(provider, view_position)
        rowids = [int(r) for r in rowids]
        rows = []
        for start in range(0, len(rowids), 900):
            chunk = rowids[start:start + 900]
            rows += conn.execute(
                f"SELECT {', '.join(self.spec.hit_columns)}, {self.spec.vector} "
                f"FROM {self.qualified_table}{where} AND rowid IN "
                f"({', '.join('?' * len(chunk))})", params + chunk).fetchall()
        return rows

    def _indexed_nearest(self, conn, index, vector, k, provider, view_position):
        """Hits through ``index``; None when the filter leaves too few candidates (scan)."""
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if index.meta is None or index.meta["dim"] != query.shape[0]:
            return None
        wanted = 10 * k + 100
        while True:
            candidates = index.candidates(query, wanted)
            rows = self._fetch(conn, candidates, provider, view_position)
            conn.rollback()
            if len(rows) >= k:
                break
            if len(candidates) < wanted:  # the probed lists hold no more rows
                if view_position and len(candidates) < index.meta["live"]:
                    return None  # a rare view: scan the rows of that view
                break
            if wanted >= 20_000:
                return None
            wanted *= 4
        return self._ranked(rows, query, k)

    def _ranked(self, rows, query, k):
        if not rows:
            return []
        matrix = np.stack([self.decode_vector(r[-1]) for r in rows])
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        scores = matrix @ query / np.maximum(np.linalg.norm(matrix, axis=1), 1e-12)
        order = np.argsort(-scores, kind="stable")[:k]
        return [self.spec.hit_type(*rows[i][:-1], score=float(scores[i])) for i in order]

    #: rows per chunk of the exact scan
    scan_chunk = 4096

    def scan_nearest(self, conn, vector, k: int, provider: Optional[str],
                     view_position: Optional[str] = None):
        """Exact cosine search in numpy over the (filtered) table, streamed in chunks with a
        running top k (memory: one chunk)."""
        k = validate_k(k)
        where, params = self.filters_sql(provider, view_position)
        cursor = conn.execute(f"SELECT {', '.join(self.spec.hit_columns)}, {self.spec.vector} "
                              f"FROM {self.qualified_table}{where}", params)
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        best: list = []  # (score, position, row) of the best k so far
        position = 0
        while True:
            rows = cursor.fetchmany(self.scan_chunk)
            if not rows:
                break
            matrix = np.stack([self.decode_vector(r[-1]) for r in rows])
            scores = matrix @ query / np.maximum(np.linalg.norm(matrix, axis=1), 1e-12)
            top = np.argsort(-scores, kind="stable")[:k]
            best += [(float(scores[i]), position + int(i), rows[i][:-1]) for i in top]
            best.sort(key=lambda item: (-item[0], item[1]))
            del best[k:]
            position += len(rows)
        return [self.spec.hit_type(*row, score=score) for score, _, row in best]
