"""``dicomvec reprocess``: run dead-lettered files again after fixing what failed."""
from __future__ import annotations

import argparse

from dicomvec.defaults import STAGES

HELP = """Run dead-lettered files through the pipeline again.

Reads every dead-letter generation under --dead-letter, takes each file's latest failure, runs
those files through the same pipeline (same sink and provider flags as `run`, plus any Beam
option) and writes what still fails to a new generation. A missing --dead-letter folder is an
error (exit 2); nothing left to reprocess is not (exit 0).
"""


def register(subparsers) -> None:
    from dicomvec.commands.pipeline_flags import add_help_flags
    parser = subparsers.add_parser(
        "reprocess", help="run dead-lettered files through the pipeline again",
        description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    add_help_flags(parser)
    parser.add_argument("--stage", choices=STAGES, default=None,
                        help="only files whose latest failure was at this stage (default: all)")
    parser.add_argument("--retryable-only", "--retryable_only", action="store_true",
                        help="only failures marked retryable (rate limits, timeouts, ...)")
    parser.set_defaults(func=run, passthrough=True)


def run(args, extra) -> int:
    from dicomvec.commands.pipeline_flags import check_flags
    check_flags(extra, "dicomvec reprocess")
    from dicomvec.pipeline.reprocess import NothingToReprocessError, run_reprocess
    try:
        report = run_reprocess(extra, stage=args.stage, retryable_only=args.retryable_only)
    except NothingToReprocessError as nothing:
        print(f"nothing to reprocess: {nothing}")
        return 0
    print(report.render())
    return report.run.exit_status
