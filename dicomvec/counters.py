"""Every Beam counter dicomvec reports (namespace ``dicomvec``), named once: the transforms
increment them, the summaries, the job monitor and the accounting check (exit status 3) read
them. Imports nothing heavy.

A job's counters are described by a ``JobCounters``: ``IMAGES`` (``dicomvec run``,
``reprocess``) and ``REPORTS`` (``dicomvec reports``, the same names with ``reports_`` in
front, and per dead-letter stage the counters of its failures).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

from dicomvec.defaults import STAGES

NAMESPACE = "dicomvec"

MATCHED = "matched"
STORED = "write_ok"
ALREADY_STORED = "skipped_existing"
DUPLICATE_FILES = "duplicate_files"
RESUME_LOOKUP_FAILED = "resume_lookup_failed"
EMBED_BATCHES = "embed_batches"
FILES_STILL_ARRIVING = "files_still_arriving"
#: versions waiting to settle (streaming idle detection): arriving - arrived
ARRIVING = "arriving"
ARRIVED = "arrived"
#: ``provider_<stat>``: the provider's own stats (requests, retries, ...)
PROVIDER_PREFIX = "provider_"
# the reports job's own
REPORTS_PARSED = "reports_parsed"
REPORTS_PARSE_FAILED = "reports_parse_failed"
REPORTS_DUPLICATE_STUDY = "reports_duplicate_study"
REPORTS_TEXT_ONLY = "reports_text_only"


def ok(stage: str, prefix: str = "") -> str:
    return f"{prefix}{stage}_ok"


def failed(stage: str, prefix: str = "") -> str:
    return f"{prefix}{stage}_failed"


@dataclasses.dataclass(frozen=True)
class JobCounters:
    """The counter names of one job: ``prefix`` + the images job's names, and per dead-letter
    stage the counters of its failures."""

    prefix: str
    dead_letters: Tuple[Tuple[str, Tuple[str, ...]], ...]

    def ok(self, stage: str) -> str:
        return ok(stage, self.prefix)

    def failed(self, stage: str) -> str:
        return failed(stage, self.prefix)

    @property
    def matched(self) -> str:
        return self.prefix + MATCHED

    @property
    def stored(self) -> str:
        return self.prefix + STORED

    @property
    def already_stored(self) -> str:
        return self.prefix + ALREADY_STORED

    @property
    def duplicates(self) -> str:
        return self.prefix + DUPLICATE_FILES

    def dead_lettered(self, counters: Dict[str, int]) -> Dict[str, int]:
        """Failures per stage."""
        return {stage: sum(counters.get(name, 0) for name in names)
                for stage, names in self.dead_letters}

    def failures(self, counters: Dict[str, int]) -> int:
        return sum(self.dead_lettered(counters).values())

    def provider_stats(self, counters: Dict[str, int]) -> Dict[str, int]:
        """The provider's own counters (requests, retries, ...)."""
        return {k[len(PROVIDER_PREFIX):]: v for k, v in counters.items()
                if k.startswith(PROVIDER_PREFIX)}


IMAGES = JobCounters("", tuple((stage, (failed(stage),)) for stage in STAGES))
REPORTS = JobCounters("reports_", (
    ("read", (failed("read", "reports_"),)),
    ("decode", (REPORTS_PARSE_FAILED, REPORTS_DUPLICATE_STUDY)),
    ("embed", (failed("embed", "reports_"),)),
    ("write", (failed("write", "reports_"),))))
