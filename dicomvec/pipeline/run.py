"""The job runner (``run_job``: one for ``dicomvec run``, ``reports`` and ``reprocess``) and the
driver of ``dicomvec run``: parse options, check the input and the sink, run the graph, read
the Beam counters back and print the end-of-run summary.

In: a command line (dicomvec flags plus any Beam flag). Out: a ``RunSummary`` (also printed).
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import contextlib
import logging
import signal
import time
import uuid
from typing import Callable, Dict, List, Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions)
from apache_beam.runners.portability.flink_runner import FlinkRunner

from dicomvec import counters as C
from dicomvec.io.dead_letter import generation_dir
from dicomvec.io.listing import paths_the_listing_skips
from dicomvec.io.object_storage import (check_s3_paths, match_input, storage_settings,
                                        worker_environment)
from dicomvec.io.remote import use_gcs_emulator
from dicomvec.io.providers import create_provider
from dicomvec.io.stores import SinkConfig
from dicomvec.pipeline.accounting import (EXIT_ACCOUNTING_MISMATCH, Accounting,
                                          check_accounting)
from dicomvec.pipeline.job_monitor import JobInterrupted, JobMonitor
from dicomvec.pipeline.local_engine import configure_local_engine
from dicomvec.pipeline.graph import build_ingest
from dicomvec.pipeline.options import DicomvecOptions
from dicomvec.pipeline import preflight
from dicomvec.pipeline.preflight import NoInputFilesError  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class JobSummary:
    """What every job's summary says: files matched, rows stored, dead letters by stage, wall
    time, provider, where the rows and dead letters are, and whether the counts add up."""

    run_id: str
    matched: int
    stored: int
    dead_lettered: Dict[str, int]
    wall_time_s: float
    sink: str
    dead_letter_dir: str
    provider: str
    embedding_model: str
    semantic: bool
    provider_stats: Dict[str, int] = dataclasses.field(default_factory=dict)
    accounting: Optional[Accounting] = None  # do the counts add up? (pipeline/accounting.py)
    #: where the provider sent what it embedded (``EmbeddingProvider.destination``)
    destination: str = ""

    @property
    def dead_lettered_total(self) -> int:
        return sum(self.dead_lettered.values())

    @property
    def exit_status(self) -> int:
        """0, or 3 when not every matched path is accounted for (see pipeline/accounting.py)."""
        holds = self.accounting is None or self.accounting.holds
        return 0 if holds else EXIT_ACCOUNTING_MISMATCH

    def dead_letter_line(self) -> str:
        return f"  dead-lettered        {self.dead_lettered_total}" + "".join(
            f"\n    {stage:<18} {n}" for stage, n in self.dead_lettered.items() if n)

    def provider_lines(self) -> List[str]:
        return [f"  provider {name + ' ':<12}{value}"
                for name, value in sorted(self.provider_stats.items())]

    def tail(self, rows_line: str) -> str:
        """``rows_line``, the dead-letter folder and the accounting line."""
        lines = [rows_line, f"  dead letters         {self.dead_letter_dir}"]
        if self.accounting is not None:
            lines.append(self.accounting.render())
        return "\n".join(lines)


@dataclasses.dataclass(kw_only=True)
class RunSummary(JobSummary):
    duplicate_files: int
    skipped_existing: int
    rows_in_store: int
    cost_line: str = ""
    #: the images table written (its name follows the vector length unless --sink-table)
    table: str = ""
    #: files a folder input skipped as plainly not DICOM; None: the input was not a folder
    not_dicom_ignored: Optional[int] = None

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
        ]
        if self.not_dicom_ignored is not None:
            lines.append(f"  not DICOM, ignored   {self.not_dicom_ignored}  (files in the "
                         f"--input folder that are plainly not DICOM: .txt, .csv, .gz, …)")
        lines += [
            self.dead_letter_line(),
            f"  wall time            {self.wall_time_s:.1f} s  ({self.images_per_s:.2f} images/s)",
            f"  provider             {self.provider} ({self.embedding_model})",
            f"  pixels sent to       {self.destination}",
        ]
        if not self.semantic:
            lines.append("                       NOTE: non-semantic descriptor, not CLIP: "
                         "image-to-image and dry runs only")
        lines += [f"  {self.cost_line}"] if self.cost_line else self.provider_lines()
        rows = self.rows_in_store if self.rows_in_store >= 0 else "unknown (unreachable)"
        where = f"{self.sink}, table {self.table}" if self.table else self.sink
        return "\n".join(lines + [self.tail(f"  rows in store        {rows}  ({where})")])


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


def rows_in_store(sink: SinkConfig, store_key: str) -> int:
    """Rows now stored for the provider; -1 when the sink cannot be reached any more (the
    summary must still be printed: the dead letters say what was not written)."""
    try:
        with sink.images(max_attempts=2) as store:
            return store.count(store_key)
    except Exception as exc:  # noqa: BLE001 - a summary, not a reason to lose the run's report
        log.error("cannot count the rows in %s after the run: %s: %s", sink.redacted,
                  type(exc).__name__, str(exc).strip()[:200])
        return -1


def default_run_id() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def job_options(argv: List[str]) -> Tuple[PipelineOptions, DicomvecOptions]:
    """The job's options, with Beam's filesystems set up (s3:// needs Beam's S3 options before
    the graph exists)."""
    options = PipelineOptions(argv)
    FileSystems.set_options(options)
    use_gcs_emulator(storage_settings(options))  # --gcs_emulator_host: this process
    return options, options.view_as(DicomvecOptions)


#: how a job ended: its counters, wall time and the signal that stopped a stream ("" if none)
JobRun = collections.namedtuple("JobRun", "counters wall_time_s stopped_by")


class FlinkRunnerStoppingItsJobServer(FlinkRunner):
    """Beam's ``FlinkRunner``, remembering the job server it starts for the job (``java -jar
    --flink_job_server_jar …``, a child process of the driver, in Beam's ``StopOnExitJobServer``)
    so that ``run_job`` stops it with Beam's own ``stop()`` when the job ends, whatever way it
    ends. Beam alone stops it only from its SIGINT handler and at interpreter exit; neither runs
    when SIGTERM kills the driver before dicomvec's handlers are in place (while the job is being
    submitted): that JVM was left running with no parent (issue 24)."""

    def __init__(self):
        super().__init__()
        self.started_job_servers: list = []

    def default_job_server(self, options):
        server = super().default_job_server(options)
        self.started_job_servers.append(server)
        return server

    def stop_job_servers(self) -> None:
        while self.started_job_servers:
            server = self.started_job_servers.pop()
            try:
                server.stop()  # Beam's: SIGINT to the JVM, SIGKILL after 5 s; a no-op once done
            except Exception as exc:  # pylint: disable=broad-except  # report, go on
                log.warning("could not stop the Beam job server: %s: %s",
                            type(exc).__name__, exc)


def job_runner(options: PipelineOptions):
    """The runner object for ``--runner``: for ``FlinkRunner``, one that stops the job server it
    starts (``stop_job_servers``); None for any other (Beam makes it from the options)."""
    name = options.view_as(StandardOptions).runner
    if not isinstance(name, str) or not name:
        return None
    from apache_beam.runners.runner import create_runner
    if type(create_runner(name)) is not FlinkRunner:  # pylint: disable=unidiomatic-typecheck
        return None
    return FlinkRunnerStoppingItsJobServer()


class _InterruptedWhileSubmitting(BaseException):
    """SIGINT/SIGTERM during ``pipeline.run()``. A BaseException, as KeyboardInterrupt: Beam
    retries what fails with an Exception (starting the job server), never this."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _on_signals(handler):
    """``handler`` for SIGINT and SIGTERM inside the block; the previous handlers after it."""
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _interrupt_submission(signum, _frame):
    raise _InterruptedWhileSubmitting(signum)


def _already_stopping(signum, _frame):
    log.warning("%s: already stopping", signal.Signals(signum).name)


def run_job(options: PipelineOptions, run_id: str, build: Callable[[beam.Pipeline], object],
            streaming: bool = False, names: C.JobCounters = C.IMAGES) -> JobRun:
    """Build (``build(pipeline)``), submit and watch one job until it ends: on the local
    engine with the worker environment (S3 options for local worker processes), on Flink with
    live counters and a real cancel on SIGINT/SIGTERM (``JobMonitor``). ``options``: already
    through ``configure_local_engine``. A job server the runner started for the job (FlinkRunner
    with ``--flink_job_server_jar``) is stopped before this returns or raises; SIGINT/SIGTERM
    while the job is submitted stops it and cancels whatever reached Flink (JobInterrupted)."""
    dv = options.view_as(DicomvecOptions)
    # a name unique to this run: on Flink the monitor finds, watches and cancels the job by it
    job = options.view_as(GoogleCloudOptions)
    job.job_name = job.job_name or f"dicomvec-{run_id}-{uuid.uuid4().hex[:8]}".lower()
    started = time.monotonic()
    submitted_ms = int(time.time() * 1000)
    runner = job_runner(options)
    pipeline = beam.Pipeline(runner=runner, options=options)
    build(pipeline)
    monitor = None
    try:
        with worker_environment(options):  # S3 options for local worker processes
            try:
                # until the monitor's own handlers are in place (and after they are gone)
                with _on_signals(_interrupt_submission):
                    result = pipeline.run()
                    monitor = JobMonitor(result, options, job.job_name, submitted_ms,
                                         names=names)
                    counters = monitor.watch(streaming, dv.stop_after_idle,
                                             dv.dead_letter_frequency)
            except _InterruptedWhileSubmitting as exc:
                with _on_signals(_already_stopping):
                    _stop_job_server(runner)  # first: then nothing more reaches Flink
                    what = (monitor or JobMonitor(None, options, job.job_name, submitted_ms)
                            ).cancel_if_submitted()
                raise JobInterrupted(exc.signum, what) from None
    finally:
        with _on_signals(_already_stopping):
            _stop_job_server(runner)
    return JobRun(counters, time.monotonic() - started, monitor.stopped_by)


def _stop_job_server(runner) -> None:
    if isinstance(runner, FlinkRunnerStoppingItsJobServer):
        runner.stop_job_servers()


def run_ingest(argv: List[str], paths: Optional[List[str]] = None) -> RunSummary:
    """Run the job over ``--input`` (or over exactly ``paths``, for reprocessing)."""
    options, dv = job_options(argv)
    streaming = options.view_as(StandardOptions).streaming and paths is None
    # matches are counted by list_input below (it also finds what Beam's listing skips)
    given = dv.input
    used = preflight.check_job(dv, input_pattern=paths is None, require_match=False)
    # a folder means "the DICOM files in it": files plainly not DICOM are ignored (counted)
    folder_input = used is not None and used != given
    if used is not None:
        dv.input = used  # a directory: every file below it
    check_s3_paths([dv.dead_letter], options)
    if paths is not None:
        listed, unreadable = list(paths), []
    else:
        try:
            listed, unreadable = list_input(dv.input, options)
        except NoInputFilesError:
            prefix = preflight.remote_folder_pattern(dv.input)  # s3://bucket/files: a folder?
            if prefix is None:
                raise
            try:
                listed, unreadable = list_input(prefix, options)
            except NoInputFilesError:
                raise NoInputFilesError(f"no files match --input {dv.input!r} (nor "
                                        f"{prefix!r})") from None
            log.info("--input %s is a folder: reading every file below it (pattern %s); files "
                     "plainly not DICOM are ignored", dv.input, prefix)
            dv.input, folder_input = prefix, True
    provider = create_provider(dv.provider_config())
    sink = dv.sink_config(provider.dimension)
    with sink.images() as store:  # a table of another shape: one line, before the engine's log
        store.init_schema(provider.dimension)
    if not provider.semantic:
        log.warning("provider %r is a NON-SEMANTIC descriptor (%s), not CLIP: use it for dry "
                    "runs and image-to-image lookups only", provider.name, provider.model)
    configure_local_engine(options)
    if streaming:
        unreadable = []  # the watch lists the pattern itself, again and again
    expected = None if streaming else len(listed) + len(unreadable)
    run_id = dv.run_id or default_run_id()

    job = run_job(options, run_id, lambda pipeline: build_ingest(
        pipeline, dv, run_id, paths=paths, streaming=streaming, unreadable=unreadable,
        ignore_non_dicom=folder_input), streaming)
    counters = job.counters
    summary = RunSummary(
        run_id=run_id,
        matched=counters.get(C.MATCHED, 0),
        duplicate_files=counters.get(C.DUPLICATE_FILES, 0),
        skipped_existing=counters.get(C.ALREADY_STORED, 0),
        stored=counters.get(C.STORED, 0),
        dead_lettered=C.IMAGES.dead_lettered(counters),
        wall_time_s=job.wall_time_s,
        rows_in_store=rows_in_store(sink, provider.store_key),
        sink=sink.redacted,
        table=sink.table,
        dead_letter_dir=generation_dir(dv.dead_letter, run_id),
        provider=provider.name,
        embedding_model=provider.model,
        semantic=provider.semantic,
        destination=provider.destination,
        provider_stats=C.IMAGES.provider_stats(counters),
        not_dicom_ignored=counters.get(C.NOT_DICOM_IGNORED, 0) if folder_input else None,
    )
    summary.cost_line = provider.cost_line(summary.provider_stats)
    summary.accounting = check_accounting(expected, counters, summary.dead_letter_dir,
                                          stopped_by=job.stopped_by)
    return summary
