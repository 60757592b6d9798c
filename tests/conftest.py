"""Shared fixtures: paths to the real test DICOMs and a tiny synthetic archive."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_CXR = Path(os.environ.get("DICOMVEC_TESTDATA", REPO.parent / "shared" / "testdata" / "cxr"))

pytest_plugins = ["tests.pg_fixtures", "tests.nvclip_fixtures"]


@pytest.fixture(scope="session")
def real_cxr_dir() -> Path:
    """``../shared/testdata/cxr`` (real radiographs); tests using it skip when it is absent."""
    if not REAL_CXR.is_dir() or not list(REAL_CXR.glob("*.dcm")):
        pytest.skip(f"real test DICOMs not present at {REAL_CXR}")
    return REAL_CXR


@pytest.fixture(scope="session")
def streaming_runner():
    """Extra flags for a local streaming run (Prism, built by scripts/prism/install.sh)."""
    from dicomvec.pipeline.local_engine import PrismNotFoundError, find_prism
    try:
        return ["--prism_location", find_prism()]
    except PrismNotFoundError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def _drop_stream_handlers_left_behind():
    """``dicomvec.cli.main`` configures logging with a handler on the current ``sys.stderr``,
    which under pytest is a capture that is closed after the test: later log calls from any
    thread would print "ValueError: I/O operation on closed file" (and slow everything down).
    Remove plain stream handlers a test added to the root logger."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and handler not in before:
            root.removeHandler(handler)
