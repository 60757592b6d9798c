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
from typing import List, Optional, Tuple

import numpy as np

from dicomvec.io.stores.dialects import Dialect, redact_url, validate_k

log = logging.getLogger(__name__)

#: SQLSTATEs worth a reconnect and retry: connection exceptions (08xxx), admin/crash shutdown,
#: cannot-connect-now, serialization failure and deadlock.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "57P01", "57P02", "57P03", "40001", "40P01")


class PostgresDialect(Dialect):
    name = "postgresql"
    marker = "%s"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import psycopg  # noqa: F401  (fail early with ImportError when the extra is missing)

    def connect(self):
        import psycopg
        log.debug("connecting to %s", redact_url(self.url))
        return psycopg.connect(self.url, autocommit=False, connect_timeout=15,
                               application_name="dicomvec")

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
    def table_exists_sql(self, schema: str, table: str) -> Tuple[str, list]:
        # unquoted names are stored lower-case
        return ("SELECT 1 FROM information_schema.tables WHERE table_schema = %s "
                "AND table_name = %s", [schema.lower(), table.lower()])

    def table_dimension(self, conn) -> Optional[int]:
        cur = conn.cursor()
        cur.execute("SELECT a.atttypmod FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) "
                    "AND a.attname = %s", [self.qualified_table.lower(), self.spec.vector.lower()])
        row = cur.fetchone()
        conn.rollback()
        return int(row[0]) if row and row[0] and row[0] > 0 else None

    def schema_statements(self) -> List[str]:
        return ["CREATE EXTENSION IF NOT EXISTS vector"] + super().schema_statements()

    def vector_type(self, dimension: int) -> str:
        return f"vector({int(dimension)})"

    @property
    def index_name(self) -> str:
        return f"{self.table}_vector_hnsw"

    def create_index_statements(self) -> List[str]:
        return [f"CREATE INDEX IF NOT EXISTS {self.index_name} ON {self.qualified_table} "
                f"USING hnsw ({self.spec.vector} vector_cosine_ops)"]

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
        filters are applied after it (pgvector 0.6), so 4×k candidates when filtering."""
        k = validate_k(k)
        wanted = 4 * k if (provider or view_position) else k
        cur = conn.cursor()
        cur.execute("SELECT set_config('hnsw.ef_search', %s, true)",
                    [str(min(1000, max(40, wanted)))])
        return super().nearest(conn, vector, k, provider, view_position)

    # -- values ----------------------------------------------------------------------------
    def encode_vector(self, vector: np.ndarray):
        return np.asarray(vector, dtype=np.float32)

    def decode_vector(self, value) -> np.ndarray:
        if hasattr(value, "to_numpy"):
            return np.asarray(value.to_numpy(), dtype=np.float32)
        if isinstance(value, str):  # text form "[1,2,3]" when no adapter is registered
            return np.array(value.strip("[]").split(","), dtype=np.float32)
        return np.asarray(value, dtype=np.float32)

