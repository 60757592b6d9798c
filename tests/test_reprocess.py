"""Dead letters → fix → reprocess → stored, with a new (empty) generation."""
from __future__ import annotations

import shutil

import pytest

from dicomvec.cli import main as cli_main
from dicomvec.io.dead_letter import read_dead_letters
from dicomvec.io.stores import VectorStore
from dicomvec.pipeline.reprocess import run_reprocess, select_paths
from dicomvec.pipeline.run import run_ingest
from tests.local_run import thumbnail_flags


def _flags(tmp_path, run_id):
    return thumbnail_flags(tmp_path, run_id, batch_size=4)


@pytest.mark.slow  # several seconds: the fast suite stays under two minutes
def test_fixed_file_is_stored_by_reprocess(real_cxr_dir, tmp_path, capsys):
    archive = tmp_path / "archive"
    archive.mkdir()
    for name in ("dx_mono1_j2k_lossless_CORRUPT.dcm", "cr_mono2_jpeg_baseline_1024.dcm"):
        shutil.copy(real_cxr_dir / name, archive / name)
    first = run_ingest(["--input", str(archive / "*.dcm"), *_flags(tmp_path, "g1")])
    assert first.stored == 1 and first.dead_lettered["decode"] == 1

    # the user fixes the file: a valid DICOM now stands at the same path
    shutil.copy(real_cxr_dir / "cxr_mono1_implicit_440.dcm",
                archive / "dx_mono1_j2k_lossless_CORRUPT.dcm")
    report = run_reprocess(_flags(tmp_path, "g2"))
    assert report.selected == 1 and report.fixed == 1 and not report.still_failing
    assert report.run.stored == 1
    assert read_dead_letters(str(tmp_path / "dl"), "g2") == []  # the new generation is empty
    assert len(read_dead_letters(str(tmp_path / "dl"), "g1")) == 1  # the old one untouched
    with VectorStore(f"sqlite:///{tmp_path}/db.sqlite") as store:
        assert store.count() == 2

    assert cli_main(["dead-letters", "summary", str(tmp_path / "dl")]) == 0
    table = capsys.readouterr().out
    assert "g1" in table and "decode" in table


def test_still_failing_files_go_to_a_new_generation(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "junk.dcm").write_bytes(b"\x00" * 300)
    run_ingest(["--input", str(archive / "*.dcm"), *_flags(tmp_path, "g1")])
    (archive / "junk.dcm").unlink()  # and now the file is gone altogether
    report = run_reprocess(_flags(tmp_path, "g2"))
    assert report.fixed == 0
    (row,) = read_dead_letters(str(tmp_path / "dl"), "g2")
    assert row["stage"] == "read" and "not found" in row["error_message"]


def test_selection_uses_each_paths_latest_failure():
    rows = [
        {"path": "a", "stage": "embed", "retryable": True, "failed_at": "1", "run_id": "g1"},
        {"path": "a", "stage": "decode", "retryable": False, "failed_at": "2", "run_id": "g2"},
        {"path": "b", "stage": "embed", "retryable": True, "failed_at": "1", "run_id": "g1"},
        {"path": "c", "stage": "embed", "retryable": False, "failed_at": "1", "run_id": "g1"},
    ]
    assert select_paths(rows) == ["a", "b", "c"]
    assert select_paths(rows, stage="embed") == ["b", "c"]
    assert select_paths(rows, stage="embed", retryable_only=True) == ["b"]
