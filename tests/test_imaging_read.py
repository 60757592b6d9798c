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


# ------------------------------------------------------------ seekable streams: the one-copy route


def big_native(tmp_path, implicit_no_meta=False, trailing=False, syntax="native"):
    from dicomvec.synthetic import write_image
    ds = synthetic_dataset(size=(400, 300), bits_stored=16, seed=6)  # 240 KB > HEAD_BYTES
    path = tmp_path / "big.dcm"
    if trailing:
        ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 16)  # Data Set Trailing Padding after Pixel Data
    if implicit_no_meta:
        bare = pydicom.Dataset()
        bare.update(ds)
        path.write_bytes(to_bytes(bare, implicit_vr=True, little_endian=True))
    else:
        write_image(ds, path, syntax)
    return path


@pytest.mark.parametrize("kind", ["explicit", "implicit-no-meta", "trailing", "j2k", "rle"])
def test_file_stream_reads_the_same_dataset_as_bytes(tmp_path, kind):
    from dicomvec.imaging.reading import HEAD_BYTES
    path = big_native(tmp_path, implicit_no_meta=kind == "implicit-no-meta",
                      trailing=kind == "trailing",
                      syntax=kind if kind in ("j2k", "rle") else "native")
    assert path.stat().st_size > HEAD_BYTES or kind in ("j2k", "rle")
    expected = read_dataset(path.read_bytes())
    with path.open("rb") as fh:
        got = read_dataset(fh)
    assert bytes(got.PixelData) == bytes(expected.PixelData)
    assert got.file_meta.TransferSyntaxUID == expected.file_meta.TransferSyntaxUID
    assert sorted(got.keys()) == sorted(expected.keys())  # trailing elements kept too
    np.testing.assert_array_equal(decode_pixels(got, 64).array,
                                  decode_pixels(expected, 64).array)
    with path.open("rb") as fh:
        header = read_dataset(fh, stop_before_pixels=True)
    assert "PixelData" not in header and header.SOPInstanceUID == expected.SOPInstanceUID


def test_file_cut_inside_pixel_data_gives_a_clear_error(tmp_path):
    from dicomvec.imaging import PixelDecodeError
    path = big_native(tmp_path)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[:150_000])
    with cut.open("rb") as fh:
        try:
            ds = read_dataset(fh)
        except DicomReadError:
            return  # a clear read error is fine
    with pytest.raises(PixelDecodeError):
        decode_pixels(ds, 224)


def test_plain_native_file_takes_the_one_copy_route_and_trailing_data_the_full_parse(
        tmp_path, monkeypatch):
    from dicomvec.imaging import reading
    calls = []
    real_parse = reading._parse
    monkeypatch.setattr(reading, "_parse", lambda *a: calls.append(1) or real_parse(*a))
    with big_native(tmp_path).open("rb") as fh:
        assert len(read_dataset(fh).PixelData) == 400 * 300 * 2
    assert calls == []  # header probe + one read of the pixel data, no full parse
    with big_native(tmp_path, trailing=True).open("rb") as fh:
        assert 0xFFFCFFFC in read_dataset(fh)
    assert calls == [1]
