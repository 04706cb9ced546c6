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
