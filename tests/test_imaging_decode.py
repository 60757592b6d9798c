"""decode_pixels: native block mean, JPEG 2000 reduced decode with fallback, other syntaxes,
and clear errors for undecodable pixel data."""
from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
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


def test_real_lossy_j2k_steps_down_to_a_level_the_codestream_allows(real_cxr_dir):
    ds = read_dataset((real_cxr_dir / "cxr_mono1_j2k_lossy_1955x1841.dcm").read_bytes())
    decoded = decode_pixels(ds, 224)  # level 3 is refused by this codestream, level 2 works
    assert decoded.decoder.startswith("pillow-j2k/")
    full = block_mean(ds.pixel_array, decoded.reduction).astype(np.float64)
    h, w = min(full.shape[0], decoded.array.shape[0]), min(full.shape[1], decoded.array.shape[1])
    assert np.abs(decoded.array[:h, :w] - full[:h, :w]).mean() < 0.01 * 2 ** 15
