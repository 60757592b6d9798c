"""The reports pipeline's DoFns: report file → ``Report`` → ``ReportRow`` (embedded) → store.

- ``ParseReportFile``: ``fileio.ReadableFile`` → ``Report``; unreadable file → Failure stage
  ``read``; no MIMIC identity in the path or no text → Failure stage ``decode``.
- ``KeepFirstPerStudy``: one report per StudyID; another file with the same StudyID → Failure
  stage ``decode``.
- ``EmbedReportBatch``: list[Report] → list[ReportRow] with text vectors (one provider call per
  batch); a text the provider refuses → Failure stage ``embed``. A provider without a text tower
  (``thumbnail``) gives text-only rows (Vector NULL), so ``--with-reports`` and the images
  table's foreign key still work; such rows are counted as ``reports_text_only``.
- ``WriteReports``: list[ReportRow] → number stored; rows the database refuses → Failure stage
  ``write``.

Dead-letter rows use the report's StudyID in the ``image_id`` column.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import List, Optional

import apache_beam as beam
from apache_beam.coders import StrUtf8Coder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from dicomvec.io.providers import FatalProviderError, ProviderConfig, TextNotSupportedError
from dicomvec.io.stores import VectorStore
from dicomvec.io.stores.tables import REPORTS, ReportRow
from dicomvec.record import Failure
from dicomvec.reports.parsing import Report, ReportParseError, parse_report, parse_report_path
from dicomvec.transforms.provider_dofn import ProviderDoFn
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
        self.matched = counter("reports_matched")
        self.parsed = counter("reports_parsed")
        self.read_failed = counter("reports_read_failed")
        self.parse_failed = counter("reports_parse_failed")

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
        self.duplicates = counter("reports_duplicate_study")

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


class EmbedReportBatch(ProviderDoFn):
    """In: list[Report]. Out: list[ReportRow] (one per batch), ``Failure`` per refused text."""

    def __init__(self, provider_config: ProviderConfig):
        super().__init__(provider_config)
        self.embedded = counter("reports_embed_ok")
        self.text_only = counter("reports_text_only")
        self.failed = counter("reports_embed_failed")

    def process(self, batch: List[Report]):
        try:
            results = self.provider.embed_texts([report.embedded_text for report in batch])
        except TextNotSupportedError:
            self.text_only.inc(len(batch))
            yield [text_only_row(report) for report in batch]
            return
        except FatalProviderError:
            raise
        except Exception as exc:  # a provider bug must not lose the batch
            log.exception("provider %s raised for a batch of %d reports", self.provider.name,
                          len(batch))
            for report in batch:
                self.failed.inc()
                yield beam.pvalue.TaggedOutput(FAILED, _failure(report.path, "embed", exc,
                                                                retryable=True))
            return
        rows = []
        for report, result in zip(batch, results):
            if result.ok:
                rows.append(dataclasses.replace(
                    text_only_row(report), Vector=result.vector,
                    EmbeddingModel=self.provider.model, Provider=self.provider.name))
            else:
                self.failed.inc()
                yield beam.pvalue.TaggedOutput(
                    FAILED, Failure.from_result(report.path, report.study_id, "embed", result))
        self.embedded.inc(len(rows))
        self.report_stats()
        if rows:
            yield rows


class WriteReports(beam.DoFn):
    """In: list[ReportRow]. Out: rows stored (int); ``Failure`` per row the database refused."""

    def __init__(self, sink_url: str, schema: str, table: Optional[str] = None):
        super().__init__()
        self.sink_url = sink_url
        self.schema = schema
        self.table = table
        self.store = None
        self.stored = counter("reports_write_ok")
        self.failed = counter("reports_write_failed")

    def setup(self):
        self.store = VectorStore(self.sink_url, schema=self.schema, table=self.table,
                                 spec=REPORTS).open()

    def teardown(self):
        if self.store is not None:
            self.store.close()

    def process(self, batch: List[ReportRow]):
        by_study = {row.StudyID: row for row in batch}
        failed = self.store.upsert(list(by_study.values()))
        for row, exc in failed:
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(FAILED, _failure(
                row.ReportPath, "write", exc, retryable=self.store.dialect.is_transient(exc)))
        self.stored.inc(len(by_study) - len(failed))
        yield len(by_study) - len(failed)
