"""Pick the local engine for the DirectRunner.

Beam's DirectRunner hands any pipeline with a processing-time timer — GroupIntoBatches declares
one — to the single-threaded BundleBasedDirectRunner, which ignores ``--direct_num_workers``.
(It also skips Prism for such pipelines, so nothing tries to download the Prism binary.)
dicomvec instead runs batch jobs on Beam's FnApiRunner, the engine behind the DirectRunner's
fast path: it fuses stages, supports state and GroupIntoBatches' end-of-window flush, and with
``--direct_num_workers N`` (N > 1) runs N worker processes (``multi_processing`` mode).
Its worker processes run ``dicomvec.pipeline.worker_main`` (``LocalRunner``), so their log
follows the CLI's levels and each line is printed once. Pass ``--runner BundleBasedDirectRunner``
(or any other runner) to override.

Streaming (``--streaming``) runs on Beam's Prism runner: the Python DirectRunner cannot run the
splittable ``MatchContinuously`` together with GroupIntoBatches in streaming mode (its transform
overrides fail), and Beam only downloads Prism from GitHub at run time, which fails offline. The
binary is built from Beam's Go module by ``scripts/prism/install.sh`` into ``.cache/prism`` and
found there, through ``DICOMVEC_PRISM``, ``--prism_location`` or ``prism`` on PATH.
"""
from __future__ import annotations

import logging

import os
import shutil
import sys
from pathlib import Path

from apache_beam.options.pipeline_options import (DirectOptions, PrismRunnerOptions,
                                                  StandardOptions, WorkerOptions)
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.transforms.environments import SubprocessSDKEnvironment

FN_API_RUNNER = "dicomvec.pipeline.local_engine.LocalRunner"
log = logging.getLogger(__name__)
fn_runner_log = logging.getLogger(fn_runner.__name__)
REPO_PRISM = Path(__file__).resolve().parents[2] / ".cache" / "prism" / "prism"


class LocalRunner(FnApiRunner):
    """Beam's FnApiRunner whose ``multi_processing`` workers run ``dicomvec.pipeline.worker_main``
    (Beam's worker with dicomvec's log set-up: each line printed once, Beam's chatter off by
    default) instead of Beam's bare ``sdk_worker_main``."""

    def run_pipeline(self, pipeline, options):
        direct = options.view_as(DirectOptions)
        if direct.direct_running_mode != "multi_processing":
            return super().run_pipeline(pipeline, options)
        self._default_environment = SubprocessSDKEnvironment.from_command_string(
            command_string=f"{sys.executable} -m dicomvec.pipeline.worker_main")
        direct.direct_running_mode = "in_memory"  # keeps the environment set above
        quiet = _DropRecord("direct_running_mode")  # Beam's warning about that mode
        fn_runner_log.addFilter(quiet)
        try:
            return super().run_pipeline(pipeline, options)
        finally:
            fn_runner_log.removeFilter(quiet)
            direct.direct_running_mode = "multi_processing"


class _DropRecord(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in str(record.msg)


class PrismNotFoundError(ValueError):
    """Streaming locally needs the Prism binary."""


def find_prism() -> str:
    for candidate in (os.environ.get("DICOMVEC_PRISM"), str(REPO_PRISM), shutil.which("prism")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise PrismNotFoundError(
        "streaming on the local runner needs Beam's Prism binary: build it with "
        "scripts/prism/install.sh (needs Go), then re-run, or pass --prism_location PATH")


def configure_local_engine(options) -> str:
    """Rewrite ``--runner DirectRunner`` (or none) for a batch job to the FnApiRunner; returns
    the runner that will run."""
    standard = options.view_as(StandardOptions)
    if standard.runner not in (None, "DirectRunner", "direct", "directrunner"):
        return standard.runner
    if standard.streaming:
        prism = options.view_as(PrismRunnerOptions)
        prism.prism_location = prism.prism_location or find_prism()
        standard.runner = "PrismRunner"
        return standard.runner
    standard.runner = FN_API_RUNNER
    worker = options.view_as(WorkerOptions)
    if worker.default_sdk_harness_log_level is None:
        worker.default_sdk_harness_log_level = "WARNING"  # worker processes' gRPC chatter
    direct = options.view_as(DirectOptions)
    if (direct.direct_num_workers or 1) > 1 and direct.direct_running_mode == "in_memory":
        direct.direct_running_mode = "multi_processing"
    log.info("local engine: FnApiRunner, %s workers, %s", direct.direct_num_workers or 1,
             direct.direct_running_mode)
    return standard.runner
