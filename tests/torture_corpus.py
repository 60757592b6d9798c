"""A torture corpus of DICOM files (and non-files), generated with pydicom, with the outcome the
pipeline must give each one.

``build(root)`` writes every case under ``root`` and returns ``{file name: Expected}``. Outcomes:
``STORED``; ``DUPLICATE`` (a copy of an image that is stored from another file: counted, named
in the log); ``dead(stage)`` (one dead-letter row at that stage). Cases whose outcome depends on
privileges (``unreadable``) are listed in ``NEEDS_NO_DAC_OVERRIDE``.
"""
from __future__ import annotations

import dataclasses
import io
import os
import zlib
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid)

from dicomvec.synthetic import synthetic_dataset, write_image


@dataclasses.dataclass(frozen=True)
class Expected:
    outcome: str  # "stored" | "duplicate" | "dead"
    stage: str = ""

    def __str__(self) -> str:
        return f"dead-lettered at {self.stage}" if self.outcome == "dead" else self.outcome


STORED = Expected("stored")
DUPLICATE = Expected("duplicate")


def dead(stage: str) -> Expected:
    return Expected("dead", stage)


NEEDS_NO_DAC_OVERRIDE = ("unreadable.dcm",)
SIZE = (96, 80)


class _Corpus:
    def __init__(self, root: Path):
        self.root = root
        self.expected: Dict[str, Expected] = {}
        self.index = 0

    def dataset(self, **kwargs) -> Dataset:
        """A fresh small native dataset with its own SOPInstanceUID."""
        self.index += 1
        kwargs.setdefault("size", SIZE)
        return synthetic_dataset(seed=12, index=self.index, **kwargs)

    def path(self, name: str) -> Path:
        return self.root / name

    def save(self, name: str, ds: Dataset, expected: Expected, **kwargs) -> Path:
        ds.save_as(self.path(name), enforce_file_format=kwargs.pop("enforce", True), **kwargs)
        self.expected[name] = expected
        return self.path(name)

    def raw(self, name: str, data: bytes, expected: Expected) -> Path:
        self.path(name).write_bytes(data)
        self.expected[name] = expected
        return self.path(name)

    def good_bytes(self, **kwargs) -> bytes:
        buffer = io.BytesIO()
        self.dataset(**kwargs).save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()


def _with_syntax(ds: Dataset, syntax) -> Dataset:
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _color(ds: Dataset, photometric: str) -> Dataset:
    rows, columns = SIZE
    y, x = np.mgrid[0:rows, 0:columns]
    rgb = np.stack([(x * 3) % 256, (y * 2) % 256, ((x + y) * 5) % 256], axis=-1).astype(np.uint8)
    if photometric == "YBR_FULL":
        from pydicom.pixels import convert_color_space
        rgb = convert_color_space(rgb, "RGB", "YBR_FULL")
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = photometric
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    for keyword in ("WindowCenter", "WindowWidth", "PresentationLUTShape"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = rgb.tobytes()
    return ds


def build(root: Path) -> Dict[str, Expected]:
    """Write the corpus under ``root``; return each name's expected outcome."""
    root.mkdir(parents=True, exist_ok=True)
    c = _Corpus(root)
    good = c.good_bytes()

    # -- not files, or not readable -------------------------------------------------------
    os.symlink(root / "no-such-target.dcm", c.path("dangling_symlink.dcm"))
    c.expected["dangling_symlink.dcm"] = dead("read")
    os.mkfifo(c.path("fifo.dcm"))
    c.expected["fifo.dcm"] = dead("read")
    c.path("directory.dcm").mkdir()
    c.expected["directory.dcm"] = dead("read")
    c.raw("unreadable.dcm", c.good_bytes(), dead("read"))
    c.path("unreadable.dcm").chmod(0)

    # -- not DICOM, or cut short ----------------------------------------------------------
    c.raw("zero_bytes.dcm", b"", dead("decode"))
    c.raw("truncated_in_preamble.dcm", good[:100], dead("decode"))
    c.raw("truncated_in_header.dcm", good[:400], dead("decode"))
    c.raw("truncated_mid_pixels.dcm", good[:len(good) - SIZE[0] * SIZE[1]], dead("decode"))
    c.raw("truncated_last_bytes.dcm", good[:-3], dead("decode"))
    c.raw("not_dicom.dcm", b"just some notes, not an image\n" * 20, dead("decode"))
    png = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(png, "PNG")
    c.raw("png_named.dcm", png.getvalue(), dead("decode"))
    rng = np.random.default_rng(3)
    c.raw("dicm_then_garbage.dcm", b"\0" * 128 + b"DICM" + rng.bytes(4000), dead("decode"))

    # -- broken image attributes ----------------------------------------------------------
    ds = c.dataset()
    del ds.PixelData
    c.save("no_pixel_data.dcm", ds, dead("decode"))
    ds = c.dataset()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    c.save("pixel_length_mismatch.dcm", ds, dead("decode"))
    ds = c.dataset()
    ds.Rows, ds.Columns = 65535, 65535
    ds.PixelData = ds.PixelData[:1000]
    c.save("huge_rows_columns_tiny_data.dcm", ds, dead("decode"))
    ds = c.dataset()
    c.save("unknown_transfer_syntax.dcm", _with_syntax(ds, "1.2.840.99999.1.2.3"),
           dead("decode"), enforce=False, implicit_vr=False, little_endian=True)
    ds = c.dataset()
    del ds.PhotometricInterpretation
    c.save("missing_photometric.dcm", ds, STORED)  # assumed MONOCHROME2, as pydicom does
    ds = c.dataset()
    ds.BitsAllocated = 12
    c.save("odd_bits_allocated.dcm", ds, dead("decode"))

    # -- transfer syntaxes ----------------------------------------------------------------
    c.save("explicit_vr_le.dcm", c.dataset(), STORED)
    c.save("implicit_vr_le.dcm", _with_syntax(c.dataset(), ImplicitVRLittleEndian), STORED)
    ds = c.dataset()
    values = np.frombuffer(ds.PixelData, "<u2")
    ds.PixelData = values.astype(">u2").tobytes()
    c.save("explicit_vr_big_endian.dcm", _with_syntax(ds, ExplicitVRBigEndian), STORED)
    c.save("deflated.dcm", _with_syntax(c.dataset(), DeflatedExplicitVRLittleEndian), STORED)
    write_image(c.dataset(), c.path("rle.dcm"), "rle")
    c.expected["rle.dcm"] = STORED
    write_image(c.dataset(), c.path("j2k.dcm"), "j2k")
    c.expected["j2k.dcm"] = STORED
    ds = c.dataset()
    raw = io.BytesIO()
    ds.save_as(raw, enforce_file_format=True)
    ds.file_meta = FileMetaDataset()  # dropped below: written without preamble and meta
    c.save("no_file_meta.dcm", ds, STORED, enforce=False, implicit_vr=True,
           little_endian=True)

    # -- values the normaliser must cope with --------------------------------------------
    ds = c.dataset()
    ds.WindowWidth = "0"
    c.save("window_width_zero.dcm", ds, STORED)
    ds = c.dataset()
    ds.WindowCenter, ds.WindowWidth = "90000", "10"
    c.save("window_far_outside_data.dcm", ds, STORED)
    ds = c.dataset()
    ds.RescaleSlope = "0"
    c.save("rescale_slope_zero.dcm", ds, dead("normalize"))
    ds = c.dataset()
    ds.PixelData = np.full(SIZE, 1234, "<u2").tobytes()
    c.save("constant_image.dcm", ds, dead("normalize"))
    ds = c.dataset()
    ds.Rows = ds.Columns = 1
    ds.PixelData = np.array([[777]], "<u2").tobytes()
    c.save("one_by_one.dcm", ds, dead("normalize"))  # one pixel is a constant image
    ds = c.dataset()
    frames = np.stack([np.frombuffer(ds.PixelData, "<u2").reshape(SIZE)] * 3)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    c.save("multi_frame.dcm", ds, STORED)
    c.save("rgb.dcm", _color(c.dataset(), "RGB"), STORED)
    c.save("ybr_full.dcm", _color(c.dataset(), "YBR_FULL"), STORED)
    ds = c.dataset()
    values = np.frombuffer(ds.PixelData, "<u2").astype(np.int32) - 2048
    ds.PixelRepresentation = 1
    ds.PixelData = values.astype("<i2").tobytes()
    ds.RescaleIntercept = "0"
    ds.WindowCenter, ds.WindowWidth = "0", "3000"
    c.save("signed_pixels.dcm", ds, STORED)
    ds = c.dataset()
    values = (np.frombuffer(ds.PixelData, "<u2") >> 4).astype(np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.WindowCenter, ds.WindowWidth = "128", "256"
    ds.PixelData = values.tobytes()
    c.save("eight_bit.dcm", ds, STORED)
    ds = c.dataset(photometric="MONOCHROME1")
    for keyword in ("WindowCenter", "WindowWidth"):
        delattr(ds, keyword)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", list(range(0, 65536, 16)))  # LUT Data
    item.LUTExplanation = "linear"
    ds.VOILUTSequence = Sequence([item])
    c.save("monochrome1_voi_lut_sequence.dcm", ds, STORED)
    ds = c.dataset(photometric="MONOCHROME1")
    for keyword in ("WindowCenter", "WindowWidth", "PresentationLUTShape"):
        delattr(ds, keyword)
    c.save("monochrome1_no_voi.dcm", ds, STORED)

    # -- names ----------------------------------------------------------------------------
    c.save("naïve façade ünïcode.dcm", c.dataset(), STORED)
    c.save("name with  spaces.dcm", c.dataset(), STORED)
    os.symlink(c.path("explicit_vr_le.dcm"), c.path("symlink_to_explicit_vr_le.dcm"))
    c.expected["symlink_to_explicit_vr_le.dcm"] = DUPLICATE  # same image as its target

    # -- copies of one image (same SOPInstanceUID): a broken copy must not hide a good one --
    for pair, broken_first in (("dupA", True), ("dupB", False)):
        ds = c.dataset()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        intact = buffer.getvalue()
        broken = intact[:len(intact) - SIZE[0] * SIZE[1]]  # cut in the pixel data
        names = (f"{pair}_1.dcm", f"{pair}_2.dcm")
        good_name, broken_name = (names[1], names[0]) if broken_first else names
        c.raw(good_name, intact, STORED)
        # broken first: tried first, fails, is dead-lettered, its twin is stored; broken
        # second: never needed (the first copy decodes), so only counted as a duplicate
        c.raw(broken_name, broken, dead("decode") if broken_first else DUPLICATE)
    return dict(c.expected)


def main(argv=None) -> int:
    """``python -m tests.torture_corpus RUN-FLAGS...``: run ``run_ingest`` with the flags and
    print the summary as JSON on the last line (the torture test runs it with reduced
    privileges when it is root, so that an unreadable file is unreadable)."""
    import json
    import sys
    from dicomvec.pipeline.run import run_ingest
    summary = run_ingest(list(sys.argv[1:] if argv is None else argv))
    print(summary.render(), file=sys.stderr)
    print(json.dumps(dataclasses.asdict(summary)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
