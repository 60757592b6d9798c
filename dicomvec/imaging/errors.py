"""Exceptions raised by the imaging functions; each carries a plain, one-line reason."""


class DicomReadError(ValueError):
    """The bytes are not a readable DICOM dataset (stage ``read``)."""


class PixelDecodeError(ValueError):
    """The dataset's pixel data cannot be decoded (stage ``decode``)."""


class NormalizationError(ValueError):
    """The decoded pixels cannot become a meaningful 8-bit image, e.g. a constant image."""
