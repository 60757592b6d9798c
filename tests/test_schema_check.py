"""``schema_check.compare``: which differences make a table someone else's (never written) and
which an older dicomvec's (``migrate`` fixes them)."""
from __future__ import annotations

import pytest

from dicomvec.io.stores.schema_check import (NeedsMigrationError, SchemaMismatchError,
                                             check_shape, compare, migration_statements)
from dicomvec.io.stores.dialects import dialect_for_url
from dicomvec.io.stores.tables import (IMAGES, REPORTS, ColumnInfo, TableShape,
                                       declared_length)


def ours(spec=IMAGES, dimension=1024, drop=(), lengths=None, key=None, extra=()):
    columns = []
    for c in spec.columns:
        if c.name in drop:
            continue
        length = (lengths or {}).get(c.name, declared_length(c.type))
        kind = "VECTOR" if c.type == "VECTOR" else c.type.split("(")[0]
        columns.append(ColumnInfo(c.name, kind, length, c.nullable, "DEFAULT" in c.type))
    columns += list(extra)
    return TableShape(tuple(columns), tuple(k.lower() for k in (key or spec.key)), dimension)


def test_our_own_table_has_no_differences_and_extra_nullable_columns_are_fine():
    assert compare(IMAGES, ours(), 1024) == []
    assert compare(IMAGES, ours(extra=[ColumnInfo("Note", "VARCHAR", 10)]), 1024) == []
    assert compare(IMAGES, ours(dimension=None), 1024) == []  # unknown length: not compared


def test_older_dicomvec_table_is_migratable():
    old = ours(drop=("PreprocessVersion",), lengths={"ImageID": 50, "StudyID": 50})
    differences = compare(IMAGES, old, 1024)
    assert [d.text for d in differences] == [
        "StudyID is VARCHAR(50), we write up to 64", "ImageID is VARCHAR(50), we write up to 64",
        "no PreprocessVersion column"]
    assert all(d.migratable for d in differences)
    with pytest.raises(NeedsMigrationError, match="dicomvec migrate --sink URL"):
        check_shape(IMAGES, old, 1024, "VectorSearch.MIMICCXRImages", "URL")
    # SQLite does not enforce VARCHAR lengths: only the missing column matters there
    assert [d.kind for d in compare(IMAGES, old, 1024, enforces_varchar_length=False)] == \
        ["missing"]
    pg = dialect_for_url("postgresql://u@h/db", "VectorSearch")
    assert migration_statements(pg, differences, 1024) == [
        "ALTER TABLE VectorSearch.MIMICCXRImages ALTER COLUMN StudyID TYPE VARCHAR(64)",
        "ALTER TABLE VectorSearch.MIMICCXRImages ALTER COLUMN ImageID TYPE VARCHAR(64)",
        "ALTER TABLE VectorSearch.MIMICCXRImages ADD COLUMN PreprocessVersion VARCHAR(20)"]
    sqlite = dialect_for_url("sqlite:///x.db", "VectorSearch")
    created = [d for d in compare(IMAGES, ours(drop=("CreatedAt",)), 1024)]
    assert migration_statements(sqlite, created, 1024) == [
        "ALTER TABLE MIMICCXRImages ADD COLUMN CreatedAt TIMESTAMP"]  # no non-constant default


@pytest.mark.parametrize("shape,text", [
    (ours(dimension=512), "Vector is 512-d, we write 1024-d"),
    (ours(key=("ImageID",)), "primary key is (imageid), we upsert on (ImageID, Provider)"),
    (ours(drop=("ImageID",)), "no ImageID column"),
    (ours(extra=[ColumnInfo("Owner", "VARCHAR", 20, nullable=False)]),
     "required column Owner that dicomvec does not fill"),
])
def test_another_tools_table_is_never_ours(shape, text):
    differences = compare(IMAGES, shape, 1024)
    assert text in [d.text for d in differences] and not all(d.migratable for d in differences)
    with pytest.raises(SchemaMismatchError) as err:
        check_shape(IMAGES, shape, 1024, "VectorSearch.MIMICCXRImages", "URL")
    assert not isinstance(err.value, NeedsMigrationError)
    assert "--sink-table NAME" in str(err.value) and "\n" not in str(err.value)


def test_predecessor_reports_table():
    theirs = TableShape((ColumnInfo("SubjectID", "VARCHAR", 50), ColumnInfo("StudyID", "VARCHAR",
                                                                             50),
                         ColumnInfo("Findings", "TEXT"), ColumnInfo("Impression", "TEXT"),
                         ColumnInfo("Vector", "VECTOR")), key=(), dimension=3072)
    with pytest.raises(SchemaMismatchError) as err:
        check_shape(REPORTS, theirs, 1024, "VectorSearch.MIMICCXRReports", "URL")
    message = str(err.value)
    assert "is not a dicomvec reports table" in message and "--reports-table NAME" in message
    for part in ("no ReportPath column", "no EmbeddedText column", "primary key is none",
                 "Vector is 3072-d, we write 1024-d", "StudyID is VARCHAR(50)"):
        assert part in message
