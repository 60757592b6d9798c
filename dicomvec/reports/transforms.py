"""The reports pipeline's DoFns: report file → ``Report`` → ``ReportRow`` (embedded) → store.

- ``ParseReportFile``: ``fileio.ReadableFile`` → ``Report``; unreadable file → Failure stage
  ``read``; no MIMIC identity in the path or no text → Failure stage ``decode``.
- ``KeepFirstPerStudy``: one report per StudyID; another file with the same StudyID → Failure
  stage ``decode``.
- ``ReportInputs``: what the images' ``EmbedBatch`` embeds here: list[Report] →
  list[ReportRow] with text vectors (one provider call per batch); a text the provider refuses →
  Failure stage ``embed``. A provider without a text tower (``thumbnail``) gives text-only rows
  (Vector NULL), so ``--with-reports`` and the images table's foreign key still work; such rows
  are counted as ``reports_text_only``.
- ``report_failure``: the dead letter of a row the images' ``WriteToStore`` could not write
  into the reports table (stage ``write``).

Dead-letter rows use the report's StudyID in the ``image_id`` column.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import List, Optional

import apache_beam as beam
from apache_beam.coders import StrUtf8Coder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from dicomvec import counters as C
from dicomvec.io.providers import TextNotSupportedError
from dicomvec.io.providers.base import finished_future
from dicomvec.io.stores.tables import ReportRow
from dicomvec.record import Failure
from dicomvec.reports.parsing import Report, ReportParseError, parse_report, parse_report_path
from dicomvec.transforms.embed import ImageInputs
from dicomvec.transforms.stage import FAILED, counter

log = logging.getLogger(__name__)


def _failure(path: str, stage: str, exc: BaseException, retryable: bool = False,
             attempts: int = 1) -> Failure:
    identity = parse_report_path(path)
    message = str(exc).strip() or repr(exc)
    return Failure(path=path, image_id=identity[1] if identity else "", stage=stage,
                   error_type=type(exc).__name__, error_message=message[:2000],
                   attempts=attempts, retryable=retryable)


class ParseReportFile(beam.DoFn):
    """In: ``fileio.ReadableFile``. Out: ``Report``, or ``Failure`` on tag ``failed``."""

    def __init__(self):
        super().__init__()
        self.matched = counter(C.REPORTS.matched)
        self.parsed = counter(C.REPORTS_PARSED)
        self.read_failed = counter(C.REPORTS.failed("read"))
        self.parse_failed = counter(C.REPORTS_PARSE_FAILED)

    def process(self, readable_file):
        path = readable_file.metadata.path
        self.matched.inc()
        try:
            raw = readable_file.read()
            text = raw.decode("utf-8", errors="replace")
        except Exception as exc:
            self.read_failed.inc()
            yield beam.pvalue.TaggedOutput(FAILED, _failure(path, "read", exc))
            return
        try:
            report = parse_report(text, path)
        except ReportParseError as exc:
            self.parse_failed.inc()
            log.warning("cannot use report %s: %s", path, exc)
            yield beam.pvalue.TaggedOutput(FAILED, _failure(path, "decode", exc))
            return
        self.parsed.inc()
        yield report


class KeepFirstPerStudy(beam.DoFn):
    """In: ``(study_id, Report)``. Out: the first report seen per StudyID (the table's key).

    Another file with the same StudyID is counted (``reports_duplicate_study``), named in the
    log and dead-lettered (stage ``decode``), so no report is dropped silently. Keyed state:
    the same on batch and streaming runners.
    """

    FIRST_PATH = ReadModifyWriteStateSpec("first_path", StrUtf8Coder())

    def __init__(self):
        super().__init__()
        self.duplicates = counter(C.REPORTS_DUPLICATE_STUDY)

    def process(self, element, first_path=beam.DoFn.StateParam(FIRST_PATH)):
        study_id, report = element
        seen = first_path.read()
        if seen is None:
            first_path.write(report.path)
            yield report
            return
        self.duplicates.inc()
        log.warning("duplicate StudyID %s: %s and %s; kept the first", study_id, seen,
                    report.path)
        yield beam.pvalue.TaggedOutput(FAILED, _failure(report.path, "decode", ValueError(
            f"duplicate StudyID {study_id}: already read from {seen}")))


def text_only_row(report: Report) -> ReportRow:
    return ReportRow(SubjectID=report.subject_id, StudyID=report.study_id,
                     ReportPath=report.path, Findings=report.findings,
                     Impression=report.impression, EmbeddedText=report.embedded_text,
                     Vector=None, EmbeddingModel=None, Provider=None)


class ReportInputs(ImageInputs):
    """What ``EmbedBatch`` embeds for the reports job: ``Report`` → its embedded text; out a
    ``ReportRow`` with the text's vector. A provider without a text tower gives the whole batch
    as text-only rows (counted as ``reports_text_only``)."""

    def __init__(self):
        self.text_only = counter(C.REPORTS_TEXT_ONLY)

    def identity(self, report: Report):
        return report.path, report.study_id

    def submit(self, provider, batch: List[Report]):
        texts = [report.embedded_text for report in batch]
        return finished_future(lambda: provider.embed_texts(texts))

    def embedded(self, provider, report: Report, vector) -> ReportRow:
        return dataclasses.replace(text_only_row(report), Vector=vector,
                                   EmbeddingModel=provider.model, Provider=provider.store_key)

    def unsupported(self, batch: List[Report], exc: BaseException) -> Optional[list]:
        if not isinstance(exc, TextNotSupportedError):
            return None
        self.text_only.inc(len(batch))
        return [text_only_row(report) for report in batch]


def report_failure(row: ReportRow, stage: str, exc: BaseException,
                   retryable: bool = False) -> Failure:
    """The dead letter of a row the database refused."""
    return _failure(row.ReportPath, stage, exc, retryable=retryable)


