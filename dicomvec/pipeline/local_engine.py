"""Pick the local engine for the DirectRunner.

Beam's DirectRunner hands any pipeline with a processing-time timer — GroupIntoBatches declares
one — to the single-threaded BundleBasedDirectRunner, which ignores ``--direct_num_workers``.
(It also skips Prism for such pipelines, so nothing tries to download the Prism binary.)
dicomvec instead runs batch jobs on Beam's FnApiRunner, the engine behind the DirectRunner's
fast path: it fuses stages, supports state and GroupIntoBatches' end-of-window flush, and with
``--direct_num_workers N`` (N > 1) runs N worker processes (``multi_processing`` mode).
Pass ``--runner BundleBasedDirectRunner`` (or any other runner) to override.
"""
from __future__ import annotations

import logging

from apache_beam.options.pipeline_options import (DirectOptions, WorkerOptions,
                                                  StandardOptions)

FN_API_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
log = logging.getLogger(__name__)


def configure_local_engine(options) -> str:
    """Rewrite ``--runner DirectRunner`` (or none) for a batch job to the FnApiRunner; returns
    the runner that will run."""
    standard = options.view_as(StandardOptions)
    if standard.runner not in (None, "DirectRunner", "direct", "directrunner"):
        return standard.runner
    if standard.streaming:
        standard.runner = "DirectRunner"
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
