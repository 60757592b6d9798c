"""Every matched path ends in exactly one bucket: the run checks that the counts add up.

    files matched = images stored + already stored + duplicate files not used
                    + dead-lettered (distinct paths in this run's dead-letter generation)
                    + not DICOM, ignored (a folder input only: .txt, .csv, … files)

In: the number of paths the run was given (the driver's listing of ``--input`` plus the matched
paths the listing skipped; the reprocessed paths; in streaming mode the ``matched`` counter),
the run's Beam counters, and the dead-letter generation folder (read back after the run, so a
dead letter that was counted but never written is caught too). Out: an ``Accounting`` whose
``holds`` says whether every path is accounted for; ``render()`` is the summary's line. When it
does not hold the run logs an error and ``dicomvec run`` / ``reprocess`` exit with status 3.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Dict, Optional, Set

from apache_beam.io.filesystems import FileSystems

from dicomvec import counters as C

log = logging.getLogger(__name__)

#: exit status of a run whose counts do not add up (2 is a user error)
EXIT_ACCOUNTING_MISMATCH = 3


@dataclasses.dataclass(frozen=True)
class Accounting:
    matched: int
    seen_by_pipeline: int  # the ``matched`` counter: paths that entered the pipeline
    stored: int
    already_stored: int
    duplicates: int
    dead_lettered_paths: int
    dead_letter_rows: int
    ignored: int = 0  # a folder input's files that are plainly not DICOM (never dead-lettered)
    checked: bool = True  # False: the runner reported no counters, nothing could be compared
    #: why the counts were not compared (``checked`` False)
    unchecked_reason: str = "the runner reported no counters"

    @property
    def accounted(self) -> int:
        return (self.stored + self.already_stored + self.duplicates + self.dead_lettered_paths
                + self.ignored)

    @property
    def holds(self) -> bool:
        """True when the counts add up (or could not be checked: see ``checked``)."""
        return not self.checked or self.matched == self.accounted == self.seen_by_pipeline

    def render(self) -> str:
        if not self.checked:
            return (f"  accounting           NOT CHECKED: {self.unchecked_reason}, so "
                    "stored + duplicates + dead letters cannot be compared with the "
                    f"{self.matched} files matched")
        terms = (f"{self.stored} stored + {self.already_stored} already stored + "
                 f"{self.duplicates} duplicates + {self.dead_lettered_paths} dead-lettered")
        if self.ignored:
            terms += f" + {self.ignored} not DICOM (ignored)"
        if self.holds:
            return f"  accounting           ok: {self.matched} matched = {terms}"
        return (f"  ACCOUNTING MISMATCH  {self.matched} matched, {self.seen_by_pipeline} seen by "
                f"the pipeline, but {terms} = {self.accounted}: some paths are not accounted "
                f"for (see the log)")


def dead_letter_paths(generation_dir: str) -> tuple:
    """(distinct paths, rows) in one dead-letter generation folder, on any Beam filesystem."""
    from dicomvec.io.dead_letter import read_parquet
    pattern = FileSystems.join(generation_dir, "*.parquet")
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # no folder: no dead letters
        return set(), 0
    paths: Set[str] = set()
    rows = 0
    for metadata in found:
        if metadata.path.rsplit("/", 1)[-1].startswith("."):  # a temporary file
            continue
        with FileSystems.open(metadata.path) as handle:
            table = read_parquet(handle, columns=["path"])
        rows += table.num_rows
        paths.update(table.column("path").to_pylist())
    return paths, rows


def check_accounting(matched: Optional[int], counters: Dict[str, int],
                     generation_dir: str, stopped_by: str = "",
                     names: C.JobCounters = C.IMAGES) -> Accounting:
    """Compare the paths given to the run with where they ended; logs an error on a mismatch.
    ``matched`` None: use the pipeline's own ``matched`` counter (streaming). ``stopped_by``: the
    signal that ended a stream, whose files in flight were cancelled on purpose (and whose last
    live counters may lag): the counts are then reported, not judged. ``names``: the job's
    counters."""
    seen = counters.get(names.matched, 0)
    paths, rows = dead_letter_paths(generation_dir)
    if names.matched not in counters and matched:
        log.warning("the runner reported no dicomvec counters: the accounting of the %d matched "
                    "files cannot be checked", matched)
        return Accounting(matched=matched, seen_by_pipeline=0, stored=0, already_stored=0,
                          duplicates=0, dead_lettered_paths=len(paths), dead_letter_rows=rows,
                          checked=False)
    counted_failures = names.failures(counters)
    # streaming re-reads a file that changed after it was read: count events, not paths
    dead = len(paths) if matched is not None else counted_failures
    accounting = Accounting(
        matched=seen if matched is None else matched, seen_by_pipeline=seen,
        stored=counters.get(names.stored, 0),
        already_stored=counters.get(names.already_stored, 0),
        duplicates=counters.get(names.duplicates, 0), dead_lettered_paths=dead,
        dead_letter_rows=rows, ignored=counters.get(C.NOT_DICOM_IGNORED, 0))
    if stopped_by and not accounting.holds:
        log.warning("stopped by %s with files in flight: run the same command again to finish "
                    "them (stored images are skipped)", stopped_by)
        return dataclasses.replace(accounting, checked=False, unchecked_reason=(
            f"stopped by {stopped_by} with files in flight (run the same command again)"))
    if not accounting.holds:
        log.error("not every matched path is accounted for: %d matched (%d entered the "
                  "pipeline) but %d stored + %d already stored + %d duplicates + %d dead-lettered "
                  "paths + %d not DICOM (ignored) (%d dead-letter rows written, %d failures "
                  "counted) = %d",
                  accounting.matched, seen, accounting.stored, accounting.already_stored,
                  accounting.duplicates, dead, accounting.ignored, rows, counted_failures,
                  accounting.accounted)
    elif rows != counted_failures:
        log.warning("%d failures counted but %d dead-letter rows written", counted_failures,
                    rows)
    return accounting
