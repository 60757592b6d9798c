"""Open one file for reading by its path, importing Beam only when the path needs it.

``open_path(path)``: a local path opens with ``open(path, "rb")``; a path with a scheme
(``s3://``, ``gs://``, ``file://``, ...) through Beam's ``FileSystems.open``, with whatever
options ``FileSystems.set_options`` was given (``--s3_endpoint_url``, ...). Used by the search
side (query images, the page's renderings and header reads), which must start without Beam.
"""
from __future__ import annotations

from typing import BinaryIO


def has_scheme(path: str) -> bool:
    """True for ``scheme://...`` paths (a bucket, or any Beam filesystem)."""
    return "://" in (path or "")


def open_path(path: str) -> BinaryIO:
    if not has_scheme(path):
        return open(path, "rb")
    from apache_beam.io.filesystems import FileSystems
    return FileSystems.open(path)
