"""The synthetic MIMIC-layout generator and the ``dicomvec synth`` command."""
from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1,
                         JPEGLSLossless, RLELossless)

from dicomvec import synthetic
from dicomvec.imaging import (DicomReadError, PixelDecodeError, decode_pixels, normalize_pixels,
                              read_dataset)

LAYOUT = re.compile(r"files/p(\d\d)/p(\d{8})/s(\d{8})/([0-9a-f]{8}(-[0-9a-f]{8}){4})\.dcm$")
EXPECTED_SYNTAX = {"native": ExplicitVRLittleEndian, "j2k": JPEG2000Lossless,
                   "rle": RLELossless, "jpeg-lossless": JPEGLosslessSV1,
                   "jpegls": JPEGLSLossless}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    files = synthetic.generate(out, count=5, size=(320, 256), syntaxes=list(EXPECTED_SYNTAX),
                               broken=2, seed=11)
    return out, files


def digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.dcm"))}


def test_layout_manifest_and_identities(archive):
    out, files = archive
    assert len(files) == 7 and len(list(out.rglob("*.dcm"))) == 7
    with open(out / synthetic.MANIFEST) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == [f.path for f in files]
    for info in files:
        match = LAYOUT.search(Path(info.path).as_posix())
        assert match, info.path
        assert match.group(1) == info.subject_id[:2] and match.group(2) == info.subject_id
        assert match.group(3) == info.study_id and match.group(4) == info.dicom_id


def test_good_files_are_realistic_and_lossless(archive):
    out, files = archive
    good = [f for f in files if not f.broken]
    assert {f.syntax for f in good} == set(EXPECTED_SYNTAX)
    assert {f.photometric for f in good} == {"MONOCHROME1", "MONOCHROME2"}
    for info in good:
        ds = pydicom.dcmread(info.path)
        assert ds.file_meta.TransferSyntaxUID == EXPECTED_SYNTAX[info.syntax]
        assert (ds.Rows, ds.Columns, ds.BitsAllocated) == (320, 256, 16)
        assert ds.BitsStored == info.bits_stored in (12, 16)
        assert ds.PatientName == "SYNTHETIC^PATIENT" and ds.PatientID == info.subject_id
        assert ds.ViewPosition == info.view_position in ("PA", "AP", "LATERAL")
        assert ds.SOPInstanceUID and ds.StudyInstanceUID and float(ds.WindowWidth) > 0
        assert ds.PresentationLUTShape == ("INVERSE" if info.photometric == "MONOCHROME1"
                                           else "IDENTITY")
        pixels = ds.pixel_array
        assert pixels.max() < 2 ** info.bits_stored and pixels.std() > 0.05 * pixels.max()
        # lossless: the same seed and index give the same image as the in-memory generator
        index = files.index(info)
        expected = synthetic.chest_image(320, 256, info.bits_stored,
                                         np.random.default_rng([11, index]),
                                         lateral=info.view_position == "LATERAL")
        if info.photometric == "MONOCHROME1":
            expected = (2 ** info.bits_stored - 1) - expected
        np.testing.assert_array_equal(pixels, expected)
        gray = normalize_pixels(ds, decode_pixels(read_dataset(Path(info.path).read_bytes()), 224))
        assert gray.std() > 20


def test_broken_files_fail_at_the_right_stage(archive):
    _, files = archive
    broken = {f.broken: f for f in files if f.broken}
    assert set(broken) == {"truncated", "not-dicom"}
    with pytest.raises(DicomReadError):
        read_dataset(Path(broken["not-dicom"].path).read_bytes())
    ds = read_dataset(Path(broken["truncated"].path).read_bytes())
    with pytest.raises(PixelDecodeError, match="truncated"):
        decode_pixels(ds, 224)


def test_same_seed_same_bytes_other_seed_other_bytes(archive, tmp_path):
    out, _ = archive
    again = tmp_path / "again"
    synthetic.generate(again, count=5, size=(320, 256), syntaxes=list(EXPECTED_SYNTAX),
                       broken=2, seed=11)
    assert digest(again) == digest(out)
    other = tmp_path / "other"
    synthetic.generate(other, count=2, size=(320, 256), syntaxes=["native"], seed=12)
    assert not set(digest(other).values()) & set(digest(out).values())


def test_mimic_size_image_is_16_bit_and_not_constant():
    image = synthetic.chest_image(3056, 2544, 12, np.random.default_rng(0))
    assert image.shape == (3056, 2544) and image.dtype == np.uint16
    assert image.max() < 4096 and image.std() > 300
    lungs, spine = image[1200, 600], image[1200, 1272]
    assert spine > lungs  # bright mediastinum, dark lung field


def test_unknown_syntax_and_bad_size_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown syntax"):
        synthetic.generate(tmp_path, count=1, syntaxes=["jpeg2001"])
    with pytest.raises(ValueError, match="3056x2544"):
        synthetic.parse_size("big")


def test_cli_synth_writes_the_sample(tmp_path, capsys):
    from dicomvec.cli import main
    code = main(["synth", "--out", str(tmp_path), "--count", "3", "--size", "64x48",
                 "--syntaxes", "native,rle", "--broken", "2", "--seed", "1"])
    assert code == 0
    assert len(list((tmp_path / "files").rglob("*.dcm"))) == 5
    assert "wrote 5 files" in capsys.readouterr().out
