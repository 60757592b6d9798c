"""Matched paths that cannot be read as files, so that each one becomes a ``read`` dead letter
instead of vanishing.

- ``unreadable_reason(path)``: for a local path, why it cannot be read as a regular file (a
  dangling or looping symbolic link, a directory, a FIFO — opening one would block forever —, a
  socket or device, a file that vanished) or None. Remote paths (``scheme://``) → None: their
  filesystem's ``open`` reports its own errors.
- ``paths_the_listing_skips(pattern, listed)``: Beam's local listing (``os.walk`` + ``getsize``)
  silently drops dangling symbolic links and never lists directories; this walks the same tree
  and returns the local paths the pattern matches that are not in ``listed``. Directories are
  only reported when the pattern's last component names something (``*.dcm``), not for a bare
  ``*`` / ``**``, which would match every folder.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from typing import Iterable, List, Optional

from apache_beam.io.filesystem import FileSystem

__all__ = ["UnreadablePathError", "is_local", "unreadable_reason", "check_readable",
           "paths_the_listing_skips", "NON_DICOM_SUFFIXES", "is_non_dicom_kind"]

#: file kinds that are plainly not DICOM: a folder given as ``--input`` skips such a file (when
#: it has no ``DICM`` preamble) instead of dead-lettering it, e.g. MIMIC-CXR's reports
#: (``files/pXX/p<subject>/s<study>.txt``), its index.html, LICENSE.txt, SHA256SUMS.txt and
#: record lists (``cxr-record-list.csv.gz``)
NON_DICOM_SUFFIXES = frozenset({
    ".txt", ".csv", ".tsv", ".json", ".jsonl", ".xml", ".html", ".htm", ".md", ".rst", ".pdf",
    ".log", ".yaml", ".yml", ".ini", ".cfg", ".sh", ".py", ".sql", ".parquet", ".db",
    ".sqlite", ".md5", ".sha1", ".sha256", ".gz", ".bz2", ".xz", ".zst", ".zip", ".tar",
    ".tgz", ".7z", ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp",
    ".doc", ".docx", ".xls", ".xlsx"})


class UnreadablePathError(OSError):
    """A matched path that is not a readable regular file."""


def is_local(path: str) -> bool:
    return "://" not in path


def unreadable_reason(path: str) -> Optional[str]:
    """Why the local ``path`` cannot be read as a regular file, or None."""
    if not is_local(path):
        return None
    try:
        info = os.stat(path)  # follows symbolic links
    except FileNotFoundError:
        if os.path.islink(path):
            return f"dangling symbolic link (its target {os.readlink(path)!r} does not exist)"
        return "file not found (it vanished after the input was listed)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (too many levels of symbolic links)"
        return f"cannot stat: {exc.strerror or exc}"
    mode = info.st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), not a file: not opened (a read would block)"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a file"
    return "is not a regular file"


def is_non_dicom_kind(path: str) -> bool:
    """The file's extension names a kind that is not DICOM (``NON_DICOM_SUFFIXES``); a file
    without extension, ``.dcm`` or an unknown extension is not (it may be DICOM)."""
    name = path.replace("\\", "/").rsplit("/", 1)[-1].lower()
    dot = name.rfind(".")
    return dot > 0 and name[dot:] in NON_DICOM_SUFFIXES


def check_readable(path: str) -> None:
    """Raise ``UnreadablePathError`` when ``unreadable_reason`` finds a problem."""
    reason = unreadable_reason(path)
    if reason:
        raise UnreadablePathError(f"{path}: {reason}")


def paths_the_listing_skips(pattern: str, listed: Iterable[str]) -> List[str]:
    """Local paths ``pattern`` matches that Beam's listing left out (sorted)."""
    if not pattern or not is_local(pattern):
        return []
    if pattern.endswith(os.sep):
        pattern += "*"
    prefix = re.match(r"^[^[*?]*", pattern).group(0)
    if prefix == pattern:  # no glob: one path
        candidates = [pattern] if os.path.lexists(pattern) else []
        root = None
    else:
        root = os.path.dirname(prefix)
        candidates = None
    regex = re.compile(FileSystem.translate_pattern(pattern))
    last = os.path.basename(pattern)
    report_dirs = last not in ("*", "**")
    known = set(listed)
    skipped = []
    if root is not None:
        if not os.path.isdir(root):
            return []
        candidates = []
        for dirpath, dirnames, filenames in os.walk(root):
            candidates.extend(os.path.join(dirpath, name) for name in filenames)
            if report_dirs:
                candidates.extend(os.path.join(dirpath, name) for name in dirnames)
    for path in candidates:
        if path in known or not regex.match(path):
            continue
        if os.path.isdir(path) and not os.path.islink(path) and not report_dirs:
            continue
        skipped.append(path)
    return sorted(skipped)
