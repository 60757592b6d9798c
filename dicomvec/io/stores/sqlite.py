"""``sqlite:///path.db``: the embedded default store.

One SQLite file; vectors are little-endian float32 BLOBs (length checked by a CHECK constraint);
cosine search runs in numpy. SQLite has no schemas, so the table is just ``MIMICCXRImages`` (or
``MIMICCXRReports``).
"""
from __future__ import annotations

import os
import sqlite3
from typing import Optional, Tuple
from urllib.parse import urlparse

import numpy as np

from dicomvec.io.stores.dialects import Dialect, validate_k


class SQLiteDialect(Dialect):
    name = "sqlite"

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

    def table_exists_sql(self, schema: str, table: str) -> Tuple[str, list]:
        return "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [table]

    def vector_type(self, dimension: int) -> str:
        return f"BLOB CHECK (length({self.spec.vector}) = {4 * int(dimension)})"

    def encode_vector(self, vector: np.ndarray):
        return np.asarray(vector, dtype="<f4").tobytes()

    def decode_vector(self, value) -> np.ndarray:
        return np.frombuffer(value, dtype="<f4").copy()

    def nearest(self, conn, vector, k: int, provider: Optional[str],
                view_position: Optional[str] = None):
        """Exact cosine search in numpy over the (filtered) table."""
        k = validate_k(k)
        where, params = self.filters_sql(provider, view_position)
        rows = conn.execute(f"SELECT {', '.join(self.spec.hit_columns)}, {self.spec.vector} "
                            f"FROM {self.qualified_table}{where}", params).fetchall()
        if not rows:
            return []
        matrix = np.stack([self.decode_vector(r[-1]) for r in rows])
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        scores = matrix @ query / np.maximum(np.linalg.norm(matrix, axis=1), 1e-12)
        order = np.argsort(-scores, kind="stable")[:k]
        return [self.spec.hit_type(*rows[i][:-1], score=float(scores[i])) for i in order]
