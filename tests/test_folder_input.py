"""A folder as ``--input`` means "the DICOM files in it" (issue 24, item 1): files that are
plainly not DICOM (a known non-DICOM kind by extension and no ``DICM`` preamble, e.g. MIMIC-CXR's
reports beside the study folders) are counted on their own summary line and in the accounting,
never dead-lettered, never reprocessed; a DICOM file without extension (or named ``.txt``) is
still read; an explicit pattern keeps reading what the user named. The same for an ``s3://``
prefix (local S3 server)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dicomvec import cli
from dicomvec.io.dead_letter import read_dead_letters
from dicomvec.io.listing import is_non_dicom_kind
from dicomvec.reports.samples import write_sample_reports
from dicomvec.synthetic import generate


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """A MIMIC-layout folder: 3 good DICOMs, 2 broken ones (truncated, not DICOM, both .dcm),
    3 reports beside the studies, an index.html and a .csv.gz; plus a DICOM without extension
    and a DICOM named .txt (both must be read)."""
    root = tmp_path_factory.mktemp("archive")
    generate(root, 3, size=(96, 96), syntaxes=("native",), broken=2, seed=11)
    files = root / "files"
    assert len(write_sample_reports(files)) == 3
    (files / "index.html").write_text("<html><body>MIMIC-CXR</body></html>\n")
    (files / "cxr-record-list.csv.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(300))
    extra = tmp_path_factory.mktemp("extra")
    more = [f for f in generate(extra, 2, size=(96, 96), syntaxes=("native",), seed=12)]
    (files / "other").mkdir()
    shutil.copy(more[0].path, files / "other" / "IMAGE0001")   # DICOM, no extension
    shutil.copy(more[1].path, files / "other" / "scan.txt")    # DICOM, misnamed
    return files


def _run(argv, capfd):
    rc = cli.main(argv)
    out, err = capfd.readouterr()
    return rc, out, err


def test_known_kinds():
    assert is_non_dicom_kind("/a/files/p10/p1/s2.txt")
    assert is_non_dicom_kind("s3://b/cxr-record-list.csv.gz")
    assert is_non_dicom_kind("/a/index.HTML")
    assert not is_non_dicom_kind("/a/p1/s2/x.dcm")
    assert not is_non_dicom_kind("/a/p1/s2/IMAGE0001")
    assert not is_non_dicom_kind("/a/p1/s2/1.2.840.113619.2.55")  # a UID file name
    assert not is_non_dicom_kind("/a/.txt")


def test_folder_input_ignores_plainly_non_dicom_files(archive, tmp_path, capfd):
    dead_letter = tmp_path / "dl"
    rc, out, err = _run(["run", "--input", str(archive), "--sink", f"sqlite:///{tmp_path}/x.db",
                         "--dead-letter", str(dead_letter), "--provider", "thumbnail",
                         "--run-id", "folder"], capfd)
    assert rc == 0, err
    assert "files matched        12" in out
    assert "images stored        5" in out          # 3 + the two DICOMs not named .dcm
    assert "not DICOM, ignored   5" in out          # 3 reports, index.html, .csv.gz
    assert "dead-lettered        2" in out
    assert ("accounting           ok: 12 matched = 5 stored + 0 already stored + 0 duplicates "
            "+ 2 dead-lettered + 5 not DICOM (ignored)") in out
    rows = read_dead_letters(str(dead_letter), "folder")
    assert sorted(Path(r["path"]).suffix for r in rows) == [".dcm", ".dcm"]
    # no warning line per ignored file
    assert not [line for line in err.splitlines() if "WARNING" in line and (
        ".txt" in line or "index.html" in line or ".csv.gz" in line)], err

    # reprocess never touches the ignored files
    rc, out, err = _run(["reprocess", "--dead-letter", str(dead_letter),
                         "--sink", f"sqlite:///{tmp_path}/x.db", "--provider", "thumbnail"],
                        capfd)
    assert rc == 0, err
    assert "files matched        2" in out and "reprocessed 2 files" in out


def test_an_explicit_pattern_reads_what_it_names(archive, tmp_path, capfd):
    dead_letter = tmp_path / "dl"
    rc, out, err = _run(["run", "--input", f"{archive}/**", "--sink",
                         f"sqlite:///{tmp_path}/x.db", "--dead-letter", str(dead_letter),
                         "--provider", "thumbnail", "--run-id", "pattern"], capfd)
    assert rc == 0, err
    assert "not DICOM" not in out.replace("not DICOM file", "")
    assert "images stored        5" in out and "dead-lettered        7" in out
    assert "ok: 12 matched = 5 stored + 0 already stored + 0 duplicates + 7 dead-lettered" in out
    assert len(read_dead_letters(str(dead_letter), "pattern")) == 7


def test_an_s3_prefix_is_a_folder_too(s3_env, archive, tmp_path, capfd):
    sample = s3_env
    client = sample.client()
    prefix = f"folder-{tmp_path.name}"
    for path in sorted(p for p in archive.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(archive).as_posix()}"
        client.put_object(Bucket=sample.bucket, Key=key, Body=path.read_bytes())
    for n, given in enumerate((f"s3://{sample.bucket}/{prefix}",
                               f"s3://{sample.bucket}/{prefix}/")):
        rc, out, err = _run(["run", "--input", given, "--sink", f"sqlite:///{tmp_path}/x{n}.db",
                             "--dead-letter", str(tmp_path / "dl"), "--provider", "thumbnail",
                             "--run-id", f"s3-{n}", *sample.flags()], capfd)
        assert rc == 0, err
        assert "files matched        12" in out, out
        assert "not DICOM, ignored   5" in out and "dead-lettered        2" in out, out
        assert "+ 5 not DICOM (ignored)" in out, out
