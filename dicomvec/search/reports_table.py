"""Read a reports table as it is: dicomvec's own, or one another tool made (read-only).

Users may already hold ``VectorSearch.MIMICCXRReports`` with only SubjectID, StudyID, Findings,
Impression and a Vector of *their* model (e.g. OpenAI ``text-embedding-3-large``, 3072-d). This
module never writes and never assumes dicomvec's columns:

* ``inspect_reports(store)`` reads the table's columns with the dialect's catalog reader (the
  one the write-side schema guard uses; names matched case-insensitively, PostgreSQL names
  quoted when they are not lower case) → ``ReportsTable``.
* ``lookup_reports(store, table, studies)`` → ``{StudyID: ReportHit}``: the columns the table has,
  '' for the ones it lacks (ReportPath, EmbeddedText), None for Provider.
* ``vector_column(store, table, expected)`` → ``VectorColumn``: how the vectors are stored and
  their length, found before any search, so a query of another length is refused up front.
* ``nearest_reports(store, table, column, query, n)`` → ``[ReportHit]`` best first: in the
  database where its dialect can search the column (``Dialect.searchable_vector``: pgvector
  ``vector``/``halfvec`` ``<=>``; IRIS ``VECTOR_COSINE``, with ``TO_VECTOR(column, ...)`` for
  vectors kept as text), else an exact cosine scan in numpy over the rows streamed in chunks
  (SQLite; PostgreSQL arrays, JSON text, bytea).

Stored vector forms read: see ``dicomvec.io.stores.vectors.decode_vector``.

IDs: MIMIC tools write ``s50414267`` / ``p10000032`` where dicomvec writes ``50414267`` /
``10000032``; both forms are matched, and hits carry dicomvec's form.
"""
from __future__ import annotations

import dataclasses
import heapq
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from dicomvec.errors import UserError
from dicomvec.io.stores.dialects import redact_url, validate_k
from dicomvec.io.stores.tables import REPORTS, ReportHit, VectorColumn
from dicomvec.io.stores.vectors import decode_vector

#: ViewPosition order among images of one study (same report score): frontal first
VIEW_ORDER = ("PA", "AP", "LATERAL", "LL")
#: the ReportHit fields, in order, and what stands in for a column the table lacks
_HIT_FIELDS = (("StudyID", None), ("SubjectID", "''"), ("ReportPath", "''"),
               ("Findings", "''"), ("Impression", "''"), ("EmbeddedText", "''"),
               ("Provider", "NULL"))
_PREFIXED = {"StudyID": re.compile(r"^[sS](\d+)$"), "SubjectID": re.compile(r"^[pP](\d+)$")}
SCAN_CHUNK = 2000


def canonical_id(column: str, value) -> str:
    """``s50414267`` → ``50414267`` (StudyID), ``p10000032`` → ``10000032`` (SubjectID)."""
    text = "" if value is None else str(value).strip()
    match = _PREFIXED[column].match(text)
    return match.group(1) if match else text


def study_forms(study: str) -> List[str]:
    """The spellings another tool may have used for a (dicomvec) StudyID."""
    study = canonical_id("StudyID", study)
    return [study, f"s{study}"] if study.isdigit() else [study]


def view_rank(view: Optional[str]) -> int:
    """PA, AP, LATERAL, LL, then any other view, then none."""
    view = (view or "").strip().upper()
    if view in VIEW_ORDER:
        return VIEW_ORDER.index(view)
    return len(VIEW_ORDER) + (0 if view else 1)


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


@dataclasses.dataclass(frozen=True)
class ReportsTable:
    """An existing reports table: its SQL name and its columns (lower name → (name, type))."""

    dialect: object
    qualified: str
    columns: Dict[str, Tuple[str, str]]

    def has(self, name: str) -> bool:
        return name.lower() in self.columns

    def column(self, name: str) -> str:
        return self.dialect.quote_identifier(self.columns[name.lower()][0])

    def declared_type(self, name: str) -> str:
        return (self.columns.get(name.lower(), ("", ""))[1] or "").lower()

    @property
    def ours(self) -> bool:
        """True when it has every column of dicomvec's reports table."""
        return all(self.has(name) for name in REPORTS.column_names)

    @property
    def missing(self) -> List[str]:
        return [name for name in REPORTS.column_names if not self.has(name)]

    def select_list(self) -> str:
        """The ReportHit fields as SQL (stand-ins for missing columns)."""
        parts = []
        for name, stand_in in _HIT_FIELDS:
            parts.append(self.column(name) if self.has(name) else f"{stand_in} AS {name}")
        return ", ".join(parts)

    def hit(self, row: Sequence, score: Optional[float] = None) -> ReportHit:
        values = [_text(v) for v in row[:6]]
        values[0] = canonical_id("StudyID", values[0])
        values[1] = canonical_id("SubjectID", values[1])
        provider = row[6] if row[6] is None else _text(row[6])
        return ReportHit(*values, provider, score=score)


def inspect_reports(store) -> ReportsTable:
    """The reports table ``store`` points at, as the catalog describes it."""
    dialect = store.dialect

    def action(conn):
        names = dialect.find_table(conn)
        return names, names and dialect.describe_table(conn, names, dimension=False)
    names, shape = store.read(action, "reports catalog")
    if not shape:
        raise UserError(f"no reports table {dialect.qualified_table} at "
                        f"{redact_url(store.url)} (give its name with --reports-table / "
                        "--reports-schema, or load reports with `dicomvec reports`)")
    qualified = dialect.sql_name(*names)
    table = ReportsTable(dialect, qualified,
                         {c.name.lower(): (c.name, c.declared) for c in shape.columns})
    if not table.has("StudyID"):
        raise UserError(f"the reports table {qualified} has no StudyID column: it cannot be "
                        "joined to the images")
    return table


def lookup_reports(store, table: ReportsTable, studies: Iterable[str]) -> Dict[str, ReportHit]:
    """``{StudyID: ReportHit}`` for the studies that have a row (either ID spelling)."""
    numeric = any(t in table.declared_type("StudyID") for t in ("int", "numeric", "decimal"))
    keys: List = []
    for study in dict.fromkeys(canonical_id("StudyID", s) for s in studies if s):
        if numeric:
            keys.extend([int(study)] if study.isdigit() else [])
        else:
            keys.extend(study_forms(study))
    marker = store.dialect.marker
    found: Dict[str, ReportHit] = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        sql = (f"SELECT {table.select_list()} FROM {table.qualified} WHERE "
               f"{table.column('StudyID')} IN ({', '.join([marker] * len(chunk))})")
        for row in store.query(sql, chunk, "reports lookup"):
            hit = table.hit(row)
            found.setdefault(hit.StudyID, hit)
    return found


# -- vectors ----------------------------------------------------------------------------------
def _sample(store, table: ReportsTable, column: str, expression: str = "{}"):
    """``expression`` of one stored vector of ``column`` (None: the table has none)."""
    sql = store.dialect.sample_vectors_sql(expression.format(column), column, table.qualified, 1)
    rows = store.query(sql, None, "reports vector sample")
    return rows[0][0] if rows else None


def vector_column(store, table: ReportsTable, expected: Optional[int] = None) -> VectorColumn:
    """The Vector column's storage and length (catalog, else one stored value)."""
    if not table.has("Vector"):
        raise UserError(f"the reports table {table.qualified} has no Vector column to search")
    column = table.column("Vector")
    declared = table.declared_type("Vector")
    length_sql = store.dialect.stored_length_sql(declared)
    value = _sample(store, table, column, length_sql or "{}")
    if value is None:
        raise UserError(f"the reports table {table.qualified} has no vectors")
    try:
        dimension = int(value) if length_sql else int(decode_vector(value, expected).shape[0])
    except (ValueError, TypeError) as exc:
        raise UserError(f"cannot read the vectors of {table.qualified}.{column} "
                        f"({declared or type(value).__name__}): {exc}") from None
    native = store.dialect.searchable_vector(column, declared, dimension)
    if native is not None:
        return native
    if isinstance(value, (bytes, bytearray, memoryview)):
        width = 8 if expected and len(bytes(value)) == 8 * expected else 4
        storage = f"{declared or 'BLOB'} of {dimension} float{width * 8} values"
    elif isinstance(value, str):
        form = "JSON array" if value.lstrip().startswith("[") else "comma-separated list"
        storage = f"{declared or 'text'} holding a {form} of {dimension} numbers"
    else:
        storage = f"{declared or type(value).__name__} of {dimension} values"
    return VectorColumn(column, "scan", dimension, storage)


def nearest_reports(store, table: ReportsTable, column: VectorColumn, query: np.ndarray,
                    n: int) -> Tuple[List[ReportHit], int]:
    """The ``n`` reports most cosine-similar to ``query``, best first, and how many stored
    vectors were skipped as unreadable or of another length (scan only)."""
    n = validate_k(n)
    query = np.asarray(query, dtype=np.float64).reshape(-1)
    if query.shape[0] != column.dimension:
        raise UserError(f"the query vector has {query.shape[0]} dimensions, "
                        f"{table.qualified}.{column.name} holds {column.dimension}")
    if column.kind == "scan":
        return _scan(store, table, column, query, n)
    dialect = store.dialect
    select = table.select_list()
    try:
        rows = store.query(*dialect.foreign_nearest_sql(select, table.qualified, column, query,
                                                        n), "nearest reports")
    except Exception as exc:
        fallback = dialect.foreign_search_fallback(column)
        if fallback is None or store.is_transient(exc):
            raise
        rows = store.query(*dialect.foreign_nearest_sql(select, table.qualified, fallback,
                                                        query, n), "nearest reports")
    return [table.hit(row[:-1], float(row[-1])) for row in rows], 0


def _scan(store, table: ReportsTable, column: VectorColumn, query: np.ndarray,
          n: int) -> Tuple[List[ReportHit], int]:
    """Exact cosine over every stored vector, streamed in chunks, keeping the best ``n``."""
    unit = query / max(float(np.linalg.norm(query)), 1e-12)
    sql = (f"SELECT {table.select_list()}, {column.name} FROM {table.qualified} "
           f"WHERE {column.name} IS NOT NULL")

    def action(conn):
        cur = store.dialect.streaming_cursor(conn, "dicomvec_reports_scan")
        cur.execute(sql)
        best: List[Tuple[float, Tuple[int, ...], int, tuple]] = []
        skipped = seen = 0
        while True:
            rows = cur.fetchmany(SCAN_CHUNK)
            if not rows:
                break
            for row in rows:
                try:
                    vec = decode_vector(row[-1], column.dimension)
                except (ValueError, TypeError):
                    skipped += 1
                    continue
                norm = float(np.linalg.norm(vec))
                if vec.shape[0] != column.dimension or not np.isfinite(norm) or norm < 1e-12:
                    skipped += 1
                    continue
                score = float(vec @ unit) / norm
                # heap of the best n; ties broken by StudyID so the order is deterministic
                seen += 1
                item = (score, _negated(_text(row[0])), -seen, tuple(row[:-1]))
                if len(best) < n:
                    heapq.heappush(best, item)
                elif item > best[0]:
                    heapq.heapreplace(best, item)
        cur.close()
        return best, skipped
    best, skipped = store.read(action, "reports scan")
    ordered = sorted(best, reverse=True)
    return [table.hit(row, score) for score, _, _, row in ordered], skipped


def _negated(text: str) -> Tuple[int, ...]:
    """A key that sorts ``text`` descending (so ties come out in ascending StudyID)."""
    return tuple(-ord(ch) for ch in text) + (0,)
