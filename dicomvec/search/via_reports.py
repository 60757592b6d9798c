"""Search through a reports table as it is (another tool's vectors; read-only).

* ``search_via_reports``: ``--text … --via-reports``. The query is embedded with the
  OpenAI-compatible model that embedded the reports (``--text-model``, key ``OPENAI_API_KEY``),
  after checking that model's vector length against the reports' Vector column; the nearest
  reports are found in *their* column (``reports_table.nearest_reports``); the result is those
  studies' images from dicomvec's images table, ranked by their report's score, ties by view
  (PA, AP, LATERAL, LL, other, none), then StudyID and ImageID — or, with ``--target
  reports``, the reports themselves.
* ``reports_via_images``: ``--target reports`` on a table without dicomvec's vectors: the query
  (image or text, with the run's provider) finds the nearest images, and each study's report
  is ranked by its best image.

Nothing here writes: every statement is a SELECT.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from dicomvec.errors import UserError
from dicomvec.io.stores import Hit, VectorStore
from dicomvec.io.stores.dialects import redact_url, validate_identifier
from dicomvec.io.stores.tables import REPORTS, ReportHit
from dicomvec.search.reports_table import (canonical_id, inspect_reports, lookup_reports,
                                           nearest_reports, vector_column, view_rank)
from dicomvec.search.results import ImageResult, ReportResult, SearchResult

#: reports fetched per image wanted at first; grown ×4 while studies lack images
MAX_REPORTS = 20_000


def open_reports(options, table: Optional[str] = None, schema: Optional[str] = None
                 ) -> VectorStore:
    """A (read) store on the reports table ``schema.table`` (defaults: the sink schema and
    ``MIMICCXRReports``)."""
    name = table or options.sink_config().reports_table
    spec = REPORTS if name == REPORTS.table else \
        dataclasses.replace(REPORTS, table=validate_identifier(name))
    store = options.sink_config().reports(table=name, schema=schema, spec=spec)
    missing = store.dialect.missing_database()  # reading must not create the database
    if missing:
        raise UserError(missing)
    return store


def reports_for(options, request, studies: Sequence[str]) -> Dict[str, ReportHit]:
    """``{StudyID: ReportHit}`` from the configured reports table, whatever its columns."""
    with open_reports(options, request.reports_table, request.reports_schema) as store:
        return lookup_reports(store, inspect_reports(store), studies)


def images_of_studies(options, studies: Sequence[str], view: Optional[str]) -> List[Hit]:
    """dicomvec's image rows of ``studies`` (all providers, one row per ImageID)."""
    studies = list(dict.fromkeys(canonical_id("StudyID", s) for s in studies if s))
    found: Dict[str, Hit] = {}
    with options.sink_config().images() as store:
        dialect = store.dialect
        for start in range(0, len(studies), 500):
            chunk = studies[start:start + 500]
            sql = (f"SELECT ImageID, SubjectID, StudyID, ImagePath, ViewPosition, Provider "
                   f"FROM {dialect.qualified_table} WHERE StudyID IN "
                   f"({dialect.placeholders(len(chunk))})")
            params = list(chunk)
            if view:
                sql += f" AND ViewPosition = {dialect.marker}"
                params.append(view)
            sql += " ORDER BY ImageID, Provider"
            for row in store.query(sql, params, "images of studies"):
                found.setdefault(row[0], Hit(*row, score=0.0))
    return list(found.values())


def rank_images(reports: Sequence[ReportHit], images: Sequence[Hit]
                ) -> List[Tuple[Hit, ReportHit]]:
    """Each image with its study's report, scored by the report: best score first, ties by
    view, then StudyID and ImageID. Images of a study whose report names another subject (a
    StudyID clash) are left out."""
    by_study: Dict[str, ReportHit] = {}
    for report in reports:
        by_study.setdefault(report.StudyID, report)
    ranked = []
    for image in images:
        report = by_study.get(canonical_id("StudyID", image.StudyID))
        if report is None:
            continue
        if report.SubjectID and image.SubjectID and \
                report.SubjectID != canonical_id("SubjectID", image.SubjectID):
            continue
        ranked.append((dataclasses.replace(image, score=float(report.score)), report))
    ranked.sort(key=lambda pair: (-pair[0].score, view_rank(pair[0].ViewPosition),
                                  pair[0].StudyID, pair[0].ImageID))
    return ranked


def search_via_reports(request, options, settings):
    """``--via-reports``: see the module docstring. ``settings``: ``OpenAISettings``."""
    from dicomvec.io.providers.openai_client import OpenAITextEmbedder, api_key

    api_key(settings.model)  # a missing key is said before any database is opened
    with open_reports(options, request.reports_table, request.reports_schema) as store:
        table = inspect_reports(store)
        expected = settings.expected_dimension
        column = vector_column(store, table, expected)
        where = f"{table.qualified}.{column.name} ({column.storage})"
        if expected is not None and expected != column.dimension:
            hint = (f"; --text-dimensions {column.dimension} if the reports were embedded "
                    "shortened" if settings.model.startswith("text-embedding-3")
                    and column.dimension < expected else "")
            raise UserError(f"{settings.model} gives {expected}-d vectors but {where} holds "
                            f"{column.dimension}-d vectors: give the model that embedded the "
                            f"reports with --text-model{hint}")
        with OpenAITextEmbedder(settings, column.dimension) as embedder:
            (query,) = embedder.embed([request.text])
        if request.target == "reports":
            hits, skipped = nearest_reports(store, table, column, query, request.k)
            results = [ReportResult(rank, hit) for rank, hit in enumerate(hits, start=1)]
            considered = len(hits)
        else:
            results, considered, skipped = _images_for(request, options, store, table, column,
                                                       query)
    via = {"reports_table": table.qualified, "vector_column": column.name,
           "vector_storage": column.storage, "dimension": column.dimension,
           "text_model": settings.model, "text_url": redact_url(settings.url),
           "reports_considered": considered, "unreadable_vectors_skipped": skipped,
           "ranking": "report score, then view (PA, AP, LATERAL, LL, other, none), StudyID, "
                      "ImageID" if request.target == "images" else "report score"}
    return SearchResult(request=request, provider="openai-compatible",
                        embedding_model=settings.model, semantic=True,
                        sink=redact_url(options.sink),
                        table=options.sink_config().table if request.target == "images"
                        else table.qualified, results=results, via=via)


def _images_for(request, options, store, table, column, query: np.ndarray):
    wanted = request.k
    while True:
        reports, skipped = nearest_reports(store, table, column, query, wanted)
        ranked = rank_images(reports, images_of_studies(
            options, [r.StudyID for r in reports], request.view))
        if len(ranked) >= request.k or len(reports) < wanted or wanted >= MAX_REPORTS:
            break
        wanted = min(MAX_REPORTS, wanted * 4)
    results = [ImageResult(rank, hit, report if request.with_reports else None,
                           request.with_reports)
               for rank, (hit, report) in enumerate(ranked[:request.k], start=1)]
    return results, len(reports), skipped


def reports_via_images(request, hits: Sequence[Hit], options):
    """Reports of the studies of ``hits`` (image hits, best first), each scored by its best
    image; at most ``request.k``."""
    best: Dict[str, float] = {}
    for hit in hits:
        best.setdefault(canonical_id("StudyID", hit.StudyID), float(hit.score))
    reports = reports_for(options, request, list(best))
    ordered = sorted((s for s in best if s in reports), key=lambda s: (-best[s], s))
    return [ReportResult(rank, dataclasses.replace(reports[study], score=best[study]))
            for rank, study in enumerate(ordered[:request.k], start=1)]
