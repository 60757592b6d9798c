"""Synthetic MIMIC-CXR-like DICOM archive generator (``dicomvec synth``).

Writes ``<out>/files/pXX/p<subject>/s<study>/<dicom_id>.dcm`` with MIMIC-size (default
3056×2544) 16-bit DX images: a smooth chest-like attenuation map (body, lungs, mediastinum,
heart, ribs) plus noise, BitsStored 12 or 16, MONOCHROME2 and some MONOCHROME1 (+ Presentation
LUT Shape INVERSE), PA/AP/LATERAL, a window from the data, and synthetic identities only
("SYNTHETIC^PATIENT"). Transfer syntaxes cycle through the requested ones:

- ``native``: Explicit VR Little Endian
- ``j2k``: JPEG 2000 lossless (pylibjpeg-openjpeg encoder)
- ``rle``: RLE lossless (pylibjpeg-rle encoder)
- ``jpeg-lossless``: JPEG lossless process 14 SV1 (python-gdcm encoder)
- ``jpegls``: JPEG-LS lossless (python-gdcm encoder)

``broken`` extra files fail on purpose: alternately native files whose Pixel Data is truncated
(a valid header, decode must fail) and files that are not DICOM at all. A manifest
``<out>/synthetic-manifest.csv`` lists every file. Output is deterministic for a given seed.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless,
                         ExplicitVRLittleEndian, PYDICOM_ROOT_UID, UID, generate_uid)

DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
MIMIC_SIZE = (3056, 2544)  # rows, columns
SYNTAXES = {
    "native": ExplicitVRLittleEndian,
    "j2k": JPEG2000Lossless,
    "rle": RLELossless,
    "jpeg-lossless": JPEGLosslessSV1,
    "jpegls": JPEGLSLossless,
}
VIEWS = ("PA", "AP", "LATERAL")
MANIFEST = "synthetic-manifest.csv"


@dataclasses.dataclass(frozen=True)
class SyntheticFile:
    """One generated file; ``broken`` is "" for a good image, else "truncated" / "not-dicom"."""

    path: str
    dicom_id: str
    subject_id: str
    study_id: str
    view_position: str
    syntax: str
    photometric: str
    bits_stored: int
    broken: str = ""


# --------------------------------------------------------------------------- pixels


def chest_image(rows: int, columns: int, bits_stored: int, rng: np.random.Generator,
                lateral: bool = False) -> np.ndarray:
    """A smooth chest-radiograph-like uint16 image (MONOCHROME2 sense: bone/tissue bright).

    Built at 1/8 resolution from ellipses and sinusoids, upsampled bilinearly (Pillow), plus a
    tiled noise pattern: a handful of full-size float32 passes, no per-pixel Python.
    """
    h0, w0 = max(8, rows // 8), max(8, columns // 8)
    y, x = np.mgrid[-1:1:complex(0, h0), -1:1:complex(0, w0)].astype(np.float32)
    j = lambda s: np.float32(rng.uniform(-s, s))  # noqa: E731 - small jitter

    def ellipse(cx, cy, rx, ry, sharp=10.0):
        d = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
        return 1.0 / (1.0 + np.exp(np.clip((d - 1.0) * sharp, -30, 30)))

    body_rx = 0.55 if lateral else 0.85
    body = ellipse(j(0.03), 0.1 + j(0.03), body_rx + j(0.04), 1.05 + j(0.03), 6.0)
    if lateral:
        lungs = ellipse(0.05 + j(0.05), -0.05 + j(0.05), 0.35, 0.55, 8.0)
    else:
        lungs = (ellipse(-0.42 + j(0.04), -0.08 + j(0.04), 0.28 + j(0.03), 0.58 + j(0.04), 8.0)
                 + ellipse(0.42 + j(0.04), -0.08 + j(0.04), 0.28 + j(0.03), 0.58 + j(0.04), 8.0))
    spine = np.exp(-((x - j(0.02)) / 0.09) ** 2) * body
    heart = ellipse(0.12 + j(0.05), 0.28 + j(0.05), 0.3, 0.25, 6.0)
    ribs = 0.5 + 0.5 * np.sin((y * 18.0 + np.abs(x) * 6.0) + j(3.0))
    attenuation = (0.15 + 0.55 * body - 0.35 * lungs + 0.25 * spine + 0.2 * heart * lungs
                   + 0.08 * ribs * lungs)
    small = np.clip(attenuation, 0.0, 1.0).astype(np.float32)
    big = np.asarray(Image.fromarray(small, mode="F").resize((columns, rows),
                                                            Image.Resampling.BILINEAR))
    top = float(2 ** bits_stored - 1)
    noise = rng.normal(0.0, 0.004 * top, size=(256, 256)).astype(np.float32)
    reps = (-(-rows // 256), -(-columns // 256))
    img = big * np.float32(0.8 * top) + np.float32(0.08 * top)
    img += np.tile(noise, reps)[:rows, :columns]
    np.clip(img, 0, top, out=img)
    return img.astype(np.uint16)


# --------------------------------------------------------------------------- identities


def _digits(rng: np.random.Generator, low: int, high: int) -> str:
    return str(int(rng.integers(low, high)))


def _dicom_id(rng: np.random.Generator) -> str:
    """MIMIC-style dicom_id: five dash-separated 8-hex-digit groups."""
    return "-".join(f"{int(v):08x}" for v in rng.integers(0, 2 ** 32, size=5, dtype=np.uint64))


def _uid(seed: int, *parts) -> UID:
    return generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[str(seed), *map(str, parts)])


def _dataset(image: np.ndarray, info: SyntheticFile, seed: int, index: int) -> Dataset:
    rows, columns = image.shape
    sop_uid = _uid(seed, index, "sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = _uid(seed, info.study_id, "study")
    ds.SeriesInstanceUID = _uid(seed, info.study_id, index, "series")
    ds.PatientName = "SYNTHETIC^PATIENT"
    ds.PatientID = info.subject_id
    ds.StudyID = info.study_id[:16]
    ds.AccessionNumber = ""
    ds.StudyDate = f"21{index % 90 + 10:02d}0{index % 9 + 1}1{index % 9}"
    ds.StudyTime = "120000"
    ds.Modality = "DX"
    ds.Manufacturer = "dicomvec synthetic"
    ds.ViewPosition = info.view_position
    ds.PerformedProcedureStepDescription = f"CHEST ({info.view_position})"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = info.photometric
    ds.PresentationLUTShape = "INVERSE" if info.photometric == "MONOCHROME1" else "IDENTITY"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, info.bits_stored, info.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    sample = image[::16, ::16]
    lo, hi = np.percentile(sample, [1, 99])
    ds.WindowCenter = f"{(lo + hi) / 2:.1f}"
    ds.WindowWidth = f"{max(hi - lo, 1.0):.1f}"
    ds.PixelData = image.tobytes()
    return ds


# --------------------------------------------------------------------------- writing


def _gdcm_transcode(path: Path, syntax: str) -> None:
    import gdcm  # python-gdcm (BSD): the only MIT/BSD JPEG lossless / JPEG-LS encoder here
    target = {"jpeg-lossless": gdcm.TransferSyntax.JPEGLosslessProcess14_1,
              "jpegls": gdcm.TransferSyntax.JPEGLSLossless}[syntax]
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise RuntimeError(f"gdcm cannot read {path}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(target))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"gdcm cannot encode {syntax}")
    writer = gdcm.ImageWriter()
    tmp = path.with_suffix(".tmp")
    writer.SetFileName(str(tmp))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"gdcm cannot write {syntax}")
    os.replace(tmp, path)


def write_image(ds: Dataset, path: Path, syntax: str) -> None:
    """Save ``ds`` (native) at ``path`` in ``syntax`` (a ``SYNTAXES`` key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if syntax in ("j2k", "rle"):
        ds.compress(SYNTAXES[syntax], encoding_plugin="pylibjpeg", generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
    if syntax in ("jpeg-lossless", "jpegls"):
        _gdcm_transcode(path, syntax)


def _write_broken(path: Path, kind: str, ds: Dataset) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
        ds.save_as(path, enforce_file_format=True)
    else:
        digest = hashlib.sha256(str(path.name).encode()).hexdigest()
        path.write_text("this is not a DICOM file, it only has a .dcm name\n" + digest * 20)


def synthetic_dataset(size: Tuple[int, int] = (256, 212), bits_stored: int = 12,
                      photometric: str = "MONOCHROME2", view_position: str = "PA",
                      seed: int = 0, index: int = 0) -> Dataset:
    """One native (Explicit VR LE) synthetic DX dataset in memory, e.g. for tests."""
    rng = np.random.default_rng(seed)
    info = SyntheticFile(path="", dicom_id=_dicom_id(rng),
                         subject_id=_digits(rng, 10_000_000, 20_000_000),
                         study_id=_digits(rng, 50_000_000, 60_000_000),
                         view_position=view_position, syntax="native", photometric=photometric,
                         bits_stored=bits_stored)
    image = chest_image(size[0], size[1], bits_stored, np.random.default_rng([seed, index]),
                        lateral=view_position == "LATERAL")
    if photometric == "MONOCHROME1":
        image = (2 ** bits_stored - 1) - image
    return _dataset(image, info, seed, index)


def parse_size(text: str) -> Tuple[int, int]:
    """``"3056x2544"`` → (rows, columns)."""
    try:
        rows, columns = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like 3056x2544 (rows x columns), got {text!r}") \
            from None
    if rows < 16 or columns < 16:
        raise ValueError("size must be at least 16x16")
    return rows, columns


def generate(out: str | os.PathLike, count: int, size: Tuple[int, int] = MIMIC_SIZE,
             syntaxes: Sequence[str] = ("native", "j2k", "rle"), broken: int = 0,
             seed: int = 0) -> List[SyntheticFile]:
    """Write ``count`` good and ``broken`` bad files under ``out``; return what was written.

    Raises ValueError for an unknown syntax name.
    """
    unknown = [s for s in syntaxes if s not in SYNTAXES]
    if unknown or not syntaxes:
        raise ValueError(f"unknown syntax {unknown or syntaxes}; choose from {sorted(SYNTAXES)}")
    root = Path(out)
    rng = np.random.default_rng(seed)
    rows, columns = size
    written: List[SyntheticFile] = []
    subject, study = None, None
    for index in range(count + broken):
        new_subject = subject is None or rng.random() < 0.5
        if new_subject:
            subject = _digits(rng, 10_000_000, 20_000_000)
        if new_subject or rng.random() < 0.6:  # a study belongs to one subject
            study = _digits(rng, 50_000_000, 60_000_000)
        good = index < count
        info = SyntheticFile(
            path="", dicom_id=_dicom_id(rng), subject_id=subject, study_id=study,
            view_position=VIEWS[index % len(VIEWS)],
            syntax=syntaxes[index % len(syntaxes)] if good else "native",
            photometric="MONOCHROME1" if index % 4 == 3 else "MONOCHROME2",
            bits_stored=12 if index % 2 == 0 else 16,
            broken="" if good else ("truncated", "not-dicom")[(index - count) % 2])
        path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / \
            f"{info.dicom_id}.dcm"
        info = dataclasses.replace(info, path=str(path))
        image = chest_image(rows, columns, info.bits_stored, np.random.default_rng([seed, index]),
                            lateral=info.view_position == "LATERAL")
        if info.photometric == "MONOCHROME1":
            image = (2 ** info.bits_stored - 1) - image
        ds = _dataset(image, info, seed, index)
        if good:
            write_image(ds, path, info.syntax)
        else:
            _write_broken(path, info.broken, ds)
        written.append(info)
    with open(root / MANIFEST, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[f.name for f in dataclasses.fields(SyntheticFile)])
        writer.writeheader()
        for info in written:
            writer.writerow(dataclasses.asdict(info))
    return written
