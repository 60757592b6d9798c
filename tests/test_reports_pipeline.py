"""The reports job end to end on the local engine: report files → reports table + dead letters."""
from __future__ import annotations

import sqlite3

import pytest

from dicomvec.io.dead_letter import read_dead_letters
from dicomvec.io.stores import VectorStore
from dicomvec.io.stores.tables import REPORTS
from tests.store_rows import lookup
from dicomvec.pipeline.reports import run_reports
from dicomvec.pipeline.run import NoInputFilesError
from dicomvec.reports.samples import sample_texts
from tests.local_run import thumbnail_flags


@pytest.fixture()
def report_tree(tmp_path):
    """Seven sample reports in MIMIC layout, one empty report, one file with no identity."""
    files = tmp_path / "files"
    texts = sample_texts()
    for index, text in enumerate(texts.values()):
        subject = f"1000000{index}"
        folder = files / f"p{subject[:2]}" / f"p{subject}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"s5000000{index}.txt").write_text(text)
    (files / "p10" / "p10000000" / "s59999999.txt").write_text("\n  FINAL REPORT\n ___\n")
    (files / "p10" / "p10000000" / "notes.txt").write_text("IMPRESSION: not a report file\n")
    (files / "p10" / "p10000000" / "snotes.txt").write_text("IMPRESSION: no study id\n")
    clash = files / "p19" / "p19999999"  # a second file for study 50000001
    clash.mkdir(parents=True)
    (clash / "s50000001.txt").write_text("IMPRESSION: same study ID, other subject.\n")
    return tmp_path, len(texts)


def _run(tmp_path, run_id, *extra):
    return run_reports(thumbnail_flags(
        tmp_path, run_id, *extra, input=f"{tmp_path}/files/**/s*.txt",
        sink=f"sqlite:///{tmp_path}/dicomvec.db", dead_letter=tmp_path / "dead_letter",
        batch_size=3))


def test_reports_are_stored_once_per_study_and_failures_dead_lettered(report_tree):
    tmp_path, n = report_tree
    summary = _run(tmp_path, "first")
    assert summary.matched == n + 3  # notes.txt does not match s*.txt
    assert summary.duplicate_studies == 1
    assert summary.stored == n and summary.text_only == n and summary.embedded == 0
    assert summary.dead_lettered == {"read": 0, "decode": 3, "embed": 0, "write": 0}
    assert summary.rows_in_table == n and summary.vectors_in_table == 0
    assert "no text tower" in summary.render()

    dead = read_dead_letters(str(tmp_path / "dead_letter"), "first")
    assert sorted((row["stage"], row["path"].rsplit("/", 1)[-1], row["image_id"])
                  for row in dead) == [("decode", "s50000001.txt", "50000001"),
                                       ("decode", "s59999999.txt", "59999999"),
                                       ("decode", "snotes.txt", "")]
    duplicate = next(row for row in dead if row["image_id"] == "50000001")
    assert "duplicate StudyID 50000001" in duplicate["error_message"]
    assert all(row["error_message"] for row in dead)

    with VectorStore(f"sqlite:///{tmp_path}/dicomvec.db", spec=REPORTS) as store:
        found = lookup(store, [f"5000000{i}" for i in range(n)])
    assert len(found) == n
    first = found["50000000"]
    assert first.SubjectID == "10000000" and first.ReportPath.endswith("s50000000.txt")
    assert first.EmbeddedText and first.Provider is None
    db = sqlite3.connect(tmp_path / "dicomvec.db")
    assert db.execute("SELECT COUNT(*) FROM MIMICCXRReports WHERE Vector IS NOT NULL"
                      ).fetchone()[0] == 0

    again = _run(tmp_path, "second")
    assert again.stored == n and again.rows_in_table == n  # idempotent


def test_no_matching_report_files_is_an_error(tmp_path):
    with pytest.raises(NoInputFilesError):
        run_reports(["--input", f"{tmp_path}/nothing/**/s*.txt",
                     "--sink", f"sqlite:///{tmp_path}/db.sqlite"])
