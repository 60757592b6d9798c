"""A small input tree for the Flink tests: synthetic MIMIC-CXR layout DICOMs, one broken file in
that layout, and (when present) the real radiographs from ``../shared/testdata/cxr``.

In: a folder and a count. Out: the files on disk and a ``Sample`` with the exact outcome the
pipeline must produce (images stored, dead letters by stage).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
REAL_STORED = 5          # ../shared/testdata/cxr: six files, one with a corrupt J2K codestream
REAL_CORRUPT = "dx_mono1_j2k_lossless_CORRUPT.dcm"


@dataclasses.dataclass
class Sample:
    root: Path
    pattern: str
    stored: int
    dead_letters: Dict[str, int]   # stage -> count
    broken_paths: list


def _dicom_id(rng: np.random.Generator) -> str:
    """MIMIC-style dicom_id: five dash-separated hex groups."""
    return "-".join(rng.bytes(4).hex() for _ in range(5))


def write_synthetic_cxr(path: Path, rows: int, cols: int, rng: np.random.Generator) -> None:
    """One 16-bit (12 stored) MONOCHROME2 DX image, Explicit VR Little Endian, like MIMIC-CXR."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = path.parent.parent.name[1:]
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    yy, xx = np.mgrid[0:rows, 0:cols]
    pixels = (xx * 2000 / cols + yy * 1500 / rows + rng.integers(0, 500, (rows, cols)))
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def make_sample(root: Path, count: int, seed: int = 5,
                real_dir: Optional[Path] = None) -> Sample:
    """``count`` synthetic images + 1 non-DICOM file under ``root/files/pXX/p<subject>/s<study>/``,
    plus copies of the real radiographs under ``root/real/`` when ``real_dir`` is given."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        subject = 10000000 + index // 2          # two images per subject/study
        study = 50000000 + index // 2
        folder = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}"
        write_synthetic_cxr(folder / f"{_dicom_id(rng)}.dcm", 64 + 8 * (index % 3), 56, rng)
    broken = root / "files" / "p19" / "p19999999" / "s59999999" / f"{_dicom_id(rng)}.dcm"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text("not a DICOM file: the pipeline must dead-letter it, not crash")
    stored, decode_failures, broken_paths = count, 1, [str(broken)]
    if real_dir is not None:
        sources = sorted(real_dir.glob("*.dcm"))
        if len(sources) != REAL_STORED + 1 or not (real_dir / REAL_CORRUPT).exists():
            raise ValueError(f"{real_dir} does not hold the six known test radiographs")
        (root / "real").mkdir(parents=True, exist_ok=True)
        for source in sources:
            shutil.copy(source, root / "real" / source.name)
        stored += REAL_STORED
        decode_failures += 1
        broken_paths.append(str(root / "real" / REAL_CORRUPT))
    dead = {"read": 0, "decode": decode_failures, "normalize": 0, "resize": 0, "embed": 0,
            "write": 0}
    return Sample(root=root, pattern=str(root / "**" / "*.dcm"), stored=stored,
                  dead_letters=dead, broken_paths=broken_paths)
