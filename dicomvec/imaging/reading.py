"""DICOM bytes / stream → ``pydicom.Dataset``.

``read_dataset`` accepts ``bytes`` or a binary file-like object (a Beam ``ReadableFile.open()``
stream need not be seekable: it is buffered). Files without a preamble and file meta (old
ACR-NEMA style) are read with their transfer syntax inferred (implicit or explicit VR little
endian) and ``file_meta.TransferSyntaxUID`` is filled in, so pixel decoding works on them.
Anything that is not DICOM raises ``DicomReadError`` with a one-line reason.
"""
from __future__ import annotations

import io
import logging
import warnings
from typing import BinaryIO, Union

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomvec.imaging.errors import DicomReadError

Source = Union[bytes, bytearray, memoryview, BinaryIO]

#: groups a real image dataset starts with; a forced parse of random bytes rarely hits these
_PLAUSIBLE_GROUPS = frozenset({0x0008, 0x0010, 0x0018, 0x0020, 0x0028})


def _as_seekable(source: Source) -> BinaryIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source)
    try:
        if source.seekable():
            return source
    except (AttributeError, ValueError):
        pass
    return io.BytesIO(source.read())


def _has_preamble(fp: BinaryIO) -> bool:
    start = fp.tell()
    head = fp.read(132)
    fp.seek(start)
    return len(head) == 132 and head[128:132] == b"DICM"


def _infer_transfer_syntax(ds: pydicom.Dataset) -> str:
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        implicit, little = ds.is_implicit_VR, ds.is_little_endian
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def read_dataset(source: Source, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """Parse one DICOM file (bytes or binary stream) into a Dataset.

    Raises ``DicomReadError`` when the input is empty, is not DICOM, or cannot be parsed.
    The returned dataset always has ``file_meta.TransferSyntaxUID``.
    """
    fp = _as_seekable(source)
    try:
        preamble = _has_preamble(fp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fp, force=True, stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # pydicom raises many types for garbage input
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DicomReadError(f"not a readable DICOM file: {first}") from None
    groups = {tag.group for tag in ds.keys()}
    if not preamble and not groups & _PLAUSIBLE_GROUPS:
        raise DicomReadError("not a DICOM file: no DICM preamble and no image/patient/study tags")
    if not groups:
        raise DicomReadError("not a DICOM file: no data elements")
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = _infer_transfer_syntax(ds)
        logging.getLogger(__name__).debug("no file meta: transfer syntax inferred as %s",
                                          meta.TransferSyntaxUID.name)
    return ds
