"""Reprocess dead letters: read the Parquet generations, pick the files to try again, run them
through the same pipeline, and report what is fixed and what still fails.

In: a dead-letter folder (all ``run=*`` generations) and filters. Out: a ``ReprocessReport``;
the still-failing files land in a NEW generation folder (nothing is overwritten). Files whose
images are stored meanwhile are skipped by the resume step, not paid for twice.
"""
from __future__ import annotations

import collections
import dataclasses
import textwrap
from typing import Dict, Iterable, List, Optional, Tuple

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from dicomvec.io.dead_letter import read_dead_letters
from dicomvec.io.object_storage import check_s3_paths, storage_settings
from dicomvec.io.remote import use_gcs_emulator
from dicomvec.pipeline import preflight
from dicomvec.pipeline.options import DicomvecOptions
from dicomvec.pipeline.run import RunSummary, default_run_id, run_ingest


class NothingToReprocessError(ValueError):
    """No dead letters match the filters: a normal outcome (the command exits 0)."""


def short_reason(error_type: str, message: str, width: int = 100) -> str:
    """``"Type: message"`` cut at a word boundary (``…``) to fit ``width`` characters."""
    return textwrap.shorten(f"{error_type}: {message}", width=width, placeholder=" …")


def latest_per_path(rows: Iterable[Dict]) -> Dict[str, Dict]:
    """The newest dead-letter row of each path (by failure time, then run id)."""
    latest: Dict[str, Dict] = {}
    for row in rows:
        current = latest.get(row["path"])
        if current is None or (row["failed_at"], row["run_id"]) > (current["failed_at"],
                                                                   current["run_id"]):
            latest[row["path"]] = row
    return latest


def select_paths(rows: Iterable[Dict], stage: Optional[str] = None,
                 retryable_only: bool = False) -> List[str]:
    """Paths to try again: de-duplicated, filtered on each path's latest failure."""
    chosen = []
    for path, row in sorted(latest_per_path(rows).items()):
        if stage and row["stage"] != stage:
            continue
        if retryable_only and not row["retryable"]:
            continue
        chosen.append(path)
    return chosen


@dataclasses.dataclass
class ReprocessReport:
    selected: int
    fixed: int
    still_failing: Dict[Tuple[str, str], int]
    run: RunSummary

    @property
    def exit_status(self) -> int:
        return self.run.exit_status

    def render(self) -> str:
        header = self.run.render().replace("dicomvec run ", "dicomvec reprocess ", 1)
        lines = [header, "", f"reprocessed {self.selected} files: {self.fixed} fixed, "
                 f"{self.selected - self.fixed} still failing"]
        for (stage, error), count in sorted(self.still_failing.items()):
            lines.append(f"  {stage:<10} {count:>6}  {error}")
        return "\n".join(lines)


def run_reprocess(argv: List[str], stage: Optional[str] = None,
                  retryable_only: bool = False) -> ReprocessReport:
    options = PipelineOptions(argv).view_as(DicomvecOptions)
    FileSystems.set_options(options)  # dead letters may live on s3://
    use_gcs_emulator(storage_settings(options))  # --gcs_emulator_host: this process
    check_s3_paths([options.dead_letter], options)
    preflight.require_dead_letter_folder(options.dead_letter)
    previous = read_dead_letters(options.dead_letter)
    paths = select_paths(previous, stage, retryable_only)
    check_s3_paths(paths, options)
    if not paths:
        raise NothingToReprocessError(
            f"no dead letters to reprocess under {options.dead_letter!r}"
            + (f" at stage {stage!r}" if stage else "")
            + (" marked retryable" if retryable_only else ""))
    run_id = options.run_id or default_run_id()
    if any(row["run_id"] == run_id for row in previous):
        raise ValueError(f"run id {run_id!r} already has dead letters: choose a new --run-id")
    argv = [a for a in argv] + ["--run-id", run_id]
    summary = run_ingest(argv, paths=paths)
    new_rows = read_dead_letters(options.dead_letter, run_id)
    failing_paths = {row["path"] for row in new_rows}
    reasons = collections.Counter(
        (row["stage"], short_reason(row["error_type"], row["error_message"])) for row in new_rows)
    return ReprocessReport(selected=len(paths), fixed=len(set(paths) - failing_paths),
                           still_failing=dict(reasons), run=summary)
