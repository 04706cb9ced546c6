#!/usr/bin/env python3
"""clip-filter "hostile requests" benchmark: what each known attack does to a live server's memory and health.

    .venv/bin/python bench/hostile_bench.py                  # clip-filter-tiny, random weights (the default)
    .venv/bin/python bench/hostile_bench.py --model ViT-B-32 # the real architecture (idle RSS ~1.1 GB)
    .venv/bin/python bench/hostile_bench.py --only pixel-bomb-png --only json-deep

Each attack gets a fresh `clip-filter serve` on 127.0.0.1 (so one attack's leftovers cannot colour the next),
warmed up with one small image and one caption, then left idle 2 s. The attack's requests are built first (PNGs,
multi-megabyte JSON bodies: client work that must not count), then, while the attack runs:
  - a thread samples the server's /proc/<pid>/status every 20 ms (VmRSS; VmHWM read before and after catches a
    peak between samples) and SIGKILLs the server if VmRSS passes the cap (--max-rss-gb, 6 by default: no
    cgroup is available here, and `prlimit --as` breaks torch, which reserves far more address space than it uses);
  - a separate process (as a container healthcheck is) polls GET /health/ready every 50 ms on one keep-alive
    connection and records each latency (a poll still waiting when the attack ends counts with the time it had
    waited so far). Not a thread of this process: here it would share the GIL with the attack's own client
    threads and measure their stalls, not the server's.
Columns: the attack's own status codes (per-slot error codes of a 200 in brackets), idle RSS, peak RSS during the
attack, (peak - idle) / idle (goal <= 0.5), and p50 / p99 of /health/ready during it (goal p99 <= 50 ms).

Bounded: every attack request has a timeout, the whole run keeps within --budget-s (300 s), traffic goes only to
127.0.0.1, and every server is killed at the end (SIGTERM, then SIGKILL), also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (  # read-only reuse of bench.py's helpers
    percentile,
    rss_mb,
    start_server,
)

MiB = 1024 * 1024


# ---- measuring ------------------------------------------------------------------------------------------
def read_status_kb(pid: int, fields: tuple[str, ...] = ("VmRSS", "VmHWM")) -> dict[str, int]:
    """The named fields of /proc/<pid>/status in kB; {} once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in fields:
            out[name] = int(rest.split()[0])
    return out


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every `interval` s; SIGKILLs it once VmRSS exceeds `cap_mb` (then `killed`)."""

    def __init__(self, pid: int, interval: float = 0.02, cap_mb: float | None = None) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.cap_mb = pid, interval, cap_mb
        self.peak_mb = 0.0
        self.samples = 0
        self.killed = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            status = read_status_kb(self.pid, ("VmRSS",))
            if "VmRSS" not in status:  # gone, or a zombie (which has no memory lines)
                return
            mb = status["VmRSS"] / 1024
            self.peak_mb, self.samples = max(self.peak_mb, mb), self.samples + 1
            if self.cap_mb is not None and mb > self.cap_mb:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.killed = True
                return
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=2)


class HealthPoller:
    """GET /health/ready every `interval` s on one keep-alive connection, in a child process; latencies in seconds.

    The child (`poll_health`, this file run with --health-poller) counts the polls that start after begin();
    stop() ends it and reads its figures.
    """

    def __init__(self, url: str, interval: float = 0.05, timeout: float = 60) -> None:
        self.latencies: list[float] = []
        self.failures: Counter[str] = Counter()
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--health-poller", url, str(interval), str(timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def start(self) -> None:
        pass  # the child starts polling at once

    def wait_connected(self, timeout: float = 30) -> bool:
        """True once the child's first poll answered (its connection is open)."""
        assert self._process.stdout is not None
        ready = threading.Event()
        threading.Thread(target=lambda: ready.set() if self._process.stdout.readline().strip() == "connected"
                         else None, daemon=True).start()
        return ready.wait(timeout)

    def _send(self, command: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()

    def begin(self) -> None:
        """Counts the polls from now on (call once wait_connected() returned)."""
        self._send("begin")

    def stop(self) -> None:
        """Ends polling; a poll still waiting counts with the time it has waited (a lower bound)."""
        try:
            self._send("stop")
            out, _ = self._process.communicate(timeout=10)
            figures = json.loads(out.strip().splitlines()[-1])
            self.latencies, self.failures = figures["latencies"], Counter(figures["failures"])
        except (subprocess.TimeoutExpired, ValueError, IndexError, BrokenPipeError):
            self._process.kill()
            self._process.wait(timeout=10)
            self.failures["poller failed"] += 1


def poll_health(url: str, interval: float, timeout: float) -> None:
    """The poller child: polls until "stop" arrives on stdin, then prints {"latencies", "failures"} as JSON."""
    import httpx

    latencies: list[float] = []
    failures: Counter[str] = Counter()
    window_start = [float("inf")]  # polls that start before "begin" are the connection's warm-up
    in_flight_since: list[float | None] = [None]
    stop = threading.Event()

    def commands() -> None:
        for line in sys.stdin:
            if line.strip() == "begin":
                window_start[0] = time.perf_counter()
            elif line.strip() == "stop":
                break
        since = in_flight_since[0]
        if since is not None and not stop.is_set():
            latencies.append(time.perf_counter() - max(since, window_start[0]))
            failures["still waiting at the end"] += 1
        stop.set()
        print(json.dumps({"latencies": latencies, "failures": failures}), flush=True)
        os._exit(0)  # a poll may still be waiting: do not wait for it

    threading.Thread(target=commands, daemon=True).start()
    connected = False
    with httpx.Client(base_url=url, timeout=timeout, trust_env=False) as http:
        while not stop.is_set():
            start = in_flight_since[0] = time.perf_counter()
            try:
                status = http.get("/health/ready").status_code
                ok = str(status) if status != 200 else None
            except httpx.HTTPError as exc:
                ok = type(exc).__name__
            elapsed = time.perf_counter() - start
            in_flight_since[0] = None
            if not connected:
                connected = True
                print("connected", flush=True)
            if stop.is_set():
                break
            if start >= window_start[0]:
                latencies.append(elapsed)
                if ok is not None:
                    failures[ok] += 1
            stop.wait(interval)
    stop.wait()  # the commands thread prints and exits


# ---- the attacks ------------------------------------------------------------------------------------------
@dataclass
class AttackResult:
    statuses: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def post(url: str, path: str, timeout: float, **kwargs) -> tuple[str, float, object]:
    """One POST; (status or 'timeout'/'connection error', seconds, parsed JSON body or None)."""
    import httpx

    start = time.perf_counter()
    try:
        response = httpx.post(url + path, timeout=timeout, trust_env=False, **kwargs)
    except httpx.TimeoutException:
        return "timeout", time.perf_counter() - start, None
    except httpx.HTTPError as exc:
        return f"connection error ({type(exc).__name__})", time.perf_counter() - start, None
    try:
        body = response.json()
    except ValueError:
        body = None
    return str(response.status_code), time.perf_counter() - start, body


def describe(status: str, body: object) -> str:
    """'200', '413 too_many_texts', or '200 [16× image_too_large]' for per-slot errors of a 200."""
    if not isinstance(body, dict):
        return status
    if isinstance(body.get("error"), dict):
        return f"{status} {body['error'].get('code')}"
    errors = [e.get("code") for e in body.get("errors") or [] if isinstance(e, dict)]
    if errors:
        return f"{status} [" + ", ".join(f"{n}× {code}" for code, n in Counter(errors).items()) + "]"
    return status


def concurrently(calls: list[Callable[[], tuple[str, float, object]]]) -> list[tuple[str, float, object]]:
    results: list = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def bomb_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (7000, 7000)).save(buffer, "PNG", optimize=True)  # 49 MP of one bit each: a few KB
    return buffer.getvalue()


def bomb_tiff() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("F", (7000, 7000)).save(buffer, "TIFF", compression="tiff_adobe_deflate")  # 49 MP of float32
    return buffer.getvalue()


def images_attack(make: Callable[[], bytes], count: int, ext: str, mime: str):
    def attack(url: str, timeout: float, data: bytes) -> AttackResult:
        files = [("images", (f"{i}.{ext}", data, mime)) for i in range(count)]
        status, seconds, body = post(url, "/embeddings/images", timeout, files=files)
        return AttackResult([describe(status, body)],
                            [f"{count} × {len(data) / 1024:.0f} KB on the wire, answered in {seconds:.1f} s"])
    return make, attack


def cjk_captions(count: int, chars: int, seed: int) -> list[str]:
    """Unique runs of CJK ideographs: each run is one regex 'word' of ~3 bytes a character for the BPE."""
    codes = np.random.default_rng(seed).integers(0x4E00, 0x9FFF, size=(count, chars), dtype=np.uint32)
    return [row.astype("<u4").tobytes().decode("utf-32-le") for row in codes]


def tokenizer_attack(requests: int, captions: int, chars: int):
    def prepare() -> list[bytes]:
        return [json.dumps({"texts": cjk_captions(captions, chars, seed)}, ensure_ascii=False).encode()
                for seed in range(requests)]

    def attack(url: str, timeout: float, bodies: list[bytes]) -> AttackResult:
        headers = {"content-type": "application/json"}
        probe: list = []

        def probe_later() -> tuple[str, float, object]:
            time.sleep(1)  # a unique one-caption request behind the attack: the text cache cannot answer it
            probe.append(post(url, "/embeddings/texts", timeout - 1, json={"texts": [f"a cat {time.time()}"]}))
            return probe[-1]

        calls: list = [lambda b=b: post(url, "/embeddings/texts", timeout, content=b, headers=headers) for b in bodies]
        results = concurrently(calls + [probe_later])[:-1]
        seconds = max(r[1] for r in results)
        p_status, p_seconds, _ = probe[0]
        return AttackResult([describe(s, b) for s, _, b in results],
                            [(f"{requests} × {captions} captions × {chars} chars ({len(bodies[0]) / MiB:.1f} MB each), "
                              f"last answer after {seconds:.1f} s; a 1-caption request 1 s in: {p_status} "
                              f"in {p_seconds:.1f} s")])
    return prepare, attack


def json_array_attack(elements: int):
    def prepare() -> bytes:
        return b'{"texts":[' + b"{}," * (elements - 1) + b"{}]}"

    def attack(url: str, timeout: float, body: bytes) -> AttackResult:
        status, seconds, answer = post(url, "/embeddings/texts", timeout, content=body,
                                       headers={"content-type": "application/json"})
        return AttackResult([describe(status, answer)],
                            [f"{elements / 1e6:.0f} M × {{}} ({len(body) / MiB:.0f} MB), answered in {seconds:.1f} s"])
    return prepare, attack


def json_deep_attack(depth: int):
    def prepare() -> bytes:
        return b'{"texts":' + b"[" * depth + b"]" * depth + b"}"

    def attack(url: str, timeout: float, body: bytes) -> AttackResult:
        status, seconds, answer = post(url, "/embeddings/texts", timeout, content=body,
                                       headers={"content-type": "application/json"})
        return AttackResult([describe(status, answer)], [f"{depth:,} nested arrays, answered in {seconds:.1f} s"])
    return prepare, attack


def small_pngs(count: int, seed: int, size: int = 64) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def upload_flood_attack(requests: int, images: int):
    def prepare() -> list:
        return [[("files", (f"{k}-{i}.png", data, "image/png")) for i, data in enumerate(small_pngs(images, k))]
                for k in range(requests)]

    def attack(url: str, timeout: float, payloads: list) -> AttackResult:
        import httpx

        httpx.post(url + "/collections", json={"name": "flood"}, timeout=30, trust_env=False).raise_for_status()
        calls = [lambda p=p: post(url, "/collections/flood/items", timeout, files=p) for p in payloads]
        results = concurrently(calls)
        return AttackResult([describe(s, b) for s, _, b in results],
                            [(f"{requests} concurrent uploads × {images} distinct 64×64 PNGs, "
                              f"last answer after {max(r[1] for r in results):.1f} s")])
    return prepare, attack


@dataclass
class Attack:
    name: str
    finding: str
    timeout: float
    # (prepare, run): prepare() builds the requests' payloads before the measured window; run(url, timeout,
    # payload) sends them.
    parts: tuple[Callable[[], Any], Callable[[str, float, Any], AttackResult]]

    def prepare(self) -> Any:
        return self.parts[0]()

    def run(self, url: str, timeout: float, payload: Any) -> AttackResult:
        return self.parts[1](url, timeout, payload)


ATTACKS = [
    Attack("pixel-bomb-png", "H2", 60, images_attack(bomb_png, 16, "png", "image/png")),
    Attack("pixel-bomb-tiff", "H2", 45, images_attack(bomb_tiff, 2, "tiff", "image/tiff")),
    Attack("tokenizer-bomb", "H3", 45, tokenizer_attack(requests=3, captions=256, chars=10_000)),
    Attack("json-30M-array", "M3", 45, json_array_attack(30_000_000)),
    Attack("json-deep", "L1", 20, json_deep_attack(100_000)),
    Attack("upload-flood", "M5", 45, upload_flood_attack(requests=48, images=64)),
]


# ---- running -------------------------------------------------------------------------------------------------
@dataclass
class Row:
    attack: Attack
    statuses: str = ""
    idle_mb: float = float("nan")
    peak_mb: float = float("nan")
    killed: bool = False
    health: list[float] = field(default_factory=list)
    health_failures: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


def warm_up(url: str) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=120, trust_env=False) as http:
        http.post("/embeddings/texts", json={"texts": ["a warm-up caption"]}).raise_for_status()
        http.post("/embeddings/images", files=[("images", ("w.png", small_pngs(1, 99)[0], "image/png"))]).raise_for_status()


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # e.g. a model thread still busy with the attack
            process.kill()
            process.wait(timeout=10)


def run_attack(attack: Attack, args, timeout: float) -> Row:
    row = Row(attack)
    with tempfile.TemporaryDirectory(prefix="hostile-") as data_dir:
        payload = attack.prepare()  # client work, before the server starts and the window opens
        process, url = start_server(args, data_dir)
        try:
            warm_up(url)
            time.sleep(2)  # the model thread hands freed memory back after 1 s idle
            row.idle_mb = rss_mb(process.pid, "VmRSS")
            hwm_before = rss_mb(process.pid, "VmHWM")
            sampler = RssSampler(process.pid, 0.02, args.max_rss_gb * 1024)
            poller = HealthPoller(url, 0.05, timeout)
            poller.start()
            poller.wait_connected(30)
            sampler.start()
            poller.begin()
            result = attack.run(url, timeout, payload)
            time.sleep(0.5)  # a refused request may still be freeing (or decoding) when its answer arrives
            poller.stop()
            sampler.stop()
            hwm_after = rss_mb(process.pid, "VmHWM") if process.poll() is None else float("nan")
            # VmHWM is the process's lifetime peak: only when it rose during the attack is it the attack's peak.
            row.peak_mb = max(sampler.peak_mb, hwm_after if hwm_after > hwm_before else 0.0)
            row.killed = sampler.killed
            row.statuses = summarise(result.statuses)
            row.health, row.health_failures, row.notes = poller.latencies, poller.failures, result.notes
        finally:
            stop_server(process)
    return row


def summarise(statuses: list[str]) -> str:
    return ", ".join(s if n == 1 else f"{n}× {s}" for s, n in Counter(statuses).items())


def cpu_header() -> str:
    try:
        fields = dict(line.split(":", 1) for line in subprocess.run(["lscpu"], capture_output=True, text=True,
                                                                    check=True).stdout.splitlines() if ":" in line)
        return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs (lscpu)"
    except (OSError, subprocess.CalledProcessError):
        return f"{os.cpu_count()} CPUs"


def tree_revision() -> str:
    try:
        return subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"


def table(rows: list[Row], cap_gb: float) -> list[str]:
    header = ("attack", "finding", "status codes", "idle RSS", "peak RSS", "growth / idle", "health p50 / p99 ms")
    lines = []
    for row in rows:
        growth = (row.peak_mb - row.idle_mb) / row.idle_mb
        peak = f"killed at >{cap_gb:g} GB" if row.killed else f"{row.peak_mb:.0f} MB"
        if row.health:
            health = f"{percentile(row.health, 50) * 1e3:.0f} / {percentile(row.health, 99) * 1e3:.0f}"
            if row.health_failures:
                health += " (" + ", ".join(f"{n} {why}" for why, n in row.health_failures.items()) + ")"
        else:
            health = "no sample"
        lines.append((row.attack.name, row.attack.finding, row.statuses, f"{row.idle_mb:.0f} MB", peak,
                      f"{'>' if row.killed else ''}{growth:.2f}", health))
    goal = ("goal", "", "4xx/429 or 200", "", "", "<= 0.5", "p99 <= 50")
    widths = [max(len(r[i]) for r in [header, goal, *lines]) for i in range(len(header))]
    out = []
    for line in [header, tuple("-" * w for w in widths), *lines, tuple("-" * w for w in widths), goal]:
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    return out


def main() -> None:
    if sys.argv[1:2] == ["--health-poller"]:  # the poller child (HealthPoller)
        url, interval, timeout = sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
        poll_health(url, interval, timeout)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="clip-filter-tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-rss-gb", type=float, default=6.0, help="SIGKILL the server above this VmRSS")
    parser.add_argument("--budget-s", type=float, default=300, help="the whole run's wall-clock budget")
    parser.add_argument("--only", action="append", choices=[a.name for a in ATTACKS], help="run only these attacks")
    args = parser.parse_args()

    started = time.monotonic()
    deadline = started + args.budget_s
    load_before = os.getloadavg()
    rows, skipped = [], []
    for attack in ATTACKS:
        if args.only and attack.name not in args.only:
            continue
        left = deadline - time.monotonic() - 20  # a server start, warm-up and the 2 s idle
        if left < min(attack.timeout, 10):
            skipped.append(attack.name)
            continue
        print(f"... {attack.name}", file=sys.stderr, flush=True)
        rows.append(run_attack(attack, args, min(attack.timeout, left)))

    print(f"\nclip-filter hostile requests at {tree_revision()}: {args.model}, random weights, device {args.device}; "
          f"{cpu_header()}; "
          f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"(a machine shared with other work: latencies are noisy, memory figures are not); "
          f"server killed above {args.max_rss_gb:g} GB VmRSS\n")
    for line in table(rows, args.max_rss_gb):
        print(line)
    print()
    for row in rows:
        for note in row.notes:
            print(f"{row.attack.name}: {note}")
    if skipped:
        print("skipped (time budget): " + ", ".join(skipped))
    print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the servers were stopped by run_attack's finally
        sys.exit(130)
