"""``iris://USER@HOST:1972/NAMESPACE``: InterSystems IRIS vector SQL (official driver
``intersystems-irispython``, ``import iris``).

The password never travels in the URL or on the command line: it is read when connecting from
``DICOMVEC_IRIS_PASSWORD`` or from the file named by ``DICOMVEC_IRIS_PASSWORD_FILE``.

Writes are ``INSERT OR UPDATE ... TO_VECTOR(?, DOUBLE, <dim>)`` with the vector bound as a
comma-separated string parameter (never inlined: a 1024-d literal is ~11-20 KB and IRIS caps
inlined literals), ``executemany`` per batch, autocommit off and one commit per batch.
Search is ``SELECT TOP k ... VECTOR_COSINE(...) AS score ... ORDER BY score DESC``; the HNSW
index (IRIS 2025.1+) is built by ``create-index`` after a bulk load.
"""
from __future__ import annotations

import logging
import os
import re
from typing import List, Optional, Sequence, Tuple
from urllib.parse import urlparse

import numpy as np

from dicomvec.io.stores.dialects import Dialect, redact_url, validate_k

log = logging.getLogger(__name__)

PASSWORD_ENV = "DICOMVEC_IRIS_PASSWORD"
PASSWORD_FILE_ENV = "DICOMVEC_IRIS_PASSWORD_FILE"
DEFAULT_PORT = 1972
DEFAULT_NAMESPACE = "USER"
#: the vector element type of the column and of every TO_VECTOR literal
VECTOR_TYPE = "DOUBLE"
#: IRIS release that introduced ``CREATE INDEX ... AS HNSW``
HNSW_MIN_VERSION = (2025, 1)

_SQLCODE = re.compile(r"SQLCODE:?\s*<?\s*(-?\d+)\s*>?", re.IGNORECASE)
#: SQLCODE -114: row/table lock conflict (another process holds the lock) - retry later
_TRANSIENT_SQLCODES = {-114}
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
            if sqlcode(exc) == -853 or "password change" in str(exc).lower():
                raise PermissionError(
                    f"IRIS user {self.username!r} must change its password before first use "
                    "(SQLCODE -853): log in once to the Management Portal "
                    f"(http://{self.hostname}:52773/csp/sys/UtilHome.csp) or run "
                    "`iris session IRIS` in the container, set a new password, then put it in "
                    f"{PASSWORD_ENV}") from None
            raise

    def is_transient(self, exc: BaseException) -> bool:
        if "COMMUNICATION LINK ERROR" in str(exc).upper():
            return True
        return sqlcode(exc) in _TRANSIENT_SQLCODES

    # -- schema ----------------------------------------------------------------------------
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

    def nearest_sql(self, vector, k, provider, view_position=None) -> Tuple[str, list]:
        where, params = self.filters_sql(provider, view_position)
        dimension = int(np.asarray(vector).reshape(-1).shape[0])
        sql = (f"SELECT TOP {validate_k(k)} {', '.join(self.spec.hit_columns)}, "
               f"VECTOR_COSINE({self.spec.vector}, {self.vector_param(dimension)}) AS score "
               f"FROM {self.qualified_table}{where} ORDER BY score DESC")
        return sql, [self.encode_vector(vector), *params]

    # -- values ----------------------------------------------------------------------------
    def encode_vector(self, vector: np.ndarray) -> str:
        """Comma-separated decimal text; 9 significant digits round-trip a float32 exactly."""
        values = np.asarray(vector, dtype=np.float32).reshape(-1).tolist()
        return ",".join(["%.9g"] * len(values)) % tuple(values)

    def decode_vector(self, value) -> np.ndarray:
        if isinstance(value, (bytes, bytearray)):
            value = value.decode("ascii")
        if isinstance(value, str):
            return np.array(value.strip().strip("[]").split(","), dtype=np.float32)
        return np.asarray(value, dtype=np.float32)
