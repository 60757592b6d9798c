"""decode_pixels: native block mean, JPEG 2000 reduced decode with fallback, other syntaxes,
and clear errors for undecodable pixel data."""
from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000Lossless, RLELossless

from dicomvec.imaging import PixelDecodeError, decode_pixels, read_dataset
from dicomvec.imaging.decoding import block_mean, reduction_factor
from dicomvec.synthetic import synthetic_dataset, write_image


def roundtrip(ds: pydicom.Dataset, syntax: str, tmp_path) -> pydicom.Dataset:
    path = tmp_path / f"{syntax}.dcm"
    write_image(ds, path, syntax)
    return read_dataset(path.read_bytes())


def test_block_mean_is_the_rounded_area_average():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 65536, size=(70, 53), dtype=np.uint16)
    k = 4
    expected = arr[:68, :52].astype(np.float64).reshape(17, 4, 13, 4).mean(axis=(1, 3))
    got = block_mean(arr, k)
    assert got.dtype == np.uint16 and got.shape == (17, 13)
    assert np.abs(got.astype(np.float64) - expected).max() <= 0.5
    signed = (arr.astype(np.int32) - 32768).astype(np.int16)
    expected_signed = signed[:68, :52].astype(np.float64).reshape(17, 4, 13, 4).mean(axis=(1, 3))
    assert np.abs(block_mean(signed, k) - expected_signed).max() <= 0.5


@pytest.mark.parametrize("rows, columns, target", [(3056, 2544, 224), (2128, 2000, 224),
                                                   (449, 300, 224), (440, 440, 224),
                                                   (5000, 100, 512)])
def test_reduction_keeps_between_target_and_twice_target(rows, columns, target):
    k = reduction_factor(rows, columns, target)
    longest = max(rows, columns) // k
    assert longest <= 2 * target
    assert longest >= min(target, max(rows, columns))


def test_native_path_masks_unused_high_bits_like_pydicom():
    ds = synthetic_dataset(size=(300, 260), bits_stored=12)
    dirty = np.frombuffer(ds.PixelData, np.uint16).reshape(300, 260) | np.uint16(0xA000)
    ds.PixelData = dirty.tobytes()
    expected = ds.pixel_array  # pydicom masks bits above BitsStored
    assert expected.max() < 4096
    decoded = decode_pixels(ds, target_size=64)
    assert decoded.decoder.startswith("native") and decoded.reduction == 3
    np.testing.assert_array_equal(decoded.array, block_mean(expected, 3))


def test_native_mimic_size_is_reduced_to_at_most_twice_the_target():
    ds = synthetic_dataset(size=(3056, 2544), bits_stored=16)
    decoded = decode_pixels(ds, target_size=224)
    assert decoded.reduction == 7 and decoded.array.shape == (436, 363)
    assert decoded.array.dtype == np.uint16


@pytest.mark.parametrize("syntax", ["rle", "jpeg-lossless", "jpegls"])
def test_lossless_syntaxes_decode_to_the_native_values(syntax, tmp_path):
    native = synthetic_dataset(size=(400, 330), bits_stored=16, seed=5)
    expected = decode_pixels(native, target_size=100).array
    compressed = roundtrip(synthetic_dataset(size=(400, 330), bits_stored=16, seed=5), syntax,
                           tmp_path)
    assert compressed.file_meta.TransferSyntaxUID.is_compressed
    decoded = decode_pixels(compressed, target_size=100)
    np.testing.assert_array_equal(decoded.array, expected)
    if syntax == "rle":
        assert decoded.decoder.startswith("rle+")  # the direct pylibjpeg-rle path


def test_rle_with_dirty_high_bits_is_masked_like_pydicom(tmp_path):
    ds = synthetic_dataset(size=(200, 150), bits_stored=12)
    dirty = np.frombuffer(ds.PixelData, np.uint16).reshape(200, 150) | np.uint16(0x5000)
    ds.PixelData = dirty.tobytes()
    compressed = roundtrip(ds, "rle", tmp_path)
    decoded = decode_pixels(compressed, target_size=1000)
    assert decoded.decoder == "rle"
    np.testing.assert_array_equal(decoded.array, compressed.pixel_array)
    assert decoded.array.max() < 4096


@pytest.mark.parametrize("bits_stored", [12, 16])
def test_j2k_reduced_decode_matches_the_full_decode(bits_stored, tmp_path):
    ds = roundtrip(synthetic_dataset(size=(1024, 848), bits_stored=bits_stored, seed=2), "j2k",
                   tmp_path)
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    full = ds.pixel_array.astype(np.float64)
    decoded = decode_pixels(ds, target_size=128)
    assert decoded.decoder.startswith("pillow-j2k/8"), decoded.decoder
    assert decoded.reduction == 8 and decoded.array.shape == (128, 106)
    area = block_mean(full, 8)
    # the wavelet low-pass is not a box filter, but on stored values it stays within ~1 %
    assert np.abs(decoded.array - area).mean() < 0.01 * (2 ** bits_stored)
    assert decoded.array.max() < 2 ** bits_stored  # Pillow's N→16-bit scaling undone


def test_j2k_small_image_is_decoded_in_full_and_exactly(tmp_path):
    ds = roundtrip(synthetic_dataset(size=(300, 250), bits_stored=12), "j2k", tmp_path)
    decoded = decode_pixels(ds, target_size=224)
    np.testing.assert_array_equal(decoded.array, ds.pixel_array)


def test_truncated_native_pixel_data_raises_clearly():
    ds = synthetic_dataset(size=(200, 150))
    ds.PixelData = ds.PixelData[:1000]
    with pytest.raises(PixelDecodeError, match="truncated"):
        decode_pixels(ds, 224)


def test_missing_pixel_data_raises_clearly():
    ds = synthetic_dataset()
    del ds.PixelData
    with pytest.raises(PixelDecodeError, match="no .*Pixel Data"):
        decode_pixels(ds, 224)


def test_corrupt_rle_raises_one_line_error(tmp_path):
    ds = roundtrip(synthetic_dataset(size=(120, 100)), "rle", tmp_path)
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    frame = bytearray(ds.PixelData)
    frame[30:] = b"\x00" * (len(frame) - 30)
    ds.PixelData = bytes(frame)
    with pytest.raises(PixelDecodeError) as info:
        decode_pixels(ds, 224)
    assert "\n" not in str(info.value) and "RLE" in str(info.value)


@pytest.mark.slow  # several seconds: the fast suite stays under two minutes
def test_every_real_file_decodes_except_the_corrupt_one(real_cxr_dir):
    for path in sorted(real_cxr_dir.glob("*.dcm")):
        ds = read_dataset(path.read_bytes())
        if "CORRUPT" in path.name:
            with pytest.raises(PixelDecodeError) as info:
                decode_pixels(ds, 224)
            message = str(info.value)
            assert "JPEG 2000" in message and "\n" not in message
            continue
        decoded = decode_pixels(ds, 224)
        assert decoded.array.ndim == 2, path.name
        assert max(decoded.array.shape) <= 2 * 224 + 1 or \
            max(ds.Rows, ds.Columns) <= 2 * 224, path.name
        assert decoded.array.std() > 1, path.name


def test_real_lossy_j2k_with_odd_size_decodes_at_the_deepest_level(real_cxr_dir):
    ds = read_dataset((real_cxr_dir / "cxr_mono1_j2k_lossy_1955x1841.dcm").read_bytes())
    decoded = decode_pixels(ds, 224)
    # 1841 / 8 = 230.1: OpenJPEG gives 231 columns, Pillow's own im.reduce expects 230 and refuses
    assert decoded.decoder == "pillow-j2k/8" and decoded.array.shape == (245, 231)
    full = block_mean(ds.pixel_array, 8).astype(np.float64)
    assert np.abs(decoded.array[:244, :230] - full).mean() < 0.01 * 2 ** 15


@pytest.mark.parametrize("level, size", [(3, (1025, 851)), (2, (601, 450))])
def test_j2k_reduced_size_uses_openjpeg_rounding(level, size, tmp_path):
    from dicomvec.imaging.decoding import _pillow_j2k, j2k_header
    ds = roundtrip(synthetic_dataset(size=size, bits_stored=12, seed=3), "j2k", tmp_path)
    codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
    header = j2k_header(codestream)
    assert (header.width, header.height, header.precision) == (size[1], size[0], 12)
    arr = _pillow_j2k(codestream, level, header)
    p = 1 << level
    assert arr.shape == (-(-size[0] // p), -(-size[1] // p))
    area = block_mean(ds.pixel_array, p).astype(np.float64)
    h, w = area.shape
    assert np.abs(arr[:h, :w] - area).mean() < 0.01 * 4096


def test_failed_decode_does_not_spam_the_log_and_leaves_logging_alone(tmp_path, caplog):
    import logging
    ds = roundtrip(synthetic_dataset(size=(120, 100)), "rle", tmp_path)
    ds.PixelData = ds.PixelData[:64] + b"\x00" * (len(ds.PixelData) - 64)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(PixelDecodeError):
            decode_pixels(ds, 224)
        assert not [r for r in caplog.records if r.name.startswith("pydicom")]
        logging.getLogger("pydicom.pixels.decoders.base").warning("still logged afterwards")
    assert any("still logged" in r.getMessage() for r in caplog.records)


def test_real_jpeg_baseline_uses_the_dct_downscale(real_cxr_dir):
    ds = read_dataset((real_cxr_dir / "cr_mono2_jpeg_baseline_1024.dcm").read_bytes())
    decoded = decode_pixels(ds, 224)
    assert decoded.decoder == "pillow-jpeg/4" and decoded.array.shape == (256, 256)
    area = block_mean(ds.pixel_array, 4).astype(np.float64)
    assert np.abs(decoded.array - area).mean() < 2.0  # 8-bit gray levels
    full = decode_pixels(ds, 1024)  # no reduction wanted: the general full decode
    assert full.decoder == "pydicom" and full.array.shape == (1024, 1024)


@pytest.mark.parametrize("dtype, top, k", [(np.uint16, 4095, 7), (np.uint16, 65535, 7),
                                           (np.uint8, 255, 5), (np.uint16, 8191, 8)])
def test_block_mean_narrow_accumulators_do_not_overflow(dtype, top, k):
    arr = np.full((k * 9, k * 5), top, dtype=dtype)  # worst case: every value at the maximum
    arr[:k, :k] = 0
    got = block_mean(arr, k, top)
    assert got.dtype == dtype and got[0, 0] == 0
    assert np.all(got.ravel()[1:] == top)


def test_multi_frame_native_gives_the_first_frame():
    ds = synthetic_dataset(size=(120, 100), bits_stored=12)
    first = np.frombuffer(ds.PixelData, np.uint16).reshape(120, 100)
    second = (4095 - first).astype(np.uint16)
    ds.PixelData = first.tobytes() + second.tobytes()
    ds.NumberOfFrames = 2
    decoded = decode_pixels(ds, target_size=224)
    np.testing.assert_array_equal(decoded.array, first)


def test_openjpeg_prints_go_into_the_reason_not_to_stderr(real_cxr_dir, capfd):
    """OpenJPEG (a C library) writes "Stream too short, expected SOT" / "Failed to decode tile"
    to file descriptor 2: they belong in the dead letter's reason, not on the user's terminal."""
    from dicomvec.imaging import PixelDecodeError, decode_pixels, read_dataset
    with open(real_cxr_dir / "dx_mono1_j2k_lossless_CORRUPT.dcm", "rb") as fh:
        ds = read_dataset(fh)
    with pytest.raises(PixelDecodeError) as failed:
        decode_pixels(ds, 224)
    assert "Stream too short, expected SOT" in str(failed.value)
    assert "Failed to decode tile" in str(failed.value)
    out, err = capfd.readouterr()
    assert "Stream too short" not in err and "Failed to decode tile" not in err
