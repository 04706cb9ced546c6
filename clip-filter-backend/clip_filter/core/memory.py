"""glibc malloc tuning for a long-running PyTorch server on CPU.

Without it the server's resident set grows by ~200 MB under load and never shrinks (measured with
ViT-B-32, 16 clients then a bulk ingest: 1171 MB ready -> 1375 MB). Two glibc behaviours cause it:
- every thread that allocates gets its own arena (up to 8 x cores), and memory freed in an arena
  stays in it; the server has many threads (event loop, thread pools, model thread);
- the mmap threshold adapts upwards after large blocks are freed, so later activation buffers (a few
  MB each) come from the heap, where freed space is kept, instead of mmap, which returns it at once.
Two arenas and a fixed 1 MiB mmap threshold keep the server at ~1.18 GB after the same run, at no
measured cost in throughput. A variable the user already set (MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_)
wins: glibc applied it at start, and it is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameters, from glibc's malloc.h
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD_BYTES = 1 << 20


def tune_malloc() -> bool:
    """Apply the tuning on glibc (Linux); a no-op elsewhere. Returns whether anything was applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl (Alpine) has no mallopt
        return False
    applied = False
    if "MALLOC_ARENA_MAX" not in os.environ:
        applied |= bool(mallopt(M_ARENA_MAX, ARENAS))
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        applied |= bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    return applied
