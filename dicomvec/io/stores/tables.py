"""Table specs: every table of the sink described once, as a ``TableSpec``.

A spec lists the columns (name, portable SQL type, nullability), the primary key, the vector
column, the columns a search returns, the search filters and an optional foreign key. The
database dialects (``dialects.py`` and the per-database modules) render the DDL, upsert, search
and lookup SQL of ANY spec; the sink core (``base.py``) gives every table the same batched
idempotent upsert, reconnect-and-retry and bisection of bad rows.

The images table, ``VectorSearch.MIMICCXRImages`` (``IMAGES``): one row per (ImageID, Provider);
``FOREIGN KEY (StudyID) REFERENCES`` the reports table when asked for and that table exists.

One table per vector length: 1024-d vectors (NV-CLIP, thumbnail) go to ``MIMICCXRImages`` /
``MIMICCXRReports``, d-long vectors of any other length to ``MIMICCXRImages<d>`` /
``MIMICCXRReports<d>`` (``defaults.images_table``, ``SinkConfig.for_dimension``), each images
table's foreign key pointing at the reports table of its length. Inside a table, rows are keyed by
the provider's ``store_key`` (Provider column: ``thumbnail``, ``nvclip``, ``openclip:<model>``),
and every read filters on it, so two models of one length never mix.

The reports table, ``VectorSearch.MIMICCXRReports`` (``REPORTS``):

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
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np

# REPORTS_TABLE: the table the images table's optional foreign key points at (same schema)
from dicomvec.defaults import IMAGES_TABLE, PROVIDER_KEY_LENGTH, REPORTS_TABLE

#: portable column types; ``TEXT`` and ``VECTOR`` are rendered per database by the dialect
ID = "VARCHAR(64)"  # DICOM UIDs and MIMIC IDs (a UID can be 64 characters)
NAME = "VARCHAR(100)"
PATH = "VARCHAR(500)"
#: the Provider column: a provider's ``store_key``
PROVIDER = f"VARCHAR({PROVIDER_KEY_LENGTH})"
TEXT = "TEXT"
VECTOR = "VECTOR"
TIMESTAMP = "TIMESTAMP DEFAULT CURRENT_TIMESTAMP"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    type: str
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
    #: (column, table): ``FOREIGN KEY (column) REFERENCES table(column)`` on request
    foreign_key: Optional[Tuple[str, str]] = None

    @property
    def column_names(self) -> List[str]:
        return [c.name for c in self.columns]

    @property
    def vector_nullable(self) -> bool:
        return next(c.nullable for c in self.columns if c.name == self.vector)

    def column_groups(self, rows: Sequence) -> List[Tuple[List[str], list]]:
        """``rows`` grouped by the columns they write (with / without a vector), in order."""
        groups: dict = {}
        for row in rows:
            groups.setdefault(tuple(self.write_columns(row)), []).append(row)
        return [(list(columns), group) for columns, group in groups.items()]

    def row_label(self, row) -> str:
        """The row's identity for messages: its first key column (ImageID, StudyID)."""
        return str(getattr(row, self.key[0]))

    def write_columns(self, row) -> List[str]:
        """The columns one upsert writes: all of them, or all but the vector columns when the
        row has no vector."""
        if getattr(row, self.vector) is not None:
            return self.column_names
        return [c for c in self.column_names if c not in self.with_vector]


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
    CreatedAt: str = dataclasses.field(default_factory=_now)


@dataclasses.dataclass(frozen=True)
class Hit:
    """One image search result: the row's identity and metadata, and cosine similarity."""

    ImageID: str
    SubjectID: str
    StudyID: str
    ImagePath: str
    ViewPosition: str
    Provider: str
    score: float


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


IMAGES = TableSpec(
    table=IMAGES_TABLE,
    columns=(Column("SubjectID", ID, nullable=False), Column("StudyID", ID, nullable=False),
             Column("ImageID", ID, nullable=False), Column("ImagePath", PATH),
             Column("DicomFile", "VARCHAR(255)"), Column("ViewPosition", "VARCHAR(20)"),
             Column("Vector", VECTOR, nullable=False), Column("EmbeddingModel", NAME),
             Column("Provider", PROVIDER, nullable=False),
             Column("PreprocessVersion", "VARCHAR(20)"), Column("CreatedAt", TIMESTAMP)),
    key=("ImageID", "Provider"),
    row_type=ImageRow,
    hit_type=Hit,
    hit_columns=("ImageID", "SubjectID", "StudyID", "ImagePath", "ViewPosition", "Provider"),
    foreign_key=("StudyID", REPORTS_TABLE),
)

REPORTS = TableSpec(
    table=REPORTS_TABLE,
    columns=(Column("SubjectID", ID, nullable=False), Column("StudyID", ID, nullable=False),
             Column("ReportPath", PATH), Column("Findings", TEXT), Column("Impression", TEXT),
             Column("EmbeddedText", TEXT), Column("Vector", VECTOR),
             Column("EmbeddingModel", NAME), Column("Provider", PROVIDER),
             Column("CreatedAt", TIMESTAMP)),
    key=("StudyID",),
    row_type=ReportRow,
    hit_type=ReportHit,
    hit_columns=("StudyID", "SubjectID", "ReportPath", "Findings", "Impression", "EmbeddedText",
                 "Provider"),
)


# -- what an existing table looks like (read from the database's catalog) ----------------------

@dataclasses.dataclass(frozen=True)
class ColumnInfo:
    """One column of an existing table: ``type`` is the catalog's base type name, upper case
    (VARCHAR, TEXT, VECTOR, BLOB, ...), ``length`` the declared VARCHAR length when any,
    ``declared`` the type as the catalog spells it (e.g. ``_float4``, ``VARCHAR(64)``)."""

    name: str
    type: str
    length: Optional[int] = None
    nullable: bool = True
    has_default: bool = False
    declared: str = ""


@dataclasses.dataclass(frozen=True)
class TableShape:
    """An existing table as the catalog describes it: columns (by lower-case name), the
    primary key (lower-case names, in order; empty when none) and the vector length when the
    catalog or a stored row tells it."""

    columns: Tuple[ColumnInfo, ...]
    key: Tuple[str, ...]
    dimension: Optional[int] = None

    def column(self, name: str) -> Optional[ColumnInfo]:
        return next((c for c in self.columns if c.name.lower() == name.lower()), None)


@dataclasses.dataclass(frozen=True)
class VectorColumn:
    """How another tool's table keeps its vectors: ``kind`` (chosen by the dialect) decides
    where the search runs: ``scan`` in numpy, else in the database."""

    name: str  # SQL-rendered column
    kind: str  # scan, or the dialect's: pgvector | halfvec | iris-vector | iris-text
    dimension: int
    storage: str  # for messages and docs, e.g. "pgvector vector(3072)"
    element_type: str = "DOUBLE"


def declared_length(sql_type: str) -> Optional[int]:
    """``VARCHAR(64)`` → 64; None when the type has no length."""
    match = re.match(r"^\s*(?:VAR)?CHAR(?:ACTER)?(?: VARYING)?\s*\((\d+)\)", sql_type, re.I)
    return int(match.group(1)) if match else None
