"""bench/hostile_bench.py's memory watch: it sees a child's peak RSS, and kills the child above its cap."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench" / "hostile_bench.py"
spec = importlib.util.spec_from_file_location("hostile_bench", BENCH)
hostile_bench = importlib.util.module_from_spec(spec)
sys.modules["hostile_bench"] = hostile_bench  # its dataclasses look their module up there
spec.loader.exec_module(hostile_bench)

# Touches 300 MiB (every page written), says so, and keeps it until stdin closes, then frees it and exits.
HOLD = """
import sys
block = b"x" * (300 * 2**20)
print("held", flush=True)
sys.stdin.read()
del block
"""


def child() -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_the_sampler_records_the_peak_of_memory_since_freed():
    process = child()
    sampler = hostile_bench.RssSampler(process.pid, interval=0.01)
    sampler.start()
    while sampler.samples < 3 and sampler.is_alive():
        sampler.join(timeout=0.05)
    process.stdin.close()  # the child frees the block and exits; the sampler ends with it
    assert process.wait(timeout=60) == 0
    sampler.join(timeout=60)
    assert not sampler.is_alive() and not sampler.killed
    assert sampler.peak_mb >= 300


def test_the_sampler_kills_a_process_above_its_cap():
    process = child()
    sampler = hostile_bench.RssSampler(process.pid, interval=0.01, cap_mb=200)
    sampler.start()
    sampler.join(timeout=60)
    assert sampler.killed and sampler.peak_mb > 200
    assert process.wait(timeout=60) == -signal.SIGKILL


# ---- the health poller: its own process, polls counted from begin(), a poll still waiting at stop() flagged ----
class _Health:
    """A stand-in server for /health/ready; `block` set: the next polls wait until `release` is set."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.polls = 0
        self.waiting = threading.Event()
        self.block = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn

            def do_GET(self) -> None:
                outer.polls += 1
                if outer.block.is_set():
                    outer.waiting.set()
                    outer.release.wait(60)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


def _wait(condition, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_the_poller_counts_the_polls_after_begin_in_a_child_process():
    health = _Health()
    try:
        poller = hostile_bench.HealthPoller(health.url, interval=0.01, timeout=30)
        assert poller.wait_connected(60)
        poller.begin()
        before = health.polls
        _wait(lambda: health.polls >= before + 5)
        poller.stop()
        assert len(poller.latencies) >= 3
        assert poller.failures.get("still waiting at the end", 0) <= 1 and set(poller.failures) <= {
            "still waiting at the end"  # the poll in flight when stop() came, if any
        }
        assert poller._process.returncode == 0
    finally:
        health.close()


def test_a_poll_still_waiting_at_the_end_counts_and_is_flagged():
    health = _Health()
    try:
        poller = hostile_bench.HealthPoller(health.url, interval=0.01, timeout=30)
        assert poller.wait_connected(60)
        poller.begin()
        health.block.set()
        assert health.waiting.wait(60)
        poller.stop()  # returns although the poll is still waiting for its answer
        assert poller.failures == {"still waiting at the end": 1}
        assert poller.latencies and poller.latencies[-1] > 0
    finally:
        health.close()
