"""The preprocessing steps on one ``ImageRecord``, Beam-free: the pipeline's stages
(``transforms.preprocess``: ``DecodePixels``, ``NormalizePixels``, ``ResizeAndEncode``) and a
search's query image (``search.queries.image_record``) both run exactly these.

- ``decode(record, dataset, size)``: a read pydicom Dataset → ``record.header`` (tags only) and
  ``record.decoded`` (raw stored values, reduced resolution when ``size`` is much smaller);
- ``normalize(record, method)``: → ``record.pixels`` (2-D uint8);
- ``resize_and_encode(record, size, image_format)``: fit inside size×size, pad, encode →
  ``record.encoded``/``mime``; the heavy fields are dropped.
"""
from __future__ import annotations

from dicomvec.imaging.decoding import decode_pixels
from dicomvec.imaging.encoding import fit_and_encode
from dicomvec.imaging.normalizing import normalize_pixels
from dicomvec.record import ImageRecord


def decode(record: ImageRecord, dataset, image_size: int) -> ImageRecord:
    decoded = decode_pixels(dataset, image_size)
    if "PixelData" in dataset:
        del dataset.PixelData  # keep the tags, free the compressed/native bytes
    return record.evolve(header=dataset, decoded=decoded)


def normalize(record: ImageRecord, method: str) -> ImageRecord:
    gray = normalize_pixels(record.header, record.decoded, method)
    return record.evolve(pixels=gray, decoded=None)


def resize_and_encode(record: ImageRecord, image_size: int, image_format: str) -> ImageRecord:
    encoded = fit_and_encode(record.pixels, image_size, image_format)
    return record.evolve(encoded=encoded.data, mime=encoded.mime, pixels=None, header=None)
