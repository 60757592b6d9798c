"""Look-ups by key for the search page (``dicomvec serve``): a stored image by ImageID, a page of
the archive, the views present, a study's report. Read-only SELECTs through the shared sink core
and the database's dialect, so they run unchanged on SQLite, PostgreSQL and IRIS.

``image_info(options, image_id, provider)`` is the ONLY way the page finds a file to open: a
request names an ImageID, never a path, and the path comes from the row stored for it.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

from dicomvec.io.stores.tables import ReportHit
from dicomvec.search.reports_table import inspect_reports
from dicomvec.search.via_reports import open_reports, reports_for

#: the images-table columns shown for one image, in order
INFO_COLUMNS = ("ImageID", "SubjectID", "StudyID", "ImagePath", "DicomFile", "ViewPosition",
                "Provider", "EmbeddingModel", "PreprocessVersion", "CreatedAt")
#: at most this many images per page of the archive
MAX_PAGE = 200


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """One stored image's row, without its vector."""

    ImageID: str
    SubjectID: str
    StudyID: str
    ImagePath: str
    DicomFile: str
    ViewPosition: str
    Provider: str
    EmbeddingModel: str
    PreprocessVersion: str
    CreatedAt: str


def _info(row) -> ImageInfo:
    return ImageInfo(*["" if value is None else str(value) for value in row])


def image_info(options, image_id: str, provider: str) -> Optional[ImageInfo]:
    """The row stored for ``image_id`` with ``provider``'s vector; None when there is none."""
    if not image_id or len(image_id) > 64:
        return None
    with options.sink_config().images() as store:
        d = store.dialect
        sql = (f"SELECT {', '.join(INFO_COLUMNS)} FROM {d.qualified_table} "
               f"WHERE ImageID = {d.marker} AND Provider = {d.marker}")
        rows = store.query(sql, [image_id, provider], "image by ImageID")
    return _info(rows[0]) if rows else None


def archive_page(options, provider: str, n: int, view: Optional[str] = None
                 ) -> List[ImageInfo]:
    """Up to ``n`` stored images of ``provider`` (optionally one view), by StudyID, ImageID."""
    n = max(1, min(int(n), MAX_PAGE))
    with options.sink_config().images() as store:
        d = store.dialect
        where = f"FROM {d.qualified_table} WHERE Provider = {d.marker}"
        params = [provider]
        if view:
            where += f" AND ViewPosition = {d.marker}"
            params.append(view)
        # ORDER BY goes after the limit clause's placement: rows are sorted here instead
        rows = store.query(d.limited_sql(", ".join(INFO_COLUMNS), where, 20 * n), params,
                           "archive page")
    infos = sorted((_info(r) for r in rows), key=lambda i: (i.StudyID, i.ImageID))
    return infos[:n]


def archive_counts(options) -> Dict[Optional[str], int]:
    """Rows per Provider."""
    with options.sink_config().images() as store:
        return store.provider_counts()


def views(options, provider: str) -> List[str]:
    """The ViewPositions stored for ``provider``, sorted (empty ones left out)."""
    with options.sink_config().images() as store:
        d = store.dialect
        rows = store.query(f"SELECT DISTINCT ViewPosition FROM {d.qualified_table} "
                           f"WHERE Provider = {d.marker}", [provider], "views")
    return sorted({str(r[0]).strip().upper() for r in rows if r[0] and str(r[0]).strip()})


def reports_available(options, request) -> bool:
    """True when the configured reports table can be read (then image results join reports)."""
    try:
        with open_reports(options, request.reports_table, request.reports_schema) as store:
            inspect_reports(store)
        return True
    except Exception:  # no table, no database: the page works without reports, and says so
        return False


def report_of(options, request, study: str) -> Optional[ReportHit]:
    """The study's report, or None."""
    return reports_for(options, request, [study]).get(study) if study else None


def studies_reports(options, request, studies: Sequence[str]) -> Dict[str, ReportHit]:
    return reports_for(options, request, list(studies))
