"""A job the runner fails ends the driver with one line saying what the runner said and where the
job's exception history is (issue 24): no Python traceback through ``JobMonitor.watch`` →
``wait_until_finish``. The failing job runs on a real portable runner: Beam's in-process job
service (``--job_endpoint embed``)."""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from dicomvec.pipeline.job_monitor import JobFailed, JobMonitor, root_cause

FLINK_TEXT = """Pipeline BeamApp-root-1205_abc failed in state FAILED: org.apache.flink.runtime.client.JobExecutionException: Job execution failed.
\tat org.apache.flink.runtime.jobmaster.JobResult.toJobExecutionResult(JobResult.java:144)
Caused by: org.apache.flink.runtime.JobException: Recovery is suppressed by NoRestartBackoffTimeStrategy
\tat org.apache.flink.runtime.executiongraph.failover.ExecutionFailureHandler.handleFailure(ExecutionFailureHandler.java:176)
Caused by: java.util.concurrent.CompletionException: org.apache.flink.runtime.jobmanager.scheduler.NoResourceAvailableException: Could not acquire the minimum required resources.
\t... 3 more
"""


def test_root_cause_of_a_flink_failure_is_its_last_caused_by():
    line = root_cause(FLINK_TEXT)
    assert "NoResourceAvailableException: Could not acquire the minimum required resources" in line
    assert "\n" not in line
    assert root_cause("Pipeline x failed in state FAILED: boom\nmore") == "boom"
    assert len(root_cause("x" * 1000)) == 300


def _explode(_):
    raise ValueError("the runner says no")


def test_a_failed_job_is_one_line_with_the_cause_and_where_to_look():
    options = PipelineOptions(["--runner", "PortableRunner", "--job_endpoint", "embed",
                               "--environment_type", "LOOPBACK"])
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | beam.Create([1]) | beam.Map(_explode)
    result = pipeline.run()
    monitor = JobMonitor(result, options, "dicomvec-test-failed", 0, poll_s=0.1)
    with pytest.raises(JobFailed) as failed:
        monitor.watch(streaming=False)
    message = str(failed.value)
    assert "\n" not in message
    assert "the runner says no" in message and "exception history" in message
    assert failed.value.exit_code == 1
