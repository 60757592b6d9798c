"""Stored values (``DecodedPixels``) + header tags → display-ready 2-D uint8.

``standard`` follows PS3.3 C.7.6.3.1.2 in order: modality LUT (rescale or Modality LUT
Sequence) → the first VOI LUT (VOI LUT Sequence preferred over WindowCenter/Width, VOI LUT
Function honoured) → MONOCHROME1 inversion after VOI (MONOCHROME1 and/or Presentation LUT Shape
INVERSE is *one* inversion) → robust percentile fallback (0.5–99.5 %, Pixel Padding Value
ignored) when there is no usable window or the window leaves a (near-)constant image.

Integer stored values are mapped through one 8-bit look-up table built over the value range
actually present (at most 2**16 entries), so the per-pixel work is a single table look-up.
``mimic-jpg`` reproduces the MIMIC-CXR-JPG recipe: raw values min-max to 0–255, MONOCHROME1
inverted, histogram equalisation.

Only header tags of ``ds`` are read: its PixelData may already have been deleted.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi

from dicomvec.defaults import NORMALIZATION
from dicomvec.imaging.decoding import DecodedPixels
from dicomvec.imaging.errors import NormalizationError

METHODS = ("standard", "mimic-jpg")

#: percentiles of the robust fallback window
LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5
#: a VOI result whose 0.5–99.5 % span is narrower than this many gray levels is "near-constant"
MIN_SPAN = 16
#: largest value range handled with a look-up table
_MAX_LUT = 1 << 17


def needs_inversion(ds: pydicom.Dataset) -> bool:
    """True when low values must display bright: MONOCHROME1, or Presentation LUT Shape INVERSE.

    The two name the same inversion (DX requires INVERSE with MONOCHROME1): invert once.
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def _multi_first(value) -> Optional[float]:
    if value is None or value == "":
        return None
    try:
        return float(value[0] if isinstance(value, (list, tuple, pydicom.multival.MultiValue))
                     else value)
    except (TypeError, ValueError, IndexError):
        return None


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR"
           ) -> np.ndarray:
    """PS3.3 C.11.2.1.2 windowing of modality values onto [0, 255] (float64)."""
    x = values.astype(np.float64, copy=False)
    function = (function or "LINEAR").strip().upper()
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        lo, span = center - width / 2.0, width
    else:  # LINEAR (default; unknown functions fall back to it)
        lo, span = center - 0.5 - (width - 1.0) / 2.0, width - 1.0
    if span <= 0:
        return np.where(x > lo, 255.0, 0.0)
    return np.clip((x - lo) / span * 255.0, 0.0, 255.0)


def _voi(modality: np.ndarray, ds: pydicom.Dataset) -> Optional[np.ndarray]:
    """First VOI transform of ``modality`` values onto [0, 255] (float), or None if none usable."""
    sequence = ds.get("VOILUTSequence")
    if sequence:
        item = sequence[0]
        try:
            depth = int(item.LUTDescriptor[2])
            out = apply_voi(np.rint(modality).astype(np.int64), ds, index=0).astype(np.float64)
            top = max(float(2 ** depth - 1), float(out.max()) if out.size else 1.0)
            return out * (255.0 / top)
        except Exception:
            pass  # malformed LUT: try the window, then the fallback
    center = _multi_first(ds.get("WindowCenter"))
    width = _multi_first(ds.get("WindowWidth"))
    if center is None or width is None or not np.isfinite([center, width]).all() or width <= 0:
        return None
    function = ds.get("VOILUTFunction", "LINEAR")
    return window(modality, center, width, str(function))


def _padding_mask_values(ds: pydicom.Dataset) -> Optional[Tuple[float, float]]:
    """Stored-value range [lo, hi] that is padding, from Pixel Padding Value (+ Range Limit)."""
    pad = ds.get("PixelPaddingValue")
    if pad is None or isinstance(pad, (bytes, bytearray)):
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None or isinstance(limit, (bytes, bytearray)):
        limit = pad
    return float(min(pad, limit)), float(max(pad, limit))


def _weighted_percentiles(values: np.ndarray, counts: np.ndarray) -> Tuple[float, float]:
    """(LOW, HIGH) percentiles of ``values`` repeated ``counts`` times (inverted-CDF method)."""
    order = np.argsort(values, kind="stable")
    v, c = values[order], np.cumsum(counts[order])
    total = c[-1]
    lo = v[min(np.searchsorted(c, total * LOW_PERCENTILE / 100.0, side="left"), len(v) - 1)]
    hi = v[min(np.searchsorted(c, total * HIGH_PERCENTILE / 100.0, side="left"), len(v) - 1)]
    return float(lo), float(hi)


def _span(out: np.ndarray, counts: np.ndarray) -> float:
    lo, hi = _weighted_percentiles(out, counts)
    return hi - lo


def _standard_lut(ds: pydicom.Dataset, domain: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """8-bit LUT over ``domain`` (distinct stored values with pixel ``counts``)."""
    modality = np.asarray(apply_modality_lut(domain, ds), dtype=np.float64)
    out = _voi(modality, ds)
    if out is None or not np.isfinite(out).all() or _span(out, counts) < MIN_SPAN:
        weights = counts.copy()
        padding = _padding_mask_values(ds)
        if padding is not None:
            weights[(domain >= padding[0]) & (domain <= padding[1])] = 0
        if weights.sum() == 0:
            weights = counts
        lo, hi = _weighted_percentiles(modality, weights)
        if hi <= lo:
            raise NormalizationError(
                "image is constant: no window and no contrast to normalise "
                f"(all values {lo:g})")
        out = np.clip((modality - lo) * (255.0 / (hi - lo)), 0.0, 255.0)
    lut = np.rint(out).astype(np.uint8)
    if needs_inversion(ds):
        lut = 255 - lut
    return lut


def _histogram_domain(arr: np.ndarray) -> Tuple[int, np.ndarray, np.ndarray]:
    lo, hi = int(arr.min()), int(arr.max())
    counts = np.bincount((arr.astype(np.int64) - lo).ravel(), minlength=hi - lo + 1)
    return lo, np.arange(lo, hi + 1, dtype=np.int64), counts


def _equalize(gray: np.ndarray) -> np.ndarray:
    """Histogram equalisation of uint8 (as OpenCV ``equalizeHist``)."""
    hist = np.bincount(gray.ravel(), minlength=256)
    cdf = np.cumsum(hist)
    nonzero = cdf[hist > 0]
    cdf_min = nonzero[0] if nonzero.size else 0
    total = cdf[-1]
    if total == cdf_min:
        return gray
    lut = np.clip(np.rint((cdf - cdf_min) * 255.0 / (total - cdf_min)), 0, 255).astype(np.uint8)
    return lut[gray]


def mimic_jpg(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """MIMIC-CXR-JPG recipe on stored values: min-max → 0–255, invert MONOCHROME1, equalise."""
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        raise NormalizationError(f"image is constant (all values {lo:g})")
    if arr.dtype.kind in "ui" and hi - lo < _MAX_LUT:
        domain = np.arange(int(lo), int(hi) + 1, dtype=np.float64)
        lut = np.rint((domain - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        gray = lut[arr.astype(np.int64, copy=False) - int(lo)] if lo else lut[arr]
    else:
        gray = np.rint((arr.astype(np.float32) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    if needs_inversion(ds):
        gray = 255 - gray
    return _equalize(gray)


def normalize_pixels(ds: pydicom.Dataset, decoded: DecodedPixels, method: str = NORMALIZATION
                     ) -> np.ndarray:
    """Decoded stored values → 2-D uint8 display image (same shape as ``decoded.array``).

    Raises ``NormalizationError`` for a constant image or an unknown method.
    """
    arr = decoded.array
    if arr.ndim != 2 or arr.size == 0:
        raise NormalizationError(f"expected a 2-D image, got shape {arr.shape}")
    if method == "mimic-jpg":
        return mimic_jpg(arr, ds)
    if method != "standard":
        raise NormalizationError(f"unknown normalisation {method!r}; choose from {METHODS}")
    if arr.dtype.kind in "ui" and int(arr.max()) - int(arr.min()) < _MAX_LUT:
        lo, domain, counts = _histogram_domain(arr)
        lut = _standard_lut(ds, domain, counts)
        index = arr if lo == 0 else arr.astype(np.int64) - lo
        return lut[index]
    # float or very wide integer data: same transform pixel by pixel on the (small) array
    values = arr.astype(np.float64).ravel()
    lut = _standard_lut(ds, values, np.ones(values.shape, dtype=np.int64))
    return lut.reshape(arr.shape)
