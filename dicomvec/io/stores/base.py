"""The sink core shared by every database: batched idempotent upserts, reconnect-and-retry on
transient errors, bisection of permanent row errors, existence lookups and nearest neighbours.

Each table is a ``TableSpec`` (``tables.py``: ``IMAGES`` by default, ``REPORTS``); its SQL comes
from the database's dialect (``dialects.py``), which differs per database only in how it
connects, a few SQL strings and how a vector is bound as a parameter. Flow: ``upsert(rows)``
takes a batch of rows (``ImageRow``, ``ReportRow``) and returns the rows that failed permanently
with their exception; everything else is committed exactly once per primary key ((ImageID,
Provider) for images, StudyID for reports).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np

from dicomvec import defaults
from dicomvec.io.stores import schema_check
from dicomvec.io.stores.dialects import (Dialect, StoredVectorError, dialect_for_url,
                                         redact_url)
from dicomvec.io.stores.tables import IMAGES, REPORTS, Hit, ImageRow, TableShape, TableSpec

__all__ = ["COLUMNS", "Hit", "ImageRow", "SinkConfig", "VectorStore", "vector_problem"]

log = logging.getLogger(__name__)

COLUMNS = IMAGES.column_names


class VectorStore:
    """A connection to one table (the images table, or ``spec``'s) through one dialect.

    Use one instance per DoFn instance (open in ``setup``, close in ``teardown``): DB-API
    connections are not shared across threads.
    """

    #: ImageIDs per ``existing_ids`` query
    id_chunk = 500

    def __init__(self, url: str, schema: str = defaults.SCHEMA, table: Optional[str] = None,
                 max_attempts: int = 4, retry_delay_s: float = 0.5,
                 dimension: Optional[int] = None, spec: Optional[TableSpec] = None,
                 table_given: Optional[bool] = None):
        """``dimension``: the table's vector length, when known (IRIS needs it as a literal in
        ``TO_VECTOR``); otherwise it comes from ``init_schema``, the catalog, or the batch.
        ``spec``: a ``tables.TableSpec`` for a table other than the images table (``REPORTS``);
        ``table``: the table's name (default: the spec's, MIMICCXRImages / MIMICCXRReports);
        ``table_given``: the user named it (a table of another vector length is then refused
        with the advice to leave the option out; None: not known)."""
        self.url = url
        self.table_given = table_given
        self.spec = spec or IMAGES
        self.dialect: Dialect = dialect_for_url(url, schema=schema, spec=self.spec,
                                                table=table or None)
        self.max_attempts = max_attempts
        self.retry_delay_s = retry_delay_s
        self.dimension = int(dimension) if dimension else None
        self._conn = None
        self._catalog_checked = False
        self._shape_checked = False
        self.reconnects = 0

    def __repr__(self) -> str:
        return f"VectorStore({redact_url(self.url)!r}, table={self.dialect.qualified_table!r})"

    # -- connection ------------------------------------------------------------------------
    def open(self) -> "VectorStore":
        if self._conn is None:
            conn = self.dialect.connect()
            try:
                self.dialect.prepare(conn)
            except Exception:
                conn.close()
                raise
            self._conn = conn
        return self

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a dead connection must not mask the real error
                log.debug("ignoring error on close", exc_info=True)
            self._conn = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    @property
    def conn(self):
        return self.open()._conn

    def _reconnect(self) -> None:
        """Drop the (broken) connection; the next attempt opens a new one, so a server that is
        still unreachable counts as another failed attempt rather than escaping the retries."""
        self.close()
        self.reconnects += 1

    def is_transient(self, exc: BaseException) -> bool:
        """True when the error may pass (reconnect and retry): a retryable dead letter."""
        return self.dialect.is_transient(exc)

    def with_retry(self, action, what: str):
        """Run ``action(conn)``; on a transient error reconnect and run it again (bounded)."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return action(self.conn)
            except Exception as exc:
                self.rollback()
                if not self.dialect.is_transient(exc) or attempt == self.max_attempts:
                    raise
                log.warning("%s on %s: transient database error (%s: %s), reconnecting "
                            "(attempt %d/%d)", what, redact_url(self.url), type(exc).__name__,
                            str(exc).strip()[:200], attempt, self.max_attempts)
                time.sleep(self.retry_delay_s * attempt)
                self._reconnect()

    def rollback(self) -> None:
        """End the current transaction, if any; a failure here is logged, never raised."""
        try:
            if self._conn is not None:
                self._conn.rollback()
        except Exception:
            log.debug("rollback failed", exc_info=True)

    # -- schema ----------------------------------------------------------------------------
    def init_schema(self, dimension: int, with_report_fk: bool = False) -> bool:
        """Create schema and table if missing (idempotent). An existing table must be shaped
        like ours (``schema_check``): otherwise ``SchemaMismatchError`` /
        ``NeedsMigrationError`` and nothing is written. Returns True when the foreign key to
        the reports table was declared (asked for and that table exists)."""
        dimension = int(dimension)
        if dimension < 1:
            raise ValueError(f"vector dimension must be positive, got {dimension}")

        def action(conn):
            shape = self.dialect.describe_table(conn)
            conn.rollback()
            if shape is not None:
                schema_check.check_shape(self.spec, shape, dimension,
                                         self.dialect.qualified_table, redact_url(self.url),
                                         self.dialect.enforces_varchar_length,
                                         table_given=self.table_given)
                self._shape_checked = True
                return False
            add_fk = (with_report_fk and self.spec.foreign_key is not None
                      and self._reports_table_exists(conn))
            cur = conn.cursor()
            try:
                for statement in self.dialect.create_table_statements(dimension, add_fk):
                    cur.execute(statement)
                conn.commit()
            except Exception as exc:
                if not self.dialect.is_duplicate_table(exc):
                    raise
                self.rollback()  # created meanwhile by another process
            self.dialect.prepare(conn)
            self._shape_checked = True
            return add_fk
        added = self.with_retry(action, "init_schema")
        if with_report_fk and not added:
            log.warning("no foreign key on StudyID: %s does not exist yet (create the reports "
                        "table first, then re-create the images table to add it)",
                        self.dialect.reports_table)
        self.dimension = dimension
        return added

    def shape(self) -> Optional[TableShape]:
        """The existing table's columns, key and vector length (None: no such table)."""
        return self.read(self.dialect.describe_table, "describe")

    def check_writable(self, dimension: Optional[int] = None) -> None:
        """Raise when the existing table is not shaped like ours (once per store)."""
        if not self._shape_checked:
            schema_check.check_table_writable(self, dimension)
            self._shape_checked = True

    def migrate(self, statements: Sequence[str]) -> None:
        """Run the DDL ``statements`` (one transaction), then check the table is ours now."""
        def apply(conn):
            cur = conn.cursor()
            for statement in statements:
                cur.execute(statement)
            conn.commit()
        self.with_retry(apply, "migrate")
        self._shape_checked = False
        self.check_writable(None)

    def _reports_table_exists(self, conn) -> bool:
        """True when the foreign key's target exists and is keyed on the FK column alone (a
        reports table of another tool, with no unique StudyID, gets no foreign key)."""
        column, table = self.spec.foreign_key
        target = dialect_for_url(self.url, schema=self.dialect.schema or defaults.SCHEMA,
                                 table=table, spec=REPORTS)
        shape = target.describe_table(conn)
        if shape is None:
            return False
        if shape.key != (column.lower(),):
            log.warning("no foreign key on %s: %s is keyed on (%s), not on %s alone",
                        column, target.qualified_table, ", ".join(shape.key), column)
            return False
        return True

    def index_exists(self, conn) -> bool:
        """True when the dialect can tell the index exists (dialects whose DDL has no
        IF NOT EXISTS); an unanswerable catalog query means "try to create it"."""
        statement = self.dialect.index_exists_sql()
        if statement is None:
            return False
        sql, params = statement
        try:
            cur = conn.cursor()
            cur.execute(sql, params)
            return cur.fetchone() is not None
        except Exception as exc:
            if self.dialect.is_transient(exc):
                raise
            log.debug("index catalog query failed; creating the index", exc_info=True)
            self.rollback()
            return False

    def create_index(self) -> List[str]:
        """Build the approximate nearest-neighbour index (after a bulk load); idempotent.
        Returns what a side index (files beside an embedded database) did, one line per
        provider (empty for a database's own index)."""
        statements = self.dialect.create_index_statements()
        if not statements:
            self.check_writable()
            built = [self.read(lambda conn, p=p: self.dialect.build_vector_index(conn, p),
                               "create_index") for p in self.provider_counts() if p]
            if not any(built):
                log.info("%s has no vector index to build: search is an exact scan",
                         self.dialect.name)
            return [line for line in built if line]

        self.check_writable()  # no index on a table that is not ours

        def action(conn):
            self.dialect.check_index_support(conn)
            if self.index_exists(conn):
                log.info("vector index already exists on %s", self.dialect.qualified_table)
                return
            cur = conn.cursor()
            try:
                for statement in statements:
                    cur.execute(statement)
                conn.commit()
            except Exception as exc:
                if self.dialect.is_duplicate_index(exc):
                    self.rollback()
                    log.info("vector index already exists on %s", self.dialect.qualified_table)
                    return
                if self.dialect.is_transient(exc):
                    raise
                self.rollback()
                error = self.dialect.index_error(exc, conn)
                if error is None:
                    raise
                raise error from exc
        self.with_retry(action, "create_index")
        return []

    # -- writes ----------------------------------------------------------------------------
    def upsert(self, rows: Sequence[ImageRow]) -> List[Tuple[ImageRow, Exception]]:
        """Write ``rows`` (one transaction per batch). Returns permanently failed rows.

        Transient errors reconnect and retry the whole batch (safe: the write is an upsert on
        the primary key). A permanent error splits the batch in halves until the bad rows are
        alone, so good neighbours are still written.
        """
        if not rows:
            return []
        dimension = self._dimension_for(rows)
        failed: List[Tuple[ImageRow, Exception]] = []
        good: List[ImageRow] = []
        for row in rows:
            if row.Vector is None and self.spec.vector_nullable:
                good.append(row)  # a text-only row (reports): no vector to check
                continue
            problem = vector_problem(row.Vector, dimension)
            if problem:
                failed.append((row, ValueError(f"{self.spec.row_label(row)}: {problem}")))
            else:
                good.append(row)
        if good:
            try:
                self.check_writable(dimension)  # never write into a table that is not ours
            except Exception as exc:
                if not self.dialect.is_transient(exc):
                    raise
                return failed + [(row, exc) for row in good]
        return failed + self._upsert_valid(good, dimension)

    def _upsert_valid(self, rows: Sequence[ImageRow],
                      dimension: int) -> List[Tuple[ImageRow, Exception]]:
        if not rows:
            return []
        try:
            self.with_retry(lambda conn: self._write(conn, rows, dimension), "upsert")
            return []
        except Exception as exc:
            if self.dialect.is_transient(exc):
                return [(row, exc) for row in rows]
            if len(rows) == 1:
                return [(rows[0], exc)]
            middle = len(rows) // 2
            return (self._upsert_valid(rows[:middle], dimension)
                    + self._upsert_valid(rows[middle:], dimension))

    def _dimension_for(self, rows: Sequence[ImageRow]) -> int:
        """The table's vector length: given, learned by init_schema, read from the catalog, or
        (last resort) the most common length in the batch."""
        if self.dimension is None and not self._catalog_checked:
            try:  # one attempt: the write that follows has its own retries
                self.dimension = self.dialect.table_dimension(self.conn)
                self._catalog_checked = True
            except Exception:
                log.debug("could not read the vector dimension from the catalog", exc_info=True)
                self.rollback()
        if self.dimension is not None:
            return self.dimension
        lengths = collections.Counter(int(np.size(row.Vector)) for row in rows
                                      if row.Vector is not None)
        return lengths.most_common(1)[0][0] if lengths else 0

    def _write(self, conn, rows: Sequence[ImageRow], dimension: int) -> None:
        for columns, group in self.spec.column_groups(rows):  # with / without a vector
            self.dialect.write_batch(conn, group, columns, dimension)
        conn.commit()

    # -- reads -----------------------------------------------------------------------------
    def existing_ids(self, image_ids: Iterable[str], provider: str,
                     preprocess_version: Optional[str] = None,
                     valid_dimension: Optional[int] = None) -> Set[str]:
        """Which of ``image_ids`` already have a row for ``provider`` (and version; a row from
        before versions were recorded counts). ``valid_dimension``: only rows whose vector has
        that length and is not all zeros (``run --replace-invalid``)."""
        ids = list(dict.fromkeys(image_ids))
        found: Set[str] = set()
        for start in range(0, len(ids), self.id_chunk):
            chunk = ids[start:start + self.id_chunk]
            sql, params = self.dialect.existing_sql(chunk, provider, preprocess_version,
                                                    valid_dimension)

            def action(conn, sql=sql, params=params):
                cur = conn.cursor()
                cur.execute(sql, params)
                return [r[0] for r in cur.fetchall()]
            found.update(self.read(action, "existing_ids"))
        return found

    def count(self, provider: Optional[str] = None) -> int:
        return int(self.query(*self.dialect.count_sql(provider), "count")[0][0])

    def vectors(self, image_ids: Sequence[str], provider: str) -> Dict[str, np.ndarray]:
        """Stored vectors by ImageID (for checks and image → image search by ID)."""
        if not image_ids:
            return {}
        sql, params = self.dialect.vectors_sql(list(image_ids), provider)

        def action(conn):
            if self.dimension is None:
                self.dimension = self.dialect.table_dimension(conn)
            cur = conn.cursor()
            cur.execute(sql, params)
            found = {}
            for image_id, value in cur.fetchall():
                vector = self.dialect.decode_vector(value)
                if self.dimension is not None and vector.shape[0] != self.dimension:
                    raise StoredVectorError(
                        f"the stored vector of {image_id} has {vector.shape[0]} values, the "
                        f"table {self.dialect.qualified_table} stores {self.dimension} "
                        "(truncated or written by another tool?)")
                found[image_id] = vector
            return found
        return self.read(action, "vectors")

    def provider_counts(self) -> Dict[Optional[str], int]:
        """Rows per Provider."""
        rows = self.query(self.dialect.provider_counts_sql(), None, "provider_counts")
        return {r[0]: int(r[1]) for r in rows}

    def invalid_rows(self, dimension: int) -> List[tuple]:
        """Key values of rows whose vector is NULL, all zeros or not ``dimension`` long."""
        sql, params = self.dialect.invalid_vectors_sql(dimension)
        return [tuple(r) for r in self.query(sql, params, "invalid_rows")]

    def nearest(self, vector: np.ndarray, k: int = defaults.SEARCH_K,
                provider: Optional[str] = None, view_position: Optional[str] = None) -> List[Hit]:
        """The ``k`` rows most cosine-similar to ``vector``, best first."""
        return self.read(
            lambda conn: self.dialect.nearest(conn, np.asarray(vector, dtype=np.float32), k,
                                              provider, view_position),
            "nearest")

    def query(self, sql: str, params: Optional[Sequence] = None, what: str = "query") -> list:
        """Every row of one read-only statement (``read``: retried, transaction ended)."""
        def action(conn):
            cur = conn.cursor()
            cur.execute(sql) if params is None else cur.execute(sql, list(params))
            return cur.fetchall()
        return self.read(action, what)

    def read(self, action, what: str):
        """``with_retry`` for a query, ending its transaction afterwards so an idle worker
        holds no snapshot or read lock (which would block DDL, VACUUM, WAL checkpoints)."""
        def read(conn):
            result = action(conn)
            conn.rollback()
            return result
        return self.with_retry(read, what)


def vector_problem(vector, dimension: int) -> Optional[str]:
    """Why ``vector`` cannot be stored in a ``dimension``-long column, or None when it can."""
    if vector is None:
        return "no vector"
    try:
        array = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError):
        return "vector is not numeric"
    if array.ndim != 1:
        return f"vector must be one-dimensional, got shape {array.shape}"
    if array.shape[0] != dimension:
        return f"vector has {array.shape[0]} dimensions, the table stores {dimension}"
    if not np.all(np.isfinite(array)):
        return "vector has non-finite values"
    return None


@dataclasses.dataclass(frozen=True)
class SinkConfig:
    """Where vectors go, as one value (like ``ProviderConfig``): the database URL, the schema
    and the tables' names. Travels to the workers; each opens its own ``VectorStore``.

    ``table_given`` / ``reports_table_given``: the user named the table (``--sink-table``,
    ``--table``, ``--reports-table``); False when the name comes from the vector length
    (``for_dimension``: ``defaults.images_table`` / ``defaults.reports_table``)."""

    url: str = defaults.SINK_URL
    schema: str = defaults.SCHEMA
    table: str = defaults.IMAGES_TABLE
    reports_table: str = defaults.REPORTS_TABLE
    table_given: bool = True
    reports_table_given: bool = True

    @classmethod
    def for_dimension(cls, dimension: int, url: str = defaults.SINK_URL,
                      schema: str = defaults.SCHEMA, table: Optional[str] = None,
                      reports_table: Optional[str] = None) -> "SinkConfig":
        """The sink of ``dimension``-long vectors: the tables named by the user, or else the
        tables of that length (``MIMICCXRImages`` / ``MIMICCXRReports`` for 1024-d,
        ``MIMICCXRImages<d>`` / ``MIMICCXRReports<d>`` for any other d)."""
        return cls(url, schema or defaults.SCHEMA, table or defaults.images_table(dimension),
                   reports_table or defaults.reports_table(dimension),
                   table_given=bool(table), reports_table_given=bool(reports_table))

    @property
    def redacted(self) -> str:
        """The URL with any password replaced, for messages."""
        return redact_url(self.url)

    @property
    def images_spec(self) -> TableSpec:
        """``IMAGES``, its optional foreign key pointing at this sink's reports table (the
        reports table of the same vector length)."""
        column, target = IMAGES.foreign_key
        if target == self.reports_table:
            return IMAGES
        return dataclasses.replace(IMAGES, foreign_key=(column, self.reports_table))

    def images(self, **kwargs) -> VectorStore:
        """A store on the images table (connects on first use)."""
        return VectorStore(self.url, schema=self.schema, table=self.table, spec=self.images_spec,
                           table_given=self.table_given, **kwargs)

    def reports(self, table: Optional[str] = None, schema: Optional[str] = None,
                spec: TableSpec = REPORTS, **kwargs) -> VectorStore:
        """A store on the reports table (``table``/``schema``: another one than configured)."""
        return VectorStore(self.url, schema=schema or self.schema,
                           table=table or self.reports_table, spec=spec,
                           table_given=bool(table) or self.reports_table_given, **kwargs)

    def store(self, spec: TableSpec = IMAGES, **kwargs) -> VectorStore:
        """A store on the table of ``spec`` (``IMAGES`` or ``REPORTS``)."""
        return self.reports(**kwargs) if spec == REPORTS else self.images(**kwargs)
