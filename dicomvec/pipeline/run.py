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
from typing import Dict, List, Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions)

from dicomvec.io.dead_letter import generation_dir
from dicomvec.io.listing import paths_the_listing_skips
from dicomvec.io.object_storage import (check_s3_paths, match_input, storage_settings,
                                        worker_environment)
from dicomvec.io.remote import use_gcs_emulator
from dicomvec.io.providers import create_provider
from dicomvec.io.stores import VectorStore
from dicomvec.io.stores.dialects import redact_url
from dicomvec.pipeline.accounting import (EXIT_ACCOUNTING_MISMATCH, Accounting,
                                          check_accounting)
from dicomvec.pipeline.job_monitor import JobMonitor, in_flight  # noqa: F401  (re-exported)
from dicomvec.pipeline.job_monitor import beam_counters as read_counters
from dicomvec.pipeline.local_engine import configure_local_engine
from dicomvec.pipeline.graph import build_ingest
from dicomvec.pipeline.options import DicomvecOptions
from dicomvec.pipeline import preflight
from dicomvec.pipeline.preflight import NoInputFilesError  # noqa: F401 (re-exported)
from dicomvec.record import STAGES

log = logging.getLogger(__name__)




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
    accounting: Optional[Accounting] = None  # do the counts add up? (pipeline/accounting.py)

    @property
    def dead_lettered_total(self) -> int:
        return sum(self.dead_lettered.values())

    @property
    def exit_status(self) -> int:
        """0, or 3 when not every matched path is accounted for (see pipeline/accounting.py)."""
        if self.accounting is not None and not self.accounting.holds:
            return EXIT_ACCOUNTING_MISMATCH
        return 0

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
            f"  rows in store        "
            f"{self.rows_in_store if self.rows_in_store >= 0 else 'unknown (unreachable)'}"
            f"  ({self.sink})",
            f"  dead letters         {self.dead_letter_dir}",
        ]
        if self.accounting is not None:
            lines.append(self.accounting.render())
        return "\n".join(lines)


def provider_stats(counters: Dict[str, int]) -> Dict[str, int]:
    """The provider's own counters (requests, retries, ...) from the ``provider_*`` counters."""
    return {k[len("provider_"):]: v for k, v in counters.items() if k.startswith("provider_")}


def list_input(pattern: Optional[str],
               options: Optional[PipelineOptions] = None) -> Tuple[List[str], List[str]]:
    """(Beam's listing of ``pattern``, the matched local paths it leaves out: dangling symbolic
    links, directories — read dead letters later); raises NoInputFilesError for none."""
    if not pattern:
        raise NoInputFilesError("--input is required: a DICOM file pattern such as "
                                "'/data/mimic-cxr/files/**/*.dcm'")
    # s3://: the bucket is checked first (ObjectStorageError: one line, not minutes of retries)
    listed = [m.path for m in match_input(pattern, options or PipelineOptions([]))]
    skipped = paths_the_listing_skips(pattern, listed)
    if not listed and not skipped:
        raise NoInputFilesError(f"no files match --input {pattern!r}")
    return listed, skipped


def check_input(pattern: Optional[str]) -> int:
    """Number of files ``pattern`` matches; raises NoInputFilesError for none."""
    return sum(map(len, list_input(pattern)))


def rows_in_store(dv: DicomvecOptions, provider_name: str) -> int:
    """Rows now stored for the provider; -1 when the sink cannot be reached any more (the
    summary must still be printed: the dead letters say what was not written)."""
    try:
        with VectorStore(dv.sink, schema=dv.sink_schema, table=dv.sink_table,
                         max_attempts=2) as store:
            return store.count(provider_name)
    except Exception as exc:  # noqa: BLE001 - a summary, not a reason to lose the run's report
        log.error("cannot count the rows in %s after the run: %s: %s", redact_url(dv.sink),
                  type(exc).__name__, str(exc).strip()[:200])
        return -1


def default_run_id() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def run_ingest(argv: List[str], paths: Optional[List[str]] = None) -> RunSummary:
    """Run the job over ``--input`` (or over exactly ``paths``, for reprocessing)."""
    options = PipelineOptions(argv)
    dv = options.view_as(DicomvecOptions)
    FileSystems.set_options(options)  # s3:// needs Beam's S3 options before the graph exists
    use_gcs_emulator(storage_settings(options))  # --gcs_emulator_host: this process
    streaming = options.view_as(StandardOptions).streaming and paths is None
    # matches are counted by list_input below (it also finds what Beam's listing skips)
    used = preflight.check_job(dv, input_pattern=paths is None, require_match=False)
    if used is not None:
        dv.input = used  # a directory: every file below it
    check_s3_paths([dv.dead_letter], options)
    listed, unreadable = list_input(dv.input, options) if paths is None else (list(paths), [])
    configure_local_engine(options)
    if streaming:
        unreadable = []  # the watch lists the pattern itself, again and again
    expected = None if streaming else len(listed) + len(unreadable)
    run_id = dv.run_id or default_run_id()
    provider = create_provider(dv.provider_config())
    if not provider.semantic:
        log.warning("provider %r is a NON-SEMANTIC descriptor (%s), not CLIP: use it for dry "
                    "runs and image-to-image lookups only", provider.name, provider.model)
    with VectorStore(dv.sink, schema=dv.sink_schema, table=dv.sink_table) as store:
        store.init_schema(provider.dimension)

    # a name unique to this run: on Flink the monitor finds, watches and cancels the job by it
    job = options.view_as(GoogleCloudOptions)
    job.job_name = job.job_name or f"dicomvec-{run_id}-{uuid.uuid4().hex[:8]}".lower()
    started = time.monotonic()
    submitted_ms = int(time.time() * 1000)
    pipeline = beam.Pipeline(options=options)
    build_ingest(pipeline, dv, run_id, paths=paths, streaming=streaming, unreadable=unreadable)
    with worker_environment(options):  # S3 options for local worker processes
        result = pipeline.run()
        monitor = JobMonitor(result, options, job.job_name, submitted_ms)
        counters = monitor.watch(streaming, dv.stop_after_idle, dv.dead_letter_frequency)
    wall = time.monotonic() - started

    rows = rows_in_store(dv, provider.name)
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
    summary.accounting = check_accounting(expected, counters, summary.dead_letter_dir,
                                          stopped_by=monitor.stopped_by)
    return summary
