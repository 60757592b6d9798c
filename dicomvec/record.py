"""The one record type that flows through the pipeline, and the failure it can turn into.

An ``ImageRecord`` is created per matched file by the identify stage and enriched stage by
stage (``evolve``): metadata → ``header``/``decoded`` (decode) → ``pixels`` (normalize, uint8)
→ ``encoded``/``mime`` (resize; the heavy fields are dropped here, before batching) →
``vector`` (embed). Until decode, a record may carry ``alternates``: the other files that hold
the same image (see ``transforms.dedupe``). A ``Failure`` carries what a dead-letter row needs: never
pixels, never patient names.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any, Optional, Tuple

import numpy as np

from dicomvec.defaults import STAGES  # noqa: F401  (re-exported: the stages, in order)


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One DICOM image on its way to a vector.

    Identity is ``image_id`` (MIMIC ``dicom_id`` or SOPInstanceUID); ``path`` is where it was read.
    """

    path: str
    image_id: str = ""
    subject_id: str = ""
    study_id: str = ""
    view_position: str = ""
    rows: int = 0
    columns: int = 0
    photometric: str = ""
    transfer_syntax: str = ""
    size_bytes: int = 0  # the file's size as listed (0: unknown); sizes the read-ahead window
    header: Any = None  # pydicom Dataset without PixelData, between decode and normalize
    decoded: Any = None  # imaging.DecodedPixels (raw stored values), between decode and normalize
    pixels: Optional[np.ndarray] = None  # normalised 2-D uint8, between normalize and resize
    encoded: Optional[bytes] = None  # model input image (PNG by default)
    mime: str = ""
    vector: Optional[np.ndarray] = None  # float32, unit length
    provider: str = ""
    embedding_model: str = ""
    #: other files with the same ImageID (metadata only), tried in order when this one cannot be
    #: decoded; set by the batch de-duplication, emptied by decode
    alternates: Tuple["ImageRecord", ...] = ()

    @property
    def dicom_file(self) -> str:
        """The file name, as stored in the DicomFile column."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def evolve(self, **changes) -> "ImageRecord":
        """A copy with ``changes`` applied (records are immutable)."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why one image could not go on; becomes one dead-letter row."""

    path: str
    image_id: str
    stage: str
    error_type: str
    error_message: str
    attempts: int = 1
    retryable: bool = False
    failed_at: str = dataclasses.field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}")

    @classmethod
    def from_result(cls, path: str, image_id: str, stage: str, result) -> "Failure":
        """From a provider's failed ``EmbeddingResult``."""
        return cls(path=path, image_id=image_id, stage=stage, error_type=result.error_type,
                   error_message=result.error_message[:2000], attempts=result.attempts,
                   retryable=result.retryable)

    @classmethod
    def from_exception(cls, record: ImageRecord, stage: str, exc: BaseException,
                       attempts: int = 1, retryable: bool = False) -> "Failure":
        message = str(exc).strip() or repr(exc)
        return cls(path=record.path, image_id=record.image_id, stage=stage,
                   error_type=type(exc).__name__, error_message=message[:2000],
                   attempts=attempts, retryable=retryable)
