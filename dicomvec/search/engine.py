"""Run one search: query (text or image) → vector → ``nearest`` on the images or reports table
(through the shared sink core and the database's dialect) → ranked results, optionally joined
with each image's study report.

In: a ``SearchRequest`` and the job's ``DicomvecOptions`` (sink, provider, preprocessing).
Out: a ``SearchResult`` whose ``results`` are ``ImageResult`` or ``ReportResult`` in rank order.
"""
from __future__ import annotations

import contextlib
from typing import List, Optional

from dicomvec.errors import UserError
from dicomvec.io.providers import TextNotSupportedError, create_provider
from dicomvec.io.stores import Hit
from dicomvec.io.stores.dialects import redact_url
from dicomvec.io.stores.tables import ReportHit
from dicomvec.search.queries import embed_query_image, embed_query_text, image_record
from dicomvec.search.reports_table import inspect_reports
from dicomvec.search.results import ImageResult, ReportResult, SearchRequest, SearchResult
from dicomvec.search.via_reports import (open_reports, reports_for, reports_via_images,
                                         search_via_reports)


#: words of a database error that say the table is not there (then the hint to fill it helps)
_NO_TABLE = ("no such table", "does not exist", "not found", "undefined table")


@contextlib.contextmanager
def _store_errors(table: str, sink: str, fills: str = "run"):
    """A database error while searching ``table`` becomes one ``UserError`` line; it suggests
    filling the table (``dicomvec <fills>``) only when the error says the table is missing."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        hint = ""
        if any(words in message.lower() for words in _NO_TABLE):
            hint = f" (run `dicomvec {fills}` first?)"
        raise UserError(f"cannot search {table} at {redact_url(sink)}: {type(exc).__name__}: "
                        f"{message}{hint}") from None


def _same_subject(report: Optional[ReportHit], hit: Hit) -> Optional[ReportHit]:
    """The study's report, unless it names another subject (a StudyID clash)."""
    if report is not None and report.SubjectID and report.SubjectID != hit.SubjectID:
        return None
    return report


def stored_vector(request: SearchRequest, options, provider):
    """The vector stored for ``request.like`` (an ImageID) under ``provider``'s store key, in
    the images table of its vector length: "more like this" queries by what was stored, so it
    needs neither the model nor the file."""
    sink = options.sink_config(provider.dimension)
    sink.images().dialect.check_reachable(must_exist=True)
    with _store_errors(sink.table, options.sink), sink.images() as store:
        found = store.vectors([request.like], provider.store_key)
        table = store.dialect.qualified_table
    if request.like not in found:
        raise UserError(f"no stored image {request.like!r} with a {provider.store_key} vector "
                        f"in {table}")
    return found[request.like]


def query_vector(request: SearchRequest, options, provider):
    if request.text:
        return embed_query_text(provider, request.text)
    size, image_format = options.model_input(provider)
    record = image_record(request.image, size, options.normalization, image_format)
    return embed_query_image(provider, record)


def _reports_are_ours(request: SearchRequest, options) -> bool:
    """True when the reports table has dicomvec's columns (and so its provider's vectors)."""
    try:
        with open_reports(options, request.reports_table, request.reports_schema) as store:
            return inspect_reports(store).ours
    except UserError:  # no such table: the search below says so in its own words
        return True


def _nearest_images(request: SearchRequest, options, vector, provider, k: int) -> List[Hit]:
    """The images table of the provider's vector length, its rows of the provider's
    ``store_key`` only."""
    sink = options.sink_config(provider.dimension)
    with _store_errors(sink.table, options.sink), sink.images() as store:
        return store.nearest(vector, k, provider.store_key, request.view)


def _qualified(store) -> str:
    """``schema.table`` of ``store`` (no connection is made)."""
    return store.dialect.qualified_table


def run_search(request: SearchRequest, options, text_settings=None) -> SearchResult:
    """Embed the query with ``options``' provider and search ``request.target``; with
    ``request.via_reports`` embed the text with ``text_settings`` (``OpenAISettings``) and
    search the reports' own vectors instead."""
    if request.via_reports:
        from dicomvec.io.providers.openai_client import OpenAISettings
        return search_via_reports(request, options, text_settings or OpenAISettings())
    provider = create_provider(options.provider_config())
    foreign_reports = request.target == "reports" and not _reports_are_ours(request, options)
    if request.target == "reports" and not provider.semantic and not foreign_reports:
        raise TextNotSupportedError(
            f"searching reports needs a semantic model: the {provider.name!r} provider is a "
            "non-semantic image descriptor and stores no report vectors; use --provider "
            "openclip (a local model) or nvclip")
    if request.like:
        vector = stored_vector(request, options, provider)
    else:
        provider.setup()
        try:
            vector = query_vector(request, options, provider)
        finally:
            provider.teardown()
    sink = options.sink_config(provider.dimension)
    # a missing database is an error, never created
    sink.images().dialect.check_reachable(must_exist=True)
    images_table = _qualified(sink.images())
    reports_store = open_reports(options, request.reports_table, request.reports_schema)
    reports_table = _qualified(reports_store)
    searched = dict(provider=provider.name, embedding_model=provider.model,
                    semantic=provider.semantic, sink=redact_url(options.sink),
                    store_key=provider.store_key)

    if foreign_reports:  # another tool's reports: rank each study's report by its images
        hits = _nearest_images(request, options, vector, provider, 4 * request.k)
        results = reports_via_images(request, hits, options)
        return SearchResult(request=request, **searched, table=reports_store.dialect.table,
                            qualified_table=reports_table, results=results,
                            via={"ranking": "each study's report by its best image hit (the "
                                            "reports table has no vectors of this provider)"})
    if request.target == "reports":
        table, qualified = reports_store.dialect.table, reports_table
        with _store_errors(table, options.sink, "reports"), open_reports(
                options, request.reports_table, request.reports_schema) as store:
            hits = store.nearest(vector, request.k, provider.store_key)
        results = [ReportResult(rank, hit) for rank, hit in enumerate(hits, start=1)]
    else:
        table, qualified = sink.table, images_table
        hits = _nearest_images(request, options, vector, provider, request.k)
        reports = {}
        if request.with_reports and hits:
            with _store_errors(reports_store.dialect.table, options.sink, "reports"):
                reports = reports_for(options, request, [hit.StudyID for hit in hits])
        results = [ImageResult(rank, hit, _same_subject(reports.get(hit.StudyID), hit),
                               request.with_reports)
                   for rank, hit in enumerate(hits, start=1)]
    return SearchResult(request=request, **searched, table=table, qualified_table=qualified,
                        results=results)
