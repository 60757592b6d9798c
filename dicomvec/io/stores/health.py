"""``check-db``: what a user should know about a sink before loading 377K rows into it.

In: a ``SinkConfig`` and the vector length we would write. Out: a list of ``Check`` (one line
each: ✓ passed, ✗ failed, – not applicable / for information) in the order
``commands/check_db.py`` lists them. Each check runs on its own; a failed one does not hide the
others, except that nothing runs without a connection.
"""
from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import List, Optional

import numpy as np

from dicomvec.io.stores import schema_check
from dicomvec.io.stores.base import SinkConfig, VectorStore
from dicomvec.io.stores.tables import IMAGES, REPORTS

log = logging.getLogger(__name__)

MARKS = {True: "✓", False: "✗", None: "–"}
#: invalid rows listed by name (the count is always given)
LISTED = 5


@dataclasses.dataclass
class Check:
    name: str
    ok: Optional[bool]  # None: not applicable / information only
    detail: str

    def line(self) -> str:
        return f"{MARKS[self.ok]} {self.name:<16} {self.detail}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def run_checks(sink: SinkConfig, dimension: int,
               store_key: Optional[str] = None) -> List[Check]:
    """Every check, in order (see the module docstring); ``store_key``: the model whose rows
    the ``rows`` check counts apart (a provider's ``store_key``; None: none)."""
    checks: List[Check] = []
    store = sink.images(max_attempts=1)
    try:
        _run(store, sink, dimension, checks, store_key)
    finally:
        store.close()
    return checks


def _attempt(checks: List[Check], name: str, store, action) -> None:
    """Run one check; an unexpected database error is that check's ✗, not a crash."""
    try:
        action()
    except Exception as exc:
        store.rollback()
        checks.append(Check(name, False, _one_line(exc)))


def _run(store: VectorStore, sink: SinkConfig, dimension: int, checks: List[Check],
         store_key: Optional[str] = None) -> None:
    dialect = store.dialect
    expected = dimension
    try:
        conn = store.conn
    except Exception as exc:
        checks.append(Check("connect", False, _one_line(exc)))
        return
    checks.append(Check("connect", True, dialect.location()))

    def server():
        version = str(store.query(dialect.server_version_sql(), None, "server version")[0][0])
        checks.append(Check("server version", True, " ".join(version.split())))
        for name, ok, detail in dialect.vector_features(conn, version):
            checks.append(Check(name, ok, detail))
    _attempt(checks, "server version", store, server)

    if dialect.schema:
        def schema_exists():
            found = bool(store.query(*dialect.schema_exists_sql(), "schema"))
            checks.append(Check("schema", True if found else None,
                                f"{dialect.schema} exists" if found else
                                f"{dialect.schema} does not exist yet (init-db creates it "
                                "with the table)"))
        _attempt(checks, "schema", store, schema_exists)

    shape = {"images": None}

    def images_table():
        shape["images"] = store.shape()
        checks.append(_table_check("images table", IMAGES, dialect, shape["images"], dimension,
                                   sink.redacted, missing_ok=False,
                                   table_given=sink.table_given))
    _attempt(checks, "images table", store, images_table)

    _attempt(checks, "create rights", store, lambda: checks.append(_create_rights(store)))

    if shape["images"] is not None:
        def rows():
            counts = store.provider_counts()
            total = sum(counts.values())
            listed = ", ".join(f"{p if p is not None else 'NULL'} {n}"
                               for p, n in counts.items())
            detail = f"{total} ({listed})" if total else "0 (empty)"
            if store_key is not None:
                detail += f"; {counts.get(store_key, 0)} of this model ({store_key})"
            checks.append(Check("rows", True, detail))
        _attempt(checks, "rows", store, rows)

        def invalid():
            # at the table's own length: a table of another length already failed above
            dimension = shape["images"].dimension or expected
            bad = store.invalid_rows(dimension)
            if not bad:
                checks.append(Check("vectors", True, f"no zero or non-{dimension}-d vectors"))
                return
            names = ", ".join("/".join(str(v) for v in key) for key in bad[:LISTED])
            more = f" and {len(bad) - LISTED} more" if len(bad) > LISTED else ""
            checks.append(Check(
                "vectors", False, f"{len(bad)} rows with a zero or non-{dimension}-d vector: "
                f"{names}{more}; `dicomvec run --replace-invalid ...` re-embeds them"))
        _attempt(checks, "vectors", store, invalid)

    def reports():
        reports_store = sink.reports(max_attempts=1)
        try:
            found = reports_store.shape()
        finally:
            reports_store.close()
        checks.append(_table_check("reports table", REPORTS, reports_store.dialect, found,
                                   dimension, sink.redacted, missing_ok=True,
                                   table_given=sink.reports_table_given))
    _attempt(checks, "reports table", store, reports)

    if shape["images"] is not None:
        _attempt(checks, "vector index", store, lambda: checks.extend(_index_checks(store)))


def _table_check(name: str, spec, dialect, shape, dimension: int, url: str,
                 missing_ok: bool, table_given: Optional[bool] = None) -> Check:
    table = dialect.qualified_table
    if shape is None:
        if missing_ok:
            return Check(name, None, f"{table} does not exist (`dicomvec reports` creates it)")
        return Check(name, False, f"{table} does not exist: run `dicomvec init-db --sink "
                                  f"{url}` (or check --schema/--table)")
    differences = schema_check.compare(spec, shape, dimension,
                                       dialect.enforces_varchar_length)
    if not differences:
        return Check(name, True, f"{table}: {len(spec.columns)} columns as expected, key "
                                 f"({', '.join(spec.key)}), "
                                 + (f"{shape.dimension}-d vectors" if shape.dimension else
                                    "vector length not declared (no rows yet)"))
    error = schema_check.mismatch_error(spec, table, url, differences,
                                        before_write=False, table_given=table_given)
    if spec is REPORTS and not isinstance(error, schema_check.NeedsMigrationError):
        # another tool's reports table: dicomvec only reads it; never a failure by itself
        return Check(name, None, f"{error} (search reads it as-is)")
    return Check(name, False, str(error))


def _create_rights(store: VectorStore) -> Check:
    """Create (then drop, or roll back) a throw-away table with a vector column and an index."""
    dialect = store.dialect
    scratch = f"DicomvecCheck{uuid.uuid4().hex[:8]}"
    create, drop = dialect.scratch_statements(scratch)
    conn = store.conn
    cur = conn.cursor()
    try:
        for statement in create:
            cur.execute(statement)
    except Exception as exc:
        store.rollback()
        return Check("create rights", False, f"may not create a table and an index in "
                     f"{dialect.schema or 'this database'}: {_one_line(exc)}")
    if dialect.transactional_ddl:
        conn.rollback()  # nothing stays behind
    else:
        for statement in drop:
            cur.execute(statement)
        conn.commit()
    return Check("create rights", True, "may create tables and indexes (a throw-away table "
                 "was created and removed)")


def _index_checks(store: VectorStore) -> List[Check]:
    dialect = store.dialect
    if not dialect.create_index_statements():
        return [Check("vector index", None, f"none on {dialect.name}: search is an exact scan")]
    conn = store.conn
    listed = store.index_exists(conn)
    conn.rollback()
    dimension = store.shape().dimension
    if not listed and (dialect.index_catalog_complete or not dimension):
        return [Check("vector index", None, f"{dialect.index_name} not built yet: run "
                      "`dicomvec create-index` after the bulk load")]
    if not dimension:
        return [Check("vector index", True, f"{dialect.index_name} exists"),
                Check("query plan", None, "no vector length known (empty table)")]
    query = np.full(dimension, 1.0 / np.sqrt(dimension), dtype=np.float32)
    sql, params = dialect.nearest_sql(query, 10, None, None)
    try:
        plan = dialect.explain(conn, sql, params)
    except Exception as exc:
        store.rollback()
        if listed:
            raise
        return [Check("vector index", None, f"{dialect.index_name} is not listed in "
                      "INFORMATION_SCHEMA.INDEXES and the query plan could not be read "
                      f"({_one_line(exc)}): run `dicomvec create-index` after the bulk load")]
    conn.rollback()
    if not listed:
        # the catalog may not list HNSW indexes (IRIS): the plan is the evidence
        if not _uses(plan, dialect.index_name):
            return [Check("vector index", None, f"{dialect.index_name} not built yet (neither "
                          "INFORMATION_SCHEMA.INDEXES nor the query plan shows it): run "
                          "`dicomvec create-index` after the bulk load")]
        return [Check("vector index", True, f"{dialect.index_name} exists (seen in the query "
                      "plan; INFORMATION_SCHEMA.INDEXES does not list it)"),
                Check("query plan", True, f"the nearest-neighbour query uses "
                      f"{dialect.index_name}")]
    checks = [Check("vector index", True, f"{dialect.index_name} exists")]
    if _uses(plan, dialect.index_name):
        return checks + [Check("query plan", True, f"the nearest-neighbour query uses "
                               f"{dialect.index_name}")]
    # a small table is cheaper to scan: ask whether the index CAN serve the query
    forced = dialect.forced_index_plan(conn, sql, params)
    if forced is not None and _uses(forced, dialect.index_name):
        return checks + [Check("query plan", True, f"{dialect.index_name} serves the "
                               "nearest-neighbour query (the planner scans this table while "
                               "it is small)")]
    first = " ".join(plan.split())[:200]
    return checks + [Check("query plan", False, f"the nearest-neighbour query does not use "
                           f"{dialect.index_name}: {first}")]


def _uses(plan: str, index_name: str) -> bool:
    return index_name.lower() in plan.lower()
