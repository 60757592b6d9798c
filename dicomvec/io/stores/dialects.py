"""SQL dialects for the sink core: how to connect, the SQL text, how vectors are bound.

A dialect holds no state but its target. Every value is a bound parameter (vectors included);
schema/table names are validated identifiers, never raw user text. The concrete dialects live in
``sqlite.py``, ``postgres.py`` and ``iris.py`` and are looked up by URL scheme in ``_DIALECTS``
(imported lazily, so a missing optional driver only matters when its scheme is used).
"""
from __future__ import annotations

import abc
import importlib
import re
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qsl, urlencode, urlparse

import numpy as np

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

#: Columns every dialect returns for a search hit, in ``Hit`` order (score last).
HIT_COLUMNS = ("ImageID", "SubjectID", "StudyID", "ImagePath", "ViewPosition", "Provider")

#: The reports table the optional foreign key points at (same schema as the images table).
REPORTS_TABLE = "MIMICCXRReports"


def validate_identifier(name: str) -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise ValueError."""
    if not _IDENTIFIER.match(name or ""):
        raise ValueError(f"invalid SQL identifier {name!r}: use letters, digits and _")
    return name


def validate_k(k: int) -> int:
    """A positive result count (inlined in TOP/LIMIT after this check)."""
    if isinstance(k, bool) or int(k) != k or int(k) < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


class Dialect(abc.ABC):
    """SQL strings and parameter adapters for one database family.

    Flow: the core calls ``connect()`` then ``prepare(conn)``; writes use ``upsert_sql`` with
    ``row_params``; reads use the ``*_sql`` builders; ``is_transient`` decides retry vs bisect.
    """

    name = ""
    #: the parameter marker of the driver (qmark ``?`` or format ``%s``)
    marker = "?"

    def __init__(self, url: str, schema: str, table: str):
        self.url = url
        self.schema = validate_identifier(schema) if schema else ""
        self.table = validate_identifier(table)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self.url)!r}, table={self.qualified_table!r})"

    @property
    def qualified_table(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table

    @property
    def reports_table(self) -> str:
        return f"{self.schema}.{REPORTS_TABLE}" if self.schema else REPORTS_TABLE

    # -- connection ------------------------------------------------------------------------
    @abc.abstractmethod
    def connect(self):
        """A new DB-API connection (autocommit off)."""

    def prepare(self, conn) -> None:
        """Per-connection setup after ``connect`` and after ``init_schema`` (type adapters)."""

    def is_transient(self, exc: BaseException) -> bool:
        """True when reconnecting and retrying the same statement may succeed."""
        return False

    # -- schema ----------------------------------------------------------------------------
    @abc.abstractmethod
    def create_table_statements(self, dimension: int, with_report_fk: bool) -> List[str]:
        """DDL creating schema and table if missing; ``with_report_fk`` adds the FK on StudyID
        (the core passes True only when the reports table exists)."""

    def table_exists_sql(self, schema: str, table: str) -> Tuple[str, list]:
        """A query returning a row when ``schema.table`` exists."""
        return ("SELECT 1 FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = "
                f"{self.marker} AND TABLE_NAME = {self.marker}", [schema, table])

    def table_dimension(self, conn) -> Optional[int]:
        """The declared vector length of the existing table, when the catalog tells it."""
        return None

    def create_index_statements(self) -> List[str]:
        """DDL for the approximate nearest-neighbour index (empty: none for this database)."""
        return []

    def check_index_support(self, conn) -> None:
        """Raise a clear error when this server cannot build the vector index."""

    # -- statements ------------------------------------------------------------------------
    @abc.abstractmethod
    def upsert_sql(self, columns: Sequence[str], dimension: int) -> str:
        """One parametrised insert-or-update on the primary key (ImageID, Provider)."""

    def placeholders(self, n: int) -> str:
        return ", ".join([self.marker] * n)

    def existing_sql(self, image_ids: Sequence[str], provider: str,
                     preprocess_version: Optional[str]) -> Tuple[str, list]:
        sql = (f"SELECT ImageID FROM {self.qualified_table} WHERE Provider = {self.marker}"
               f" AND ImageID IN ({self.placeholders(len(image_ids))})")
        params = [provider, *image_ids]
        if preprocess_version is not None:
            sql += f" AND PreprocessVersion = {self.marker}"
            params.append(preprocess_version)
        return sql, params

    def count_sql(self, provider: Optional[str]) -> Tuple[str, list]:
        sql = f"SELECT COUNT(*) FROM {self.qualified_table}"
        if provider is None:
            return sql, []
        return sql + f" WHERE Provider = {self.marker}", [provider]

    def vectors_sql(self, image_ids: Sequence[str], provider: str) -> Tuple[str, list]:
        return (f"SELECT ImageID, {self.vector_select('Vector')} FROM {self.qualified_table} "
                f"WHERE Provider = {self.marker} AND ImageID IN "
                f"({self.placeholders(len(image_ids))})", [provider, *image_ids])

    def vector_select(self, column: str) -> str:
        return column

    def filters_sql(self, provider: Optional[str],
                    view_position: Optional[str]) -> Tuple[str, list]:
        """``WHERE ...`` for the search filters ('' when none) and its parameters."""
        clauses, params = [], []
        if provider:
            clauses.append(f"Provider = {self.marker}")
            params.append(provider)
        if view_position:
            clauses.append(f"ViewPosition = {self.marker}")
            params.append(view_position)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def nearest_sql(self, vector: np.ndarray, k: int, provider: Optional[str],
                    view_position: Optional[str]) -> Tuple[str, list]:
        """A query returning ``HIT_COLUMNS`` + cosine similarity, best first, at most ``k``."""
        raise NotImplementedError

    # -- values ----------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_vector(self, vector: np.ndarray):
        """The bound parameter for a vector."""

    @abc.abstractmethod
    def decode_vector(self, value) -> np.ndarray:
        """A stored vector value → float32 array."""

    def row_params(self, row, columns: Sequence[str]) -> list:
        return [self.encode_vector(getattr(row, c)) if c == "Vector" else getattr(row, c)
                for c in columns]

    def write_batch(self, conn, rows: Sequence, columns: Sequence[str], dimension: int) -> None:
        """Send one batch inside the current transaction (the core commits): one
        parametrised upsert, ``executemany`` over the rows."""
        cur = conn.cursor()
        cur.executemany(self.upsert_sql(columns, dimension),
                        [self.row_params(row, columns) for row in rows])

    def nearest(self, conn, vector: np.ndarray, k: int, provider: Optional[str],
                view_position: Optional[str]):
        """The ``k`` most cosine-similar rows as ``Hit`` objects, best first."""
        from dicomvec.io.stores.base import Hit
        sql, params = self.nearest_sql(vector, k, provider, view_position)
        cur = conn.cursor()
        cur.execute(sql, params)
        return [Hit(*row[:6], score=float(row[6])) for row in cur.fetchall()]


# scheme -> "module:Class"
_DIALECTS: Dict[str, str] = {
    "sqlite": "dicomvec.io.stores.sqlite:SQLiteDialect",
    "postgresql": "dicomvec.io.stores.postgres:PostgresDialect",
    "iris": "dicomvec.io.stores.iris:IrisDialect",
}


def dialect_class(scheme: str) -> type:
    module_name, class_name = _DIALECTS[scheme].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def url_scheme(url: str) -> str:
    scheme = urlparse(url).scheme.split("+")[0].lower()
    return "postgresql" if scheme == "postgres" else scheme


def dialect_for_url(url: str, schema: str, table: str) -> Dialect:
    scheme = url_scheme(url)
    if scheme not in _DIALECTS:
        raise ValueError(f"unsupported sink URL scheme {scheme!r} in {redact_url(url)!r}; "
                         f"use one of {sorted(_DIALECTS)}")
    return dialect_class(scheme)(url, schema=schema, table=table)


_SECRET_QUERY_KEYS = {"password", "pwd", "passfile", "sslpassword"}


def redact_url(url: str) -> str:
    """The URL with any password (user-info or query parameter) replaced by ``***``."""
    try:
        parsed = urlparse(url)
        password = parsed.password
    except ValueError:
        return "<unparseable sink URL>"
    changed = False
    if password:
        user = parsed.username or ""
        host = parsed.netloc.rsplit("@", 1)[1]
        parsed = parsed._replace(netloc=f"{user}:***@{host}")
        changed = True
    if parsed.query:
        pairs = parse_qsl(parsed.query, keep_blank_values=True)
        if any(k.lower() in _SECRET_QUERY_KEYS for k, _ in pairs):
            query = [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs]
            parsed = parsed._replace(query=urlencode(query, safe="*/"))
            changed = True
    return parsed.geturl() if changed else url


def __getattr__(name: str):
    """Backwards-compatible ``from dicomvec.io.stores.dialects import SQLiteDialect``."""
    for target in _DIALECTS.values():
        module_name, class_name = target.split(":")
        if class_name == name:
            return getattr(importlib.import_module(module_name), class_name)
    raise AttributeError(name)
