"""Run one search: query (text or image) → vector → ``nearest`` on the images or reports table
(through the shared sink core and the database's dialect) → ranked results, optionally joined
with each image's study report.

In: a ``SearchRequest`` and the job's ``DicomvecOptions`` (sink, provider, preprocessing).
Out: a ``SearchResult`` whose ``results`` are ``ImageResult`` or ``ReportResult`` in rank order.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Union

from dicomvec.errors import UserError
from dicomvec.io.providers import TextNotSupportedError, create_provider
from dicomvec.io.stores import Hit, VectorStore
from dicomvec.io.stores.dialects import redact_url
from dicomvec.io.stores.tables import REPORTS, ReportHit
from dicomvec.search.queries import embed_query_image, embed_query_text, image_record

TARGETS = ("images", "reports")


@dataclasses.dataclass(frozen=True)
class SearchRequest:
    """One query: exactly one of ``text``/``image`` (a DICOM path), the table to search, how
    many results, an optional ViewPosition filter and whether to join the study reports."""

    text: Optional[str] = None
    image: Optional[str] = None
    target: str = "images"
    k: int = 10
    view: Optional[str] = None
    with_reports: bool = False
    #: embed the text with the reports' own (OpenAI-compatible) model and search their vectors
    via_reports: bool = False
    #: the reports table (default ``MIMICCXRReports`` in the sink schema); read only
    reports_table: Optional[str] = None
    reports_schema: Optional[str] = None

    def __post_init__(self):
        if bool(self.text) == bool(self.image):
            raise UserError("give exactly one query: --text TEXT or --image FILE.dcm")
        if self.via_reports and not self.text:
            raise UserError("--via-reports embeds a text query with the reports' model: use "
                            "it with --text")
        if self.target not in TARGETS:
            raise UserError(f"--target must be one of {TARGETS}")
        if isinstance(self.k, bool) or int(self.k) < 1:
            raise UserError(f"--k must be a positive integer, got {self.k}")
        if self.view:
            object.__setattr__(self, "view", self.view.strip().upper())
        if self.target == "reports" and self.view:
            raise UserError("--view filters images; it does not apply to --target reports")
        if self.target == "reports" and self.with_reports:
            raise UserError("--with-reports joins image hits to their reports; with --target "
                            "reports the hits already are reports")

    @property
    def kind(self) -> str:
        kind = f"{'text' if self.text else 'image'} → {self.target[:-1]}"
        return kind + " (via reports)" if self.via_reports else kind


@dataclasses.dataclass(frozen=True)
class ImageResult:
    rank: int
    hit: Hit
    report: Optional[ReportHit] = None
    #: True when the search joined reports (``report`` None then means "no report stored")
    joined: bool = False

    @property
    def score(self) -> float:
        return self.hit.score

    def to_dict(self) -> dict:
        out = {"rank": self.rank, **dataclasses.asdict(self.hit)}
        out["score"] = round(out["score"], 6)
        if self.joined:
            out["report"] = None if self.report is None else {
                "StudyID": self.report.StudyID, "ReportPath": self.report.ReportPath,
                "Findings": self.report.Findings, "Impression": self.report.Impression,
                "EmbeddedText": self.report.EmbeddedText}
        return out


@dataclasses.dataclass(frozen=True)
class ReportResult:
    rank: int
    hit: ReportHit

    @property
    def score(self) -> float:
        return self.hit.score

    def to_dict(self) -> dict:
        out = {"rank": self.rank, **dataclasses.asdict(self.hit)}
        out["score"] = round(out["score"], 6)
        return out


@dataclasses.dataclass
class SearchResult:
    request: SearchRequest
    provider: str
    embedding_model: str
    semantic: bool
    sink: str
    table: str
    results: List[Union[ImageResult, ReportResult]]
    #: how a search through another tool's reports ran (table, vector storage, ranking)
    via: Optional[dict] = None

    def to_dict(self) -> dict:
        extra = {"via_reports": self.via} if self.via else {}
        return {
            "query": {"text": self.request.text, "image": self.request.image,
                      "kind": self.request.kind, "k": self.request.k, "view": self.request.view},
            "target": self.request.target,
            "table": self.table,
            "provider": self.provider,
            "embedding_model": self.embedding_model,
            "semantic": self.semantic,
            "sink": self.sink,
            **extra,
            "results": [r.to_dict() for r in self.results],
        }


#: words of a database error that say the table is not there (then the hint to fill it helps)
_NO_TABLE = ("no such table", "does not exist", "not found", "undefined table")


def _store_error(exc: Exception, table: str, sink: str) -> UserError:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    hint = ""
    if any(words in message.lower() for words in _NO_TABLE):
        hint = f" (run `dicomvec {'reports' if table == REPORTS.table else 'run'}` first?)"
    return UserError(f"cannot search {table} at {redact_url(sink)}: {type(exc).__name__}: "
                     f"{message}{hint}")


def _same_subject(report: Optional[ReportHit], hit: Hit) -> Optional[ReportHit]:
    """The study's report, unless it names another subject (a StudyID clash)."""
    if report is not None and report.SubjectID and report.SubjectID != hit.SubjectID:
        return None
    return report


def query_vector(request: SearchRequest, options, provider):
    if request.text:
        return embed_query_text(provider, request.text)
    record = image_record(request.image, options.image_size, options.normalization,
                          options.image_format)
    return embed_query_image(provider, record)


def _reports_are_ours(request: SearchRequest, options) -> bool:
    """True when the reports table has dicomvec's columns (and so its provider's vectors)."""
    from dicomvec.search.reports_table import inspect_reports
    from dicomvec.search.via_reports import open_reports
    try:
        with open_reports(options, request.reports_table, request.reports_schema) as store:
            return inspect_reports(store).ours
    except UserError:  # no such table: the search below says so in its own words
        return True


def _nearest_images(request: SearchRequest, options, vector, provider, k: int) -> List[Hit]:
    try:
        with VectorStore(options.sink, schema=options.sink_schema,
                         table=options.sink_table) as store:
            return store.nearest(vector, k, provider.name, request.view)
    except UserError:
        raise
    except Exception as exc:
        raise _store_error(exc, options.sink_table, options.sink) from None


def run_search(request: SearchRequest, options, text_settings=None) -> SearchResult:
    """Embed the query with ``options``' provider and search ``request.target``; with
    ``request.via_reports`` embed the text with ``text_settings`` (``OpenAISettings``) and
    search the reports' own vectors instead."""
    if request.via_reports:
        from dicomvec.io.providers.openai_client import OpenAISettings
        from dicomvec.search.via_reports import search_via_reports
        return search_via_reports(request, options, text_settings or OpenAISettings())
    provider = create_provider(options.provider_config())
    foreign_reports = request.target == "reports" and not _reports_are_ours(request, options)
    if request.target == "reports" and not provider.semantic and not foreign_reports:
        raise TextNotSupportedError(
            f"searching reports needs a semantic model: the {provider.name!r} provider is a "
            "non-semantic image descriptor and stores no report vectors; use --provider nvclip")
    provider.setup()
    try:
        vector = query_vector(request, options, provider)
    finally:
        provider.teardown()
    from dicomvec.pipeline.preflight import check_sink
    check_sink(options.sink, must_exist=True)  # a missing database is an error, never created

    if foreign_reports:  # another tool's reports: rank each study's report by its images
        from dicomvec.search.via_reports import reports_via_images
        hits = _nearest_images(request, options, vector, provider, 4 * request.k)
        results = reports_via_images(request, hits, options)
        table = request.reports_table or REPORTS.table
        return SearchResult(request=request, provider=provider.name,
                            embedding_model=provider.model, semantic=provider.semantic,
                            sink=redact_url(options.sink), table=table, results=results,
                            via={"ranking": "each study's report by its best image hit (the "
                                            "reports table has no vectors of this provider)"})
    if request.target == "reports":
        table = request.reports_table or REPORTS.table
        try:
            from dicomvec.search.via_reports import open_reports
            with open_reports(options, request.reports_table, request.reports_schema) as store:
                hits = store.nearest(vector, request.k, provider.name)
        except UserError:
            raise
        except Exception as exc:
            raise _store_error(exc, table, options.sink) from None
        results = [ReportResult(rank, hit) for rank, hit in enumerate(hits, start=1)]
    else:
        table = options.sink_table
        hits = _nearest_images(request, options, vector, provider, request.k)
        reports = {}
        if request.with_reports and hits:
            from dicomvec.search.via_reports import reports_for
            try:
                reports = reports_for(options, request, [hit.StudyID for hit in hits])
            except UserError:
                raise
            except Exception as exc:
                raise _store_error(exc, request.reports_table or REPORTS.table,
                                   options.sink) from None
        results = [ImageResult(rank, hit, _same_subject(reports.get(hit.StudyID), hit),
                               request.with_reports)
                   for rank, hit in enumerate(hits, start=1)]
    return SearchResult(request=request, provider=provider.name,
                        embedding_model=provider.model, semantic=provider.semantic,
                        sink=redact_url(options.sink), table=table, results=results)
