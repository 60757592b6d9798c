"""``dicomvec run``: the ingestion job. Unknown flags pass through to Beam (``--runner`` …)."""
from __future__ import annotations

import argparse

HELP = """Run the ingestion pipeline: DICOM pattern → vectors in a store, failures in Parquet.

dicomvec flags: --input PATTERN  --sink URL  --dead-letter DIR  --provider NAME
  --image-size S  --image-format png|jpeg  --normalization standard|mimic-jpg  --batch-size N
  --run-id ID  --nvclip-url URL  --nvclip-model NAME  --nvclip-concurrency N
  --nvclip-max-requests-per-minute N  --nvclip-timeout S  --nvclip-max-attempts N
  --replace-invalid (re-embed stored rows with a zero or wrong-length vector)
An existing images table must be shaped like dicomvec's; an older dicomvec table must be
upgraded first (`dicomvec migrate`), another tool's table is never written to.
plus any Beam option, e.g. --runner FlinkRunner --flink_master HOST:8081, --direct_num_workers 2.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="run the ingestion pipeline", description=HELP,
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   add_help=False)
    parser.add_argument("-h", "--help", action="help")
    parser.set_defaults(func=run, passthrough=True)


def run(args, extra) -> int:
    from dicomvec.pipeline.run import run_ingest
    summary = run_ingest(extra)
    print(summary.render())
    return summary.exit_status
