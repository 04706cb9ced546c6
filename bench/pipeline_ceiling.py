#!/usr/bin/env python3
"""The pipeline ceiling: what HTTP + decoding + batching carry when the model costs nothing.

    .venv/bin/python bench/pipeline_ceiling.py             # the table; also bench/results/pipeline_ceiling.json
    .venv/bin/python bench/pipeline_ceiling.py --quick     # fewer requests
    .venv/bin/python bench/pipeline_ceiling.py --modes threads processes:2

The server runs with `CLIP_PRETRAINED=instant-test` (ml/instant.py: the architecture's real
preprocessing and tokenizer, fixed vectors instead of the forward pass; only with
CLIP_FILTER_ALLOW_TEST_ENCODER=1). 16 keep-alive clients send, per image set:
  original JSON   {"image_base64", "text_input1", "text_input2"}: 1 image, 2 captions per request
  multipart       8 image files + 2 captions per request to the same best-match route
Captions are unique per request (the text cache never answers), so captions/s is real tokenizer work.
Beside each: the bare decode + preprocess rate of the same files in this one process with a thread per
core (base64 decode, header check, decode, resize, crop: clip_filter.ml.pixels, which releases the GIL
in Pillow's C code), the most those cores can decode. bench/bench.py prints this table on every run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clip-filter-backend"))
sys.path.insert(0, str(ROOT / "bench"))

from draft_fidelity import cpu_name, encode, photo_like, screenshot  # noqa: E402

CLIENTS = 16
MULTIPART_IMAGES = 8


def image_sets(count: int) -> dict[str, list[bytes]]:
    return {
        "640x480 JPEG photos": [encode(photo_like((640, 480), s), "JPEG", quality=90) for s in range(count)],
        "1920x1080 JPEG photos": [encode(photo_like((1920, 1080), s), "JPEG", quality=90) for s in range(count)],
        "1920x1080 PNG screenshots": [encode(screenshot(s), "PNG") for s in range(count)],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, data_dir: str, extra_env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {**os.environ, "CLIP_MODEL": model, "CLIP_PRETRAINED": "instant-test", "CLIP_FILTER_ALLOW_TEST_ENCODER": "1",
           "CLIP_FILTER_PORT": str(port), "CLIP_FILTER_DATA_DIR": data_dir, "CLIP_FILTER_LOG_LEVEL": "warning",
           "CLIP_TEXT_CACHE_SIZE": "0",
           # the GPU-deployment rule (docs/benchmarks-pipeline.md): the cores decode, torch keeps one thread;
           # torch's default team (one per core) would spin-wait beside the decoders and be measured instead
           "CLIP_TORCH_THREADS": "1",
           # this checkout's package, whatever is installed in the environment
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "clip-filter-backend"),
                                                       os.environ.get("PYTHONPATH")])),
           **extra_env}
    process = subprocess.Popen([sys.executable, "-m", "clip_filter", "serve"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url + "/health/ready", timeout=2)
            if response.status_code == 200:
                info = httpx.get(url + "/info", timeout=5).json()
                assert info["weights"] == "instant-test", info  # flagged like random weights
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise SystemExit("the server exited during start-up")
        time.sleep(0.2)
    raise SystemExit("the server did not become ready")


async def post(reader, writer, host: str, path: str, content_type: str, body: bytes) -> int:
    """One HTTP/1.1 POST on a keep-alive connection (a minimal client: it shares the cores)."""
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    await reader.readexactly(length)
    return int(lines[0].split()[1])


def json_body(image: bytes, n: int) -> tuple[str, bytes]:
    body = {"image_base64": base64.b64encode(image).decode(), "text_input1": f"a photo of thing {n}",
            "text_input2": f"a picture of item {n}"}
    return "application/json", json.dumps(body).encode()


def multipart_body(images: list[bytes], n: int) -> tuple[str, bytes]:
    boundary = f"bench{n:08d}"
    parts = []
    for i, image in enumerate(images):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{i}.img"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + image + b"\r\n")
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="texts"\r\n\r\n{text}\r\n'.encode()
              for text in (f"a photo of thing {n}", f"a picture of item {n}")]
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


async def load(url: str, bodies: list[list[tuple[str, bytes]]]) -> dict:
    """bodies[c] is client c's list of requests; returns requests/s, seconds and errors."""
    host, port = url.removeprefix("http://").split(":")
    errors = 0
    done = 0

    async def client(requests: list[tuple[str, bytes]]) -> None:
        nonlocal errors, done
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for content_type, body in requests:
                status = await post(reader, writer, host, "/image_text_similarity_best_match", content_type, body)
                errors += status != 200
                done += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client(requests) for requests in bodies))
    elapsed = time.perf_counter() - start
    return {"rps": done / elapsed, "seconds": elapsed, "errors": errors, "requests": done}


def bare_rate(files: list[bytes], repeats: int, reduced: bool) -> float:
    """Decode + preprocess images/s of these files in this process, one thread per core; `reduced`: the
    server's defaults (reduced-scale decoding, crop-first resize), else open_clip's exact path."""
    import open_clip

    from clip_filter.image_base64 import base64_image_bytes
    from clip_filter.images import ImageLimits
    from clip_filter.ml.pixels import decode_to_pixels
    from clip_filter.ml.preprocess import ImagePreprocessor

    plan = ImagePreprocessor(open_clip.image_transform(224, is_train=False)).plan(reduced, reduced, crop_first=reduced)
    limits = ImageLimits(25 * 1024 * 1024, 50_000_000)
    texts = [base64.b64encode(f).decode() for f in files]
    work = texts * repeats

    def one(text: str):
        return decode_to_pixels(base64_image_bytes(text, limits), limits, plan)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(one, texts))  # warm
        start, cpu, idle = time.perf_counter(), time.process_time(), idle_jiffies()
        list(pool.map(one, work))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        return {"images_s": len(work) / elapsed, "cpu_ms_per_image": cpu / len(work) * 1e3,
                "idle": idle_share(idle)}


def model_only_rate(model: str, batch: int = 32) -> float:
    """The model's own images/s (CLIP_PRECISION=auto, random weights, one batch, best of 2)."""
    import torch

    from clip_filter.core.config import Settings
    from clip_filter.ml.factory import load_encoder

    encoder = load_encoder(Settings(CLIP_MODEL=model, CLIP_PRETRAINED="random", CLIP_PRECISION="auto"))
    pixels = torch.zeros((batch, 3, 224, 224), dtype=torch.uint8)
    encoder.encode_pixels(pixels)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        encoder.encode_pixels(pixels)
        best = min(best, time.perf_counter() - start)
    return batch / best


def run(args) -> dict:
    """Every mode's server is started first; then each image set is measured mode after mode (and
    `rounds` times over), so the modes of one cell are seconds apart, not minutes, on a machine whose
    load moves. The bare rate is measured beside each cell's round, with the servers idle."""
    sets = {name: files for name, files in image_sets(CLIENTS).items()
            if not args.sets or any(key in name for key in args.sets)}
    rounds = max(1, getattr(args, "rounds", 1))
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    with contextlib.ExitStack() as stack:
        for mode in args.modes:
            env = mode_env(mode)
            if args.no_reduce:
                env.update(CLIP_FILTER_JPEG_DRAFT="0", CLIP_FILTER_REDUCE_LARGE_IMAGES="0", CLIP_FILTER_CROP_FIRST_RESIZE="0")
            data_dir = stack.enter_context(tempfile.TemporaryDirectory())
            servers[mode] = start_server(args.model, data_dir, env)
            stack.callback(stop_server, servers[mode][0])
        samples: dict[str, dict[str, list[dict]]] = {mode: {name: [] for name in sets} for mode in args.modes}
        bare: dict[str, list[dict]] = {name: [] for name in sets}
        for name, files in sets.items():
            n = iter(range(10**9))
            single = [[json_body(files[c], next(n)) for _ in range(args.json_requests)] for c in range(CLIENTS)]
            multi = [[multipart_body([files[(c + k) % len(files)] for k in range(MULTIPART_IMAGES)], next(n))
                      for _ in range(args.multipart_requests)] for c in range(CLIENTS)]
            for _ in range(rounds):
                for mode, (process, url) in servers.items():
                    samples[mode][name].append(measure_cell(process, url, single, multi))
                bare[name].append(bare_rate(files, args.bare_repeats, not args.no_reduce))
        modes = {}
        for mode, (process, _) in servers.items():
            rows = {name: {**mean_of(samples[mode][name]), "bare": mean_of(bare[name]), "rounds": rounds}
                    for name in sets}
            modes[mode] = {"rows": rows, "rss_mb": rss_mb(process.pid), "peak_rss_mb": rss_mb(process.pid, "VmHWM")}
    return {"modes": modes}


def measure_cell(process: subprocess.Popen, url: str, single: list, multi: list) -> dict:
    asyncio.run(load(url, [requests[:1] for requests in single]))  # warm-up
    cpu0, idle0 = cpu_seconds(process.pid), idle_jiffies()
    original = asyncio.run(load(url, single))
    cpu1, idle1 = cpu_seconds(process.pid), idle_jiffies()
    multipart = asyncio.run(load(url, multi))
    cpu2 = cpu_seconds(process.pid)
    return {
        # The machine's idle share during each load: cores left unused while requests wait (for the GIL, on
        # the thread path); the bare decode's, beside it, is what full use of the cores looks like.
        "json_idle": idle_share(idle0, idle1), "multipart_idle": idle_share(idle1),
        # Server CPU per image: robust to other load on a shared machine, unlike rates.
        "json_cpu_ms_per_image": (cpu1 - cpu0) / original["requests"] * 1e3,
        "multipart_cpu_ms_per_image": (cpu2 - cpu1) / (multipart["requests"] * MULTIPART_IMAGES) * 1e3,
        "json_images_s": original["rps"], "json_captions_s": 2 * original["rps"], "json_errors": original["errors"],
        "multipart_images_s": MULTIPART_IMAGES * multipart["rps"], "multipart_captions_s": 2 * multipart["rps"],
        "multipart_errors": multipart["errors"],
    }


def mean_of(samples: list[dict]) -> dict:
    """Rates as total work over total time (the mean of rates would overweight fast rounds); the rest averaged."""
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key.endswith("_errors"):
            out[key] = sum(values)
        elif key.endswith("_s"):  # a rate: harmonic mean = equal work per round over the total time
            out[key] = len(values) / sum(1 / v for v in values)
        else:
            out[key] = sum(values) / len(values)
    return out


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def mode_env(mode: str) -> dict[str, str]:
    """'threads', 'processes:N' or 'auto', optionally followed by ',NAME=VALUE' server settings."""
    decode, *settings = mode.split(",")
    env = dict(setting.split("=", 1) for setting in settings)
    if decode != "auto":
        env.setdefault("CLIP_FILTER_DECODE_PROCESSES", decode.split(":")[1] if decode.startswith("processes") else "0")
    return env


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of the server and its live children (decode worker processes)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def idle_jiffies() -> tuple[int, int]:
    """(idle + iowait, all) jiffies of every CPU so far, from /proc/stat's first line."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return fields[3] + fields[4], sum(fields)


def idle_share(before: tuple[int, int], after: tuple[int, int] | None = None) -> float:
    after = after or idle_jiffies()
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def print_table(result: dict, model_rate: float | None, cpu: str) -> list[str]:
    lines = [f"pipeline ceiling ({CLIENTS} clients, instant-test encoder, {os.cpu_count()} CPUs: {cpu})"]
    width = max(12, *(len(mode) for mode in result["modes"]))
    header = f"{'images':26} {'decode':{width}} {'JSON img/s':>10} {'cap/s':>6} {'mp img/s':>8} {'cap/s':>6} " \
             f"{'bare img/s':>10} {'JSON/bare':>9} {'mp/bare':>7}   {'CPU ms/img: JSON':>16} {'mp':>5} {'bare':>5}" \
             f"   {'idle: JSON':>10} {'mp':>4} {'bare':>4}"
    lines += [header, "-" * len(header)]
    for mode, data in result["modes"].items():
        for name, row in data["rows"].items():
            bare = row["bare"]["images_s"]
            errors = row["json_errors"] + row["multipart_errors"]
            lines.append(
                f"{name:26} {mode:{width}} {row['json_images_s']:10.1f} {row['json_captions_s']:6.1f} "
                f"{row['multipart_images_s']:8.1f} {row['multipart_captions_s']:6.1f} {bare:10.1f} "
                f"{row['json_images_s'] / bare:9.0%} {row['multipart_images_s'] / bare:7.0%}   "
                f"{row['json_cpu_ms_per_image']:16.1f} {row['multipart_cpu_ms_per_image']:5.1f} "
                f"{row['bare']['cpu_ms_per_image']:5.1f}   {row['json_idle']:10.0%} {row['multipart_idle']:4.0%} "
                f"{row['bare']['idle']:4.0%}"
                + (f"  ({errors} errors)" if errors else "")
            )
        lines.append(f"{'':26} {mode:{width}} server RSS after the run {data['rss_mb']:.0f} MB, "
                     f"peak {data['peak_rss_mb']:.0f} MB")
    if model_rate:
        best = max(max(r["json_images_s"], r["multipart_images_s"]) for d in result["modes"].values()
                   for r in d["rows"].values())
        lines.append(f"the model alone (random weights, batch 32): {model_rate:.1f} images/s; "
                     f"best pipeline ceiling {best:.1f} = {best / model_rate:.1f}x the model's rate")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--modes", nargs="+", default=["threads", f"processes:{os.cpu_count() or 1}"],
                        help="threads | processes:N | auto, each optionally with ,NAME=VALUE server settings")
    parser.add_argument("--json-requests", type=int, default=8, help="per client")
    parser.add_argument("--multipart-requests", type=int, default=2, help="per client")
    parser.add_argument("--bare-repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="measure each cell this many times, modes interleaved")
    parser.add_argument("--no-reduce", action="store_true",
                        help="open_clip's exact path: no JPEG draft, no reduction, no crop-first resize")
    parser.add_argument("--no-model", action="store_true", help="skip the model-alone figure")
    parser.add_argument("--sets", nargs="*", help="only the image sets whose name contains one of these")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline_ceiling.json")
    args = parser.parse_args()
    if args.quick:
        args.json_requests, args.multipart_requests, args.bare_repeats = 3, 1, 1
    cpu = cpu_name()
    result = run(args)
    model_rate = None if args.no_model else model_only_rate(args.model)
    lines = print_table(result, model_rate, cpu)
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"cpu": cpu, "cpus": os.cpu_count(), "args": {k: str(v) for k, v in vars(args).items()},
               "model_images_s": model_rate, **result, "table": lines}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
