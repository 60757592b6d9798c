"""Slow full-resolution paths, for equivalence tests and benchmarks only.

* ``reference_gray``: what the fast path approximates: pydicom's full ``pixel_array`` →
  ``apply_modality_lut`` → ``apply_voi_lut(prefer_lut=True)`` → MONOCHROME1 inversion →
  ``np.percentile`` fallback, all at full resolution in float64, then 8 bit.
* ``naive_preprocess``: the earlier public implementation's recipe, the benchmark baseline:
  full-resolution float64 min-max → uint8 → RGB → Lanczos resize → PNG (+ base64).
"""
from __future__ import annotations

import base64
import io

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from dicomvec.imaging.encoding import EncodedPixels, fit_and_encode
from dicomvec.imaging.errors import NormalizationError
from dicomvec.imaging.normalizing import (HIGH_PERCENTILE, LOW_PERCENTILE, MIN_SPAN,
                                          needs_inversion)


def _full_array(ds: pydicom.Dataset) -> np.ndarray:
    arr = ds.pixel_array
    if arr.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 1:
        arr = arr[0]  # multi-frame: first frame
    return arr


def _voi_output_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """The [min, max] pydicom's ``apply_voi_lut`` maps onto (LUT depth or the windowing range)."""
    sequence = ds.get("VOILUTSequence")
    if sequence:
        return 0.0, float(2 ** int(sequence[0].LUTDescriptor[2]) - 1)
    if ds.get("ModalityLUTSequence"):
        y_min, y_max = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        y_min, y_max = 0.0, float(2 ** int(ds.BitsStored) - 1)
    else:
        y_min, y_max = float(-(2 ** (int(ds.BitsStored) - 1))), float(2 ** (int(ds.BitsStored) - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min, y_max = y_min * float(slope) + float(intercept), y_max * float(slope) + float(intercept)
    return y_min, y_max


def reference_gray(ds: pydicom.Dataset, method: str = "standard") -> np.ndarray:
    """Full-resolution display image (2-D uint8) by the plain pydicom route."""
    raw = _full_array(ds)
    if method == "mimic-jpg":
        from dicomvec.imaging.normalizing import _equalize
        values = raw.astype(np.float64)
        lo, hi = values.min(), values.max()
        if hi <= lo:
            raise NormalizationError("image is constant")
        gray = np.rint((values - lo) / (hi - lo) * 255.0).astype(np.uint8)
        if needs_inversion(ds):
            gray = 255 - gray
        return _equalize(gray)
    modality = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
    out = None
    has_window = ds.get("VOILUTSequence") or (ds.get("WindowCenter") is not None
                                              and ds.get("WindowWidth") is not None)
    if has_window:
        voi_input = np.rint(modality).astype(np.int64) if ds.get("VOILUTSequence") else modality
        windowed = np.asarray(apply_voi_lut(voi_input, ds, index=0, prefer_lut=True),
                              dtype=np.float64)
        y_min, y_max = _voi_output_range(ds)
        out = np.clip((windowed - y_min) / (y_max - y_min) * 255.0, 0.0, 255.0)
        lo, hi = np.percentile(np.rint(out), [LOW_PERCENTILE, HIGH_PERCENTILE])
        if hi - lo < MIN_SPAN:
            out = None
    if out is None:
        pad = ds.get("PixelPaddingValue")
        keep = raw != pad if pad is not None else np.ones(raw.shape, bool)
        values = modality[keep] if keep.any() else modality.ravel()
        lo, hi = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
        if hi <= lo:
            raise NormalizationError("image is constant")
        out = np.clip((modality - lo) / (hi - lo) * 255.0, 0.0, 255.0)
    gray = np.rint(out).astype(np.uint8)
    return 255 - gray if needs_inversion(ds) else gray


def reference_preprocess(ds: pydicom.Dataset, size: int = 224, method: str = "standard",
                         image_format: str = "png", rgb: bool = True) -> EncodedPixels:
    """Full-resolution reference path → ``EncodedPixels`` (same encoder as the fast path)."""
    return fit_and_encode(reference_gray(ds, method), size, image_format, rgb)


def naive_preprocess(source, size: int = 224) -> str:
    """Baseline: dcmread → float64 min-max at full size → RGB → Lanczos → PNG → base64 text."""
    ds = pydicom.dcmread(io.BytesIO(source) if isinstance(source, (bytes, bytearray))
                         else source, force=True)
    arr = ds.pixel_array.astype(np.float64)
    arr = (arr - arr.min()) / max(arr.max() - arr.min(), 1e-12) * 255.0
    image = Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
