"""End to end on the local engine: real DICOMs → SQLite + Parquet dead letters."""
from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from dicomvec.io.dead_letter import SCHEMA, read_dead_letters
from dicomvec.io.stores import VectorStore
from dicomvec.pipeline.run import NoInputFilesError, run_ingest
from tests.local_run import thumbnail_flags


def _run(input_pattern, tmp_path, run_id, *extra):
    return run_ingest(thumbnail_flags(tmp_path, run_id, *extra, input=input_pattern,
                                      sink=f"sqlite:///{tmp_path}/dicomvec.db",
                                      dead_letter=tmp_path / "dead_letter", batch_size=4))


@pytest.mark.slow  # several seconds: the fast suite stays under two minutes
def test_real_files_store_five_and_dead_letter_the_corrupt_one(real_cxr_dir, tmp_path):
    summary = _run(real_cxr_dir / "*.dcm", tmp_path, "first")
    assert summary.matched == 6
    assert summary.stored == 5
    assert summary.dead_lettered == {"read": 0, "decode": 1, "normalize": 0, "resize": 0,
                                     "embed": 0, "write": 0}
    assert "  pixels sent to       nowhere: computed on this machine" in summary.render()
    rows = read_dead_letters(str(tmp_path / "dead_letter"), "first")
    assert len(rows) == 1
    row = rows[0]
    assert set(row) == set(SCHEMA.names)
    assert row["stage"] == "decode" and row["path"].endswith("dx_mono1_j2k_lossless_CORRUPT.dcm")
    assert row["error_message"] and row["run_id"] == "first" and row["attempts"] == 1
    corrupt = pydicom.dcmread(real_cxr_dir / "dx_mono1_j2k_lossless_CORRUPT.dcm",
                              stop_before_pixels=True)
    name = str(corrupt.get("PatientName") or "")
    if name:
        assert all(name not in str(value) for value in row.values())

    with VectorStore(f"sqlite:///{tmp_path}/dicomvec.db") as store:
        assert store.count() == 5
        ids = [r[0] for r in store.conn.execute("SELECT ImageID FROM MIMICCXRImages")]
        vectors = store.vectors(ids, "thumbnail")
    assert all(abs(np.linalg.norm(v) - 1) < 1e-4 for v in vectors.values())
    assert len({v.tobytes() for v in vectors.values()}) == 5

    again = _run(real_cxr_dir / "*.dcm", tmp_path, "second")
    assert again.skipped_existing == 5 and again.stored == 0  # nothing re-embedded
    assert again.rows_in_store == 5
    assert len(read_dead_letters(str(tmp_path / "dead_letter"))) == 2  # one per generation

    forced = _run(real_cxr_dir / "*.dcm", tmp_path, "forced", "--force")
    assert forced.skipped_existing == 0 and forced.stored == 5
    assert forced.rows_in_store == 5  # upserts: no duplicates


def test_copies_of_one_image_are_one_row(real_cxr_dir, tmp_path):
    source = real_cxr_dir / "cxr_mono1_implicit_440.dcm"
    (tmp_path / "in").mkdir()
    for name in ("a.dcm", "b.dcm", "c.dcm"):
        shutil.copy(source, tmp_path / "in" / name)
    summary = _run(tmp_path / "in" / "*.dcm", tmp_path, "dups")
    assert summary.matched == 3
    assert summary.duplicate_files == 2
    assert summary.stored == 1 and summary.rows_in_store == 1
    assert summary.dead_lettered_total == 0


def test_not_dicom_and_unmatched_inputs(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.dcm").write_text("this is not a DICOM file")
    summary = _run(tmp_path / "in" / "*.dcm", tmp_path, "bad")
    assert summary.stored == 0 and summary.dead_lettered["decode"] == 1
    with pytest.raises(NoInputFilesError):
        _run(tmp_path / "nowhere" / "*.dcm", tmp_path, "none")
