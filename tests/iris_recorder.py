"""A recording stand-in for ONE ``iris.dbapi`` connection, for statement-level tests of the IRIS
dialect (no IRIS server can run here; what IRIS does with these statements is covered by the
live contract tests when ``DICOMVEC_IRIS_URL`` is set).

It records every statement and parameter list the dialect sends through the DB-API and answers
catalog queries from a small description of the table (exists or not, its columns, key, stored
vectors). Errors are injected per statement prefix with ``fail_on`` (raised as the real
driver's exception classes). It does not interpret SQL beyond these answers.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

from dicomvec.io.stores.tables import IMAGES, TableSpec

ZVERSION = ("IRIS for UNIX (Ubuntu Server LTS for x86-64 Containers) 2025.1 (Build 223U) "
            "Tue Mar 11 2025 18:14:42 EDT")


def spec_columns(spec: TableSpec, dimension: int):
    """INFORMATION_SCHEMA.COLUMNS rows for a table made by this dicomvec."""
    from dicomvec.io.stores.tables import declared_length
    rows = [("ID", "integer", None, "NO", None)]  # IRIS's RowID
    for c in spec.columns:
        kind = ("VECTOR" if c.type == "VECTOR" else "longvarchar" if c.type == "TEXT"
                else c.type.split("(")[0].lower())
        rows.append((c.name, kind, declared_length(c.type), "YES" if c.nullable else "NO",
                     "CURRENT_TIMESTAMP" if "DEFAULT" in c.type else None))
    return rows


class Recorder:
    """The connection: ``statements`` lists (sql, params) in order, plus COMMIT/ROLLBACK."""

    def __init__(self, spec: TableSpec = IMAGES, table_exists: bool = False, dimension: int = 4,
                 columns=None, key=None, index_exists: bool = False,
                 stored: Optional[List[Tuple[str, str]]] = None, zversion: str = ZVERSION,
                 index_key=(), catalog_name=("VectorSearch", "MIMICCXRImages"),
                 reports_table: Optional[str] = None):
        """``reports_table``: the name of a dicomvec reports table that exists beside the
        described one (catalog queries naming it answer for it: a foreign key's target)."""
        self.spec = spec
        self.reports_table = reports_table
        self.catalog_name = catalog_name
        self.table_exists = table_exists
        self.columns = columns if columns is not None else spec_columns(spec, dimension)
        self.key = list(key if key is not None else spec.key)
        self.index_exists = index_exists
        self.index_key = list(index_key)  # the key as INFORMATION_SCHEMA.INDEXES flags it
        self.stored = stored or []  # (ImageID, vector text) rows for vector reads
        self.zversion = zversion
        self.statements: List[Tuple[str, object]] = []
        self.failures: Dict[str, List[Exception]] = {}
        self.closed = False

    def fail_on(self, prefix: str, *errors: Exception) -> "Recorder":
        """Raise ``errors`` (one per call, in order) for statements starting with ``prefix``."""
        self.failures.setdefault(prefix, []).extend(errors)
        return self

    # -- DB-API ------------------------------------------------------------------------------
    def cursor(self):
        return _Cursor(self)

    def commit(self):
        self.statements.append(("COMMIT", None))

    def rollback(self):
        self.statements.append(("ROLLBACK", None))

    def close(self):
        self.closed = True

    # -- answers -----------------------------------------------------------------------------
    def _maybe_fail(self, sql: str) -> None:
        for prefix, errors in self.failures.items():
            if sql.startswith(prefix) and errors:
                raise errors.pop(0)

    def _names_reports_table(self, sql: str, params) -> bool:
        return bool(self.reports_table and "INFORMATION_SCHEMA" in sql and params
                    and any(str(p).lower() == self.reports_table.lower() for p in params))

    def answer(self, sql: str, params) -> List[tuple]:
        self._maybe_fail(sql)
        if self._names_reports_table(sql, params):
            from dicomvec.io.stores.tables import REPORTS
            if "INFORMATION_SCHEMA.COLUMNS" in sql:
                return list(spec_columns(REPORTS, 4))
            if "KEY_COLUMN_USAGE" in sql or "PRIMARY_KEY = 1" in sql:
                return [(k,) for k in REPORTS.key]
            return []
        if "INFORMATION_SCHEMA.COLUMNS" in sql:
            return list(self.columns) if self.table_exists else []
        if "KEY_COLUMN_USAGE" in sql:
            return [(k,) for k in self.key] if self.table_exists else []
        if "INFORMATION_SCHEMA.TABLES" in sql:  # the table, as the catalog spells it
            return [self.catalog_name] if self.table_exists else []
        if "INFORMATION_SCHEMA.SCHEMATA" in sql:
            return [(1,)] if self.table_exists else []
        if "INFORMATION_SCHEMA.INDEXES" in sql and "PRIMARY_KEY = 1" in sql:
            return [(k,) for k in self.index_key] if self.table_exists else []
        if "INFORMATION_SCHEMA.INDEXES" in sql:
            return [(1,)] if self.index_exists else []
        if sql == "SELECT $ZVERSION":
            return [(self.zversion,)]
        if sql.startswith("SELECT TOP 100 Vector"):
            return [(v,) for _, v in self.stored]
        if sql.startswith("SELECT ImageID, Vector"):
            return list(self.stored)
        if sql.startswith("SELECT COUNT(*)"):
            return [(len(self.stored),)]
        if sql.startswith("SELECT Provider, COUNT(*)"):
            return [("nvclip", len(self.stored))] if self.stored else []
        if sql.startswith("EXPLAIN"):
            return [("<plan><sql>...</sql><module>Read index map "
                     f"{self.spec.table}HNSW</module></plan>",)]
        if sql.startswith("CREATE TABLE"):
            self.table_exists = True
        return []


class _Cursor:
    def __init__(self, conn: Recorder):
        self.conn = conn
        self.rows: List[tuple] = []

    def execute(self, sql, params=None):
        self.conn.statements.append((sql, list(params) if params is not None else None))
        self.rows = self.conn.answer(sql, params)

    def executemany(self, sql, seq):
        seq = [list(p) for p in seq]
        self.conn.statements.append((sql, seq))
        self.rows = self.conn.answer(sql, seq)

    def fetchone(self):
        return self.rows.pop(0) if self.rows else None

    def fetchall(self):
        rows, self.rows = self.rows, []
        return rows


def connect_to(recorders: List[Recorder]) -> Callable:
    """A replacement for ``IrisDialect.connect`` handing out ``recorders`` in order (one per
    (re)connection)."""
    def connect(self):
        if not recorders:
            raise AssertionError("more connections than the test expected")
        return recorders.pop(0)
    return connect
