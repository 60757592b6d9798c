"""``dicomvec run``: the ingestion job. Beam's options pass through to Beam (``--runner`` …);
misspelled options are errors."""
from __future__ import annotations

HELP = """Run the ingestion pipeline: DICOM files → vectors in a store, failures in Parquet.

Before anything is created the job checks that --input matches files (a directory means every
file below it), that the sink and the dead-letter folder are writable and that the provider has
its credentials; a problem is one line on stderr and exit status 2.

Where the pixels go: thumbnail and openclip compute on the workers (nowhere); nvclip sends each
image to --nvclip-url: your self-hosted NIM, or NVIDIA's hosted API, a third-party service, which
PhysioNet's credentialed data use agreement (MIMIC-CXR) does not allow: a notice says so before
the run (docs/privacy.md). The summary's "pixels sent to" line repeats it.

An existing images table must be shaped like dicomvec's; an older dicomvec table must be
upgraded first (`dicomvec migrate`), another tool's table is never written to.
"""


def register(subparsers) -> None:
    from dicomvec.commands.pipeline_flags import add_job_command
    add_job_command(subparsers, "run", "run the ingestion pipeline", HELP, run)


def run(args, extra) -> int:
    from dicomvec.commands.pipeline_flags import run_job_command
    from dicomvec.pipeline.run import run_ingest
    return run_job_command(extra, "run", run_ingest)
