"""The sink core shared by every database: batched idempotent upserts, reconnect-and-retry on
transient errors, bisection of permanent row errors, existence lookups and nearest neighbours.

Dialects (``dialects.py``) differ only in how they connect, their SQL strings and how a vector
is bound as a parameter. Flow: ``upsert(rows)`` takes a batch of ``ImageRow`` and returns the
rows that failed permanently with their exception; everything else is committed exactly once
per primary key (ImageID, Provider).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import time
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np

from dicomvec.io.stores.dialects import Dialect, dialect_for_url

log = logging.getLogger(__name__)

DEFAULT_SCHEMA = "VectorSearch"
DEFAULT_TABLE = "MIMICCXRImages"


@dataclasses.dataclass(frozen=True)
class ImageRow:
    """One row of the images table (columns of the IRIS design plus PreprocessVersion)."""

    SubjectID: str
    StudyID: str
    ImageID: str
    ImagePath: str
    DicomFile: str
    ViewPosition: str
    Vector: np.ndarray
    EmbeddingModel: str
    Provider: str
    PreprocessVersion: str
    CreatedAt: str = dataclasses.field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"))


COLUMNS = [f.name for f in dataclasses.fields(ImageRow)]


@dataclasses.dataclass(frozen=True)
class Hit:
    """One search result: the row's identity and metadata, and cosine similarity."""

    ImageID: str
    SubjectID: str
    StudyID: str
    ImagePath: str
    ViewPosition: str
    Provider: str
    score: float


class VectorStore:
    """A connection to one images table through one dialect.

    Use one instance per DoFn instance (open in ``setup``, close in ``teardown``): DB-API
    connections are not shared across threads.
    """

    def __init__(self, url: str, schema: str = DEFAULT_SCHEMA, table: str = DEFAULT_TABLE,
                 max_attempts: int = 4, retry_delay_s: float = 0.5, spec=None):
        self.url = url
        #: a ``tables.TableSpec`` for a table other than the images table (e.g. the reports
        #: table): its SQL is rendered from the spec, the rest of the core is shared
        self.spec = spec
        if spec is not None:
            from dicomvec.io.stores.tables import SpecDialect
            self.dialect = SpecDialect(dialect_for_url(url, schema=schema, table=spec.table),
                                       spec)
        else:
            self.dialect: Dialect = dialect_for_url(url, schema=schema, table=table)
        self.max_attempts = max_attempts
        self.retry_delay_s = retry_delay_s
        self._conn = None
        self.reconnects = 0

    # -- connection ------------------------------------------------------------------------
    def open(self) -> "VectorStore":
        if self._conn is None:
            self._conn = self.dialect.connect()
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
        self.close()
        self.reconnects += 1
        self.open()

    def _with_retry(self, action, what: str):
        """Run ``action(conn)``; on a transient error reconnect and run it again (bounded)."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return action(self.conn)
            except Exception as exc:
                self._rollback_quietly()
                if not self.dialect.is_transient(exc) or attempt == self.max_attempts:
                    raise
                log.warning("%s: transient database error (%s), reconnecting (attempt %d/%d)",
                            what, type(exc).__name__, attempt, self.max_attempts)
                time.sleep(self.retry_delay_s * attempt)
                self._reconnect()

    def _rollback_quietly(self) -> None:
        try:
            if self._conn is not None:
                self._conn.rollback()
        except Exception:
            log.debug("rollback failed", exc_info=True)

    # -- schema ----------------------------------------------------------------------------
    def init_schema(self, dimension: int, with_report_fk: bool = False) -> None:
        """Create schema and table if missing (idempotent)."""
        def action(conn):
            cur = conn.cursor()
            for statement in self.dialect.create_table_statements(dimension, with_report_fk):
                cur.execute(statement)
            conn.commit()
        self._with_retry(action, "init_schema")

    def create_index(self) -> None:
        def action(conn):
            cur = conn.cursor()
            for statement in self.dialect.create_index_statements():
                cur.execute(statement)
            conn.commit()
        self._with_retry(action, "create_index")

    # -- writes ----------------------------------------------------------------------------
    def upsert(self, rows: Sequence[ImageRow]) -> List[Tuple[ImageRow, Exception]]:
        """Write ``rows`` (one transaction per batch). Returns permanently failed rows.

        Transient errors reconnect and retry the whole batch (safe: the write is an upsert on
        the primary key). A permanent error splits the batch in halves until the bad rows are
        alone, so good neighbours are still written.
        """
        if not rows:
            return []
        try:
            self._with_retry(lambda conn: self._write(conn, rows), "upsert")
            return []
        except Exception as exc:
            if self.dialect.is_transient(exc):
                return [(row, exc) for row in rows]
            if len(rows) == 1:
                return [(rows[0], exc)]
            middle = len(rows) // 2
            return self.upsert(rows[:middle]) + self.upsert(rows[middle:])

    def _write(self, conn, rows: Sequence[ImageRow]) -> None:
        if self.spec is not None:  # rows with and without a vector write different columns
            for columns, group in self.spec.column_groups(rows):
                vector = next((r.Vector for r in group if r.Vector is not None), None)
                self.dialect.write_batch(conn, group, columns,
                                         0 if vector is None else int(np.size(vector)))
            conn.commit()
            return
        cur = conn.cursor()
        sql = self.dialect.upsert_sql(COLUMNS, int(rows[0].Vector.shape[0]))
        params = [self.dialect.row_params(row, COLUMNS) for row in rows]
        cur.executemany(sql, params)
        conn.commit()

    # -- reads -----------------------------------------------------------------------------
    def existing_ids(self, image_ids: Iterable[str], provider: str,
                     preprocess_version: Optional[str] = None) -> Set[str]:
        """Which of ``image_ids`` already have a row for ``provider`` (and version)."""
        ids = list(dict.fromkeys(image_ids))
        found: Set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            sql, params = self.dialect.existing_sql(chunk, provider, preprocess_version)

            def action(conn, sql=sql, params=params):
                cur = conn.cursor()
                cur.execute(sql, params)
                return [r[0] for r in cur.fetchall()]
            found.update(self._with_retry(action, "existing_ids"))
        return found

    def count(self, provider: Optional[str] = None) -> int:
        sql, params = self.dialect.count_sql(provider)

        def action(conn):
            cur = conn.cursor()
            cur.execute(sql, params)
            return int(cur.fetchone()[0])
        return self._with_retry(action, "count")

    def vectors(self, image_ids: Sequence[str], provider: str) -> Dict[str, np.ndarray]:
        """Stored vectors by ImageID (for checks and image → image search by ID)."""
        sql, params = self.dialect.vectors_sql(list(image_ids), provider)

        def action(conn):
            cur = conn.cursor()
            cur.execute(sql, params)
            return {r[0]: self.dialect.decode_vector(r[1]) for r in cur.fetchall()}
        return self._with_retry(action, "vectors")

    def nearest(self, vector: np.ndarray, k: int = 10, provider: Optional[str] = None,
                view_position: Optional[str] = None) -> List[Hit]:
        """The ``k`` rows most cosine-similar to ``vector``, best first."""
        return self._with_retry(
            lambda conn: self.dialect.nearest(conn, np.asarray(vector, dtype=np.float32), k,
                                              provider, view_position),
            "nearest")


def open_store(url: str, **kwargs) -> VectorStore:
    return VectorStore(url, **kwargs).open()
