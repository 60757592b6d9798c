"""``postgresql://USER@HOST:PORT/DB``: PostgreSQL with the pgvector extension (psycopg 3).

The password comes from libpq's usual places (``PGPASSWORD``, ``~/.pgpass``) or the URL; it is
redacted wherever the URL is logged. Names are left unquoted in every statement, so PostgreSQL
folds them to lower case consistently: the default table is ``vectorsearch.mimiccxrimages``.

Vectors are bound in pgvector's binary format (``%b`` with the ``pgvector`` adapter), never as
SQL text; ``executemany`` sends the whole batch in one pipeline (psycopg 3 does this by itself).
Search orders by the ``<=>`` cosine distance (score = 1 - distance) so an HNSW
``vector_cosine_ops`` index is used.
"""
from __future__ import annotations

import logging
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np

from dicomvec.io.stores.dialects import (Dialect, SinkAuthenticationError, redact_url,
                                         validate_k)
from dicomvec.io.stores.tables import ColumnInfo, VectorColumn
from dicomvec.io.stores.vectors import decode_vector as decode_stored_vector, vector_text

log = logging.getLogger(__name__)

#: SQLSTATEs worth a reconnect and retry: connection exceptions (08xxx), admin/crash shutdown,
#: cannot-connect-now, serialization failure and deadlock.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "57P01", "57P02", "57P03", "40001", "40P01")
#: libpq's words for a refused login (the connect error often carries no SQLSTATE)
_AUTH_FAILURES = ("password authentication failed", "no password supplied",
                  "authentication failed for user", "role \"")
#: a name PostgreSQL keeps as written when unquoted
_PLAIN_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


class PostgresDialect(Dialect):
    name = "postgresql"
    marker = "%s"
    transactional_ddl = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import psycopg  # noqa: F401  (fail early with ImportError when the extra is missing)

    def connect(self):
        import psycopg
        log.debug("connecting to %s", redact_url(self.url))
        try:
            return psycopg.connect(self.url, autocommit=False, connect_timeout=15,
                                   application_name="dicomvec")
        except psycopg.OperationalError as exc:
            text = str(exc)
            if getattr(exc, "sqlstate", None) in ("28P01", "28000") or \
                    any(marker in text for marker in _AUTH_FAILURES):
                reason = text.strip().splitlines()[-1].split("FATAL:")[-1].strip()
                raise SinkAuthenticationError(
                    f"PostgreSQL refused the login at {redact_url(self.url)}: {reason} (check "
                    "the user, PGPASSWORD or ~/.pgpass)") from None
            raise

    def prepare(self, conn) -> None:
        """Register pgvector's numpy adapters once the ``vector`` type exists."""
        from pgvector.psycopg.vector import register_vector_info
        from psycopg.types import TypeInfo
        info = TypeInfo.fetch(conn, "vector")
        conn.rollback()  # end the catalog read's transaction
        if info is not None:
            register_vector_info(conn, info)

    def is_transient(self, exc: BaseException) -> bool:
        import psycopg
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if sqlstate.startswith(_TRANSIENT_SQLSTATE_PREFIXES):
            return True
        # no SQLSTATE: the socket closed under us ("server closed the connection
        # unexpectedly", "the connection is lost", "the connection is closed")
        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and \
            not sqlstate

    # -- schema ----------------------------------------------------------------------------
    def table_dimension(self, conn) -> Optional[int]:
        cur = conn.cursor()
        cur.execute("SELECT a.atttypmod FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) "
                    "AND a.attname = %s", [self.qualified_table.lower(), self.spec.vector.lower()])
        row = cur.fetchone()
        conn.rollback()
        return int(row[0]) if row and row[0] and row[0] > 0 else None

    # -- the shape of an existing table -----------------------------------------------------
    def quote_identifier(self, name: str) -> str:
        """Unquoted names fold to lower case: any other spelling is quoted."""
        return name if _PLAIN_IDENTIFIER.match(name) else '"' + name.replace('"', '""') + '"'

    def catalog_names(self) -> Tuple[str, str]:
        return self.schema.lower(), self.table.lower()

    def describe_sql(self, names: Tuple[str, str]) -> Tuple[str, list]:
        return ("SELECT a.attname, t.typname, a.atttypmod, a.attnotnull, a.atthasdef "
                "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
                "ORDER BY a.attnum", [self.sql_name(*names)])

    def column_info(self, row) -> ColumnInfo:
        name, declared, typmod, notnull, has_default = row
        typname = str(declared).upper()
        length = typmod - 4 if typname in ("VARCHAR", "BPCHAR") and typmod > 4 else None
        return ColumnInfo(name=name, type=typname, length=length, nullable=not notnull,
                          has_default=bool(has_default), declared=str(declared))

    def primary_key_sql(self, names: Tuple[str, str]) -> Tuple[str, list]:
        return ("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = "
                "i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) "
                "AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
                [self.sql_name(*names)])

    def declared_dimension(self, conn, columns: Sequence[ColumnInfo]) -> Optional[int]:
        return self.table_dimension(conn)

    def first_vector_sql(self) -> str:
        v = self.spec.vector
        return self.sample_vectors_sql(f"vector_dims({v})", v, self.qualified_table, 100)

    def vector_length(self, value) -> int:
        return int(value)  # first_vector_sql selects vector_dims(...)

    def sampled_dimension(self, conn) -> Optional[int]:
        try:
            return super().sampled_dimension(conn)
        except Exception:  # not a pgvector column (e.g. bytea): no length to read
            conn.rollback()
            return None

    def server_version_sql(self) -> str:
        return ("SELECT version() || ' / pgvector ' || COALESCE((SELECT extversion FROM "
                "pg_extension WHERE extname = 'vector'), 'not installed')")

    def valid_vector_sql(self, dimension: int) -> Tuple[str, list]:
        v = self.spec.vector
        return (f"{v} IS NOT NULL AND vector_dims({v}) = %s AND vector_norm({v}) > 0",
                [int(dimension)])

    def schema_statements(self) -> List[str]:
        return ["CREATE EXTENSION IF NOT EXISTS vector"] + super().schema_statements()

    def vector_type(self, dimension: int) -> str:
        return f"vector({int(dimension)})"

    @property
    def index_name(self) -> str:
        return f"{self.table}_vector_hnsw"

    def schema_exists_sql(self) -> Tuple[str, list]:
        return "SELECT 1 FROM pg_namespace WHERE nspname = %s", [self.schema.lower()]

    def index_exists_sql(self) -> Tuple[str, list]:
        return ("SELECT 1 FROM pg_indexes WHERE schemaname = %s AND tablename = %s AND "
                "indexname = %s", [self.schema.lower(), self.table.lower(),
                                   self.index_name.lower()])

    def vector_features(self, conn, version_text: str):
        """(name, ok, detail) for the VECTOR type and the HNSW index on this server."""
        cur = conn.cursor()
        cur.execute("SELECT (SELECT extversion FROM pg_extension WHERE extname = 'vector'), "
                    "(SELECT default_version FROM pg_available_extensions "
                    "WHERE name = 'vector')")
        installed, available = cur.fetchone()
        conn.rollback()
        version = installed or available
        if not version:
            return [("VECTOR type", False, "pgvector is not available on this server "
                     "(install the extension)"), ("HNSW index", False, "needs pgvector 0.5+")]
        state = f"pgvector {installed} installed" if installed else \
            f"pgvector {available} available (init-db runs CREATE EXTENSION)"
        numbers = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
        hnsw = numbers >= (0, 5)
        return [("VECTOR type", True, state),
                ("HNSW index", hnsw, f"USING hnsw (vector_cosine_ops) with pgvector {version}"
                 if hnsw else f"pgvector {version} has no HNSW: needs 0.5+")]

    def create_index_statements(self) -> List[str]:
        return [f"CREATE INDEX IF NOT EXISTS {self.index_name} ON {self.qualified_table} "
                f"USING hnsw ({self.spec.vector} vector_cosine_ops)"]

    def forced_index_plan(self, conn, sql: str, params: list) -> Optional[str]:
        cur = conn.cursor()
        cur.execute("SET LOCAL enable_seqscan = off")
        plan = self.explain(conn, sql, params)
        conn.rollback()
        return plan

    # -- another tool's vectors: pgvector ``vector`` / ``halfvec`` columns are searched here --
    def stored_length_sql(self, declared: str) -> Optional[str]:
        return "vector_dims({})" if declared in ("vector", "halfvec") else None

    def searchable_vector(self, column, declared, dimension) -> Optional[VectorColumn]:
        if declared not in ("vector", "halfvec"):
            return None
        return VectorColumn(column, "pgvector" if declared == "vector" else "halfvec",
                            dimension, f"pgvector {declared}({dimension})")

    def foreign_nearest_sql(self, select, table, column, query, n) -> Tuple[str, list]:
        cast = "vector" if column.kind == "pgvector" else "halfvec"
        literal = "[" + vector_text(query) + "]"
        return (f"SELECT {select}, 1 - ({column.name} <=> %s::{cast}) AS score FROM "
                f"{table} WHERE {column.name} IS NOT NULL ORDER BY {column.name} <=> "
                f"%s::{cast} LIMIT {validate_k(n)}", [literal, literal])

    def streaming_cursor(self, conn, name: str):
        return conn.cursor(name=name)  # server-side: rows stream

    # -- statements ------------------------------------------------------------------------
    def vector_param(self, dimension: int) -> str:
        return "%b"  # pgvector's binary format

    def nearest_sql(self, vector, k, provider, view_position=None) -> Tuple[str, list]:
        where, params = self.filters_sql(provider, view_position)
        query = self.encode_vector(vector)
        column = self.spec.vector
        sql = (f"SELECT {', '.join(self.spec.hit_columns)}, 1 - ({column} <=> %b) AS score "
               f"FROM {self.qualified_table}{where} ORDER BY {column} <=> %b "
               f"LIMIT {validate_k(k)}")
        return sql, [query, *params, query]

    def nearest(self, conn, vector, k, provider, view_position=None):
        """Like the generic search, with the HNSW candidate list (``hnsw.ef_search``, default
        40) widened for this transaction: the index never returns more rows than that, and
        filters are applied after it (pgvector 0.6). Measured at 100K clustered rows, 50
        queries (BENCHMARKS.md, "Search at archive scale"): recall@10 0.93 at 100, 0.95 at
        200, 0.97 at 400 (p50 12 ms): at least 400, and 40×k (at most 1000)."""
        k = validate_k(k)
        wanted = 40 * k
        cur = conn.cursor()
        cur.execute("SELECT set_config('hnsw.ef_search', %s, true)",
                    [str(min(1000, max(400, wanted)))])
        return super().nearest(conn, vector, k, provider, view_position)

    # -- values ----------------------------------------------------------------------------
    def encode_vector(self, vector: np.ndarray):
        return np.asarray(vector, dtype=np.float32)

    def decode_vector(self, value) -> np.ndarray:
        """pgvector's value, or its text form "[1,2,3]" when no adapter is registered."""
        return decode_stored_vector(value).astype(np.float32)

