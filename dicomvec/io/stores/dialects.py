"""SQL dialects for the sink core: one renderer of a table's SQL, specialised per database.

A dialect is bound to one table: a ``TableSpec`` (``tables.py``) and its schema/table names. The
base ``Dialect`` renders everything that is the same SQL everywhere (DDL from the spec, the
``INSERT ... ON CONFLICT DO UPDATE`` upsert, filters, counts, lookups); the per-database modules
``sqlite.py``, ``postgres.py`` and ``iris.py`` supply only what differs: connecting, the parameter
marker, the vector column type and how a vector is bound, the upsert and search syntax, the HNSW
DDL and which errors are transient. They are looked up by URL scheme in ``_DIALECTS`` (imported
lazily, so a missing optional driver only matters when its scheme is used).

Every value is a bound parameter (vectors included); schema/table names are validated
identifiers, never raw user text.
"""
from __future__ import annotations

import abc
import collections
import dataclasses
import importlib
import re
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qsl, urlencode, urlparse

import numpy as np

from dicomvec.errors import PreflightError, first_line
from dicomvec.io.stores.tables import (IMAGES, REPORTS_TABLE, TEXT, VECTOR, ColumnInfo,
                                       TableShape, TableSpec, VectorColumn, declared_length)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def validate_identifier(name: str) -> str:
    """Return ``name`` if it is a plain SQL identifier, else raise ValueError."""
    if not _IDENTIFIER.match(name or ""):
        raise ValueError(f"invalid SQL identifier {name!r}: use letters, digits and _")
    return name


class SinkAuthenticationError(ValueError):
    """The database refused the login (wrong user or password, password change required):
    never retried, reported as one line (the CLI exits 2)."""


class StoredVectorError(ValueError):
    """A vector read back from the database does not have the table's length (e.g. a
    truncated text value)."""


def validate_k(k: int) -> int:
    """A positive result count (inlined in TOP/LIMIT after this check)."""
    if isinstance(k, bool) or int(k) != k or int(k) < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


class Dialect(abc.ABC):
    """The SQL of one table (``spec``) for one database family.

    Flow: the core calls ``connect()`` then ``prepare(conn)``; writes go through
    ``write_batch`` (``upsert_sql`` + ``row_params``); reads use the ``*_sql`` builders and
    ``nearest``; ``is_transient`` decides retry vs bisect.
    """

    name = ""
    #: the parameter marker of the driver (qmark ``?`` or format ``%s``)
    marker = "?"
    #: the SQL type of a ``TEXT`` (long text) column
    text_type = "TEXT"
    #: ``IF NOT EXISTS`` in CREATE TABLE; a dialect without it gets plain CREATE TABLE, run
    #: only after the core found the table missing
    create_if_not_exists = True
    #: whether the database enforces VARCHAR lengths (SQLite does not: no widening needed)
    enforces_varchar_length = True
    #: whether the catalog lists every vector index (IRIS may not list HNSW indexes)
    index_catalog_complete = True
    #: columns the database adds by itself, ignored when comparing shapes
    system_columns: Tuple[str, ...] = ()
    #: whether DDL is transactional (a rolled-back CREATE TABLE leaves nothing behind)
    transactional_ddl = False
    #: the approximate nearest-neighbour index's name (None: no such index here)
    index_name: Optional[str] = None

    def __init__(self, url: str, schema: str, table: Optional[str] = None,
                 spec: TableSpec = IMAGES):
        self.url = url
        self.spec = spec
        self.schema = validate_identifier(schema) if schema else ""
        self.table = validate_identifier(table or spec.table)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self.url)!r}, table={self.qualified_table!r})"

    def qualify(self, table: str) -> str:
        return f"{self.schema}.{table}" if self.schema else table

    @property
    def qualified_table(self) -> str:
        return self.qualify(self.table)

    @property
    def reports_table(self) -> str:
        """The table the spec's optional foreign key points at (qualified)."""
        return self.qualify(self.spec.foreign_key[1] if self.spec.foreign_key else REPORTS_TABLE)

    # -- connection ------------------------------------------------------------------------
    @abc.abstractmethod
    def connect(self):
        """A new DB-API connection (autocommit off)."""

    def prepare(self, conn) -> None:
        """Per-connection setup after ``connect`` and after ``init_schema`` (type adapters)."""

    def is_transient(self, exc: BaseException) -> bool:
        """True when reconnecting and retrying the same statement may succeed."""
        return False

    def location(self) -> str:
        """Where ``connect`` logs in, for ``check-db``'s connect line."""
        return redact_url(self.url)

    def check_reachable(self, must_exist: bool = False) -> None:
        """``PreflightError`` when dicomvec cannot write here (servers: the login fails);
        creates nothing. ``must_exist``: the database must be there already."""
        try:
            conn = self.connect()
        except ValueError:
            raise  # a bad URL or password setting: already one plain line
        except Exception as exc:
            raise PreflightError(f"cannot log in to {redact_url(self.url)}: "
                                 f"{type(exc).__name__}: {first_line(exc)}") from None
        try:
            conn.close()
        except Exception:  # closing after a successful login must not fail the check
            pass

    def missing_database(self) -> Optional[str]:
        """Why reading would create the database here (None: it would not)."""
        return None

    # -- schema ----------------------------------------------------------------------------
    def schema_statements(self) -> List[str]:
        """DDL run before the table's (extensions, schema)."""
        return [f"CREATE SCHEMA IF NOT EXISTS {self.schema}"] if self.schema else []

    @abc.abstractmethod
    def vector_type(self, dimension: int) -> str:
        """The column type of a ``dimension``-long vector."""

    def column_sql(self, column, dimension: int) -> str:
        sql = {VECTOR: self.vector_type(dimension), TEXT: self.text_type}.get(column.type,
                                                                             column.type)
        return f"  {column.name} {sql}{'' if column.nullable else ' NOT NULL'}"

    def create_table_statements(self, dimension: int, with_report_fk: bool = False) -> List[str]:
        """DDL creating schema and table if missing; ``with_report_fk`` adds the spec's foreign
        key (the core passes True only when the referenced table exists)."""
        lines = [self.column_sql(c, dimension) for c in self.spec.columns]
        lines.append(f"  PRIMARY KEY ({', '.join(self.spec.key)})")
        if with_report_fk and self.spec.foreign_key:
            column, table = self.spec.foreign_key
            lines.append(f"  FOREIGN KEY ({column}) REFERENCES {self.qualify(table)}({column})")
        body = ",\n".join(lines)
        exists = "IF NOT EXISTS " if self.create_if_not_exists else ""
        return self.schema_statements() + [
            f"CREATE TABLE {exists}{self.qualified_table} (\n{body}\n)"]

    def is_duplicate_table(self, exc: BaseException) -> bool:
        """True when CREATE TABLE failed only because the table exists (a concurrent init)."""
        return False

    def is_duplicate_index(self, exc: BaseException) -> bool:
        """True when CREATE INDEX failed only because the index name exists."""
        return False

    # -- the catalog: the shape of an existing table (dicomvec's, or another tool's found by
    # ``find_table``); ``names``: (schema, table) as the catalog spells them -------------------
    def quote_identifier(self, name: str) -> str:
        """``name`` as SQL text that refers to exactly that catalog name."""
        return name

    def sql_name(self, schema: str, table: str) -> str:
        """The qualified SQL name of a table spelled (``schema``, ``table``) in the catalog."""
        return ".".join(self.quote_identifier(part) for part in (schema, table) if part)

    def catalog_names(self) -> Tuple[str, str]:
        """(schema, table) of the bound table as the catalog stores dicomvec's names."""
        return self.schema, self.table

    def find_table_sql(self) -> Optional[Tuple[str, list]]:
        """(schema, table) rows of the tables named like the bound one, ignoring case (None:
        the database's names ignore case already)."""
        return ("SELECT TABLE_SCHEMA, TABLE_NAME FROM INFORMATION_SCHEMA.TABLES WHERE "
                f"UPPER(TABLE_SCHEMA) = UPPER({self.marker}) AND UPPER(TABLE_NAME) = "
                f"UPPER({self.marker}) ORDER BY TABLE_SCHEMA, TABLE_NAME",
                [self.schema, self.table])

    def find_table(self, conn) -> Optional[Tuple[str, str]]:
        """The catalog's (schema, table) of the bound table, names matched ignoring case (the
        spelling dicomvec's unquoted names get, when several); None when there is none."""
        if self.find_table_sql() is None:
            return self.catalog_names()
        cur = conn.cursor()
        cur.execute(*self.find_table_sql())
        found = [(str(r[0]), str(r[1])) for r in cur.fetchall()]
        return self.catalog_names() if self.catalog_names() in found else \
            (found[0] if found else None)

    def describe_sql(self, names: Tuple[str, str]) -> Tuple[str, list]:
        """Columns of the table: rows of (name, type, VARCHAR length, nullable, default)."""
        m = self.marker
        return ("SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH, IS_NULLABLE, "
                "COLUMN_DEFAULT FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = "
                f"{m} AND TABLE_NAME = {m} ORDER BY ORDINAL_POSITION", list(names))

    def primary_key_sql(self, names: Tuple[str, str]) -> Tuple[str, list]:
        """The primary-key columns of the table, in key order."""
        m = self.marker
        # the join sqlalchemy-iris uses for its primary-key reflection on live IRIS
        return ("SELECT k.COLUMN_NAME FROM INFORMATION_SCHEMA.KEY_COLUMN_USAGE k JOIN "
                "INFORMATION_SCHEMA.TABLE_CONSTRAINTS c ON k.CONSTRAINT_NAME = "
                "c.CONSTRAINT_NAME AND k.TABLE_SCHEMA = c.TABLE_SCHEMA AND k.TABLE_NAME = "
                f"c.TABLE_NAME WHERE k.TABLE_SCHEMA = {m} AND k.TABLE_NAME = {m} "
                "AND c.CONSTRAINT_TYPE = 'PRIMARY KEY' ORDER BY k.ORDINAL_POSITION",
                list(names))

    def primary_key_fallback_sql(self, names: Tuple[str, str]) -> Optional[Tuple[str, list]]:
        """A second place to look for the key when the first finds none (None: nowhere)."""
        return None

    def column_info(self, row) -> ColumnInfo:
        name, data_type, length, nullable, default = row[:5]
        base = str(data_type or "").strip().upper()
        return ColumnInfo(name=str(name), type=base.split("(")[0].strip(),
                          length=int(length) if length not in (None, "") and
                          str(length).lstrip("-").isdigit() and int(length) > 0 else
                          declared_length(base),
                          nullable=str(nullable).upper() not in ("NO", "0", "FALSE"),
                          has_default=default not in (None, ""), declared=str(data_type or ""))

    def describe_table(self, conn, names: Optional[Tuple[str, str]] = None,
                       dimension: bool = True) -> Optional[TableShape]:
        """The shape of the table ``names`` (default: the bound table) from the catalog, or
        None when it does not exist. ``dimension``: also learn the bound table's vector length
        (declared, else sampled from stored rows)."""
        names = names or self.catalog_names()
        cur = conn.cursor()
        cur.execute(*self.describe_sql(names))
        columns = tuple(self.column_info(r) for r in cur.fetchall())
        columns = tuple(c for c in columns if c.name.upper() not in self.system_columns)
        if not columns:
            return None
        key = ()
        for statement in (self.primary_key_sql(names), self.primary_key_fallback_sql(names)):
            if statement and not key:
                cur.execute(*statement)
                key = tuple(str(r[0]).lower() for r in cur.fetchall())
        shape = TableShape(columns=columns, key=key)
        if not dimension:
            return shape
        length = self.declared_dimension(conn, columns)
        if length is None and shape.column(self.spec.vector) is not None:
            length = self.sampled_dimension(conn)
        return dataclasses.replace(shape, dimension=length)

    def declared_dimension(self, conn, columns: Sequence[ColumnInfo]) -> Optional[int]:
        """The vector length the catalog declares, when it does."""
        return None

    def limited_sql(self, select: str, rest: str, n: int) -> str:
        """``SELECT select rest`` returning at most ``n`` rows (no ORDER BY in ``rest``)."""
        return f"SELECT {select} {rest} LIMIT {int(n)}"

    def sample_vectors_sql(self, expression: str, column: str, table: str, n: int) -> str:
        """``expression`` (of ``column``) for up to ``n`` rows of ``table`` with a vector."""
        return self.limited_sql(expression, f"FROM {table} WHERE {column} IS NOT NULL", n)

    def first_vector_sql(self) -> str:
        v = self.spec.vector
        return self.sample_vectors_sql(v, v, self.qualified_table, 100)

    def sampled_dimension(self, conn) -> Optional[int]:
        """The most common length of up to 100 stored vectors (tables whose type does not
        declare it); None for an empty table."""
        cur = conn.cursor()
        cur.execute(self.first_vector_sql())
        lengths = collections.Counter(self.vector_length(row[0]) for row in cur.fetchall()
                                      if row[0] is not None)
        return lengths.most_common(1)[0][0] if lengths else None

    def vector_length(self, value) -> int:
        return int(self.decode_vector(value).shape[0])

    # -- upgrades of an older dicomvec table -------------------------------------------------
    def add_column_sql(self, column, dimension: int) -> str:
        """``ALTER TABLE ... ADD COLUMN`` for a nullable spec column."""
        sql = self.column_sql(column, dimension).strip()
        return f"ALTER TABLE {self.qualified_table} ADD COLUMN {sql}"

    def widen_column_sql(self, column) -> Optional[str]:
        """Widen a VARCHAR column to the spec's length (None: not needed here)."""
        return (f"ALTER TABLE {self.qualified_table} ALTER COLUMN {column.name} "
                f"TYPE {column.type}")

    # -- checks ----------------------------------------------------------------------------
    def server_version_sql(self) -> str:
        return "SELECT version()"

    def schema_exists_sql(self) -> Tuple[str, list]:
        return (f"SELECT 1 FROM INFORMATION_SCHEMA.SCHEMATA WHERE SCHEMA_NAME = {self.marker}",
                [self.schema])

    def vector_features(self, conn, version_text: str):
        """(name, ok, detail) for the VECTOR type and the HNSW index on this server."""
        return []

    def scratch_statements(self, scratch_table: str) -> Tuple[List[str], List[str]]:
        """(create, drop): a throw-away table with a vector column and an index, to learn
        whether this user may create tables and indexes here."""
        scratch = type(self)(self.url, schema=self.schema, table=scratch_table, spec=self.spec)
        create = scratch.create_table_statements(3)
        create.append(f"CREATE INDEX {scratch_table}Idx ON {scratch.qualified_table} "
                      f"({self.spec.key[0]})")
        return create, [f"DROP TABLE {scratch.qualified_table}"]

    def provider_counts_sql(self) -> str:
        return (f"SELECT Provider, COUNT(*) FROM {self.qualified_table} "
                "GROUP BY Provider ORDER BY Provider")

    def valid_vector_sql(self, dimension: int) -> Tuple[str, list]:
        """A condition true for a stored vector of the right length that is not all zeros."""
        raise NotImplementedError

    def invalid_vectors_sql(self, dimension: int) -> Tuple[str, list]:
        """Key columns of the rows whose vector is NULL, zero or of another length."""
        valid, params = self.valid_vector_sql(dimension)
        return (f"SELECT {', '.join(self.spec.key)} FROM {self.qualified_table} "
                f"WHERE NOT ({valid}) ORDER BY {', '.join(self.spec.key)}", params)

    def explain(self, conn, sql: str, params: list) -> str:
        """The query plan of ``sql`` as text."""
        cur = conn.cursor()
        cur.execute("EXPLAIN " + sql, params)
        return "\n".join(" ".join(str(v) for v in row) for row in cur.fetchall())

    def table_dimension(self, conn) -> Optional[int]:
        """The declared vector length of the existing table, when the catalog tells it."""
        return None

    def create_index_statements(self) -> List[str]:
        """DDL for the approximate nearest-neighbour index (empty: none for this database)."""
        return []

    def index_exists_sql(self) -> Optional[Tuple[str, list]]:
        """A catalog query finding the index (None: the DDL has IF NOT EXISTS, just run it)."""
        return None

    def check_index_support(self, conn) -> None:
        """Raise a clear error when this server cannot build the vector index."""

    def index_error(self, exc: BaseException, conn) -> Optional[Exception]:
        """A clearer error for a failed index build (None: the database's own is clear)."""
        return None

    def build_vector_index(self, conn, provider: Optional[str]) -> Optional[str]:
        """Build or refresh a vector index the database keeps outside its own catalog (files
        beside an embedded database) for ``provider``'s rows; what was done, or None: this
        database has no such index (its index, if any, is ``create_index_statements``)."""
        return None

    def forced_index_plan(self, conn, sql: str, params: list) -> Optional[str]:
        """The plan of ``sql`` when told to use an index where it can (None: cannot tell)."""
        return None

    # -- writes ----------------------------------------------------------------------------
    def vector_param(self, dimension: int) -> str:
        """The bound-parameter expression of a vector value."""
        return self.marker

    def placeholders(self, n: int) -> str:
        return ", ".join([self.marker] * n)

    def upsert_sql(self, columns: Sequence[str], dimension: int) -> str:
        """One parametrised insert-or-update on the primary key; only ``columns`` are written
        or updated."""
        values = ", ".join(self.vector_param(dimension) if c == self.spec.vector else self.marker
                           for c in columns)
        return self.upsert_syntax(
            f"INTO {self.qualified_table} ({', '.join(columns)}) VALUES ({values})",
            [c for c in columns if c not in self.spec.key])

    def upsert_syntax(self, insert: str, updated: Sequence[str]) -> str:
        """``insert`` (``INTO t (...) VALUES (...)``) as an insert-or-update on the primary
        key, updating the ``updated`` columns of an existing row."""
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in updated)
        return f"INSERT {insert} ON CONFLICT ({', '.join(self.spec.key)}) DO UPDATE SET {sets}"

    def row_params(self, row, columns: Sequence[str]) -> list:
        return [self.encode_vector(getattr(row, c)) if c == self.spec.vector else getattr(row, c)
                for c in columns]

    def write_batch(self, conn, rows: Sequence, columns: Sequence[str], dimension: int) -> None:
        """Send one batch inside the current transaction (the core commits): one
        parametrised upsert, ``executemany`` over the rows."""
        cur = conn.cursor()
        cur.executemany(self.upsert_sql(columns, dimension),
                        [self.row_params(row, columns) for row in rows])

    # -- reads -----------------------------------------------------------------------------
    def existing_sql(self, image_ids: Sequence[str], provider: str,
                     preprocess_version: Optional[str],
                     valid_dimension: Optional[int] = None) -> Tuple[str, list]:
        """ImageIDs stored for ``provider``: made with ``preprocess_version`` (a row from
        before versions were recorded, NULL, counts as stored) and, with ``valid_dimension``,
        only rows whose vector is valid at that length."""
        sql = (f"SELECT ImageID FROM {self.qualified_table} WHERE Provider = {self.marker}"
               f" AND ImageID IN ({self.placeholders(len(image_ids))})")
        params = [provider, *image_ids]
        if preprocess_version is not None:
            sql += (f" AND (PreprocessVersion = {self.marker} OR PreprocessVersion IS NULL)")
            params.append(preprocess_version)
        if valid_dimension is not None:
            valid, valid_params = self.valid_vector_sql(valid_dimension)
            sql += f" AND {valid}"
            params += valid_params
        return sql, params

    def count_sql(self, provider: Optional[str]) -> Tuple[str, list]:
        sql = f"SELECT COUNT(*) FROM {self.qualified_table}"
        if provider is None:
            return sql, []
        return sql + f" WHERE Provider = {self.marker}", [provider]

    def vectors_sql(self, image_ids: Sequence[str], provider: str) -> Tuple[str, list]:
        return (f"SELECT ImageID, {self.spec.vector} FROM {self.qualified_table} "
                f"WHERE Provider = {self.marker} AND ImageID IN "
                f"({self.placeholders(len(image_ids))})", [provider, *image_ids])

    def filters_sql(self, provider: Optional[str],
                    view_position: Optional[str] = None) -> Tuple[str, list]:
        """``WHERE ...`` for a search ('' when none) and its parameters: rows with a vector,
        of ``provider`` and ``view_position`` when given."""
        clauses = [f"{self.spec.vector} IS NOT NULL"] if self.spec.vector_nullable else []
        params = []
        for column, what, value in (("Provider", "provider", provider),
                                    ("ViewPosition", "view position", view_position)):
            if value:
                if column not in self.spec.column_names:
                    raise ValueError(f"the {self.spec.table} table has no {what} to filter on")
                clauses.append(f"{column} = {self.marker}")
                params.append(value)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def nearest_sql(self, vector: np.ndarray, k: int, provider: Optional[str],
                    view_position: Optional[str] = None) -> Tuple[str, list]:
        """A query returning the spec's hit columns + cosine similarity, best first, at most
        ``k``."""
        raise NotImplementedError(f"no server-side search SQL for {self.name}")

    def nearest(self, conn, vector: np.ndarray, k: int, provider: Optional[str],
                view_position: Optional[str] = None):
        """The ``k`` most cosine-similar rows as the spec's hits, best first."""
        sql, params = self.nearest_sql(vector, k, provider, view_position)
        cur = conn.cursor()
        cur.execute(sql, params)
        return [self.spec.hit_type(*row[:-1], score=float(row[-1])) for row in cur.fetchall()]

    # -- another tool's vectors (a reports table read as it is) -------------------------------
    def stored_length_sql(self, declared: str) -> Optional[str]:
        """SQL (``{}``: the column) for a stored vector's length (None: decode a value)."""
        return None

    def searchable_vector(self, column: str, declared: str,
                          dimension: int) -> Optional[VectorColumn]:
        """The column as this database searches it natively, or None: scan it in numpy."""
        return None

    def foreign_nearest_sql(self, select: str, table: str, column: VectorColumn,
                            query: np.ndarray, n: int) -> Tuple[str, list]:
        """``select`` + cosine score, best first, at most ``n`` (``searchable_vector``)."""
        raise NotImplementedError(f"no vector search SQL for {self.name}")

    def foreign_search_fallback(self, column: VectorColumn) -> Optional[VectorColumn]:
        """Another way to search ``column`` when its native search failed (None: none)."""
        return None

    def streaming_cursor(self, conn, name: str):
        """A cursor whose rows arrive as they are fetched (for a scan of a whole table)."""
        return conn.cursor()

    # -- values ----------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_vector(self, vector: np.ndarray):
        """The bound parameter for a vector."""

    @abc.abstractmethod
    def decode_vector(self, value) -> np.ndarray:
        """A stored vector value → float32 array."""


# scheme -> "module:Class"
_DIALECTS: Dict[str, str] = {
    "sqlite": "dicomvec.io.stores.sqlite:SQLiteDialect",
    "postgresql": "dicomvec.io.stores.postgres:PostgresDialect",
    "iris": "dicomvec.io.stores.iris:IrisDialect",
}


def dialect_class(scheme: str) -> type:
    module_name, class_name = _DIALECTS[scheme].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def url_scheme(url: str) -> str:
    scheme = urlparse(url).scheme.split("+")[0].lower()
    return "postgresql" if scheme == "postgres" else scheme


def dialect_for_url(url: str, schema: str, table: Optional[str] = None,
                    spec: TableSpec = IMAGES) -> Dialect:
    """The dialect for ``url``'s scheme, bound to ``spec`` (table name ``table`` or the
    spec's)."""
    scheme = url_scheme(url)
    if scheme not in _DIALECTS:
        raise ValueError(f"unsupported sink URL scheme {scheme!r} in {redact_url(url)!r}; "
                         f"use one of {sorted(_DIALECTS)}")
    return dialect_class(scheme)(url, schema=schema, table=table, spec=spec)


_SECRET_QUERY_KEYS = {"password", "pwd", "passfile", "sslpassword"}


def redact_url(url: str) -> str:
    """The URL with any password (user-info or query parameter) replaced by ``***``."""
    try:
        parsed = urlparse(url)
        password = parsed.password
    except ValueError:
        return "<unparseable sink URL>"
    changed = False
    if password:
        user = parsed.username or ""
        host = parsed.netloc.rsplit("@", 1)[1]
        parsed = parsed._replace(netloc=f"{user}:***@{host}")
        changed = True
    if parsed.query:
        pairs = parse_qsl(parsed.query, keep_blank_values=True)
        if any(k.lower() in _SECRET_QUERY_KEYS for k, _ in pairs):
            query = [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs]
            parsed = parsed._replace(query=urlencode(query, safe="*/"))
            changed = True
    return parsed.geturl() if changed else url

