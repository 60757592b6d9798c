"""Driver for ``dicomvec run``: parse options, check the input and the sink, run the graph,
read the Beam counters back and print the end-of-run summary.

In: a command line (dicomvec flags plus any Beam flag). Out: a ``RunSummary`` (also printed).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import time
import uuid
from typing import Dict, List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions)

from dicomvec.io.dead_letter import generation_dir
from dicomvec.io.providers import create_provider
from dicomvec.io.stores import VectorStore
from dicomvec.io.stores.dialects import redact_url
from dicomvec.pipeline.job_monitor import JobMonitor, in_flight  # noqa: F401  (re-exported)
from dicomvec.pipeline.job_monitor import beam_counters as read_counters
from dicomvec.pipeline.local_engine import configure_local_engine
from dicomvec.pipeline.graph import build_ingest
from dicomvec.pipeline.options import DicomvecOptions
from dicomvec.record import STAGES

log = logging.getLogger(__name__)


class NoInputFilesError(ValueError):
    """The input pattern matched nothing: an error, never an empty success."""


@dataclasses.dataclass
class RunSummary:
    run_id: str
    matched: int
    duplicate_files: int
    skipped_existing: int
    stored: int
    dead_lettered: Dict[str, int]
    wall_time_s: float
    rows_in_store: int
    sink: str
    dead_letter_dir: str
    provider: str
    embedding_model: str
    semantic: bool
    provider_stats: Dict[str, int]
    cost_line: str = ""

    @property
    def dead_lettered_total(self) -> int:
        return sum(self.dead_lettered.values())

    @property
    def images_per_s(self) -> float:
        return self.stored / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def render(self) -> str:
        lines = [
            f"dicomvec run {self.run_id}",
            f"  files matched        {self.matched}",
            f"  duplicate files      {self.duplicate_files}  (same ImageID as another file; "
            f"one row kept, see the log)",
            f"  already stored       {self.skipped_existing}  (skipped: same provider and "
            f"preprocessing; --force re-embeds)",
            f"  images stored        {self.stored}",
            f"  dead-lettered        {self.dead_lettered_total}" + "".join(
                f"\n    {stage:<18} {n}" for stage, n in self.dead_lettered.items() if n),
            f"  wall time            {self.wall_time_s:.1f} s  ({self.images_per_s:.2f} images/s)",
            f"  provider             {self.provider} ({self.embedding_model})",
        ]
        if not self.semantic:
            lines.append("                       NOTE: non-semantic descriptor, not CLIP: "
                         "image-to-image and dry runs only")
        if self.cost_line:
            lines.append(f"  {self.cost_line}")
        else:
            for name, value in sorted(self.provider_stats.items()):
                lines.append(f"  provider {name + ' ':<12}{value}")
        lines += [
            f"  rows in store        {self.rows_in_store}  ({self.sink})",
            f"  dead letters         {self.dead_letter_dir}",
        ]
        return "\n".join(lines)


def provider_stats(counters: Dict[str, int]) -> Dict[str, int]:
    """The provider's own counters (requests, retries, ...) from the ``provider_*`` counters."""
    return {k[len("provider_"):]: v for k, v in counters.items() if k.startswith("provider_")}


def check_input(pattern: Optional[str]) -> int:
    """Number of files ``pattern`` matches; raises NoInputFilesError for none."""
    if not pattern:
        raise NoInputFilesError("--input is required: a DICOM file pattern such as "
                                "'/data/mimic-cxr/files/**/*.dcm'")
    matched = FileSystems.match([pattern])[0].metadata_list
    if not matched:
        raise NoInputFilesError(f"no files match --input {pattern!r}")
    return len(matched)


def default_run_id() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def run_ingest(argv: List[str], paths: Optional[List[str]] = None) -> RunSummary:
    """Run the job over ``--input`` (or over exactly ``paths``, for reprocessing)."""
    options = PipelineOptions(argv)
    configure_local_engine(options)
    dv = options.view_as(DicomvecOptions)
    if paths is None:
        check_input(dv.input)
    run_id = dv.run_id or default_run_id()
    provider = create_provider(dv.provider_config())
    if not provider.semantic:
        log.warning("provider %r is a NON-SEMANTIC descriptor (%s), not CLIP: use it for dry "
                    "runs and image-to-image lookups only", provider.name, provider.model)
    with VectorStore(dv.sink, schema=dv.sink_schema, table=dv.sink_table) as store:
        store.init_schema(provider.dimension)

    streaming = options.view_as(StandardOptions).streaming and paths is None
    # a name unique to this run: on Flink the monitor finds, watches and cancels the job by it
    job = options.view_as(GoogleCloudOptions)
    job.job_name = job.job_name or f"dicomvec-{run_id}-{uuid.uuid4().hex[:8]}".lower()
    started = time.monotonic()
    submitted_ms = int(time.time() * 1000)
    pipeline = beam.Pipeline(options=options)
    build_ingest(pipeline, dv, run_id, paths=paths, streaming=streaming)
    result = pipeline.run()
    counters = JobMonitor(result, options, job.job_name, submitted_ms).watch(
        streaming, dv.stop_after_idle, dv.dead_letter_frequency)
    wall = time.monotonic() - started

    with VectorStore(dv.sink, schema=dv.sink_schema, table=dv.sink_table) as store:
        rows = store.count(provider.name)
    summary = RunSummary(
        run_id=run_id,
        matched=counters.get("matched", 0),
        duplicate_files=counters.get("duplicate_files", 0),
        skipped_existing=counters.get("skipped_existing", 0),
        stored=counters.get("write_ok", 0),
        dead_lettered={stage: counters.get(f"{stage}_failed", 0) for stage in STAGES},
        wall_time_s=wall,
        rows_in_store=rows,
        sink=redact_url(dv.sink),
        dead_letter_dir=generation_dir(dv.dead_letter, run_id),
        provider=provider.name,
        embedding_model=provider.model,
        semantic=provider.semantic,
        provider_stats=provider_stats(counters),
    )
    if hasattr(provider, "cost_line"):
        summary.cost_line = provider.cost_line(summary.provider_stats)
    return summary
