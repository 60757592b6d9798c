"""``dicomvec reprocess``: run dead-lettered files again after fixing what failed."""
from __future__ import annotations

from dicomvec.defaults import STAGES

HELP = """Run dead-lettered files through the pipeline again.

Reads every dead-letter generation under --dead-letter, takes each file's latest failure, runs
those files through the same pipeline (same sink and provider flags as `run`, plus any Beam
option) and writes what still fails to a new generation. A missing --dead-letter folder is an
error (exit 2); nothing left to reprocess is not (exit 0).
"""


def register(subparsers) -> None:
    from dicomvec.commands.pipeline_flags import add_job_command
    parser = add_job_command(subparsers, "reprocess",
                             "run dead-lettered files through the pipeline again", HELP, run)
    parser.add_argument("--stage", choices=STAGES, default=None,
                        help="only files whose latest failure was at this stage (default: all)")
    parser.add_argument("--retryable-only", "--retryable_only", action="store_true",
                        help="only failures marked retryable (rate limits, timeouts, ...)")


def run(args, extra) -> int:
    from dicomvec.commands.pipeline_flags import run_job_command
    from dicomvec.pipeline.reprocess import NothingToReprocessError, run_reprocess
    try:
        return run_job_command(extra, "reprocess", lambda argv: run_reprocess(
            argv, stage=args.stage, retryable_only=args.retryable_only))
    except NothingToReprocessError as nothing:
        print(f"nothing to reprocess: {nothing}")
        return 0
