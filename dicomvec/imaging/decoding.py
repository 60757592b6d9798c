"""Pixel data of a Dataset → a small 2-D array of stored values (``DecodedPixels``).

Fast paths keep the work proportional to the *output* size wherever the codec allows it:

* native (uncompressed, little endian) pixel data: a zero-copy view of ``PixelData``, unused high
  bits masked only if any are set, then a block mean (area average) so that the result is at
  most about ``2 × target_size`` per side. Integer arithmetic only: no full-resolution float.
* JPEG 2000 (unsigned, one sample): Pillow/OpenJPEG reduced-resolution decode (discard the
  finest wavelet levels, ``im.reduce = k``); if a codestream refuses it, a full decode.
* everything else (RLE, JPEG, JPEG-LS, deflated, big endian...): pydicom's decoders on the first
  frame, then the same block mean.

The array holds stored values (block means rounded to the stored integer type), so the
normaliser can window it with an integer look-up table. Every failure is a ``PixelDecodeError``
with a one-line reason; decoder log noise is silenced.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
from typing import Optional, Tuple

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import UID, JPEG2000, JPEG2000Lossless

from dicomvec.imaging.errors import PixelDecodeError

#: JPEG 2000 syntaxes whose codestreams Pillow (OpenJPEG) can decode at reduced resolution
_J2K_SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000})


@dataclasses.dataclass(frozen=True)
class DecodedPixels:
    """First frame's stored values, possibly reduced.

    ``array``: 2-D integer array of stored values (or block means of them);
    ``reduction``: how many source pixels one output pixel spans per side (1 = full size);
    ``decoder``: which path produced it, e.g. ``native+mean7`` or ``pillow-j2k/8``.
    """

    array: np.ndarray
    reduction: int
    decoder: str


# --------------------------------------------------------------------------- helpers


def block_mean(arr: np.ndarray, k: int) -> np.ndarray:
    """Area-average ``arr`` (2-D integer) over k×k blocks; a ragged edge (< k pixels) is dropped.

    Sums in uint32/int64 one block row/column at a time (strided adds of reduced-size arrays),
    then rounds back to ``arr``'s dtype. ``k <= 1`` returns ``arr`` unchanged.
    """
    if k <= 1:
        return arr
    h, w = (arr.shape[0] // k) * k, (arr.shape[1] // k) * k
    if h == 0 or w == 0:
        return arr
    acc_dtype = np.uint32 if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2 else np.int64
    rows = arr[0:h:k, :w].astype(acc_dtype)
    for i in range(1, k):
        np.add(rows, arr[i:h:k, :w], out=rows, casting="unsafe")
    acc = rows[:, 0::k].copy()
    for j in range(1, k):
        np.add(acc, rows[:, j::k], out=acc)
    n = k * k
    if acc.dtype.kind == "u":
        acc += n // 2
        acc //= n
    else:
        acc = np.floor_divide(acc + n // 2, n)
    return acc.astype(arr.dtype, copy=False)


def reduction_factor(rows: int, columns: int, target_size: int) -> int:
    """Smallest integer k with max(rows, columns)/k <= 2 × target_size (>= 1)."""
    longest = max(rows, columns)
    if target_size <= 0 or longest <= 2 * target_size:
        return 1
    return max(1, math.ceil(longest / (2 * target_size)))


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:
        raise PixelDecodeError("dataset has no transfer syntax (file meta missing)")
    return UID(uid)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """All lines of an error message joined (pydicom lists one reason per plugin), shortened."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def _quiet_decoders():
    """Silence pydicom's per-plugin error logging while a decode is attempted."""
    logger = logging.getLogger("pydicom")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


# --------------------------------------------------------------------------- native


def _decode_native(ds: pydicom.Dataset, target_size: int) -> Optional[DecodedPixels]:
    """Zero-copy little-endian native path; None when the layout needs pydicom's general code."""
    bits_allocated = int(ds.BitsAllocated)
    bits_stored = int(ds.get("BitsStored", bits_allocated))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if int(ds.get("SamplesPerPixel", 1)) != 1 or bits_allocated not in (8, 16):
        return None
    if signed and bits_stored != bits_allocated:
        return None  # needs sign extension: pydicom does it
    rows, columns = int(ds.Rows), int(ds.Columns)
    dtype = np.dtype(("<i" if signed else "<u") + str(bits_allocated // 8))
    expected = rows * columns * dtype.itemsize
    data = ds.PixelData
    if len(data) < expected:
        raise PixelDecodeError(
            f"pixel data truncated: {len(data)} bytes, the first frame needs {expected} "
            f"({rows}x{columns}, {bits_allocated}-bit)")
    arr = np.frombuffer(data, dtype=dtype, count=rows * columns).reshape(rows, columns)
    if not signed and bits_stored < bits_allocated and int(arr.max()) >> bits_stored:
        arr = arr & np.array((1 << bits_stored) - 1, dtype=dtype)  # pydicom masks unused bits
    k = reduction_factor(rows, columns, target_size)
    return DecodedPixels(block_mean(arr, k), k, f"native+mean{k}" if k > 1 else "native")


# --------------------------------------------------------------------------- JPEG 2000


def j2k_header(codestream: bytes) -> Tuple[int, bool, int]:
    """(precision, signed, decomposition levels) from a J2K codestream's SIZ and COD markers."""
    if codestream[:4] != b"\xff\x4f\xff\x51":
        raise ValueError("not a JPEG 2000 codestream (no SOC/SIZ)")
    ssiz = codestream[42]
    precision, signed = (ssiz & 0x7F) + 1, bool(ssiz & 0x80)
    pos = 4 + int.from_bytes(codestream[4:6], "big")
    while pos + 4 <= len(codestream):
        marker = int.from_bytes(codestream[pos:pos + 2], "big")
        length = int.from_bytes(codestream[pos + 2:pos + 4], "big")
        if marker == 0xFF52:  # COD: Lcod, Scod, SGcod(4), SPcod: levels first
            return precision, signed, codestream[pos + 9]
        if marker == 0xFF90:  # SOT: main header over, no COD seen
            break
        pos += 2 + length
    raise ValueError("JPEG 2000 codestream has no COD marker in its main header")


def _pillow_j2k(codestream: bytes, level: int, precision: int) -> np.ndarray:
    with Image.open(io.BytesIO(codestream)) as im:
        im.reduce = level  # Jpeg2KImageFile: decode only the coarser resolution levels
        im.load()
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise ValueError(f"unexpected decoded shape {arr.shape}")
    shift = arr.dtype.itemsize * 8 - precision  # Pillow scales N-bit samples up to 8/16 bits
    if shift > 0:
        arr = arr >> shift
    return arr


def _decode_j2k(ds: pydicom.Dataset, target_size: int) -> Optional[DecodedPixels]:
    if int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.get("PixelRepresentation", 0)) != 0:
        return None
    rows, columns = int(ds.Rows), int(ds.Columns)
    longest = max(rows, columns)
    if longest < 2 * target_size:
        return None  # not worth a reduced decode
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        codestream = next(generate_frames(ds.PixelData, number_of_frames=frames))
        precision, signed, levels = j2k_header(codestream)
    except Exception:
        return None  # let pydicom report the problem
    if signed or precision > 16:
        return None
    level = min(levels, int(math.floor(math.log2(longest / target_size))))
    if level < 1:
        return None
    end = codestream.rfind(b"\xff\xd9")
    if end > 0:
        codestream = codestream[:end + 2]  # Pillow rejects padding after EOC
    arr = None
    for level in range(level, 0, -1):  # some codestreams refuse deep levels: step down
        try:
            arr = _pillow_j2k(codestream, level, precision)
            break
        except Exception:
            continue
    if arr is None:
        return None  # no reduced decode possible: full decode by pydicom
    scale = 1 << level
    if abs(arr.shape[0] - math.ceil(rows / scale)) > 1 or \
            abs(arr.shape[1] - math.ceil(columns / scale)) > 1:
        return None
    k = reduction_factor(arr.shape[0], arr.shape[1], target_size)
    name = f"pillow-j2k/{scale}" + (f"+mean{k}" if k > 1 else "")
    return DecodedPixels(block_mean(arr, k), scale * k, name)


# --------------------------------------------------------------------------- general


def _decode_general(ds: pydicom.Dataset, ts: UID, target_size: int) -> DecodedPixels:
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise PixelDecodeError(f"no pixel data decoder for transfer syntax {ts.name} ({ts})") \
            from None
    if not decoder.is_available:
        raise PixelDecodeError(
            f"no installed plugin can decode {ts.name}: {sorted(decoder.missing_dependencies)}")
    try:
        with _quiet_decoders():
            arr, _ = decoder.as_array(ds, index=0)
    except Exception as exc:
        raise PixelDecodeError(f"cannot decode {ts.name} pixel data: {_one_line(exc)}") \
            from None
    if arr.ndim == 3:  # colour: ITU-R BT.601 luma, as an 8/16-bit gray image
        arr = np.rint(arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114],
                                                                  np.float32)).astype(arr.dtype)
    if arr.ndim != 2:
        raise PixelDecodeError(f"unexpected pixel array shape {arr.shape}")
    k = reduction_factor(arr.shape[0], arr.shape[1], target_size)
    return DecodedPixels(block_mean(arr, k), k, "pydicom" + (f"+mean{k}" if k > 1 else ""))


def decode_pixels(ds: pydicom.Dataset, target_size: int) -> DecodedPixels:
    """Decode the first frame of ``ds`` into stored values at most ~2×``target_size`` per side.

    Raises ``PixelDecodeError`` for missing, truncated or undecodable pixel data.
    """
    if "PixelData" not in ds:
        raise PixelDecodeError("dataset has no (7FE0,0010) Pixel Data")
    for tag in ("Rows", "Columns", "BitsAllocated"):
        if ds.get(tag) in (None, "", 0):
            raise PixelDecodeError(f"dataset has no usable {tag}")
    ts = _transfer_syntax(ds)
    try:
        if not ts.is_compressed and ts.is_little_endian and not ts.is_deflated:
            decoded = _decode_native(ds, target_size)
        elif ts in _J2K_SYNTAXES:
            decoded = _decode_j2k(ds, target_size)
        else:
            decoded = None
    except PixelDecodeError:
        raise
    except Exception as exc:
        raise PixelDecodeError(f"cannot decode {ts.name} pixel data: {_first_line(exc)}") \
            from None
    return decoded if decoded is not None else _decode_general(ds, ts, target_size)
