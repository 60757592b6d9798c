"""Every Beam counter dicomvec reports (namespace ``dicomvec``), named once: the transforms
increment them; the summaries, the job monitor and the accounting check (exit status 3) read
them through a job's ``JobCounters``: ``IMAGES`` (``run``, ``reprocess``) or ``REPORTS``
(``reports``: the same names with ``reports_`` in front)."""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

from dicomvec.defaults import STAGES

NAMESPACE = "dicomvec"
MATCHED, STORED, ALREADY_STORED = "matched", "write_ok", "skipped_existing"
DUPLICATE_FILES, RESUME_LOOKUP_FAILED = "duplicate_files", "resume_lookup_failed"
EMBED_BATCHES, FILES_STILL_ARRIVING = "embed_batches", "files_still_arriving"
#: files a folder input skipped as plainly not DICOM (``transforms.identify.IdentifyDicom``)
NOT_DICOM_IGNORED = "not_dicom_ignored"
#: file versions waiting to settle (streaming idle detection): arriving - arrived
ARRIVING, ARRIVED = "arriving", "arrived"
#: ``provider_<stat>``: the provider's own stats (requests, retries, ...)
PROVIDER_PREFIX = "provider_"
REPORTS_PARSED, REPORTS_PARSE_FAILED = "reports_parsed", "reports_parse_failed"
REPORTS_DUPLICATE_STUDY, REPORTS_TEXT_ONLY = "reports_duplicate_study", "reports_text_only"


#: between a counter's name and the scope of the step that counts it (``scoped``)
SCOPE_SEP = "__"


def scoped(name: str, scope: str = "") -> str:
    """``name`` as counted by one step: ``decode_failed__identify``."""
    return f"{name}{SCOPE_SEP}{scope}" if scope else name


def base_name(metric_name: str) -> str:
    """The counter a (possibly scoped) metric name counts towards."""
    return metric_name.split(SCOPE_SEP, 1)[0]


@dataclasses.dataclass(frozen=True)
class JobCounters:
    """One job's counter names: ``prefix`` + the images job's, and per dead-letter stage the
    counters of its failures."""

    prefix: str
    dead_letters: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()

    def ok(self, stage: str) -> str:
        return f"{self.prefix}{stage}_ok"

    def failed(self, stage: str) -> str:
        return f"{self.prefix}{stage}_failed"

    def __getattr__(self, name: str) -> str:
        """``matched``, ``stored``, ``already_stored``, ``duplicates``: the prefixed names."""
        base = {"matched": MATCHED, "stored": STORED, "already_stored": ALREADY_STORED,
                "duplicates": DUPLICATE_FILES}.get(name)
        if base is None:
            raise AttributeError(name)
        return self.prefix + base

    def dead_lettered(self, counters: Dict[str, int]) -> Dict[str, int]:
        """Failures per stage."""
        return {stage: sum(counters.get(name, 0) for name in names)
                for stage, names in self.dead_letters}

    def failures(self, counters: Dict[str, int]) -> int:
        return sum(self.dead_lettered(counters).values())

    @staticmethod
    def provider_stats(counters: Dict[str, int]) -> Dict[str, int]:
        """The provider's own counters (requests, retries, ...)."""
        return {k[len(PROVIDER_PREFIX):]: v for k, v in counters.items()
                if k.startswith(PROVIDER_PREFIX)}


IMAGES = JobCounters("", tuple((stage, (f"{stage}_failed",)) for stage in STAGES))
_R = JobCounters("reports_")
REPORTS = JobCounters(_R.prefix, (
    ("read", (_R.failed("read"),)), ("decode", (REPORTS_PARSE_FAILED, REPORTS_DUPLICATE_STUDY)),
    ("embed", (_R.failed("embed"),)), ("write", (_R.failed("write"),))))
