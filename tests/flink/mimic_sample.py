"""A small input tree for the Flink tests: synthetic MIMIC-CXR layout DICOMs from the project's
generator (``dicomvec.synthetic``, as ``dicomvec synth``) including its deliberately broken
files, plus (when present) the real radiographs from ``../shared/testdata/cxr``.

In: a folder and a count. Out: the files on disk and a ``Sample`` with the exact outcome the
pipeline must produce (images stored, dead letters by stage, the paths dead-lettered).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Dict, List, Optional

from dicomvec import synthetic

REAL_STORED = 5          # ../shared/testdata/cxr: six files, one with a corrupt J2K codestream
REAL_CORRUPT = "dx_mono1_j2k_lossless_CORRUPT.dcm"
SIZE = (160, 128)        # rows, columns: small, so the tests stay quick


@dataclasses.dataclass
class Sample:
    root: Path
    pattern: str
    stored: int
    dead_letters: Dict[str, int]   # stage -> count
    broken_paths: List[str]


def make_sample(root: Path, count: int, broken: int = 2, seed: int = 5,
                real_dir: Optional[Path] = None) -> Sample:
    """``count`` good + ``broken`` bad synthetic files (truncated pixel data / not DICOM: both
    fail at stage ``decode``) under ``root/files/``, plus copies of the real radiographs under
    ``root/real/`` when ``real_dir`` is given."""
    files = synthetic.generate(root, count, SIZE, ("native", "j2k", "rle"), broken, seed)
    broken_paths = [f.path for f in files if f.broken]
    stored = count
    if real_dir is not None:
        sources = sorted(real_dir.glob("*.dcm"))
        if len(sources) != REAL_STORED + 1 or not (real_dir / REAL_CORRUPT).exists():
            raise ValueError(f"{real_dir} does not hold the six known test radiographs")
        (root / "real").mkdir(parents=True, exist_ok=True)
        for source in sources:
            shutil.copy(source, root / "real" / source.name)
        stored += REAL_STORED
        broken_paths.append(str(root / "real" / REAL_CORRUPT))
    dead = {"read": 0, "decode": len(broken_paths), "normalize": 0, "resize": 0, "embed": 0,
            "write": 0}
    return Sample(root=root, pattern=str(root / "**" / "*.dcm"), stored=stored,
                  dead_letters=dead, broken_paths=broken_paths)
