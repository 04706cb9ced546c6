"""glibc malloc settings for a long-running PyTorch server.

Two glibc behaviours make the server's resident set grow under load and stay grown:
- every thread that allocates gets its own arena (up to 8 x cores), and memory freed in an arena
  stays in it; the server has many threads (event loop, thread pools, model thread). Two arenas
  are enough for it (`tune_malloc`, at start).
- freed heap memory is kept for reuse. While the model works that reuse is what keeps it fast:
  every layer of every batch allocates and frees activation buffers of a few MB, and taking them
  from the heap costs nothing, whereas forcing them to mmap (a fixed 1 MiB mmap threshold, our
  earlier setting) costs a page fault per 4 KiB and made ViT-B-32 ~20% slower on an fp32 CPU
  (16 clients 10.0 -> 12.4 images/s, ingest 10.5 -> 13.0 with the threshold left to glibc).
  So the memory is kept while there is work and handed back to the system once the model has
  been idle for a moment (`release_free_memory`, called by the batcher's model thread).
A MALLOC_ARENA_MAX the user already set wins: glibc applied it at start, and it is left alone.

Loading weights from a memory-mapped checkpoint pulls the file's pages into the resident set as they are
read; `drop_file_pages` lets the kernel take back those of a tensor that has been converted (madvise).

Python's cyclic garbage collector is the third: a full (generation 2) collection walks every tracked object,
and once torch, open_clip and the model are loaded that is ~440k objects, 200-300 ms on this 2-core EPYC,
run on whichever thread happened to allocate, holding the GIL throughout. Under a tokenizer bomb or an upload
flood it landed on the event loop and stalled `/health/ready` for that long. Those objects live as long as
the process, so once the model is loaded they are moved out of the collector's sight
(`freeze_long_lived_objects`, gc.freeze): later full collections walk only what was made since.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
from functools import lru_cache

M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h
MADV_DONTNEED = 4  # madvise advice, from Linux's mman.h
ARENAS = 2


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not all(hasattr(libc, name) for name in ("mallopt", "malloc_trim", "madvise")):
            return None  # musl (Alpine) has no mallopt nor malloc_trim
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc() -> bool:
    """Limit glibc to two arenas (a no-op elsewhere). Returns whether anything was applied."""
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, ARENAS))


def release_free_memory() -> bool:
    """Return the heap memory malloc holds free to the system (glibc's malloc_trim); a no-op elsewhere.

    Returns whether any memory was released.
    """
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))


def freeze_long_lived_objects() -> int:
    """Collect once, then exclude every object alive now from later collections (gc.freeze).

    For objects that live as long as the process (modules, the model): call once they exist. Objects
    created later are collected as usual. Returns how many objects are frozen.
    """
    gc.collect()  # so that garbage is freed, not frozen
    gc.freeze()
    return gc.get_freeze_count()


def file_mappings(path: str) -> list[tuple[int, int]]:
    """The address ranges where the file at `path` is mapped into this process (Linux; else none)."""
    target = os.path.realpath(path)
    ranges = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == target:
                    start, end = (int(bound, 16) for bound in fields[0].split("-"))
                    ranges.append((start, end))
    except OSError:
        return []
    return ranges


def drop_file_pages(address: int, nbytes: int, mappings: list[tuple[int, int]]) -> bool:
    """Let the kernel take back this process's pages of [address, address + nbytes) when the range lies
    in one of `mappings` (see `file_mappings`): they hold the file's unmodified bytes and are read again
    from it if touched, so nothing is lost. Whole pages only; anything else is left alone.
    Returns whether pages were dropped.
    """
    libc = _glibc()
    if libc is None or nbytes <= 0 or not any(start <= address and address + nbytes <= end for start, end in mappings):
        return False
    page = os.sysconf("SC_PAGE_SIZE")
    first, last = -(-address // page) * page, (address + nbytes) // page * page
    if last <= first:
        return False
    return libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), MADV_DONTNEED) == 0
