"""Shared fixtures: paths to the real test DICOMs and a tiny synthetic archive."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_CXR = Path(os.environ.get("DICOMVEC_TESTDATA", REPO.parent / "shared" / "testdata" / "cxr"))

pytest_plugins = []


@pytest.fixture(scope="session")
def real_cxr_dir() -> Path:
    """``../shared/testdata/cxr`` (real radiographs); tests using it skip when it is absent."""
    if not REAL_CXR.is_dir() or not list(REAL_CXR.glob("*.dcm")):
        pytest.skip(f"real test DICOMs not present at {REAL_CXR}")
    return REAL_CXR
