"""``iris://USER@HOST:1972/NAMESPACE``: InterSystems IRIS vector SQL (official driver
``intersystems-irispython``, ``import iris``).

The password never travels in the URL or on the command line: it is read when connecting from
``DICOMVEC_IRIS_PASSWORD`` or from the file named by ``DICOMVEC_IRIS_PASSWORD_FILE``.

Writes are ``INSERT OR UPDATE ... TO_VECTOR(?, DOUBLE, <dim>)`` with the vector bound as a
comma-separated string parameter (never inlined: a 1024-d literal is ~11-20 KB and IRIS caps
inlined literals), ``executemany`` per batch, autocommit off and one commit per batch.
Search is ``SELECT TOP k ... VECTOR_COSINE(Vector, TO_VECTOR(?)) AS score ... ORDER BY
VECTOR_COSINE(Vector, TO_VECTOR(?)) DESC`` (the query vector bound twice): the documented form
the HNSW index (IRIS 2025.1+, built by ``create-index`` after a bulk load) serves.

No ``CREATE SCHEMA`` (IRIS creates the schema with its first table; ``CREATE SCHEMA IF NOT
EXISTS`` is documented only from 2026.1) and no ``CREATE TABLE IF NOT EXISTS``: the core reads
INFORMATION_SCHEMA first and creates the table only when it is missing (SQLCODE -201, created
meanwhile by another process, counts as done). Every statement this dialect sends is listed in
``tests/golden/iris_statements.sql``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import List, Optional, Sequence, Tuple
from urllib.parse import urlparse

import numpy as np

from dicomvec.io.stores.dialects import (Dialect, SinkAuthenticationError, redact_url,
                                         validate_k)
from dicomvec.io.stores.tables import ColumnInfo, VectorColumn
from dicomvec.io.stores.vectors import decode_vector as decode_stored_vector, vector_text

log = logging.getLogger(__name__)

PASSWORD_ENV = "DICOMVEC_IRIS_PASSWORD"
PASSWORD_FILE_ENV = "DICOMVEC_IRIS_PASSWORD_FILE"
DEFAULT_PORT = 1972
DEFAULT_NAMESPACE = "USER"
#: the vector element type of the column and of every TO_VECTOR literal
VECTOR_TYPE = "DOUBLE"
#: IRIS release that introduced ``CREATE INDEX ... AS HNSW``
HNSW_MIN_VERSION = (2025, 1)
#: IRIS release that introduced the VECTOR type and VECTOR_COSINE
VECTOR_MIN_VERSION = (2024, 1)

_SQLCODE = re.compile(r"SQLCODE:?\s*<?\s*(-?\d+)\s*>?", re.IGNORECASE)
#: SQLCODE -110 (lock timeout, e.g. writing while an index builds) and -114 (row/table locked
#: by another process): retry later
_TRANSIENT_SQLCODES = {-110, -114}
#: SQLCODE -201: table already exists; -324: index name already exists
_DUPLICATE_TABLE, _DUPLICATE_INDEX = -201, -324
#: a refused login arrives as <COMMUNICATION LINK ERROR> with one of these (never transient)
_AUTH_FAILURES = ("access denied", "invalid message received")
#: the login status of a predefined account whose password must be changed first
_PASSWORD_CHANGE = ("password change", "change password", "changepassword", "password expired")
_VERSION = re.compile(r"\b(20\d\d)\.(\d+)\b")


def sqlcode(exc: BaseException) -> Optional[int]:
    """The IRIS SQLCODE carried in a driver error message, if any."""
    match = _SQLCODE.search(str(exc))
    return int(match.group(1)) if match else None


def parse_zversion(text: str) -> Optional[Tuple[int, int]]:
    """``$ZVERSION`` text → (year, release): ``... 2024.1 (Build 267U) ...`` → (2024, 1)."""
    match = _VERSION.search(text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def require_hnsw(version: Optional[Tuple[int, int]]) -> None:
    """Raise a clear RuntimeError when ``version`` is known to predate HNSW indexes."""
    if version is not None and version < HNSW_MIN_VERSION:
        raise RuntimeError(
            f"this IRIS server is {version[0]}.{version[1]}; HNSW vector indexes need IRIS "
            f"{HNSW_MIN_VERSION[0]}.{HNSW_MIN_VERSION[1]} or newer. Searches still work "
            "without the index (exact VECTOR_COSINE scan); upgrade IRIS to build it.")


def read_password() -> str:
    """The IRIS password from the environment (value or file); never from the URL."""
    value = os.environ.get(PASSWORD_ENV)
    if value:
        return value
    path = os.environ.get(PASSWORD_FILE_ENV)
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                value = handle.read().rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read the IRIS password file named by {PASSWORD_FILE_ENV}"
                             f" ({path}): {exc.strerror}") from None
        if value:
            return value
        raise ValueError(f"the IRIS password file named by {PASSWORD_FILE_ENV} ({path}) is empty")
    raise ValueError(f"no IRIS password: set {PASSWORD_ENV} or {PASSWORD_FILE_ENV} "
                     "(the password is never taken from the URL or the command line)")


class IrisDialect(Dialect):
    name = "iris"
    text_type = "VARCHAR(30000)"

    def __init__(self, url: str, *args, **kwargs):
        super().__init__(url, *args, **kwargs)
        parsed = urlparse(url)
        try:
            has_password = parsed.password is not None
            port = parsed.port
        except ValueError as exc:
            raise ValueError(f"bad IRIS URL {redact_url(url)!r}: {exc}") from None
        if has_password:
            raise ValueError(
                f"the IRIS URL {redact_url(url)!r} carries a password: remove it from the URL and "
                f"set {PASSWORD_ENV} (or {PASSWORD_FILE_ENV}) instead, so it never shows up in "
                "shell history, process lists or logs")
        if not parsed.username or not parsed.hostname:
            raise ValueError(f"IRIS URL must look like iris://USER@HOST:1972/NAMESPACE, "
                             f"got {redact_url(url)!r}")
        self.username = parsed.username
        self.hostname = parsed.hostname
        self.port = port or DEFAULT_PORT
        self.namespace = parsed.path.strip("/") or DEFAULT_NAMESPACE
        if "/" in self.namespace:
            raise ValueError(f"IRIS namespace must be one path segment: {redact_url(url)!r}")
        if not self.schema:
            raise ValueError("IRIS needs a schema name (default VectorSearch)")

    # -- connection ------------------------------------------------------------------------
    def connect(self):
        import iris.dbapi  # DB-API errors (OperationalError, ...) instead of RuntimeError
        password = read_password()
        try:
            return iris.dbapi.connect(hostname=self.hostname, port=self.port,
                                      namespace=self.namespace, username=self.username,
                                      password=password, autoCommit=False)
        except Exception as exc:
            error = self.login_error(exc)
            if error is not None:
                raise error from None  # one line; the driver's text adds nothing
            raise

    def login_error(self, exc: BaseException) -> Optional[SinkAuthenticationError]:
        """A one-line error for a refused login (None: not a login problem)."""
        text = str(exc).lower()
        where = f"{self.hostname}:{self.port}/{self.namespace}"
        if any(marker in text for marker in _PASSWORD_CHANGE):
            return SinkAuthenticationError(
                f"IRIS user {self.username!r} must change its password before first use (the "
                "server's login status says a password change is required): log in once to the "
                f"Management Portal (http://{self.hostname}:52773/csp/sys/UtilHome.csp) or run "
                "`iris session IRIS` in the container, set a new password, then put it in "
                f"{PASSWORD_ENV}")
        if any(marker in text for marker in _AUTH_FAILURES):
            return SinkAuthenticationError(
                f"IRIS refused the login of user {self.username!r} at {where} (Access Denied): "
                f"check the user name in the URL and the password in {PASSWORD_ENV} or "
                f"{PASSWORD_FILE_ENV}, and that the user may use namespace {self.namespace}")
        return None

    def location(self) -> str:
        return (f"{redact_url(self.url)} (namespace {self.namespace} exists and this user may "
                "use it)")

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, SinkAuthenticationError) or self.login_error(exc) is not None:
            return False
        if "COMMUNICATION LINK ERROR" in str(exc).upper():
            return True
        return sqlcode(exc) in _TRANSIENT_SQLCODES

    def is_duplicate_table(self, exc: BaseException) -> bool:
        return sqlcode(exc) == _DUPLICATE_TABLE

    def is_duplicate_index(self, exc: BaseException) -> bool:
        return sqlcode(exc) == _DUPLICATE_INDEX

    # -- schema ----------------------------------------------------------------------------
    create_if_not_exists = False
    index_catalog_complete = False
    #: the RowID IRIS adds to every table
    system_columns = ("ID", "%ID")

    def schema_statements(self) -> List[str]:
        return []  # IRIS creates the schema with the first table created in it

    def column_info(self, row) -> ColumnInfo:
        info = super().column_info(row)
        if "VECTOR" in info.type:
            return dataclasses.replace(info, type="VECTOR", length=None)
        return info

    def primary_key_fallback_sql(self, names: Tuple[str, str]) -> Optional[Tuple[str, list]]:
        """INFORMATION_SCHEMA.INDEXES flags the primary-key index's columns (PRIMARY_KEY)."""
        return ("SELECT COLUMN_NAME FROM INFORMATION_SCHEMA.INDEXES WHERE TABLE_SCHEMA = ? AND "
                "TABLE_NAME = ? AND PRIMARY_KEY = 1 ORDER BY ORDINAL_POSITION", list(names))

    def declared_dimension(self, conn, columns) -> Optional[int]:
        """IRIS's INFORMATION_SCHEMA may not carry the VECTOR length: None, so the core reads
        it from a stored row."""
        return None

    def limited_sql(self, select: str, rest: str, n: int) -> str:
        return f"SELECT TOP {int(n)} {select} {rest}"

    def widen_column_sql(self, column) -> Optional[str]:
        return (f"ALTER TABLE {self.qualified_table} ALTER COLUMN {column.name} "
                f"{column.type}")

    def server_version_sql(self) -> str:
        return "SELECT $ZVERSION"

    def valid_vector_sql(self, dimension: int) -> Tuple[str, list]:
        # a VECTOR(DOUBLE, n) column enforces the length; a zero vector has dot product 0
        v = self.spec.vector
        return f"{v} IS NOT NULL AND VECTOR_DOT_PRODUCT({v}, {v}) > 0", []

    def table_dimension(self, conn) -> Optional[int]:
        try:
            return self.sampled_dimension(conn)
        except Exception:
            log.debug("could not read a stored vector's length", exc_info=True)
            return None

    def vector_type(self, dimension: int) -> str:
        return f"VECTOR({VECTOR_TYPE}, {int(dimension)})"

    @property
    def index_name(self) -> str:
        return f"{self.table}HNSW"

    def create_index_statements(self) -> List[str]:
        return [f"CREATE INDEX {self.index_name} ON TABLE {self.qualified_table} "
                f"({self.spec.vector}) AS HNSW(Distance='Cosine')"]

    def index_exists_sql(self) -> Tuple[str, list]:
        return ("SELECT 1 FROM INFORMATION_SCHEMA.INDEXES WHERE TABLE_SCHEMA = ? "
                "AND TABLE_NAME = ? AND INDEX_NAME = ?",
                [self.schema, self.table, self.index_name])

    def server_version(self, conn) -> Optional[Tuple[int, int]]:
        """(year, release) from ``$ZVERSION``, or None when it cannot be read."""
        try:
            cur = conn.cursor()
            cur.execute("SELECT $ZVERSION")
            return parse_zversion(str(cur.fetchone()[0]))
        except Exception:
            log.debug("could not read the IRIS version", exc_info=True)
            return None

    def vector_features(self, conn, version_text: str):
        """(name, ok, detail) for the VECTOR type and the HNSW index at this version."""
        version = parse_zversion(version_text)
        if version is None:
            return [("VECTOR type", None, "unknown: could not read the IRIS version"),
                    ("HNSW index", None, "unknown: could not read the IRIS version")]
        shown = f"IRIS {version[0]}.{version[1]}"
        return [("VECTOR type", version >= VECTOR_MIN_VERSION,
                 f"{shown}: VECTOR, TO_VECTOR, VECTOR_COSINE need 2024.1+"),
                ("HNSW index", version >= HNSW_MIN_VERSION,
                 f"{shown}: CREATE INDEX ... AS HNSW needs 2025.1+")]

    def check_index_support(self, conn) -> None:
        require_hnsw(self.server_version(conn))

    def index_error(self, exc: BaseException, conn) -> Exception:
        """A clear error for a failed HNSW build (old server or other cause)."""
        version = self.server_version(conn)
        shown = f"{version[0]}.{version[1]}" if version else "unknown"
        return RuntimeError(
            f"CREATE INDEX ... AS HNSW failed on IRIS (server version {shown}): {exc}. HNSW "
            f"vector indexes need IRIS {HNSW_MIN_VERSION[0]}.{HNSW_MIN_VERSION[1]}+ and a "
            "fixed-length DOUBLE/FLOAT/DECIMAL vector column")

    # -- statements ------------------------------------------------------------------------
    def vector_param(self, dimension: int) -> str:
        """The bound-parameter vector expression: type and length must be SQL literals."""
        return f"TO_VECTOR(?, {VECTOR_TYPE}, {int(dimension)})"

    def upsert_syntax(self, insert: str, updated: Sequence[str]) -> str:
        return f"INSERT OR UPDATE {insert}"

    # -- another tool's vectors: searched with VECTOR_COSINE ----------------------------------
    def searchable_vector(self, column, declared, dimension) -> Optional[VectorColumn]:
        # INFORMATION_SCHEMA may call a VECTOR column VARCHAR, so the type is not trusted:
        # tried as a VECTOR, with TO_VECTOR(column) as the fallback
        return VectorColumn(column, "iris-vector", dimension,
                            f"IRIS {declared or 'VECTOR'} of {dimension} values",
                            "FLOAT" if "float" in declared else "DOUBLE")

    def foreign_nearest_sql(self, select, table, column, query, n) -> Tuple[str, list]:
        bound = f"TO_VECTOR(?, {column.element_type}, {column.dimension})"
        stored = column.name if column.kind == "iris-vector" else \
            f"TO_VECTOR({column.name}, {column.element_type}, {column.dimension})"
        return (f"SELECT TOP {validate_k(n)} {select}, VECTOR_COSINE({stored}, {bound}) AS "
                f"score FROM {table} WHERE {column.name} IS NOT NULL ORDER BY score DESC",
                [vector_text(query)])

    def foreign_search_fallback(self, column: VectorColumn) -> Optional[VectorColumn]:
        """Vectors kept as text of numbers: convert them in the query."""
        if column.kind != "iris-vector":
            return None
        return dataclasses.replace(column, kind="iris-text")

    def nearest_sql(self, vector, k, provider, view_position=None) -> Tuple[str, list]:
        where, params = self.filters_sql(provider, view_position)
        dimension = int(np.asarray(vector).reshape(-1).shape[0])
        cosine = f"VECTOR_COSINE({self.spec.vector}, {self.vector_param(dimension)})"
        sql = (f"SELECT TOP {validate_k(k)} {', '.join(self.spec.hit_columns)}, "
               f"{cosine} AS score FROM {self.qualified_table}{where} ORDER BY {cosine} DESC")
        query = self.encode_vector(vector)
        return sql, [query, *params, query]

    # -- values ----------------------------------------------------------------------------
    def encode_vector(self, vector: np.ndarray) -> str:
        """Comma-separated decimal text; 9 significant digits round-trip a float32 exactly."""
        return vector_text(vector, np.float32)

    def decode_vector(self, value) -> np.ndarray:
        """A stored vector (IRIS returns text, ``"0.1,0.2,..."``) → float32 array."""
        if isinstance(value, (bytes, bytearray)):
            value = value.decode("ascii")
        return decode_stored_vector(value).astype(np.float32)
