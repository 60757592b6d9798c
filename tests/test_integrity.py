"""Never lose or mislabel an image: a broken copy must not hide a good one (batch, streaming,
reprocess), every matched path is accounted for, and the run says loudly when it is not."""
from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path

import pytest
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileMetadata

from dicomvec.cli import main as cli_main
from dicomvec.commands.dead_letters import summary_table
from dicomvec.io.dead_letter import read_dead_letters
from dicomvec.io.stores import VectorStore
from dicomvec.pipeline.accounting import EXIT_ACCOUNTING_MISMATCH, check_accounting
from dicomvec.pipeline.reprocess import run_reprocess
from dicomvec.pipeline.run import run_ingest
from dicomvec.synthetic import synthetic_dataset
from dicomvec.transforms.identify import IdentifyDicom
from tests.local_run import thumbnail_flags


def copies(index: int = 1):
    """(intact bytes, broken bytes: cut in the pixel data, same SOPInstanceUID, UID)."""
    ds = synthetic_dataset(size=(96, 80), seed=5, index=index)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    intact = buffer.getvalue()
    return intact, intact[:len(intact) - 96 * 80], str(ds.SOPInstanceUID)


def flags(tmp_path: Path, run_id: str, *extra: str):
    return thumbnail_flags(tmp_path, run_id, *extra, batch_size=4)


def stored_files(tmp_path: Path):
    with VectorStore(f"sqlite:///{tmp_path}/db.sqlite") as store:
        return dict(store.conn.execute("SELECT DicomFile, ImageID FROM MIMICCXRImages"))


@pytest.mark.parametrize("broken_name", ["a_copy.dcm", "z_copy.dcm"],
                         ids=["broken-sorts-first", "broken-sorts-last"])
def test_a_broken_copy_never_hides_the_valid_one(tmp_path, caplog, broken_name):
    intact, broken, uid = copies()
    archive = tmp_path / "in"
    archive.mkdir()
    (archive / "m_valid.dcm").write_bytes(intact)
    (archive / broken_name).write_bytes(broken)
    caplog.set_level(logging.WARNING)
    summary = run_ingest(["--input", str(archive / "*.dcm"), *flags(tmp_path, "dups")])

    assert stored_files(tmp_path) == {"m_valid.dcm": uid}
    assert summary.stored == 1 and summary.matched == 2
    dead = read_dead_letters(str(tmp_path / "dl"), "dups")
    if broken_name == "a_copy.dcm":  # tried first: it fails, is dead-lettered, its twin is used
        (row,) = dead
        assert row["path"].endswith(broken_name) and row["stage"] == "decode"
        assert "truncated" in row["error_message"] and "m_valid.dcm" in row["error_message"]
        assert summary.duplicate_files == 0
    else:  # never needed: counted and named as a duplicate
        assert dead == [] and summary.duplicate_files == 1
        assert f"duplicate ImageID {uid}" in caplog.text and broken_name in caplog.text
    assert summary.accounting.holds and summary.exit_status == 0


def test_every_copy_broken_dead_letters_each_with_its_own_reason(tmp_path):
    intact, broken, _ = copies()
    archive = tmp_path / "in"
    archive.mkdir()
    (archive / "a.dcm").write_bytes(broken)
    (archive / "b.dcm").write_bytes(intact[:600])  # cut in the header: no identity readable?
    (archive / "c.dcm").write_bytes(intact[:-5])
    summary = run_ingest(["--input", str(archive / "*.dcm"), *flags(tmp_path, "allbad")])
    rows = {row["path"].rsplit("/", 1)[-1]: row
            for row in read_dead_letters(str(tmp_path / "dl"), "allbad")}
    assert summary.stored == 0 and set(rows) == {"a.dcm", "b.dcm", "c.dcm"}
    assert "7680 bytes" in rows["a.dcm"]["error_message"]
    assert "15355 bytes" in rows["c.dcm"]["error_message"]
    assert summary.accounting.holds


def test_reprocess_uses_the_copy_that_now_works_and_takes_each_path_once(tmp_path, capsys):
    intact, broken, uid = copies()
    archive = tmp_path / "in"
    archive.mkdir()
    for name in ("a.dcm", "b.dcm"):
        (archive / name).write_bytes(broken)
    for run_id in ("g1", "g2"):  # the same broken files twice: two generations
        run_ingest(["--input", str(archive / "*.dcm"), *flags(tmp_path, run_id)])
    assert len(read_dead_letters(str(tmp_path / "dl"))) == 4

    assert cli_main(["dead-letters", "summary", str(tmp_path / "dl")]) == 0
    table = capsys.readouterr().out
    assert "distinct files: 2" in table and "rows: 4" in table

    (archive / "b.dcm").write_bytes(intact)  # the user repairs the copy that sorts last
    report = run_reprocess(flags(tmp_path, "g3"))
    assert report.selected == 2  # each path once, though each has two dead letters
    assert stored_files(tmp_path) == {"b.dcm": uid}
    (row,) = read_dead_letters(str(tmp_path / "dl"), "g3")
    assert row["path"].endswith("a.dcm") and "b.dcm" in row["error_message"]
    assert report.fixed == 1 and report.run.accounting.holds


def test_summary_table_counts_rows_and_distinct_files():
    rows = [{"run_id": g, "stage": "decode", "error_type": "PixelDecodeError", "path": p}
            for g in ("g1", "g2") for p in ("a", "b")] + [
        {"run_id": "g2", "stage": "read", "error_type": "PermissionError", "path": "c"}]
    table = summary_table(rows)
    assert "rows: 5" in table and "distinct files: 3" in table
    line = [l for l in table.splitlines() if l.startswith("g1")][0]
    assert line.split()[-2:] == ["2", "2"]


def test_a_file_that_vanished_after_listing_is_a_read_dead_letter(tmp_path):
    gone = tmp_path / "gone.dcm"
    dofn = IdentifyDicom()
    (out,) = list(dofn.process(fileio.ReadableFile(FileMetadata(str(gone), 1234))))
    assert out.tag == "failed" and out.value.stage == "read"
    assert "vanished" in out.value.error_message


def test_a_lost_path_makes_the_run_say_so_and_exit_non_zero(tmp_path, monkeypatch, capsys):
    """Simulate the old bug (an unused copy not counted): the summary says ACCOUNTING MISMATCH,
    an error is logged and ``dicomvec run`` exits with status 3."""
    intact, _, _ = copies()
    (tmp_path / "in").mkdir()
    for name in ("a.dcm", "b.dcm"):
        (tmp_path / "in" / name).write_bytes(intact)
    monkeypatch.setattr("dicomvec.transforms.preprocess.report_unused_copies",
                        lambda *args: None)
    status = cli_main(["run", "--input", str(tmp_path / "in" / "*.dcm"),
                       *flags(tmp_path, "lost")])
    out = capsys.readouterr()
    assert status == EXIT_ACCOUNTING_MISMATCH == 3
    assert "ACCOUNTING MISMATCH  2 matched" in out.out
    assert "not every matched path is accounted for" in out.err


def test_accounting_reads_the_dead_letters_back(tmp_path):
    counters = {"matched": 3, "write_ok": 1, "decode_failed": 2}
    accounting = check_accounting(3, counters, str(tmp_path / "dl" / "run=none"))
    assert not accounting.holds  # two failures counted, none written: caught
    assert accounting.dead_lettered_paths == 0 and accounting.accounted == 1


@pytest.mark.slow
def test_streaming_a_broken_copy_arriving_first_does_not_hide_the_good_one(
        tmp_path, streaming_runner):
    intact, broken, uid = copies(7)
    watched = tmp_path / "incoming"
    watched.mkdir()
    (watched / "a_broken.dcm").write_bytes(broken)

    def arrive():
        time.sleep(6)
        (watched / "b_good.dcm").write_bytes(intact)

    writer = threading.Thread(target=arrive)
    writer.start()
    summary = run_ingest(["--input", str(watched / "*.dcm"), *flags(tmp_path, "stream"),
                          "--streaming", *streaming_runner, "--watch-interval", "2",
                          "--dead-letter-frequency", "2", "--stop-after-idle", "8"])
    writer.join()
    assert stored_files(tmp_path) == {"b_good.dcm": uid}
    (row,) = read_dead_letters(str(tmp_path / "dl"), "stream")
    assert row["path"].endswith("a_broken.dcm") and row["stage"] == "decode"
    assert summary.accounting.holds


def test_a_runner_without_counters_is_reported_as_not_checked(tmp_path, caplog):
    accounting = check_accounting(5, {}, str(tmp_path / "dl" / "run=none"))
    assert not accounting.checked and accounting.holds
    assert "NOT CHECKED" in accounting.render()
    assert "cannot be checked" in caplog.text
