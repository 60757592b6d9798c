"""normalize_pixels: modality LUT → VOI → MONOCHROME1 inversion → robust fallback; mimic-jpg."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_windowing

from dicomvec.imaging import (NormalizationError, decode_pixels, normalize_pixels,
                              read_dataset)
from dicomvec.imaging.decoding import DecodedPixels
from dicomvec.imaging.normalizing import window
from dicomvec.synthetic import synthetic_dataset


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def decoded_of(arr: np.ndarray) -> DecodedPixels:
    return DecodedPixels(arr, 1, "test")


def header(bits_stored=12, **tags) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def ramp(lo=0, hi=4095, shape=(64, 64)) -> np.ndarray:
    return np.linspace(lo, hi, shape[0] * shape[1]).reshape(shape).astype(np.uint16)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_matches_pydicom_windowing(function):
    values = np.arange(0, 4096, dtype=np.float64)
    ds = header(WindowCenter=1500, WindowWidth=800, VOILUTFunction=function)
    expected = apply_windowing(values.copy(), ds) / 4095.0 * 255.0
    np.testing.assert_allclose(window(values, 1500, 800, function), expected, atol=1e-6)


def test_window_is_applied_to_modality_values():
    arr = ramp(0, 4095)
    ds = header(RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=2000)
    out = normalize_pixels(ds, decoded_of(arr))
    modality = arr.astype(np.float64) * 2 - 1000
    expected = np.rint(window(modality, 1000, 2000)).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_voi_lut_sequence_is_preferred_over_the_window():
    arr = ramp(0, 255, (16, 16))
    item = pydicom.Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = list(range(255, -1, -1))  # a reversing LUT: only a LUT can do this
    ds = header(bits_stored=8, WindowCenter=128, WindowWidth=256, VOILUTSequence=[item])
    out = normalize_pixels(ds, decoded_of(arr.astype(np.uint8)))
    np.testing.assert_array_equal(out, 255 - arr.astype(np.uint8))


def test_monochrome1_is_inverted_once_even_with_inverse_presentation_shape():
    arr = ramp()
    mono2 = normalize_pixels(header(WindowCenter=2048, WindowWidth=4096), decoded_of(arr))
    for tags in ({"PhotometricInterpretation": "MONOCHROME1"},
                 {"PhotometricInterpretation": "MONOCHROME1", "PresentationLUTShape": "INVERSE"}):
        out = normalize_pixels(header(WindowCenter=2048, WindowWidth=4096, **tags),
                               decoded_of(arr))
        np.testing.assert_array_equal(out, 255 - mono2)


def test_constant_window_result_falls_back_to_robust_percentiles():
    arr = ramp(30000, 40000)
    ds = header(bits_stored=16, WindowCenter=500, WindowWidth=200)  # window far below the data
    assert np.ptp(window(arr.astype(float), 500, 200)) == 0  # the window alone is constant
    out = normalize_pixels(ds, decoded_of(arr))
    assert out.min() == 0 and out.max() == 255 and out.std() > 60


def test_percentile_fallback_ignores_pixel_padding():
    rng = np.random.default_rng(0)
    body = rng.integers(1000, 3000, size=(64, 64)).astype(np.uint16)
    arr = np.zeros((64, 128), np.uint16)  # half the image is padding at 0
    arr[:, 64:] = body
    padded = normalize_pixels(header(PixelPaddingValue=0), decoded_of(arr))
    plain = normalize_pixels(header(), decoded_of(arr))
    # with padding ignored, the body alone spans the full 8-bit range
    assert np.percentile(padded[:, 64:], 1) < 10 and np.percentile(padded[:, 64:], 99) > 245
    assert np.percentile(plain[:, 64:], 1) > 50  # padding dragged the low percentile to 0


def test_constant_image_raises():
    with pytest.raises(NormalizationError, match="constant"):
        normalize_pixels(header(), decoded_of(np.full((32, 32), 700, np.uint16)))


def test_unknown_method_raises():
    with pytest.raises(NormalizationError, match="unknown"):
        normalize_pixels(header(), decoded_of(ramp()), "nope")


def test_header_without_pixel_data_is_enough():
    ds = synthetic_dataset(size=(200, 160), bits_stored=12, photometric="MONOCHROME1")
    decoded = decode_pixels(ds, 100)
    expected = normalize_pixels(ds, decoded)
    del ds.PixelData
    np.testing.assert_array_equal(normalize_pixels(ds, decoded), expected)


def test_mimic_jpg_recipe_equalises_and_inverts_monochrome1():
    ds2 = synthetic_dataset(size=(300, 250), bits_stored=16, photometric="MONOCHROME2", seed=4)
    ds1 = synthetic_dataset(size=(300, 250), bits_stored=16, photometric="MONOCHROME1", seed=4)
    out2 = normalize_pixels(ds2, decode_pixels(ds2, 300), "mimic-jpg")
    out1 = normalize_pixels(ds1, decode_pixels(ds1, 300), "mimic-jpg")
    # equalised: the cumulative histogram is close to a straight line
    cdf = np.cumsum(np.bincount(out2.ravel(), minlength=256)) / out2.size
    assert np.abs(cdf - np.linspace(0, 1, 256)).max() < 0.1
    assert corr(out1, out2) > 0.95  # MONOCHROME1 stored inverted, shown the same way
    assert corr(out2, decode_pixels(ds2, 300).array) > 0.8


def test_synthetic_monochrome1_displays_like_its_monochrome2_twin():
    ds2 = synthetic_dataset(size=(300, 250), bits_stored=12, photometric="MONOCHROME2", seed=9)
    ds1 = synthetic_dataset(size=(300, 250), bits_stored=12, photometric="MONOCHROME1", seed=9)
    out2 = normalize_pixels(ds2, decode_pixels(ds2, 224))
    out1 = normalize_pixels(ds1, decode_pixels(ds1, 224))
    assert corr(out1, out2) > 0.99
    assert corr(out1, decode_pixels(ds1, 224).array) < -0.9


# ----------------------------------------------------------------------------- real files


def real(real_cxr_dir, name):
    ds = read_dataset((real_cxr_dir / name).read_bytes())
    decoded = decode_pixels(ds, 224)
    return ds, decoded, normalize_pixels(ds, decoded)


@pytest.mark.parametrize("name", ["cxr_mono1_implicit_440.dcm",
                                  "cxr_mono1_j2k_lossy_1955x1841.dcm"])
def test_real_monochrome1_comes_out_inverted(real_cxr_dir, name):
    ds, decoded, out = real(real_cxr_dir, name)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    # high stored values are dark on a MONOCHROME1 display: strong negative correlation
    assert corr(out, decoded.array) < -0.8


def test_real_inverse_presentation_file_is_inverted_exactly_once(real_cxr_dir):
    ds, decoded, out = real(real_cxr_dir, "dx_mono1_inverse_explicit_small.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.PresentationLUTShape == "INVERSE"
    assert corr(out, decoded.array) < -0.8  # zero or two inversions would make this positive
    plain = ds.copy()
    plain.PhotometricInterpretation = "MONOCHROME2"
    plain.PresentationLUTShape = "IDENTITY"
    np.testing.assert_array_equal(out, 255 - normalize_pixels(plain, decoded))


def test_real_window_outside_data_is_not_constant(real_cxr_dir):
    ds, decoded, out = real(real_cxr_dir, "dx_mono2_j2k_lossless_16bit_window_outside_data.dcm")
    windowed = window(decoded.array.astype(float), float(ds.WindowCenter), float(ds.WindowWidth))
    assert np.ptp(windowed) == 0  # the stored window really gives a constant image
    assert out.std() > 30 and out.min() < 20 and out.max() > 235
    assert corr(out, decoded.array) > 0.8  # MONOCHROME2: not inverted


def test_real_jpeg_baseline_and_implicit_vr_normalise(real_cxr_dir):
    for name in ("cr_mono2_jpeg_baseline_1024.dcm", "cxr_mono1_implicit_440.dcm"):
        ds, decoded, out = real(real_cxr_dir, name)
        assert out.dtype == np.uint8 and out.ndim == 2 and out.std() > 20, name
    ds, decoded, out = real(real_cxr_dir, "cr_mono2_jpeg_baseline_1024.dcm")
    assert corr(out, decoded.array) > 0.9


def test_first_of_several_windows_is_used():
    arr = ramp(0, 4095)
    ds = header(WindowCenter=[1000, 3000], WindowWidth=[500, 800])
    out = normalize_pixels(ds, decoded_of(arr))
    assert out[arr <= 750].max() == 0 and out[arr >= 1250].min() == 255
    expected = np.rint(window(arr.astype(float), 1000, 500)).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
