"""Before any write: is the existing table ours, an older dicomvec's, or someone else's?

In: a table's ``TableSpec`` (what dicomvec writes), the ``TableShape`` the catalog describes
(``Dialect.describe_table``) and the vector length we would write. Out: a list of
``Difference``; ``check_shape`` turns a non-empty list into one error line naming the
differences and the way out. Nothing is ever written into a table whose shape is not ours:

- ``SchemaMismatchError``: another tool's table (another key, another vector length, a column
  we would need but cannot add, a required column we do not fill) → write to a table of our own
  (``--sink-table`` / ``--reports-table``).
- ``NeedsMigrationError``: a table made by an older dicomvec (a missing nullable column such as
  PreprocessVersion, VARCHAR(50) IDs) → ``dicomvec migrate --sink URL`` prints the upgrade,
  ``--apply`` runs it.

``check_table_writable(store, dimension)`` is the store-level guard that the run-time writers
(``VectorStore.init_schema`` / first ``upsert``) and pre-flight checks call.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

from dicomvec import defaults
from dicomvec.io.stores.tables import IMAGES, VECTOR, TableShape, TableSpec, declared_length


class SchemaMismatchError(ValueError):
    """The existing table is not shaped like the one dicomvec writes: nothing was written."""


class NeedsMigrationError(SchemaMismatchError):
    """The existing table is an older dicomvec table: ``dicomvec migrate`` upgrades it."""


@dataclasses.dataclass(frozen=True)
class Difference:
    """One way the existing table differs. ``migratable``: ``dicomvec migrate`` can fix it
    (ADD a nullable column, widen a VARCHAR); ``column``: the spec column concerned."""

    text: str
    migratable: bool
    kind: str = ""
    column: Optional[str] = None
    #: the vector length we write (a ``dimension`` difference)
    wanted: Optional[int] = None


def compare(spec: TableSpec, shape: TableShape, dimension: Optional[int],
            enforces_varchar_length: bool = True) -> List[Difference]:
    """How ``shape`` differs from ``spec`` at vector length ``dimension`` (None: unknown, not
    compared). Extra nullable (or defaulted) columns are fine: we never write them."""
    differences: List[Difference] = []
    wanted = {c.name.lower() for c in spec.columns}
    for column in spec.columns:
        found = shape.column(column.name)
        if found is None:
            differences.append(Difference(
                f"no {column.name} column", migratable=column.nullable and
                column.name not in spec.key, kind="missing", column=column.name))
            continue
        if column.type == VECTOR and found.type not in ("VECTOR", "BLOB", "BYTEA"):
            differences.append(Difference(f"{column.name} is {found.type}, not a vector",
                                          migratable=False, kind="type", column=column.name))
        wanted_length = declared_length(column.type)
        if (enforces_varchar_length and wanted_length and found.length
                and found.length < wanted_length):
            differences.append(Difference(
                f"{column.name} is VARCHAR({found.length}), we write up to {wanted_length}",
                migratable=True, kind="narrow", column=column.name))
    key = tuple(k.lower() for k in spec.key)
    if shape.key != key:
        have = f"({', '.join(shape.key)})" if shape.key else "none"
        differences.append(Difference(
            f"primary key is {have}, we upsert on ({', '.join(spec.key)})", migratable=False,
            kind="key"))
    if dimension and shape.dimension and shape.dimension != dimension:
        differences.append(Difference(
            f"{spec.vector} is {shape.dimension}-d, we write {dimension}-d", migratable=False,
            kind="dimension", column=spec.vector, wanted=int(dimension)))
    for column in shape.columns:
        if column.name.lower() not in wanted and not column.nullable and not column.has_default:
            differences.append(Difference(
                f"required column {column.name} that dicomvec does not fill", migratable=False,
                kind="extra", column=column.name))
    return differences


def table_option(spec: TableSpec) -> str:
    return "--sink-table" if spec.table == IMAGES.table else "--reports-table"


def _default_of_length(what: str, qualified_table: str,
                       differences: Sequence[Difference]) -> Optional[str]:
    """The default table of the length we write, when ``qualified_table`` is ours but for its
    vector length and is not that default itself; else None."""
    lengths = [d.wanted for d in differences if d.kind == "dimension"]
    if not lengths or not all(d.kind == "dimension" or d.migratable for d in differences):
        return None
    default = (defaults.images_table if what == "images" else defaults.reports_table)(lengths[0])
    return None if default.lower() == qualified_table.rsplit(".", 1)[-1].lower() else default


def mismatch_error(spec: TableSpec, qualified_table: str, sink: str,
                   differences: Sequence[Difference],
                   before_write: bool = True,
                   table_given: Optional[bool] = None) -> SchemaMismatchError:
    """One line: what differs and the way out (``before_write``: a write was refused;
    ``table_given``: the user named the table, so a table of another vector length is a
    name to leave out: each length has its default table)."""
    what = "images" if spec.table == IMAGES.table else "reports"
    listed = "; ".join(d.text for d in differences)
    option = table_option(spec)
    refused = "; nothing was written" if before_write else ""
    default = _default_of_length(what, qualified_table, differences) if table_given else None
    if default:
        also = " (init-db, check-db, migrate: --table)" if what == "images" else ""
        return SchemaMismatchError(
            f"{qualified_table} holds vectors of another length ({listed}){refused}: leave "
            f"{option}{also} out, and these vectors go to their own table {default} "
            f"(created when missing)")
    if all(d.migratable for d in differences):
        return NeedsMigrationError(
            f"{qualified_table} was made by an older dicomvec and needs migrating ({listed})"
            f"{refused}: run `dicomvec migrate --sink {sink}` to see the upgrade and "
            f"add --apply to run it (or write a new table with {option} NAME)")
    return SchemaMismatchError(
        f"{qualified_table} is not a dicomvec {what} table ({listed}){refused}: write to a "
        f"table of our own with {option} NAME"
        + (" (init-db: --table NAME)" if what == "images" else "")
        + ", or, if it is an older dicomvec table, see `dicomvec migrate --sink "
        + f"{sink}`")


def check_shape(spec: TableSpec, shape: Optional[TableShape], dimension: Optional[int],
                qualified_table: str, sink: str, enforces_varchar_length: bool = True,
                table_given: Optional[bool] = None) -> None:
    """Raise ``SchemaMismatchError`` / ``NeedsMigrationError`` when an existing table
    (``shape`` not None) differs from ``spec``."""
    if shape is None:
        return
    differences = compare(spec, shape, dimension, enforces_varchar_length)
    if differences:
        raise mismatch_error(spec, qualified_table, sink, differences,
                             table_given=table_given)


def check_table_writable(store, dimension: Optional[int] = None) -> Optional[TableShape]:
    """The guard before any write through ``store`` (a ``VectorStore``): reads the table's
    shape (one catalog round trip) and raises when it is not ours. Returns the shape (None:
    no table yet)."""
    from dicomvec.io.stores.dialects import redact_url
    shape = store.shape()
    check_shape(store.spec, shape, dimension or store.dimension,
                store.dialect.qualified_table, redact_url(store.url),
                store.dialect.enforces_varchar_length,
                table_given=store.table_given)
    return shape


def migration_statements(dialect, differences: Sequence[Difference],
                         dimension: int) -> List[str]:
    """The DDL that upgrades an older dicomvec table (only migratable differences)."""
    by_name = {c.name: c for c in dialect.spec.columns}
    statements = []
    for difference in differences:
        column = by_name.get(difference.column)
        if difference.kind == "missing" and difference.migratable:
            statements.append(dialect.add_column_sql(column, dimension))
        elif difference.kind == "narrow":
            sql = dialect.widen_column_sql(column)
            if sql:
                statements.append(sql)
    return statements
