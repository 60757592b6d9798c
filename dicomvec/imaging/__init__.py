"""Image side of dicomvec: pure functions, no Beam.

bytes/stream --read_dataset--> Dataset --decode_pixels--> DecodedPixels (small stored-value
array) --normalize_pixels--> 2-D uint8 --fit_and_encode--> EncodedPixels (PNG/JPEG bytes at the
model size) --data_url--> inline model input.
"""
from dicomvec.defaults import IMAGE_FORMAT, IMAGE_SIZE, NORMALIZATION
from dicomvec.imaging.decoding import DecodedPixels, decode_pixels
from dicomvec.imaging.encoding import (MAX_BASE64_CHARS, EncodedPixels, data_url,
                                       fit_and_encode)
from dicomvec.imaging.errors import DicomReadError, NormalizationError, PixelDecodeError
from dicomvec.imaging.normalizing import METHODS, normalize_pixels
from dicomvec.imaging.reading import read_dataset

__all__ = [
    "DicomReadError", "PixelDecodeError", "NormalizationError",
    "read_dataset", "decode_pixels", "DecodedPixels", "normalize_pixels", "METHODS",
    "fit_and_encode", "EncodedPixels", "data_url", "MAX_BASE64_CHARS", "preprocess",
]


def preprocess(source, size: int = IMAGE_SIZE, method: str = NORMALIZATION,
               image_format: str = IMAGE_FORMAT, rgb: bool = True) -> EncodedPixels:
    """Convenience: one DICOM (bytes or stream) → ``EncodedPixels`` via the fast path."""
    ds = read_dataset(source)
    decoded = decode_pixels(ds, size)
    gray = normalize_pixels(ds, decoded, method)
    return fit_and_encode(gray, size, image_format, rgb)
