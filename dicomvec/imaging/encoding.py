"""Display-ready uint8 → model input: fit inside size×size, pad to square, encode once.

``fit_and_encode`` resizes (Lanczos; area-like when shrinking) so the longer side equals
``size``, pads the shorter side symmetrically with 0 (black), optionally replicates the gray
channel to RGB, and encodes PNG (default; fast zlib level, retried at level 9 only if the result
would be too big) or JPEG at that final size. The encoded bytes must stay under the NV-CLIP
hosted inline limit: base64 length < ``MAX_BASE64_CHARS``.
"""
from __future__ import annotations

import base64
import dataclasses
import io

import numpy as np
from PIL import Image

from dicomvec.defaults import IMAGE_FORMAT, IMAGE_SIZE, MAX_BASE64_CHARS  # noqa: F401

#: zlib level for PNG: 1 is ~4x faster than the default 6 and ~30 % larger, far under the limit
PNG_FAST_LEVEL = 1
JPEG_QUALITY = 95

#: an input format a provider may ask for instead of PNG/JPEG: the fitted uint8 gray pixels
#: as they are (row-major bytes), labelled ``image/x-dicomvec-gray8;w=W;h=H``
RAW_GRAY = "raw-gray"
RAW_GRAY_MIME = "image/x-dicomvec-gray8"

_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"),
            "jpg": ("JPEG", "image/jpeg")}


@dataclasses.dataclass(frozen=True)
class EncodedPixels:
    """``pixels``: the (size, size) uint8 gray image that was encoded; ``data``: encoded bytes."""

    pixels: np.ndarray
    data: bytes
    mime: str


def base64_length(n_bytes: int) -> int:
    """Length of the base64 text of ``n_bytes`` bytes (with padding)."""
    return 4 * ((n_bytes + 2) // 3)


def fit_to_square(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize 2-D uint8 ``gray`` to fit inside size×size (aspect kept) and pad to a square."""
    if gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"expected a non-empty 2-D gray image, got shape {gray.shape}")
    if size < 1:
        raise ValueError(f"image size must be positive, got {size}")
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    h, w = gray.shape
    scale = size / max(h, w)
    new_w, new_h = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    if (new_w, new_h) != (w, h):
        gray = np.asarray(Image.fromarray(gray).resize((new_w, new_h),
                                                       Image.Resampling.LANCZOS))
    if (new_h, new_w) == (size, size):
        return gray
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top:top + new_h, left:left + new_w] = gray
    return out


def _encode(image: Image.Image, pil_format: str, png_level: int) -> bytes:
    buffer = io.BytesIO()
    if pil_format == "PNG":
        image.save(buffer, format="PNG", compress_level=png_level)
    else:
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def fit_and_encode(gray: np.ndarray, size: int = IMAGE_SIZE, image_format: str = IMAGE_FORMAT,
                   rgb: bool = True) -> EncodedPixels:
    """2-D uint8 → ``EncodedPixels`` at size×size. Raises ValueError if the base64 would reach
    ``MAX_BASE64_CHARS`` or the format is unknown."""
    if image_format == RAW_GRAY:
        pixels = fit_to_square(gray, size)
        return EncodedPixels(pixels=pixels, data=pixels.tobytes(), mime=raw_gray_mime(pixels))
    try:
        pil_format, mime = _FORMATS[image_format.lower()]
    except KeyError:
        raise ValueError(f"unknown image format {image_format!r}; use png or jpeg") from None
    pixels = fit_to_square(gray, size)
    image = Image.fromarray(pixels)
    if rgb:
        image = image.convert("RGB")
    data = _encode(image, pil_format, PNG_FAST_LEVEL)
    if pil_format == "PNG" and base64_length(len(data)) >= MAX_BASE64_CHARS:
        data = _encode(image, pil_format, 9)  # rare busy image: spend time to fit the limit
    encoded_len = base64_length(len(data))
    if encoded_len >= MAX_BASE64_CHARS:
        raise ValueError(
            f"encoded {image_format} image is {encoded_len} base64 characters, over the "
            f"{MAX_BASE64_CHARS} inline limit; use a smaller --image-size or jpeg")
    return EncodedPixels(pixels=pixels, data=data, mime=mime)


def raw_gray_mime(pixels: np.ndarray) -> str:
    h, w = pixels.shape
    return f"{RAW_GRAY_MIME};w={w};h={h}"


def is_raw_gray(mime: str) -> bool:
    return (mime or "").split(";", 1)[0].strip() == RAW_GRAY_MIME


def decode_raw_gray(data: bytes, mime: str) -> np.ndarray:
    """``image/x-dicomvec-gray8;w=W;h=H`` bytes → (H, W) uint8. Raises ValueError when the
    label lacks a size or the byte count does not match it."""
    params = dict(part.strip().split("=", 1) for part in mime.split(";")[1:] if "=" in part)
    try:
        w, h = int(params["w"]), int(params["h"])
    except (KeyError, ValueError):
        raise ValueError(f"raw gray image without a valid size in {mime!r}") from None
    if w < 1 or h < 1 or len(data or b"") != w * h:
        raise ValueError(f"raw gray image of {len(data or b'')} bytes does not match {w}×{h}")
    return np.frombuffer(data, dtype=np.uint8).reshape(h, w)


def data_url(data: bytes, mime: str) -> str:
    """``data:<mime>;base64,<payload>`` for inline model input."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
