"""``dicomvec reprocess``: run dead-lettered files again after fixing what failed."""
from __future__ import annotations

from dicomvec.record import STAGES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "reprocess", help="run dead-lettered files through the pipeline again",
        description="Reads every dead-letter generation under --dead-letter, takes each file's "
                    "latest failure, runs those files through the same pipeline (same sink and "
                    "provider flags as `run`, plus any Beam option) and writes what still fails "
                    "to a new generation.")
    parser.add_argument("--stage", choices=STAGES, default=None,
                        help="only files whose latest failure was at this stage")
    parser.add_argument("--retryable-only", action="store_true",
                        help="only failures marked retryable (rate limits, timeouts, ...)")
    parser.set_defaults(func=run, passthrough=True)


def run(args, extra) -> int:
    from dicomvec.pipeline.reprocess import run_reprocess
    report = run_reprocess(extra, stage=args.stage, retryable_only=args.retryable_only)
    print(report.render())
    return report.run.exit_status
