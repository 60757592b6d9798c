"""Driver for ``dicomvec run``: parse options, check the input and the sink, run the graph,
read the Beam counters back and print the end-of-run summary.

In: a command line (dicomvec flags plus any Beam flag). Out: a ``RunSummary`` (also printed).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import signal
import time
from typing import Dict, List, Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineState
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from dicomvec.io.dead_letter import generation_dir
from dicomvec.io.listing import paths_the_listing_skips
from dicomvec.io.object_storage import check_s3_paths, match_input, worker_environment
from dicomvec.io.providers import create_provider
from dicomvec.io.stores import VectorStore
from dicomvec.io.stores.dialects import redact_url
from dicomvec.pipeline.accounting import (EXIT_ACCOUNTING_MISMATCH, Accounting,
                                          check_accounting)
from dicomvec.pipeline.local_engine import configure_local_engine
from dicomvec.pipeline.graph import build_ingest
from dicomvec.pipeline.options import DicomvecOptions
from dicomvec.pipeline import preflight
from dicomvec.pipeline.preflight import NoInputFilesError  # noqa: F401 (re-exported)
from dicomvec.record import STAGES
from dicomvec.transforms.stage import NAMESPACE

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


def read_counters(result, live: bool = False) -> Dict[str, int]:
    """dicomvec's counters summed over steps. ``live``: a fresh reading of a running job (the
    portable runners' result caches its first metrics response, so drop that cache)."""
    if live and hasattr(result, "_metrics"):
        result._metrics = None
    totals: Dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + int(value or 0)
    return totals


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


def in_flight(counters: Dict[str, int]) -> int:
    """Files seen arriving or matched but not yet stored, skipped, merged as duplicates or
    dead-lettered."""
    settled = (counters.get("write_ok", 0) + counters.get("skipped_existing", 0)
               + counters.get("duplicate_files", 0)
               + sum(counters.get(f"{stage}_failed", 0) for stage in STAGES))
    arriving = counters.get("arriving", 0) - counters.get("arrived", 0)
    return counters.get("matched", 0) - settled + arriving


def watch_streaming_run(result, options: DicomvecOptions, poll_s: float = 1.0) -> Dict[str, int]:
    """Wait for a streaming job; cancel it on SIGINT/SIGTERM, or once nothing is in flight and
    the counters have not moved for ``--stop-after-idle`` seconds (at least two dead-letter
    periods, so the last dead letters are written first). Returns the final counters."""
    stop = {"signal": None}

    def request_stop(signum, _frame):
        stop["signal"] = signum
        log.warning("signal %s: stopping the streaming job", signum)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    idle_limit = (max(options.stop_after_idle, 2 * options.dead_letter_frequency + 1)
                  if options.stop_after_idle else None)
    last, last_change = None, time.monotonic()
    try:
        while stop["signal"] is None:
            time.sleep(poll_s)
            if PipelineState.is_terminal(result.state):
                result.wait_until_finish()  # raises if the job failed
                return read_counters(result)
            counters = read_counters(result, live=True)
            log.debug("streaming counters: %s", counters)
            if counters != last:
                last, last_change = counters, time.monotonic()
            elif (idle_limit and in_flight(counters) <= 0
                  and time.monotonic() - last_change >= idle_limit):
                log.info("idle for %.0f s with nothing in flight: stopping", idle_limit)
                break
        result.cancel()
        return read_counters(result)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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

    started = time.monotonic()
    pipeline = beam.Pipeline(options=options)
    build_ingest(pipeline, dv, run_id, paths=paths, streaming=streaming, unreadable=unreadable)
    with worker_environment(options):  # S3 options for local worker processes
        result = pipeline.run()
        if streaming:
            counters = watch_streaming_run(result, dv)
        else:
            result.wait_until_finish()
            counters = read_counters(result)
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
    summary.accounting = check_accounting(expected, counters, summary.dead_letter_dir)
    return summary
