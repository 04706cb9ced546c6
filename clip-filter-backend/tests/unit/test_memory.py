"""glibc malloc settings: two arenas unless the user chose, and freed heap memory handed back on request."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the malloc settings are glibc-only")


def run(code: str, env_extra: dict[str, str] | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


TUNE = "from clip_filter.core.memory import tune_malloc; print(tune_malloc())"


@glibc_only
def test_two_arenas_are_set_on_glibc():
    assert run(TUNE) == "True"


def test_an_arena_count_set_by_the_user_wins():
    assert run(TUNE, {"MALLOC_ARENA_MAX": "4"}) == "False"


@glibc_only
def test_freed_heap_memory_is_handed_back_to_the_system():
    # 200 MB in 4 KB malloc blocks; every 50th stays alive so glibc cannot simply shrink the heap's
    # top: the free memory between them stays resident until release_free_memory() hands it back.
    code = """
import os
from clip_filter.core.memory import release_free_memory
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
blocks = [bytes(4000) for _ in range(50_000)]
kept = blocks[::50]
del blocks
before = rss()
released = release_free_memory()
print(released, (before - rss()) // 2**20)
"""
    released, freed_mb = run(code).split()
    assert released == "True"
    assert int(freed_mb) >= 100, f"only {freed_mb} MB of ~196 MB free heap memory was handed back"
