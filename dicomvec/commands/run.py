"""``dicomvec run``: the ingestion job. Beam's options pass through to Beam (``--runner`` …);
misspelled options are errors."""
from __future__ import annotations

import argparse

HELP = """Run the ingestion pipeline: DICOM files → vectors in a store, failures in Parquet.

Before anything is created the job checks that --input matches files (a directory means every
file below it), that the sink and the dead-letter folder are writable and that the provider has
its credentials; a problem is one line on stderr and exit status 2.

An existing images table must be shaped like dicomvec's; an older dicomvec table must be
upgraded first (`dicomvec migrate`), another tool's table is never written to.
"""


def register(subparsers) -> None:
    from dicomvec.commands.pipeline_flags import add_help_flags
    parser = subparsers.add_parser("run", help="run the ingestion pipeline", description=HELP,
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   add_help=False)
    add_help_flags(parser)
    parser.set_defaults(func=run, passthrough=True)


def run(args, extra) -> int:
    from dicomvec.commands.pipeline_flags import check_flags
    check_flags(extra, "dicomvec run")
    from dicomvec.pipeline.run import run_ingest
    summary = run_ingest(extra)
    print(summary.render())
    return summary.exit_status
