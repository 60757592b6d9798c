"""Shared fixtures: paths to the real test DICOMs and a tiny synthetic archive."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.sinks import SINKS, sink_url as make_sink_url

REPO = Path(__file__).resolve().parents[1]


def _real_cxr() -> Path:
    """``DICOMVEC_TESTDATA``, else ``../shared/testdata/cxr`` from the repo root (or from its
    parent, for a git worktree one level deeper)."""
    if os.environ.get("DICOMVEC_TESTDATA"):
        return Path(os.environ["DICOMVEC_TESTDATA"])
    candidates = [REPO.parent / "shared" / "testdata" / "cxr",
                  REPO.parent.parent / "shared" / "testdata" / "cxr"]
    return next((c for c in candidates if c.is_dir()), candidates[0])


REAL_CXR = _real_cxr()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

pytest_plugins = ["tests.pg_fixtures", "tests.nvclip_fixtures", "tests.s3_fixtures"]


@pytest.fixture(params=SINKS)
def sink_url(request, tmp_path) -> str:
    """A fresh, empty database of each available kind (see tests/sinks.py)."""
    return make_sink_url(request.param, request, tmp_path)


@pytest.fixture(scope="session")
def real_cxr_dir() -> Path:
    """``../shared/testdata/cxr`` (real radiographs); tests using it skip when it is absent —
    except in CI (``CI`` set), where a missing folder is a failure, not a hidden gap."""
    if not REAL_CXR.is_dir() or not list(REAL_CXR.glob("*.dcm")):
        message = (f"real test DICOMs not present at {REAL_CXR} (set DICOMVEC_TESTDATA or "
                   f"place them at ../shared/testdata/cxr)")
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return REAL_CXR


@pytest.fixture(scope="session")
def streaming_runner():
    """Extra flags for a local streaming run (Prism, built by scripts/prism/install.sh)."""
    from dicomvec.pipeline.local_engine import PrismNotFoundError, find_prism
    try:
        return ["--prism_location", find_prism()]
    except PrismNotFoundError as exc:
        if in_ci():
            pytest.fail(f"Prism is required in CI: {exc}")
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
