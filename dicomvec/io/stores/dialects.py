"""SQL dialects for the sink core: how to connect, the SQL text, how vectors are bound.

A dialect holds no state but its target; every statement uses bound parameters for values, and
schema/table names are validated identifiers, never raw user text.
"""
from __future__ import annotations

import abc
import os
import re
import sqlite3
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

import numpy as np

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def validate_identifier(name: str) -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise ValueError."""
    if not _IDENTIFIER.match(name or ""):
        raise ValueError(f"invalid SQL identifier {name!r}: use letters, digits and _")
    return name


class Dialect(abc.ABC):
    """SQL strings and parameter adapters for one database family."""

    name = ""

    def __init__(self, url: str, schema: str, table: str):
        self.url = url
        self.schema = validate_identifier(schema) if schema else ""
        self.table = validate_identifier(table)

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table

    # connection
    @abc.abstractmethod
    def connect(self):
        """A new DB-API connection (autocommit off)."""

    def is_transient(self, exc: BaseException) -> bool:
        """True when reconnecting and retrying the same statement may succeed."""
        return False

    # statements
    @abc.abstractmethod
    def create_table_statements(self, dimension: int, with_report_fk: bool) -> List[str]:
        ...

    def create_index_statements(self) -> List[str]:
        return []

    @abc.abstractmethod
    def upsert_sql(self, columns: Sequence[str], dimension: int) -> str:
        ...

    def placeholders(self, n: int) -> str:
        return ", ".join(["?"] * n)

    def existing_sql(self, image_ids: Sequence[str], provider: str,
                     preprocess_version: Optional[str]) -> Tuple[str, list]:
        sql = (f"SELECT ImageID FROM {self.qualified_table} WHERE Provider = {self.placeholders(1)}"
               f" AND ImageID IN ({self.placeholders(len(image_ids))})")
        params = [provider, *image_ids]
        if preprocess_version is not None:
            sql += f" AND PreprocessVersion = {self.placeholders(1)}"
            params.append(preprocess_version)
        return sql, params

    def count_sql(self, provider: Optional[str]) -> Tuple[str, list]:
        sql = f"SELECT COUNT(*) FROM {self.qualified_table}"
        if provider is None:
            return sql, []
        return sql + f" WHERE Provider = {self.placeholders(1)}", [provider]

    def vectors_sql(self, image_ids: Sequence[str], provider: str) -> Tuple[str, list]:
        return (f"SELECT ImageID, {self.vector_select('Vector')} FROM {self.qualified_table} "
                f"WHERE Provider = {self.placeholders(1)} AND ImageID IN "
                f"({self.placeholders(len(image_ids))})", [provider, *image_ids])

    def vector_select(self, column: str) -> str:
        return column

    # values
    @abc.abstractmethod
    def encode_vector(self, vector: np.ndarray):
        """The bound parameter for a vector."""

    @abc.abstractmethod
    def decode_vector(self, value) -> np.ndarray:
        ...

    def row_params(self, row, columns: Sequence[str]) -> list:
        return [self.encode_vector(getattr(row, c)) if c == "Vector" else getattr(row, c)
                for c in columns]

    @abc.abstractmethod
    def nearest(self, conn, vector: np.ndarray, k: int, provider: Optional[str],
                view_position: Optional[str]):
        ...


class SQLiteDialect(Dialect):
    """The embedded default: one SQLite file, vectors as little-endian float32 BLOBs, cosine
    search in numpy. SQLite has no schemas, so the table is just ``MIMICCXRImages``."""

    name = "sqlite"

    def __init__(self, url: str, schema: str, table: str):
        super().__init__(url, schema="", table=table)
        parsed = urlparse(url)
        # sqlite:///rel/path.db -> rel/path.db ; sqlite:////abs/path.db -> /abs/path.db
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else parsed.path
        if not path:
            raise ValueError(f"sqlite URL needs a file path: {url!r}")
        self.path = path

    def connect(self):
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=60)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower()

    def create_table_statements(self, dimension: int, with_report_fk: bool) -> List[str]:
        return [f"""CREATE TABLE IF NOT EXISTS {self.qualified_table} (
  SubjectID VARCHAR(50) NOT NULL,
  StudyID VARCHAR(50) NOT NULL,
  ImageID VARCHAR(50) NOT NULL,
  ImagePath VARCHAR(500),
  DicomFile VARCHAR(255),
  ViewPosition VARCHAR(20),
  Vector BLOB NOT NULL CHECK (length(Vector) = {4 * int(dimension)}),
  EmbeddingModel VARCHAR(100),
  Provider VARCHAR(50) NOT NULL,
  PreprocessVersion VARCHAR(20),
  CreatedAt TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  PRIMARY KEY (ImageID, Provider)
)"""]

    def upsert_sql(self, columns: Sequence[str], dimension: int) -> str:
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns
                            if c not in ("ImageID", "Provider"))
        return (f"INSERT INTO {self.qualified_table} ({', '.join(columns)}) "
                f"VALUES ({self.placeholders(len(columns))}) "
                f"ON CONFLICT (ImageID, Provider) DO UPDATE SET {updates}")

    def encode_vector(self, vector: np.ndarray):
        return np.asarray(vector, dtype="<f4").tobytes()

    def decode_vector(self, value) -> np.ndarray:
        return np.frombuffer(value, dtype="<f4").copy()

    def nearest(self, conn, vector, k, provider, view_position):
        sql = (f"SELECT ImageID, SubjectID, StudyID, ImagePath, ViewPosition, Provider, Vector "
               f"FROM {self.qualified_table} WHERE 1=1")
        params: list = []
        if provider:
            sql += " AND Provider = ?"
            params.append(provider)
        if view_position:
            sql += " AND ViewPosition = ?"
            params.append(view_position)
        rows = conn.execute(sql, params).fetchall()
        if not rows:
            return []
        from dicomvec.io.stores.base import Hit
        matrix = np.stack([self.decode_vector(r[6]) for r in rows])
        query = vector / max(float(np.linalg.norm(vector)), 1e-12)
        norms = np.maximum(np.linalg.norm(matrix, axis=1), 1e-12)
        scores = matrix @ query / norms
        order = np.argsort(-scores)[:k]
        return [Hit(*rows[i][:6], score=float(scores[i])) for i in order]


_DIALECTS: Dict[str, str] = {
    "sqlite": "SQLiteDialect",
}


def dialect_for_url(url: str, schema: str, table: str) -> Dialect:
    scheme = urlparse(url).scheme.split("+")[0].lower()
    if scheme == "postgres":
        scheme = "postgresql"
    name = _DIALECTS.get(scheme)
    if name is None:
        raise ValueError(f"unsupported sink URL scheme {scheme!r} in {redact_url(url)!r}; "
                         f"use one of {sorted(_DIALECTS)}")
    return globals()[name](url, schema=schema, table=table)


def redact_url(url: str) -> str:
    """The URL with any password removed, for logs and errors."""
    parsed = urlparse(url)
    if parsed.password:
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
        return parsed._replace(netloc=netloc).geturl()
    return url
