"""Live servers for the integration tests: real `clip-filter serve` processes on free ports.

By default every server runs the tiny random architecture (`clip-filter-tiny`, CLIP_PRETRAINED=random)
with its own temporary data directory. Set CLIP_FILTER_TEST_BASE_URL to run the tests that only
need *a* server against an already running one (the compose integration stage does); tests that
must start, restart or kill their own server are then skipped with that reason.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

EXTERNAL_URL = os.environ.get("CLIP_FILTER_TEST_BASE_URL")
# The external server's key when it requires one (compose: the bootstrap admin key from its secret file).
EXTERNAL_KEY_FILE = os.environ.get("CLIP_FILTER_TEST_API_KEY_FILE")
READY_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    base_url: str
    data_dir: Path
    env: dict[str, str]
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)

    def client(self, **kwargs) -> httpx.Client:
        if self.extra.get("api_key"):
            kwargs["headers"] = {"Authorization": f"Bearer {self.extra['api_key']}", **kwargs.get("headers", {})}
        return httpx.Client(base_url=self.base_url, timeout=kwargs.pop("timeout", 120.0), **kwargs)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S, path: str = "/health/ready") -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log()}")
            try:
                last = httpx.get(self.base_url + path, timeout=2.0)
                if last.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s (last: {last and last.text}); log: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill9(self) -> None:
        """Hard crash: no shutdown hooks, no flushing."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def start_server(data_dir: Path, env_overrides: dict[str, str] | None = None, wait: str | None = "ready") -> LiveServer:
    port = free_port()
    env = {
        **os.environ,
        "CLIP_MODEL": "clip-filter-tiny",
        "CLIP_PRETRAINED": "random",
        "CLIP_FILTER_DATA_DIR": str(data_dir),
        "CLIP_FILTER_HOST": "127.0.0.1",
        "CLIP_FILTER_PORT": str(port),
        "CLIP_TORCH_THREADS": "1",
        "CLIP_FILTER_LOG_LEVEL": "warning",
        **(env_overrides or {}),
    }
    env.pop("CLIP_FILTER_TEST_BASE_URL", None)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"server-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "clip_filter", "serve"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    server = LiveServer(f"http://127.0.0.1:{port}", data_dir, env, process, log_path)
    if wait == "ready":
        server.wait_ready()
    elif wait == "live":
        server.wait_ready(path="/health/live")
    return server


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start servers of one's own (each call a new process); all are stopped at the end."""
    if EXTERNAL_URL:
        pytest.skip("needs to start its own server; CLIP_FILTER_TEST_BASE_URL points at an external one")
    started: list[LiveServer] = []

    def factory(
        env: dict[str, str] | None = None, data_dir: Path | None = None, wait: str | None = "ready"
    ) -> LiveServer:
        server = start_server(data_dir or tmp_path / f"data{len(started)}", env, wait)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One shared tiny-random server for tests that only read and write their own data."""
    if EXTERNAL_URL:
        extra = {"api_key": Path(EXTERNAL_KEY_FILE).read_text().strip()} if EXTERNAL_KEY_FILE else {}
        yield LiveServer(EXTERNAL_URL.rstrip("/"), Path("/nonexistent"), {}, extra=extra)
        return
    live = start_server(tmp_path_factory.mktemp("shared") / "data")
    yield live
    live.stop()


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


# Tight budgets for the rate-limit tests (tests/integration/test_observability.py): small enough to spend in a
# test, and a minute long, so a window never runs out in the middle of one.
TIGHT_RATE_LIMITS = {"CLIP_FILTER_RATE_LIMIT_MODEL": "5/minute", "CLIP_FILTER_RATE_LIMIT_WRITE": "3/minute"}


@pytest.fixture(scope="module")
def rate_limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server of the module's own with TIGHT_RATE_LIMITS, JSON logs and access lines (log level info)."""
    if EXTERNAL_URL:
        pytest.skip("needs to start its own server; CLIP_FILTER_TEST_BASE_URL points at an external one")
    env = {
        **TIGHT_RATE_LIMITS,
        "CLIP_FILTER_LOG_FORMAT": "json",
        "CLIP_FILTER_LOG_LEVEL": "info",
        "CLIP_FILTER_MAX_REQUEST_BYTES": str(1024 * 1024),
    }
    live = start_server(tmp_path_factory.mktemp("rate-limited") / "data", env)
    yield live
    live.stop()
