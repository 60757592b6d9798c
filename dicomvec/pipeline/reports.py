"""The reports job (``dicomvec reports``): MIMIC-CXR report files → the reports table.

Graph: fileio.MatchFiles + ReadMatches → ParseReportFile → KeepFirstPerStudy (keyed state) →
BatchForEmbedding (GroupIntoBatches, spread keys) → EmbedReportBatch (texts, same provider as
the images) → WriteReports (upsert on StudyID through the shared sink core); every ``failed``
output → Flatten → WriteDeadLetters.

In: a command line with the same flags as ``dicomvec run`` (``--input 'files/**/s*.txt'``,
``--sink``, ``--provider``, ``--dead-letter``, ``--batch-size``, Beam flags). Out: a
``ReportsSummary`` (also printed by the command).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Dict, List, Tuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.options.pipeline_options import PipelineOptions

from dicomvec.io.dead_letter import WriteDeadLetters, generation_dir
from dicomvec.io.providers import create_provider
from dicomvec.io.stores import VectorStore
from dicomvec.io.stores.dialects import redact_url
from dicomvec.io.stores.tables import REPORTS
from dicomvec.pipeline.local_engine import configure_local_engine
from dicomvec.pipeline.options import DicomvecOptions
from dicomvec.pipeline import preflight
from dicomvec.pipeline.run import default_run_id, provider_stats, read_counters
from dicomvec.reports.parsing import CONTEXT_TOKENS, TOKEN_BUDGET, Report
from dicomvec.reports.transforms import (EmbedReportBatch, KeepFirstPerStudy, ParseReportFile,
                                        WriteReports)
from dicomvec.transforms.embed import BatchForEmbedding, batching_shards
from dicomvec.transforms.stage import FAILED

log = logging.getLogger(__name__)


def _stage(pcoll, label, dofn, failures):
    outputs = pcoll | label >> beam.ParDo(dofn).with_outputs(FAILED, main="ok")
    failures.append(outputs[FAILED])
    return outputs.ok


def build_reports(pipeline: beam.Pipeline, options: DicomvecOptions, run_id: str):
    """Add the reports transforms to ``pipeline``; returns the PCollection of stored counts."""
    failures = []
    files = (pipeline
             | "MatchReports" >> fileio.MatchFiles(
                 options.input, empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)
             | "ReadReports" >> fileio.ReadMatches(compression=CompressionTypes.UNCOMPRESSED))
    parsed = _stage(files, "ParseReports", ParseReportFile(), failures)
    keyed = parsed | "KeyByStudyID" >> beam.Map(
        lambda report: (report.study_id, report)).with_output_types(Tuple[str, Report])
    reports = _stage(keyed, "KeepFirstPerStudy", KeepFirstPerStudy(), failures)
    batches = reports | "BatchReports" >> BatchForEmbedding(
        options.batch_size, shards=batching_shards(pipeline.options))
    rows = _stage(batches, "EmbedReports", EmbedReportBatch(options.provider_config()), failures)
    stored = _stage(rows, "WriteReports",
                    WriteReports(options.sink, options.sink_schema, options.reports_table),
                    failures)
    (failures
     | "AllReportFailures" >> beam.Flatten()
     | "ReportDeadLetters" >> WriteDeadLetters(options.dead_letter, run_id))
    return stored


@dataclasses.dataclass
class ReportsSummary:
    run_id: str
    matched: int
    duplicate_studies: int
    stored: int
    embedded: int
    text_only: int
    dead_lettered: Dict[str, int]
    wall_time_s: float
    rows_in_table: int
    vectors_in_table: int
    table: str
    sink: str
    dead_letter_dir: str
    provider: str
    embedding_model: str
    semantic: bool
    provider_stats: Dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def dead_lettered_total(self) -> int:
        return sum(self.dead_lettered.values())

    def render(self) -> str:
        lines = [
            f"dicomvec reports {self.run_id}",
            f"  report files matched {self.matched}",
            f"  duplicate StudyIDs   {self.duplicate_studies}  (another file already gave that "
            f"study's report; dead-lettered)",
            f"  reports stored       {self.stored}  ({self.embedded} with a text vector, "
            f"{self.text_only} text only)",
            f"  dead-lettered        {self.dead_lettered_total}" + "".join(
                f"\n    {stage:<18} {n}" for stage, n in self.dead_lettered.items() if n),
            f"  wall time            {self.wall_time_s:.1f} s",
            f"  provider             {self.provider} ({self.embedding_model})",
            f"  embedded text        IMPRESSION, else FINDINGS, else the report's tail; at most "
            f"~{TOKEN_BUDGET} of CLIP's {CONTEXT_TOKENS} tokens",
        ]
        if not self.semantic:
            lines.append("                       NOTE: this provider has no text tower: reports "
                         "were stored as text only (no vectors); use nvclip for text search")
        for name, value in sorted(self.provider_stats.items()):
            lines.append(f"  provider {name + ' ':<12}{value}")
        lines += [
            f"  rows in table        {self.rows_in_table}  ({self.table}; {self.vectors_in_table}"
            f" with a {self.provider} vector; {self.sink})",
            f"  dead letters         {self.dead_letter_dir}",
        ]
        return "\n".join(lines)


def run_reports(argv: List[str]) -> ReportsSummary:
    options = PipelineOptions(argv)
    dv = options.view_as(DicomvecOptions)
    if not dv.input:
        raise preflight.NoInputFilesError("--input is required: a report file pattern such as "
                                          "'/data/mimic-cxr/files/**/s*.txt'")
    dv.input = preflight.check_job(dv)
    configure_local_engine(options)
    run_id = dv.run_id or f"reports-{default_run_id()}"
    provider = create_provider(dv.provider_config())
    if not provider.semantic:
        log.warning("provider %r has no text tower: reports are stored as text only (no "
                    "vectors); use a semantic provider such as nvclip for text search",
                    provider.name)
    with VectorStore(dv.sink, schema=dv.sink_schema, table=dv.reports_table,
                     spec=REPORTS) as store:
        store.init_schema(provider.dimension)  # refuses a table that is not ours (exit 2)

    started = time.monotonic()
    pipeline = beam.Pipeline(options=options)
    build_reports(pipeline, dv, run_id)
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.monotonic() - started

    counters = read_counters(result)
    with VectorStore(dv.sink, schema=dv.sink_schema, table=dv.reports_table,
                     spec=REPORTS) as store:
        rows = store.count()
        with_vectors = store.count(provider.name)
    return ReportsSummary(
        run_id=run_id,
        matched=counters.get("reports_matched", 0),
        duplicate_studies=counters.get("reports_duplicate_study", 0),
        stored=counters.get("reports_write_ok", 0),
        embedded=counters.get("reports_embed_ok", 0),
        text_only=counters.get("reports_text_only", 0),
        dead_lettered={
            "read": counters.get("reports_read_failed", 0),
            "decode": counters.get("reports_parse_failed", 0)
            + counters.get("reports_duplicate_study", 0),
            "embed": counters.get("reports_embed_failed", 0),
            "write": counters.get("reports_write_failed", 0),
        },
        wall_time_s=wall,
        rows_in_table=rows,
        vectors_in_table=with_vectors,
        table=dv.reports_table,
        sink=redact_url(dv.sink),
        dead_letter_dir=generation_dir(dv.dead_letter, run_id),
        provider=provider.name,
        embedding_model=provider.model,
        semantic=provider.semantic,
        provider_stats=provider_stats(counters),
    )
