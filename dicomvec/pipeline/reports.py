"""The reports job (``dicomvec reports``): MIMIC-CXR report files → the reports table.

Graph: fileio.MatchFiles + ReadMatches → ParseReportFile → KeepFirstPerStudy (keyed state) →
BatchForEmbedding (GroupIntoBatches, spread keys) → EmbedReportBatch (texts, same provider as
the images) → WriteReports (upsert on StudyID through the shared sink core); every ``failed``
output → Flatten → WriteDeadLetters. Embed and write are the images job's transforms; the job
runs through the same runner (``run.run_job``) and its counts are checked the same way.

In: a command line with the same flags as ``dicomvec run`` (``--input 'files/**/s*.txt'``,
``--sink``, ``--provider``, ``--dead-letter``, ``--batch-size``, Beam flags). Out: a
``ReportsSummary`` (also printed by the command).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import List, Tuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes

from dicomvec import counters as C
from dicomvec.io.dead_letter import WriteDeadLetters, generation_dir
from dicomvec.io.object_storage import check_s3_paths, match_input
from dicomvec.io.providers import create_provider
from dicomvec.pipeline.accounting import check_accounting
from dicomvec.pipeline.graph import stage
from dicomvec.pipeline.local_engine import configure_local_engine
from dicomvec.pipeline.options import DicomvecOptions
from dicomvec.pipeline import preflight
from dicomvec.pipeline.run import JobSummary, default_run_id, job_options, run_job
from dicomvec.reports.parsing import CONTEXT_TOKENS, TOKEN_BUDGET, Report
from dicomvec.io.stores.tables import REPORTS
from dicomvec.reports.transforms import (KeepFirstPerStudy, ParseReportFile, ReportInputs,
                                        report_failure)
from dicomvec.transforms.embed import BatchForEmbedding, EmbedBatch, batching_shards
from dicomvec.transforms.write import WriteToStore

log = logging.getLogger(__name__)


def build_reports(pipeline: beam.Pipeline, options: DicomvecOptions, run_id: str):
    """Add the reports transforms to ``pipeline``; returns the PCollection of stored counts."""
    failures = []
    files = (pipeline
             | "MatchReports" >> fileio.MatchFiles(
                 options.input, empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)
             | "ReadReports" >> fileio.ReadMatches(compression=CompressionTypes.UNCOMPRESSED))
    parsed = stage(files, "ParseReports", ParseReportFile(), failures)
    keyed = parsed | "KeyByStudyID" >> beam.Map(
        lambda report: (report.study_id, report)).with_output_types(Tuple[str, Report])
    reports = stage(keyed, "KeepFirstPerStudy", KeepFirstPerStudy(), failures)
    batches = reports | "BatchReports" >> BatchForEmbedding(
        options.batch_size, shards=batching_shards(pipeline.options))
    rows = stage(batches, "EmbedReports", EmbedBatch(
        options.provider_config(), inputs=ReportInputs(), names=C.REPORTS), failures)
    stored = stage(rows, "WriteReports", WriteToStore(
        options.sink_config(), to_row=lambda row: row, failure=report_failure, spec=REPORTS,
        names=C.REPORTS), failures)
    (failures
     | "AllReportFailures" >> beam.Flatten()
     | "ReportDeadLetters" >> WriteDeadLetters(options.dead_letter, run_id))
    return stored


@dataclasses.dataclass(kw_only=True)
class ReportsSummary(JobSummary):
    duplicate_studies: int
    embedded: int
    text_only: int
    rows_in_table: int
    vectors_in_table: int
    table: str

    def render(self) -> str:
        lines = [
            f"dicomvec reports {self.run_id}",
            f"  report files matched {self.matched}",
            f"  duplicate StudyIDs   {self.duplicate_studies}  (another file already gave that "
            f"study's report; dead-lettered)",
            f"  reports stored       {self.stored}  ({self.embedded} with a text vector, "
            f"{self.text_only} text only)",
            self.dead_letter_line(),
            f"  wall time            {self.wall_time_s:.1f} s",
            f"  provider             {self.provider} ({self.embedding_model})",
            f"  texts sent to        {self.destination}",
            f"  embedded text        IMPRESSION, else FINDINGS, else the report's tail; at most "
            f"~{TOKEN_BUDGET} of CLIP's {CONTEXT_TOKENS} tokens",
        ]
        if not self.semantic:
            lines.append("                       NOTE: this provider has no text tower: reports "
                         "were stored as text only (no vectors); use nvclip for text search")
        return "\n".join(lines + self.provider_lines() + [self.tail(
            f"  rows in table        {self.rows_in_table}  ({self.table}; "
            f"{self.vectors_in_table} with a {self.provider} vector; {self.sink})")])


def run_reports(argv: List[str]) -> ReportsSummary:
    options, dv = job_options(argv)
    if not dv.input:
        raise preflight.NoInputFilesError("--input is required: a report file pattern such as "
                                          "'/data/mimic-cxr/files/**/s*.txt'")
    dv.input = preflight.check_job(dv, sends="report texts")
    check_s3_paths([dv.dead_letter], options)
    matched = len(match_input(dv.input, options))
    configure_local_engine(options)
    run_id = dv.run_id or f"reports-{default_run_id()}"
    provider = create_provider(dv.provider_config())
    if not provider.semantic:
        log.warning("provider %r has no text tower: reports are stored as text only (no "
                    "vectors); use a semantic provider such as nvclip for text search",
                    provider.name)
    sink = dv.sink_config(provider.dimension)
    with sink.reports() as store:
        store.init_schema(provider.dimension)  # refuses a table that is not ours (exit 2)

    job = run_job(options, run_id, lambda pipeline: build_reports(pipeline, dv, run_id),
                  names=C.REPORTS)
    counters = job.counters
    with sink.reports() as store:
        rows = store.count()
        with_vectors = store.count(provider.store_key)
    dead_letter_dir = generation_dir(dv.dead_letter, run_id)
    return ReportsSummary(
        run_id=run_id,
        matched=counters.get(C.REPORTS.matched, 0),
        duplicate_studies=counters.get(C.REPORTS_DUPLICATE_STUDY, 0),
        stored=counters.get(C.REPORTS.stored, 0),
        embedded=counters.get(C.REPORTS.ok("embed"), 0),
        text_only=counters.get(C.REPORTS_TEXT_ONLY, 0),
        dead_lettered=C.REPORTS.dead_lettered(counters),
        wall_time_s=job.wall_time_s,
        rows_in_table=rows,
        vectors_in_table=with_vectors,
        table=sink.reports_table,
        sink=sink.redacted,
        dead_letter_dir=dead_letter_dir,
        provider=provider.name,
        embedding_model=provider.model,
        semantic=provider.semantic,
        destination=provider.destination,
        provider_stats=C.REPORTS.provider_stats(counters),
        accounting=check_accounting(matched, counters, dead_letter_dir, names=C.REPORTS),
    )
