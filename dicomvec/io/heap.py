"""Keep a reading worker's heap from holding on to freed object buffers (glibc only).

With the read-ahead, each fetch thread allocates whole objects (~15 MB for MIMIC-CXR) and the
decode allocates arrays of the same order. glibc's malloc raises its mmap threshold after the
first such block is freed (up to 32 MB), so later blocks come from the heaps (one arena per
thread, up to 8 per core), where freed memory stays in the process: measured with
``benchmarks/bucket_read.py``, ~30 MB more peak RSS per worker with the default window.
``limit_heap_growth`` fixes the threshold at 1 MB (every large block is its own mapping,
returned to the system when freed) and caps the arenas at 2 — the same as starting the worker
with ``MALLOC_MMAP_THRESHOLD_=1048576 MALLOC_ARENA_MAX=2``. A no-op where ``mallopt`` is
missing (musl, macOS). Called once per process, by the DoFns that read object storage.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: ``DICOMVEC_MMAP_THRESHOLD`` (bytes) overrides the threshold; 0 leaves malloc alone
MMAP_THRESHOLD = int(os.environ.get("DICOMVEC_MMAP_THRESHOLD", 1 << 20))
ARENA_MAX = 2
_done = False
_lock = threading.Lock()


def limit_heap_growth() -> bool:
    """Apply the settings (once per process); True when glibc accepted them."""
    global _done
    with _lock:
        if _done or MMAP_THRESHOLD <= 0:
            return _done
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
            bool(mallopt(_M_ARENA_MAX, ARENA_MAX))
        log.debug("malloc: mmap threshold %d, arenas %d: %s", MMAP_THRESHOLD, ARENA_MAX,
                  "set" if _done else "refused")
        return _done
