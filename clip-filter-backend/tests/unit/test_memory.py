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
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


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


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps and madvise are Linux's")


@linux_only
def test_pages_of_a_mapped_file_are_handed_back_and_read_again(tmp_path):
    import mmap

    import numpy as np

    from clip_filter.core.memory import drop_file_pages, file_mappings

    path = tmp_path / "weights.bin"
    expected = np.random.default_rng(0).integers(0, 255, 64 * 2**20, dtype=np.uint8)
    expected.tofile(path)
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        view = np.frombuffer(mapped, dtype=np.uint8)
        address = view.ctypes.data
        ranges = file_mappings(str(path))
        assert any(start <= address < end for start, end in ranges)

        def resident_mb() -> float:
            return (
                sum(int(line.split()[1]) for line in open("/proc/self/smaps_rollup") if line.startswith("Rss:")) / 1024
            )

        assert int(view.sum(dtype=np.uint64)) == int(expected.sum(dtype=np.uint64))  # every page read in
        before = resident_mb()
        assert drop_file_pages(address, view.nbytes, ranges)
        assert before - resident_mb() > 48  # the 64 MB of file pages left the resident set
        np.testing.assert_array_equal(view, expected)  # and read back from the file, unchanged
        del view


@linux_only
def test_memory_outside_the_file_mappings_is_left_alone(tmp_path):
    import numpy as np

    from clip_filter.core.memory import drop_file_pages, file_mappings

    (tmp_path / "other.bin").write_bytes(bytes(4096))
    anonymous = np.arange(4 * 2**20, dtype=np.uint8)
    assert file_mappings(str(tmp_path / "other.bin")) == []  # written, never mapped
    assert not drop_file_pages(anonymous.ctypes.data, anonymous.nbytes, file_mappings(str(tmp_path / "other.bin")))
    assert not drop_file_pages(anonymous.ctypes.data, anonymous.nbytes, [(0, 4096)])
    np.testing.assert_array_equal(anonymous, np.arange(4 * 2**20, dtype=np.uint8))


# ---- the cyclic garbage collector: long-lived objects frozen once the model is loaded -------------------------
FREEZE = """
import gc, weakref
from clip_filter.core.memory import freeze_long_lived_objects

class Node:
    pass

kept = [Node() for _ in range(1000)]
cycle = Node(); cycle.me = cycle  # garbage only the cyclic collector can free
freed = []
weakref.finalize(cycle, freed.append, True)
del cycle
frozen = freeze_long_lived_objects()
tracked = {id(o) for o in gc.get_objects()}  # what later collections walk
later = Node()
later_tracked = id(later) in {id(o) for o in gc.get_objects()}
print(frozen >= 1000, freed == [True], any(id(n) in tracked for n in kept), later_tracked)
"""


def test_freezing_collects_garbage_first_and_hides_the_live_objects_from_later_collections():
    # In a child process: a frozen object is never collected, which this test process should not suffer.
    assert run(FREEZE) == "True True False True"


SERVICE = """
import gc
from clip_filter.core.config import Settings
from clip_filter.ml.service import ModelService

service = ModelService(Settings())
service.start(wait=True)
print(service.state, gc.get_freeze_count() > 10_000, any(o is service.encoder for o in gc.get_objects()))
service.close()
"""


def test_the_model_service_freezes_the_loaded_model_for_the_collector():
    # A full collection over torch, open_clip and the model held the GIL 200-300 ms on the event loop.
    out = run(SERVICE, {"CLIP_MODEL": "clip-filter-tiny", "CLIP_PRETRAINED": "random", "CLIP_TORCH_THREADS": "1"})
    assert out == "ready True False"
