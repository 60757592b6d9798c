"""``dicomvec reports``: the reports job. Unknown flags pass through to Beam (``--runner`` …)."""
from __future__ import annotations

HELP = """Embed MIMIC-CXR radiology reports into the reports table (VectorSearch.MIMICCXRReports).

Reads files/pXX/p<subject>/s<study>.txt, takes FINDINGS and IMPRESSION, embeds the IMPRESSION
(else FINDINGS, else the report's tail) within CLIP's 77-token window with the same provider as
the images, upserts one row per StudyID, dead-letters what fails.

An existing reports table must be shaped like dicomvec's (columns, key StudyID, vector length):
a table made by another tool (e.g. one embedded with OpenAI, 3072-d) is never written to; the
command stops with one line (exit 2) and --reports-table NAME writes a table of our own.

The flags that matter here: --input PATTERN (e.g. 'files/**/s*.txt'), --sink, --sink-schema,
--reports-table, --dead-letter, --provider (nvclip; thumbnail stores text only), --batch-size,
--run-id and the --nvclip-* settings; the preprocessing flags are accepted and unused.
"""


def register(subparsers) -> None:
    from dicomvec.commands.pipeline_flags import add_job_command
    add_job_command(subparsers, "reports", "embed radiology reports (reports table)", HELP, run)


def run(args, extra) -> int:
    from dicomvec.commands.pipeline_flags import run_job_command
    from dicomvec.pipeline.reports import run_reports
    return run_job_command(extra, "reports", run_reports)
