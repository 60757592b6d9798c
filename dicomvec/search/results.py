"""What a search is asked and what it answers: ``SearchRequest`` in; ``SearchResult`` out, whose
``results`` are ``ImageResult`` or ``ReportResult`` in rank order (``engine`` and
``via_reports`` both build them)."""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Union

from dicomvec.defaults import SEARCH_K, SEARCH_TARGETS as TARGETS
from dicomvec.errors import UserError
from dicomvec.io.stores import Hit
from dicomvec.io.stores.tables import ReportHit


@dataclasses.dataclass(frozen=True)
class SearchRequest:
    """One query: exactly one of ``text``, ``image`` (a DICOM path) or ``like`` (the ImageID
    of a stored image: its stored vector is the query, nothing is re-embedded and its file is
    not read), the table to search, how many results, an optional ViewPosition filter and
    whether to join the study reports."""

    text: Optional[str] = None
    image: Optional[str] = None
    like: Optional[str] = None
    target: str = "images"
    k: int = SEARCH_K
    view: Optional[str] = None
    with_reports: bool = False
    #: embed the text with the reports' own (OpenAI-compatible) model and search their vectors
    via_reports: bool = False
    #: the reports table (default ``MIMICCXRReports`` in the sink schema); read only
    reports_table: Optional[str] = None
    reports_schema: Optional[str] = None

    def __post_init__(self):
        if sum(bool(q) for q in (self.text, self.image, self.like)) != 1:
            raise UserError("give exactly one query: --text TEXT, --image FILE.dcm or "
                            "--like IMAGE_ID")
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
class RankedHit:
    """One result: its rank and the row found (with its score)."""

    rank: int
    hit: Union[Hit, ReportHit]

    @property
    def score(self) -> float:
        return self.hit.score

    def to_dict(self) -> dict:
        out = {"rank": self.rank, **dataclasses.asdict(self.hit)}
        out["score"] = round(out["score"], 6)
        return out


class ReportResult(RankedHit):
    """A report found."""


@dataclasses.dataclass(frozen=True)
class ImageResult(RankedHit):
    report: Optional[ReportHit] = None
    #: True when the search joined reports (``report`` None then means "no report stored")
    joined: bool = False

    def to_dict(self) -> dict:
        out = super().to_dict()
        if self.joined:
            out["report"] = None if self.report is None else {
                "StudyID": self.report.StudyID, "ReportPath": self.report.ReportPath,
                "Findings": self.report.Findings, "Impression": self.report.Impression,
                "EmbeddedText": self.report.EmbeddedText}
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
    #: the Provider value the search filtered on (the provider's ``store_key``; "": none)
    store_key: str = ""
    #: ``schema.table`` searched (``table``: its name alone, as ``--sink-table`` spells it)
    qualified_table: str = ""

    def to_dict(self) -> dict:
        extra = {"via_reports": self.via} if self.via else {}
        return {
            "query": {"text": self.request.text, "image": self.request.image,
                      "like": self.request.like,
                      "kind": self.request.kind, "k": self.request.k, "view": self.request.view},
            "target": self.request.target,
            "table": self.table,
            "provider": self.provider,
            "store_key": self.store_key,
            "qualified_table": self.qualified_table,
            "embedding_model": self.embedding_model,
            "semantic": self.semantic,
            "sink": self.sink,
            **extra,
            "results": [r.to_dict() for r in self.results],
        }
