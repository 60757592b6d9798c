"""Pictures and header fields for the page, from the stored image's own DICOM file.

``Renderer.png(info, size)`` takes the file through the ingestion stages (``image_record``:
decode → the pipeline's normalization → fit+pad, PNG), so a thumbnail shows what the model saw.
PNGs are kept in a least-recently-used cache bounded in bytes; at most ``workers`` renders run at
once (a MIMIC-size decode holds ~100 MB). A file that cannot be read any more gives a grey
placeholder, never an error page. Only paths of stored rows reach this module (``ImageInfo``
comes from ``search.browse.image_info``, looked up by ImageID).
"""
from __future__ import annotations

import collections
import io
import logging
import threading
from typing import Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

#: the sizes the page asks for (pixels, square)
SIZES = {"thumb": 224, "large": 768}
#: DICOM header fields shown on an image's page (technical and study ones; no patient names)
HEADER_FIELDS = (
    ("Modality", "Modality"), ("ViewPosition", "View position"),
    ("PatientOrientation", "Patient orientation"), ("BodyPartExamined", "Body part"),
    ("Rows", "Rows"), ("Columns", "Columns"), ("BitsStored", "Bits stored"),
    ("PhotometricInterpretation", "Photometric interpretation"),
    ("PixelSpacing", "Pixel spacing (mm)"), ("ImagerPixelSpacing", "Imager pixel spacing (mm)"),
    ("WindowCenter", "Window centre"), ("WindowWidth", "Window width"),
    ("Manufacturer", "Manufacturer"), ("StudyDate", "Study date"),
    ("StudyInstanceUID", "Study instance UID"), ("SOPInstanceUID", "SOP instance UID"),
)


def placeholder_png(size: int, text: str = "image unavailable") -> bytes:
    from PIL import Image, ImageDraw, ImageFont
    cell = Image.new("RGB", (size, size), (90, 90, 90))
    draw = ImageDraw.Draw(cell)
    font = ImageFont.load_default()
    width = draw.textlength(text, font=font)
    draw.text(((size - width) / 2, size / 2 - 6), text, fill=(235, 235, 235), font=font)
    out = io.BytesIO()
    cell.save(out, format="PNG")
    return out.getvalue()


class Renderer:
    """PNG renderings of stored images, cached (LRU, at most ``cache_bytes``)."""

    def __init__(self, normalization: str, cache_bytes: int = 64 << 20, workers: int = 2):
        self.normalization = normalization
        self.cache_bytes = cache_bytes
        self._cache: "collections.OrderedDict[Tuple[str, str, int], bytes]" = \
            collections.OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max(1, workers))
        self._placeholders: Dict[int, bytes] = {}

    @property
    def cached(self) -> Tuple[int, int]:
        """(entries, bytes) in the cache."""
        with self._lock:
            return len(self._cache), self._held

    def placeholder(self, size: int) -> bytes:
        if size not in self._placeholders:
            self._placeholders[size] = placeholder_png(size)
        return self._placeholders[size]

    def png(self, info, size: int) -> Tuple[bytes, bool]:
        """(PNG bytes, True) for the stored image ``info`` at ``size`` px, or (placeholder,
        False) when its file cannot be rendered."""
        key = (info.ImageID, info.ImagePath, size)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key], True
        with self._slots:
            data = self.render_path(info.ImagePath, size)
        if data is None:
            return self.placeholder(size), False
        self._keep(key, data)
        return data, True

    def render_path(self, path: str, size: int) -> Optional[bytes]:
        """The ingestion rendering of ``path`` at ``size`` px (PNG), None when it fails."""
        from dicomvec.search.queries import image_record
        try:
            return image_record(path, size, self.normalization, "png").encoded
        except Exception as exc:  # moved, deleted, corrupt: a placeholder, logged once here
            log.warning("serve: cannot render %s: %s", path, exc)
            return None

    def _keep(self, key, data: bytes) -> None:
        if len(data) > self.cache_bytes:
            return
        with self._lock:
            if key in self._cache:
                return
            self._cache[key] = data
            self._held += len(data)
            while self._held > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._held -= len(old)


def _value(value) -> str:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def header_fields(path: str) -> Tuple[List[Tuple[str, str]], Optional[str]]:
    """([(label, value)] of ``HEADER_FIELDS`` present, plus the transfer syntax), or ([], why)
    when the file cannot be read."""
    from dicomvec.imaging import read_dataset
    from dicomvec.io.open_path import open_path
    try:
        with open_path(path) as stream:
            dataset = read_dataset(stream, stop_before_pixels=True)
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [], f"{type(exc).__name__}: {text}"
    fields = []
    for keyword, label in HEADER_FIELDS:
        value = dataset.get(keyword)
        if value is not None and str(value) != "":
            fields.append((label, _value(value)))
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None:
        fields.append(("Transfer syntax", f"{getattr(syntax, 'name', '')} ({syntax})"))
    return fields, None
