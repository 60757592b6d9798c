"""Hand-written MIMIC-CXR-format sample reports (invented text, no patient data) for the local
demo and tests, and a helper that lays them next to a synthetic MIMIC-layout image sample.

``python -m dicomvec.reports.samples OUT/sample/files`` writes ``pXX/p<subject>/s<study>.txt``
for every study folder ``pXX/p<subject>/s<study>/`` that has no report yet, choosing a sample
deterministically from the study ID. The samples cover the layouts the parser must handle:
FINDINGS + IMPRESSION, IMPRESSION only, FINDINGS only, ``FINDINGS AND IMPRESSION``, no sections
at all, a wet read, and an impression longer than CLIP's 77-token window.
"""
from __future__ import annotations

import hashlib
import sys
from importlib import resources
from pathlib import Path
from typing import Dict, List


def sample_texts() -> Dict[str, str]:
    """Sample name (file stem) → report text, sorted by name."""
    folder = resources.files(__name__)
    return {entry.name[:-4]: entry.read_text(encoding="utf-8")
            for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".txt")}


def write_sample_reports(files_root: str | Path) -> List[Path]:
    """Write a report for each study folder under ``files_root`` lacking one; returns the paths
    written. Raises ValueError when ``files_root`` has no ``p*/p*/s*/`` study folders."""
    root = Path(files_root)
    studies = sorted(p for p in root.glob("p*/p*/s*") if p.is_dir())
    if not studies:
        raise ValueError(f"no MIMIC-layout study folders (pXX/p<subject>/s<study>/) under {root}")
    texts = list(sample_texts().values())
    written = []
    for study in studies:
        target = study.with_name(study.name + ".txt")
        if target.exists():
            continue
        index = int(hashlib.sha256(study.name.encode()).hexdigest(), 16) % len(texts)
        target.write_text(texts[index], encoding="utf-8")
        written.append(target)
    return written


def main(argv: List[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m dicomvec.reports.samples FILES_DIR", file=sys.stderr)
        return 2
    try:
        written = write_sample_reports(argv[0])
    except ValueError as exc:
        print(f"dicomvec: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} sample reports under {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
