"""File-side identity: MIMIC-CXR paths and DICOM header tags → the record's IDs and metadata.

``identify(path, header)``: the path and a header-only pydicom Dataset in, an ``ImageRecord``
with ImageID, SubjectID, StudyID, ViewPosition, Rows, Columns, photometric interpretation and
transfer syntax out. MIMIC paths (``.../p<subject>/s<study>/<dicom_id>.dcm``) give the IDs;
other files fall back to SOPInstanceUID / PatientID / StudyInstanceUID.
"""
from __future__ import annotations

import re
from typing import Optional

from dicomvec.record import ImageRecord

_MIMIC_PATH = re.compile(r"(?:^|/)p(?P<subject>\d+)/s(?P<study>\d+)/(?P<dicom_id>[^/]+)\.dcm$",
                         re.IGNORECASE)


class MissingIdentityError(ValueError):
    """Neither the path nor the header identifies the image."""


def parse_mimic_path(path: str) -> Optional[dict]:
    """``{'subject_id', 'study_id', 'image_id'}`` for a MIMIC-CXR layout path, else None."""
    match = _MIMIC_PATH.search(path.replace("\\", "/"))
    if not match:
        return None
    return {"subject_id": match["subject"], "study_id": match["study"],
            "image_id": match["dicom_id"]}


def _tag(ds, keyword: str) -> str:
    value = ds.get(keyword) if ds is not None else None
    return "" if value is None else str(value).strip()


def identify(path: str, header) -> ImageRecord:
    """Build the record for one file from its path and header (no pixel data needed)."""
    mimic = parse_mimic_path(path)
    if mimic:
        image_id, subject_id, study_id = mimic["image_id"], mimic["subject_id"], mimic["study_id"]
    else:
        image_id = _tag(header, "SOPInstanceUID")
        subject_id = _tag(header, "PatientID")
        study_id = _tag(header, "StudyInstanceUID")
    if not image_id:
        raise MissingIdentityError(
            "no ImageID: the path is not MIMIC layout (p<subject>/s<study>/<id>.dcm) and the "
            "header has no SOPInstanceUID")
    file_meta = getattr(header, "file_meta", None)
    transfer_syntax = _tag(file_meta, "TransferSyntaxUID") if file_meta is not None else ""
    return ImageRecord(
        path=path,
        image_id=image_id,
        subject_id=subject_id or "UNKNOWN",
        study_id=study_id or "UNKNOWN",
        view_position=_tag(header, "ViewPosition").upper(),
        rows=int(header.get("Rows") or 0),
        columns=int(header.get("Columns") or 0),
        photometric=_tag(header, "PhotometricInterpretation"),
        transfer_syntax=transfer_syntax,
    )
