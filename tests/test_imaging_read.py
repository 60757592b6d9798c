"""read_dataset: bytes / streams → Dataset; ACR-NEMA style files; clear errors for non-DICOM."""
from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomvec.imaging import DicomReadError, decode_pixels, read_dataset
from dicomvec.synthetic import synthetic_dataset


def to_bytes(ds: pydicom.Dataset, **kwargs) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, **kwargs)
    return buffer.getvalue()


class OneWayStream(io.RawIOBase):
    """A readable, non-seekable stream (like some Beam filesystem streams)."""

    def __init__(self, data: bytes):
        self._inner = io.BytesIO(data)

    def readable(self):
        return True

    def seekable(self):
        return False

    def readinto(self, buffer):
        chunk = self._inner.read(min(len(buffer), 4096))
        buffer[:len(chunk)] = chunk
        return len(chunk)


def test_bytes_and_non_seekable_stream_read_the_same_dataset():
    data = to_bytes(synthetic_dataset(), enforce_file_format=True)
    from_bytes = read_dataset(data)
    from_stream = read_dataset(OneWayStream(data))
    assert from_bytes.SOPInstanceUID == from_stream.SOPInstanceUID
    assert from_bytes.PixelData == from_stream.PixelData
    assert from_bytes.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_stop_before_pixels_reads_the_header_only():
    ds = read_dataset(to_bytes(synthetic_dataset(), enforce_file_format=True),
                      stop_before_pixels=True)
    assert "PixelData" not in ds
    assert ds.Rows == 256 and ds.PatientName == "SYNTHETIC^PATIENT"


@pytest.mark.parametrize("implicit, expected", [(True, ImplicitVRLittleEndian),
                                                (False, ExplicitVRLittleEndian)])
def test_file_without_preamble_or_file_meta_is_read_with_inferred_syntax(implicit, expected):
    source = synthetic_dataset(bits_stored=12)
    original = source.pixel_array.copy()
    bare = pydicom.Dataset()
    bare.update(source)  # data elements only: no file meta
    data = to_bytes(bare, implicit_vr=implicit, little_endian=True)
    assert data[128:132] != b"DICM" and b"\x02\x00\x10\x00" not in data[:256]
    ds = read_dataset(data)
    assert ds.file_meta.TransferSyntaxUID == expected
    assert ds.Rows == 256 and ds.PhotometricInterpretation == "MONOCHROME2"
    decoded = decode_pixels(ds, target_size=1024)  # no reduction: compare every value
    np.testing.assert_array_equal(decoded.array, original)


@pytest.mark.parametrize("data", [
    b"",
    b"this is not a DICOM file at all\n" * 50,
    bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8)),
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 400,
], ids=["empty", "text", "random", "png"])
def test_non_dicom_input_raises_a_clear_error(data):
    with pytest.raises(DicomReadError, match="DICOM"):
        read_dataset(data)


def test_every_real_file_reads(real_cxr_dir):
    for path in sorted(real_cxr_dir.glob("*.dcm")):
        ds = read_dataset(path.read_bytes())
        assert ds.Rows > 0 and "TransferSyntaxUID" in ds.file_meta, path.name
        with path.open("rb") as fh:
            assert read_dataset(fh, stop_before_pixels=True).Rows == ds.Rows
