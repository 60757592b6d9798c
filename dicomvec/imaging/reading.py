"""DICOM bytes / stream → ``pydicom.Dataset``.

``read_dataset`` accepts ``bytes`` or a binary file-like object (a Beam ``ReadableFile.open()``
stream need not be seekable: it is buffered). Files without a preamble and file meta (old
ACR-NEMA style) are read with their transfer syntax inferred (implicit or explicit VR little
endian) and ``file_meta.TransferSyntaxUID`` is filled in, so pixel decoding works on them.
Anything that is not DICOM raises ``DicomReadError`` with a one-line reason.

Seekable streams take a faster route: the header is parsed from the first ``HEAD_BYTES`` (a
header-only read stops there) and a defined-length Pixel Data value that ends the file is read
straight into one ``bytes`` object (one copy of the ~15 MB instead of two). Anything unusual (a
longer header, encapsulated or truncated pixel data, elements after Pixel Data) falls back to
pydicom parsing the rest of the stream, read once (on object storage every extra seek-and-read
is another download).
"""
from __future__ import annotations

import io
import logging
import warnings
from typing import BinaryIO, Optional, Union

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomvec.imaging.errors import DicomReadError

Source = Union[bytes, bytearray, memoryview, BinaryIO]

#: groups a real image dataset starts with; a forced parse of random bytes rarely hits these
_PLAUSIBLE_GROUPS = frozenset({0x0008, 0x0010, 0x0018, 0x0020, 0x0028})
#: how much of a seekable stream is read to find the header (MIMIC headers are a few KB)
HEAD_BYTES = 1 << 16
_PIXEL_DATA_LE = b"\xe0\x7f\x10\x00"
_UNDEFINED_LENGTH = 0xFFFFFFFF


def _seekable(source) -> bool:
    try:
        return bool(source.seekable())
    except (AttributeError, ValueError, OSError):
        return False


def _has_preamble(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _infer_transfer_syntax(ds: pydicom.Dataset) -> str:
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        implicit, little = ds.is_implicit_VR, ds.is_little_endian
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


class _UnnamedStream:
    """read/seek/tell of a stream that has no file name. pydicom treats every
    ``io.BufferedReader`` as an open file and reads its ``name``; Beam's object-storage streams
    (a BufferedReader over a ``DownloaderStream``, e.g. ``s3://``) have none."""

    def __init__(self, fp: BinaryIO):
        self._fp = fp

    def read(self, size: int = -1) -> bytes:
        return self._fp.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._fp.seek(offset, whence)

    def tell(self) -> int:
        return self._fp.tell()


class _BufferStream:
    """read/seek/tell over a memoryview without copying it: ``read(n)`` returns one ``bytes``
    copy of just those ``n`` bytes (``io.BytesIO`` of a bytearray would copy all of it)."""

    def __init__(self, view: memoryview):
        self._view = view
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view),
                                                                   self._pos + size)
        data = self._view[self._pos:end].tobytes() if end > self._pos else b""
        self._pos = max(self._pos, end)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def _parse(fp: BinaryIO, stop_before_pixels: bool) -> pydicom.Dataset:
    unnamed = isinstance(fp, io.BufferedReader) and not hasattr(fp, "name")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(_UnnamedStream(fp) if unnamed else fp, force=True,
                                 stop_before_pixels=stop_before_pixels)
        if unnamed:
            ds.buffer = None  # the dataset keeps no reference to the (unpicklable) stream
        return ds
    except Exception as exc:  # pydicom raises many types for garbage input
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DicomReadError(f"not a readable DICOM file: {first}") from None


def _read_from_seekable(fp: BinaryIO, stop_before_pixels: bool) -> Optional[pydicom.Dataset]:
    """Header from the first HEAD_BYTES, Pixel Data read in one piece; None → use the slow way.

    Leaves ``fp`` at its starting position when it returns None.
    """
    start = fp.tell()
    head = fp.read(HEAD_BYTES)
    fp.seek(start)
    if len(head) < HEAD_BYTES:
        return None  # small file: one normal parse is just as cheap
    probe = io.BytesIO(head)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(probe, force=True, stop_before_pixels=True)
    except Exception:
        return None
    pos = probe.tell()
    if head[pos:pos + 4] != _PIXEL_DATA_LE or len(head) < pos + 12:
        return None  # header longer than the probe, no pixel data, or big endian
    if stop_before_pixels:
        return ds  # the whole header was in the probe
    if head[pos + 4:pos + 6] in (b"OB", b"OW", b"UN"):  # explicit VR: 2 reserved, 4-byte length
        vr, value_at = head[pos + 4:pos + 6].decode(), pos + 12
        length = int.from_bytes(head[pos + 8:pos + 12], "little")
    else:  # implicit VR: 4-byte length right after the tag
        vr = "OW" if int(ds.get("BitsAllocated", 16) or 16) > 8 else "OB"
        value_at, length = pos + 8, int.from_bytes(head[pos + 4:pos + 8], "little")
    if length == _UNDEFINED_LENGTH:
        return None  # encapsulated (compressed) pixel data: small, let pydicom parse it
    fp.seek(start + value_at)
    value = fp.read(length)
    if len(value) != length or fp.read(1):
        fp.seek(start)
        return None  # truncated file, or elements after Pixel Data: pydicom decides
    ds.add_new(0x7FE00010, "OB" if vr == "UN" else vr, value)
    return ds


def _check(ds: pydicom.Dataset, preamble: bool) -> pydicom.Dataset:
    groups = {tag.group for tag in ds.keys()}
    if not groups:
        raise DicomReadError("not a DICOM file: no data elements")
    if not preamble and not groups & _PLAUSIBLE_GROUPS:
        raise DicomReadError("not a DICOM file: no DICM preamble and no image/patient/study tags")
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = _infer_transfer_syntax(ds)
        logging.getLogger(__name__).debug("no file meta: transfer syntax inferred as %s",
                                          meta.TransferSyntaxUID.name)
    return ds


def read_dataset(source: Source, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """Parse one DICOM file (bytes or binary stream) into a Dataset.

    Raises ``DicomReadError`` when the input is empty, is not DICOM, or cannot be parsed.
    The returned dataset always has ``file_meta.TransferSyntaxUID``.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        # a whole object in memory (object storage): the header from a probe and Pixel Data as
        # ONE copy of its slice, so the dataset keeps no reference to ``source`` (pydicom keeps
        # the stream it parsed as ``ds.buffer``) and the caller can free it right after
        view = memoryview(source).cast("B")
        try:
            ds = _read_from_seekable(_BufferStream(view), stop_before_pixels)
            if ds is None:  # the slow way: one full parse of a private copy
                data = source if isinstance(source, bytes) else view.tobytes()
                ds = _parse(io.BytesIO(data), stop_before_pixels)
                ds.buffer = None
            return _check(ds, _has_preamble(bytes(view[:132])))
        finally:
            view.release()
    if _seekable(source):
        start = source.tell()
        preamble = _has_preamble(source.read(132))
        source.seek(start)
        ds = _read_from_seekable(source, stop_before_pixels)
        if ds is None and not stop_before_pixels:
            # one read of the rest: pydicom's own seeks (e.g. to the end) would make an
            # object-storage stream download the object again
            ds = _parse(io.BytesIO(source.read()), stop_before_pixels)
        elif ds is None:
            ds = _parse(source, stop_before_pixels)
        return _check(ds, preamble)
    data = source.read()
    return _check(_parse(io.BytesIO(data), stop_before_pixels), _has_preamble(data[:132]))
