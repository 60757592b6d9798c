"""Can this process write here? Checks of local folders that create nothing (preflight)."""
from __future__ import annotations

import os
import tempfile
from typing import Optional


def writable_dir(directory: str) -> bool:
    """``directory`` is a folder this process can create files in."""
    if not os.path.isdir(directory):
        return False
    try:  # os.access says yes to root even where writing fails (read-only mounts, /proc)
        fd, probe = tempfile.mkstemp(prefix=".dicomvec-probe-", dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def folder_problem(folder: str) -> Optional[str]:
    """Why ``folder`` cannot be written or made (its nearest existing ancestor is a file or
    not writable), or None. Makes nothing: missing folders are made by the job itself."""
    existing = folder or "."
    while not os.path.exists(existing):
        parent = os.path.dirname(existing.rstrip(os.sep)) or "."
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        return f"{existing!r} is a file, not a folder"
    if not writable_dir(existing):
        return f"folder {existing!r} is not writable"
    return None
