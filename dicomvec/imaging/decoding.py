"""Pixel data of a Dataset → a small 2-D array of stored values (``DecodedPixels``).

Fast paths keep the work proportional to the *output* size wherever the codec allows it:

* native (uncompressed, little endian) pixel data: a zero-copy view of ``PixelData``, unused high
  bits masked only if any are set, then a block mean (area average) so that the result is at
  most about ``2 × target_size`` per side. Integer arithmetic only: no full-resolution float.
* JPEG 2000 (unsigned, one sample): Pillow/OpenJPEG reduced-resolution decode (discard the
  finest wavelet levels, ``im.reduce = k``); if a codestream refuses it, a full decode.
* RLE lossless: pylibjpeg-rle decodes the first frame straight into a buffer, then the block mean.
* 8-bit grayscale JPEG baseline: Pillow's DCT-domain downscale (``draft``) to >= the target.
* everything else (JPEG, JPEG-LS, deflated, big endian...): pydicom's decoders on the first
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
import os
import sys
import tempfile
import threading
from typing import NamedTuple, Optional, Tuple

import numpy as np
import pydicom
from PIL import Image, ImageFile
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import UID, JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from dicomvec.errors import first_line
from dicomvec.imaging.errors import PixelDecodeError

log = logging.getLogger(__name__)
#: pydicom tries plugins in its own order; pylibjpeg-rle is several times faster than pydicom's
_PREFERRED_PLUGIN = {RLELossless: "pylibjpeg"}
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


def _accumulator(max_total: int) -> np.dtype:
    for dtype in (np.uint16, np.uint32, np.uint64):
        if max_total <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError("block too large")


def block_mean(arr: np.ndarray, k: int, max_value: Optional[int] = None) -> np.ndarray:
    """Area-average ``arr`` (2-D integer) over k×k blocks; a ragged edge (< k pixels) is dropped.

    Sums one block row, then one block column, at a time (strided adds of reduced-size arrays)
    in the narrowest unsigned type that cannot overflow given ``max_value`` (the largest value
    ``arr`` may hold; default: its dtype's maximum), then rounds back to ``arr``'s dtype.
    ``k <= 1`` returns ``arr`` unchanged.
    """
    if k <= 1:
        return arr
    h, w = (arr.shape[0] // k) * k, (arr.shape[1] // k) * k
    if h == 0 or w == 0:
        return arr
    if arr.dtype.kind == "u":
        top = int(np.iinfo(arr.dtype).max if max_value is None else max_value)
        row_dtype, acc_dtype = _accumulator(k * top), _accumulator(k * k * top)
    else:
        row_dtype = acc_dtype = np.dtype(np.int64)
    if row_dtype == arr.dtype:
        rows = np.add(arr[0:h:k, :w], arr[1:h:k, :w])
    else:
        rows = arr[0:h:k, :w].astype(row_dtype)
        np.add(rows, arr[1:h:k, :w], out=rows, casting="unsafe")
    for i in range(2, k):
        np.add(rows, arr[i:h:k, :w], out=rows, casting="unsafe")
    acc = rows[:, 0::k].astype(acc_dtype)
    for j in range(1, k):
        np.add(acc, rows[:, j::k], out=acc, casting="unsafe")
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


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """All lines of an error message joined (pydicom lists one reason per plugin), shortened."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


_QUIET = threading.local()


class _DropWhileDecoding(logging.Filter):
    """Drops pydicom's per-plugin tracebacks while *this thread* is inside ``_quiet_decoders``
    (our own PixelDecodeError carries the reasons). Thread-safe, unlike changing log levels."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_QUIET, "active", False)


for _name in ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.utils"):
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, _DropWhileDecoding) for f in _logger.filters):
        _logger.addFilter(_DropWhileDecoding())


@contextlib.contextmanager
def _quiet_decoders():
    """Silence pydicom's decoder error logging for this thread while a decode is attempted."""
    previous = getattr(_QUIET, "active", False)
    _QUIET.active = True
    try:
        yield
    finally:
        _QUIET.active = previous


# --------------------------------------------------------------------------- native


def _stored_layout(ds: pydicom.Dataset) -> Optional[Tuple[int, int, np.dtype, int, int]]:
    """(rows, columns, dtype, bits_stored, bits_allocated) when one-sample 8/16-bit values can
    be viewed directly; None when pydicom's general code is needed (colour, 1/32-bit, signed
    values that need sign extension)."""
    bits_allocated = int(ds.BitsAllocated)
    bits_stored = int(ds.get("BitsStored", bits_allocated))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if int(ds.get("SamplesPerPixel", 1)) != 1 or bits_allocated not in (8, 16):
        return None
    if signed and bits_stored != bits_allocated:
        return None  # needs sign extension: pydicom does it
    dtype = np.dtype(("<i" if signed else "<u") + str(bits_allocated // 8))
    return int(ds.Rows), int(ds.Columns), dtype, bits_stored, bits_allocated


def _reduce_stored(buffer, layout, target_size: int, name: str) -> DecodedPixels:
    """View ``buffer`` as the first frame, mask unused high bits (as pydicom does), block-mean."""
    rows, columns, dtype, bits_stored, bits_allocated = layout
    arr = np.frombuffer(buffer, dtype=dtype, count=rows * columns).reshape(rows, columns)
    top = None
    if dtype.kind == "u" and bits_stored < bits_allocated:
        if int(arr.max()) >> bits_stored:
            arr = arr & np.array((1 << bits_stored) - 1, dtype=dtype)
        top = (1 << bits_stored) - 1  # lets 12-bit data sum in uint16
    k = reduction_factor(rows, columns, target_size)
    return DecodedPixels(block_mean(arr, k, top), k, name + (f"+mean{k}" if k > 1 else ""))


def _decode_native(ds: pydicom.Dataset, target_size: int) -> Optional[DecodedPixels]:
    """Zero-copy little-endian native path; None when the layout needs pydicom's general code."""
    layout = _stored_layout(ds)
    if layout is None:
        return None
    rows, columns, dtype, _, bits_allocated = layout
    expected = rows * columns * dtype.itemsize
    data = ds.PixelData
    if len(data) < expected:
        raise PixelDecodeError(
            f"pixel data truncated: {len(data)} bytes, the first frame needs {expected} "
            f"({rows}x{columns}, {bits_allocated}-bit)")
    return _reduce_stored(data, layout, target_size, "native")


def _decode_rle(ds: pydicom.Dataset, target_size: int) -> Optional[DecodedPixels]:
    """pylibjpeg-rle straight into a buffer (pydicom's wrapper adds ~2x for copies)."""
    layout = _stored_layout(ds)
    if layout is None:
        return None
    try:
        from rle.utils import decode_pixel_data
    except ImportError:
        return None
    rows, columns, dtype, _, bits_allocated = layout
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=frames))
        buffer = decode_pixel_data(frame, version=2, rows=rows, columns=columns,
                                   bits_allocated=bits_allocated, samples_per_pixel=1,
                                   byteorder="<")
    except Exception:
        return None  # pydicom's decoders give the error message
    if len(buffer) < rows * columns * dtype.itemsize:
        return None
    return _reduce_stored(buffer, layout, target_size, "rle")


# --------------------------------------------------------------------------- JPEG 2000


class J2KHeader(NamedTuple):
    """What the fast path needs from a J2K codestream's SIZ and COD markers."""

    precision: int
    signed: bool
    levels: int  # wavelet decomposition levels (COD)
    width: int  # Xsiz - XOsiz
    height: int
    x0: int  # image offset on the reference grid (XOsiz, YOsiz)
    y0: int

    def reduced_size(self, level: int) -> Tuple[int, int]:
        """(width, height) OpenJPEG produces at ``level``: ceil over the offset grid."""
        p = 1 << level

        def span(origin, extent):
            return -(-(origin + extent) // p) - (-(-origin // p))
        return span(self.x0, self.width), span(self.y0, self.height)


def j2k_header(codestream: bytes) -> J2KHeader:
    """Parse SIZ (size, offset, first component's precision/sign) and COD (levels)."""
    if codestream[:4] != b"\xff\x4f\xff\x51" or len(codestream) < 43:
        raise ValueError("not a JPEG 2000 codestream (no SOC/SIZ)")
    x1, y1, x0, y0 = (int.from_bytes(codestream[i:i + 4], "big") for i in (8, 12, 16, 20))
    ssiz = codestream[42]
    pos = 4 + int.from_bytes(codestream[4:6], "big")
    while pos + 10 <= len(codestream):
        marker = int.from_bytes(codestream[pos:pos + 2], "big")
        length = int.from_bytes(codestream[pos + 2:pos + 4], "big")
        if marker == 0xFF52:  # COD: Lcod, Scod, SGcod(4), SPcod: levels first
            return J2KHeader((ssiz & 0x7F) + 1, bool(ssiz & 0x80), codestream[pos + 9],
                             x1 - x0, y1 - y0, x0, y0)
        if marker == 0xFF90:  # SOT: main header over, no COD seen
            break
        pos += 2 + length
    raise ValueError("JPEG 2000 codestream has no COD marker in its main header")


def _pillow_j2k(codestream: bytes, level: int, header: J2KHeader) -> np.ndarray:
    """Decode at resolution ``level`` (0 = full) with Pillow's OpenJPEG.

    Pillow's own ``im.reduce`` sizes the output as round((n)/2**level) where OpenJPEG produces
    ceil(n/2**level), so e.g. 1841 px at level 2 is refused as a "broken data stream". The
    tile is therefore set up with OpenJPEG's size; if that Pillow-internal layout ever changes,
    the public ``im.reduce`` route is used instead.
    """
    width, height = header.reduced_size(level)
    with Image.open(io.BytesIO(codestream)) as im:
        try:
            tile = im.tile[0]
            args = (tile[3][0], level, 0, tile[3][3], tile[3][4])  # codec, reduce, layers, fd, len
            extents = (0, 0, width, height)
            make = getattr(ImageFile, "_Tile", None)
            im.tile = [make(tile[0], extents, tile[2], args) if make
                       else (tile[0], extents, tile[2], args)]
            im._size = (width, height)
            ImageFile.ImageFile.load(im)
        except Exception:
            with Image.open(io.BytesIO(codestream)) as again:
                again.reduce = level
                again.load()
                arr = np.asarray(again)
        else:
            arr = np.asarray(im)
    if arr.ndim != 2:
        raise ValueError(f"unexpected decoded shape {arr.shape}")
    shift = arr.dtype.itemsize * 8 - header.precision  # Pillow scales N-bit samples to 8/16
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
        header = j2k_header(codestream)
    except Exception:
        return None  # let pydicom report the problem
    if header.signed or header.precision > 16:
        return None
    level = min(header.levels, int(math.floor(math.log2(longest / target_size))))
    if level < 1:
        return None
    end = codestream.rfind(b"\xff\xd9")
    if end > 0:
        codestream = codestream[:end + 2]  # Pillow rejects padding after EOC
    arr = None
    for level in range(level, 0, -1):  # a codestream may refuse deep levels: step down
        try:
            arr = _pillow_j2k(codestream, level, header)
            break
        except Exception:
            continue
    if arr is None:
        return None  # no reduced decode possible: full decode by pydicom
    scale = 1 << level
    if arr.shape != header.reduced_size(level)[::-1] or \
            abs(arr.shape[0] * scale - rows) >= scale or abs(arr.shape[1] * scale - columns) >= scale:
        return None
    k = reduction_factor(arr.shape[0], arr.shape[1], target_size)
    name = f"pillow-j2k/{scale}" + (f"+mean{k}" if k > 1 else "")
    return DecodedPixels(block_mean(arr, k, (1 << header.precision) - 1), scale * k, name)


# --------------------------------------------------------------------------- JPEG baseline


def _decode_jpeg_baseline(ds: pydicom.Dataset, target_size: int) -> Optional[DecodedPixels]:
    """8-bit grayscale JPEG: Pillow's DCT-domain downscale (``draft``, 1/2..1/8) to >= target."""
    if int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.BitsAllocated) != 8 or \
            int(ds.get("PixelRepresentation", 0)) != 0:
        return None
    rows, columns = int(ds.Rows), int(ds.Columns)
    scale = 1
    while scale < 8 and max(rows, columns) / (scale * 2) >= target_size:
        scale *= 2
    if scale == 1:
        return None
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        frame = next(generate_frames(ds.PixelData, number_of_frames=frames))
        with Image.open(io.BytesIO(frame)) as im:
            if im.mode != "L":
                return None
            im.draft("L", (-(-columns // scale), -(-rows // scale)))
            arr = np.asarray(im)
    except Exception:
        return None  # pydicom's decoders give the error message
    if arr.ndim != 2 or abs(arr.shape[0] * scale - rows) > scale or \
            abs(arr.shape[1] * scale - columns) > scale:
        return None
    k = reduction_factor(arr.shape[0], arr.shape[1], target_size)
    name = f"pillow-jpeg/{scale}" + (f"+mean{k}" if k > 1 else "")
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
    preferred = _PREFERRED_PLUGIN.get(ts, "")
    if preferred not in decoder.available_plugins:
        preferred = ""
    try:
        with _quiet_decoders():
            try:
                arr, _ = decoder.as_array(ds, index=0, decoding_plugin=preferred)
            except Exception:
                if not preferred:
                    raise
                arr, _ = decoder.as_array(ds, index=0)  # every other installed plugin
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


_FD2_LOCK = threading.Lock()


@contextlib.contextmanager
def _native_stderr():
    """Capture what C libraries write to file descriptor 2 meanwhile (OpenJPEG prints "Stream
    too short, expected SOT", "Failed to decode tile 1/1" there, past Python's ``sys.stderr``);
    yields a list that holds the captured lines afterwards. fd 2 belongs to the process: one
    capture at a time (a lock); a line another thread wrote meanwhile is captured too, and is
    logged by the caller rather than lost."""
    captured: list = []
    with _FD2_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no fd 2 (embedded): nothing to capture
            yield captured
            return
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield captured
            finally:
                try:
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                text = sink.read().decode("utf-8", "replace")
                captured.extend(line.strip() for line in text.splitlines() if line.strip())


def decode_pixels(ds: pydicom.Dataset, target_size: int) -> DecodedPixels:
    """Decode the first frame of ``ds`` into stored values at most ~2×``target_size`` per side.

    Raises ``PixelDecodeError`` for missing, truncated or undecodable pixel data; what the
    decoders' C libraries print (OpenJPEG) is part of its reason, or logged when the decode
    succeeds anyway, never written straight to stderr. Only compressed pixel data goes through
    the C decoders: native pixel data (MIMIC-CXR's) is decoded without the capture and its lock.
    """
    try:
        compressed = _transfer_syntax(ds).is_compressed
    except Exception:  # pylint: disable=broad-except  # _decode_pixels says what is wrong
        compressed = True
    if not compressed:
        return _decode_pixels(ds, target_size)
    with _native_stderr() as printed:
        try:
            decoded = _decode_pixels(ds, target_size)
        except PixelDecodeError as exc:
            failure = exc
        else:
            failure = None
    if printed:
        said = "; ".join(dict.fromkeys(printed))  # each message once, in order
        if failure is not None:
            raise PixelDecodeError(f"{failure} (decoder said: {said})") from None
        log.info("the pixel decoder printed: %s", said)
    if failure is not None:
        raise failure
    return decoded


def _decode_pixels(ds: pydicom.Dataset, target_size: int) -> DecodedPixels:
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
        elif ts == RLELossless:
            decoded = _decode_rle(ds, target_size)
        elif ts == JPEGBaseline8Bit:
            decoded = _decode_jpeg_baseline(ds, target_size)
        else:
            decoded = None
    except PixelDecodeError:
        raise
    except Exception as exc:
        raise PixelDecodeError(f"cannot decode {ts.name} pixel data: {first_line(exc)}") \
            from None
    return decoded if decoded is not None else _decode_general(ds, ts, target_size)
