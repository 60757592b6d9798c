"""Table specs: the reports table (and any further table) on the SAME sink core.

The images table's SQL lives in the database dialects (``dialects.py`` and the per-database
modules). Other tables are described once, as a ``TableSpec`` (columns, primary key, vector
column, search-hit columns), and ``SpecDialect`` renders their SQL for each database family from
that spec while reusing the database dialect for everything else: connecting, per-connection
setup, transient-error classification, parameter markers and vector encoding.
``VectorStore(url, spec=REPORTS)`` therefore gets the same batched idempotent upsert,
reconnect-and-retry and bisection of bad rows as the images table.

The reports table, ``VectorSearch.MIMICCXRReports``:

=============  =================================================================
SubjectID      NOT NULL
StudyID        PRIMARY KEY (MIMIC study IDs are unique across subjects), so the
               images table can declare ``FOREIGN KEY (StudyID) REFERENCES`` it
ReportPath     where the report was read
Findings       FINDINGS section ('' when the report has none)
Impression     IMPRESSION section ('' when the report has none)
EmbeddedText   exactly the text sent to the text tower (see ``dicomvec.reports``)
Vector         the text embedding; NULL for a text-only row (a provider without a
               text tower, e.g. ``thumbnail``): never a zero vector
EmbeddingModel NULL for text-only rows
Provider       NULL for text-only rows
CreatedAt      UTC write time
=============  =================================================================

One row per study: re-running ``dicomvec reports`` with another semantic provider replaces the
study's vector (searches filter on Provider, so vectors of different models never mix). A
text-only write never erases an existing vector: it updates the text columns only.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from dicomvec.io.stores.dialects import REPORTS_TABLE  # the images table's FK target


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@dataclasses.dataclass(frozen=True)
class Column:
    """``kind``: id (VARCHAR(50)), name (VARCHAR(100)), path (VARCHAR(500)), text (long text),
    vector, timestamp."""

    name: str
    kind: str
    nullable: bool = True


@dataclasses.dataclass(frozen=True)
class TableSpec:
    table: str
    columns: Tuple[Column, ...]
    key: Tuple[str, ...]
    row_type: type
    hit_type: type
    #: the columns a search returns, in ``hit_type`` field order (score appended last)
    hit_columns: Tuple[str, ...]
    vector: str = "Vector"
    #: columns written only together with a vector (left untouched by a text-only write)
    with_vector: Tuple[str, ...] = ("Vector", "EmbeddingModel", "Provider")

    @property
    def column_names(self) -> List[str]:
        return [c.name for c in self.columns]

    def column_groups(self, rows: Sequence) -> List[Tuple[List[str], list]]:
        """``rows`` grouped by the columns they write (with / without a vector), in order."""
        groups: dict = {}
        for row in rows:
            groups.setdefault(tuple(self.write_columns(row)), []).append(row)
        return [(list(columns), group) for columns, group in groups.items()]

    def row_label(self, row) -> str:
        """The row's key, for messages."""
        return "/".join(str(getattr(row, k)) for k in self.key)

    def write_columns(self, row) -> List[str]:
        """The columns one upsert writes: all of them, or all but the vector columns when the
        row has no vector."""
        if getattr(row, self.vector) is not None:
            return self.column_names
        return [c for c in self.column_names if c not in self.with_vector]


@dataclasses.dataclass(frozen=True)
class ReportRow:
    """One row of the reports table. ``Vector`` None = text only."""

    SubjectID: str
    StudyID: str
    ReportPath: str
    Findings: str
    Impression: str
    EmbeddedText: str
    Vector: Optional[np.ndarray]
    EmbeddingModel: Optional[str]
    Provider: Optional[str]
    CreatedAt: str = dataclasses.field(default_factory=_now)


@dataclasses.dataclass(frozen=True)
class ReportHit:
    """A report found by a search or looked up by StudyID (``score`` None for a lookup)."""

    StudyID: str
    SubjectID: str
    ReportPath: str
    Findings: str
    Impression: str
    EmbeddedText: str
    Provider: Optional[str]
    score: Optional[float] = None


REPORTS = TableSpec(
    table=REPORTS_TABLE,
    columns=(Column("SubjectID", "id", nullable=False), Column("StudyID", "id", nullable=False),
             Column("ReportPath", "path"), Column("Findings", "text"),
             Column("Impression", "text"), Column("EmbeddedText", "text"),
             Column("Vector", "vector"), Column("EmbeddingModel", "name"),
             Column("Provider", "id"), Column("CreatedAt", "timestamp")),
    key=("StudyID",),
    row_type=ReportRow,
    hit_type=ReportHit,
    hit_columns=("StudyID", "SubjectID", "ReportPath", "Findings", "Impression", "EmbeddedText",
                 "Provider"),
)

# Per database family: SQL column types and how a vector parameter is written.
_TYPES = {
    "sqlite": {"id": "VARCHAR(50)", "name": "VARCHAR(100)", "path": "VARCHAR(500)",
               "text": "TEXT", "timestamp": "TIMESTAMP"},
    "postgresql": {"id": "VARCHAR(50)", "name": "VARCHAR(100)", "path": "VARCHAR(500)",
                   "text": "TEXT", "timestamp": "TIMESTAMP"},
    "iris": {"id": "VARCHAR(50)", "name": "VARCHAR(100)", "path": "VARCHAR(500)",
             "text": "VARCHAR(30000)", "timestamp": "TIMESTAMP"},
}


class SpecDialect:
    """A database dialect bound to a ``TableSpec``: renders the spec's DDL, upsert, search and
    key lookup for the dialect's family; everything else is delegated to ``base``."""

    def __init__(self, base, spec: TableSpec):
        if base.name not in _TYPES:
            raise ValueError(f"the {spec.table} table is not supported on {base.name!r}")
        self.base = base
        self.spec = spec

    def __getattr__(self, name: str) -> Any:  # connect, prepare, is_transient, count_sql, ...
        if name in ("base", "spec"):  # not set yet (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def family(self) -> str:
        return self.base.name

    @property
    def marker(self) -> str:
        return getattr(self.base, "marker", "?")

    def _marks(self, n: int) -> str:
        return ", ".join([self.marker] * n)

    # -- schema ----------------------------------------------------------------------------
    def _column_sql(self, column: Column, dimension: int) -> str:
        if column.kind == "vector":
            sql = {"sqlite": f"BLOB CHECK ({column.name} IS NULL OR length({column.name}) = "
                             f"{4 * int(dimension)})",
                   "postgresql": f"vector({int(dimension)})",
                   "iris": f"VECTOR(DOUBLE, {int(dimension)})"}[self.family]
        else:
            sql = _TYPES[self.family][column.kind]
        if column.kind == "timestamp":
            sql += " DEFAULT CURRENT_TIMESTAMP"
        if not column.nullable:
            sql += " NOT NULL"
        return f"  {column.name} {sql}"

    def create_table_statements(self, dimension: int, with_report_fk: bool = False) -> List[str]:
        """DDL for the spec's table (``with_report_fk`` is for the images table: ignored)."""
        statements = []
        if self.family == "postgresql":
            statements.append("CREATE EXTENSION IF NOT EXISTS vector")
        if self.base.schema and self.family in ("postgresql", "iris"):
            statements.append(f"CREATE SCHEMA IF NOT EXISTS {self.base.schema}")
        body = ",\n".join([self._column_sql(c, dimension) for c in self.spec.columns]
                          + [f"  PRIMARY KEY ({', '.join(self.spec.key)})"])
        statements.append(f"CREATE TABLE IF NOT EXISTS {self.base.qualified_table} (\n{body}\n)")
        return statements

    def create_index_statements(self) -> List[str]:
        return []

    # -- writes ----------------------------------------------------------------------------
    def _vector_param(self, dimension: int) -> str:
        return {"sqlite": "?", "postgresql": "%b",
                "iris": f"TO_VECTOR(?, DOUBLE, {int(dimension)})"}[self.family]

    def upsert_sql(self, columns: Sequence[str], dimension: int) -> str:
        """Insert-or-update on the spec's key; only ``columns`` are written or updated."""
        values = ", ".join(self._vector_param(dimension) if c == self.spec.vector else self.marker
                           for c in columns)
        head = f"INTO {self.base.qualified_table} ({', '.join(columns)}) VALUES ({values})"
        if self.family == "iris":
            return f"INSERT OR UPDATE {head}"
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in self.spec.key)
        return f"INSERT {head} ON CONFLICT ({', '.join(self.spec.key)}) DO UPDATE SET {updates}"

    def write_batch(self, conn, rows: Sequence, columns: Sequence[str], dimension: int) -> None:
        """One parametrised upsert, ``executemany`` over ``rows`` (the core commits)."""
        cur = conn.cursor()
        cur.executemany(self.upsert_sql(columns, dimension),
                        [self.row_params(row, columns) for row in rows])

    def row_params(self, row, columns: Sequence[str]) -> list:
        return [self.base.encode_vector(getattr(row, c)) if c == self.spec.vector
                else getattr(row, c) for c in columns]

    # -- reads -----------------------------------------------------------------------------
    def _where(self, provider: Optional[str]) -> Tuple[str, list]:
        sql = f" WHERE {self.spec.vector} IS NOT NULL"
        if provider:
            return sql + f" AND Provider = {self.marker}", [provider]
        return sql, []

    def nearest_sql(self, vector: np.ndarray, k: int, provider: Optional[str]) -> Tuple[str, list]:
        """Search SQL for the server-side families: hit columns + cosine score, best first."""
        k = _positive(k)
        where, params = self._where(provider)
        columns = ", ".join(self.spec.hit_columns)
        query = self.base.encode_vector(vector)
        if self.family == "iris":
            dimension = int(np.asarray(vector).reshape(-1).shape[0])
            return (f"SELECT TOP {k} {columns}, VECTOR_COSINE({self.spec.vector}, "
                    f"{self._vector_param(dimension)}) AS score "
                    f"FROM {self.base.qualified_table}{where} ORDER BY score DESC",
                    [query, *params])
        if self.family == "postgresql":
            return (f"SELECT {columns}, 1 - ({self.spec.vector} <=> %b) AS score "
                    f"FROM {self.base.qualified_table}{where} "
                    f"ORDER BY {self.spec.vector} <=> %b LIMIT {k}", [query, *params, query])
        raise ValueError(f"no server-side search SQL for {self.family}")

    def nearest(self, conn, vector: np.ndarray, k: int, provider: Optional[str],
                view_position: Optional[str] = None):
        """The ``k`` rows most cosine-similar to ``vector`` (rows with a vector only)."""
        if view_position:
            raise ValueError(f"the {self.spec.table} table has no view position to filter on")
        hit = self.spec.hit_type
        if self.family != "sqlite":
            sql, params = self.nearest_sql(vector, k, provider)
            cur = conn.cursor()
            cur.execute(sql, params)
            return [hit(*row[:-1], score=float(row[-1])) for row in cur.fetchall()]
        k = _positive(k)
        where, params = self._where(provider)
        cur = conn.cursor()
        cur.execute(f"SELECT {', '.join(self.spec.hit_columns)}, {self.spec.vector} "
                    f"FROM {self.base.qualified_table}{where}", params)
        rows = cur.fetchall()
        if not rows:
            return []
        matrix = np.stack([self.base.decode_vector(r[-1]) for r in rows])
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        scores = matrix @ query / np.maximum(np.linalg.norm(matrix, axis=1), 1e-12)
        order = np.argsort(-scores, kind="stable")[:k]
        return [hit(*rows[i][:-1], score=float(scores[i])) for i in order]

    def lookup_sql(self, keys: Sequence[str]) -> Tuple[str, list]:
        """Hit columns of the rows whose (single-column) key is in ``keys``."""
        if len(self.spec.key) != 1:
            raise ValueError("lookup needs a single-column key")
        return (f"SELECT {', '.join(self.spec.hit_columns)} FROM {self.base.qualified_table} "
                f"WHERE {self.spec.key[0]} IN ({self._marks(len(keys))})", list(keys))


def _positive(k: int) -> int:
    if isinstance(k, bool) or int(k) != k or int(k) < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def lookup(store, keys: Sequence[str]) -> dict:
    """Rows of a spec-bound ``store`` by key (``{key: hit}``); unknown keys are absent."""
    keys = list(dict.fromkeys(k for k in keys if k))
    found = {}
    for start in range(0, len(keys), 500):
        sql, params = store.dialect.lookup_sql(keys[start:start + 500])

        def action(conn, sql=sql, params=params):
            cur = conn.cursor()
            cur.execute(sql, params)
            return cur.fetchall()
        for row in store._with_retry(action, "lookup"):
            hit = store.dialect.spec.hit_type(*row)
            found[row[0]] = hit
    return found
