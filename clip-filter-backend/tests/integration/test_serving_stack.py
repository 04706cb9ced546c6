"""The served process runs the event loop and HTTP parser the dependencies promise.

`clip-filter serve` leaves uvicorn's `loop="auto", http="auto"`: uvloop and httptools when they import,
else asyncio and h11, silently. Losing either (a dropped dependency, a broken wheel) costs event-loop CPU
on every request (docs/benchmarks-pipeline.md), so a live server's own memory maps are checked.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/<pid>/maps")


def loaded_extension_modules(pid: int) -> set[str]:
    """Paths of the shared objects mapped into the process."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {line.split()[-1] for line in maps.splitlines() if line.rstrip().endswith(".so")}


def test_the_server_runs_uvloop_and_the_httptools_parser(server_factory):
    server = server_factory()
    with server.client() as http:
        assert http.get("/health/ready").status_code == 200  # at least one request parsed
    assert server.process is not None
    modules = loaded_extension_modules(server.process.pid)
    assert any("/uvloop/loop." in path for path in modules), "uvloop's event loop is not loaded"
    assert any("/httptools/parser/parser." in path for path in modules), "the httptools parser is not loaded"
