#!/usr/bin/env python3
"""Throughput of two server trees, interleaved on one machine: the same client code (bench/bench.py's) against each.

    PYTHONPATH= .venv/bin/python bench/throughput_ab.py --tree v0.2=/tmp/bench-v02/clip-filter-backend \
        --tree head=clip-filter-backend --rounds 1
    # one tree under several settings (NAME=path,VAR=VALUE,...): e.g. the torch-threads/decode-workers rule
    PYTHONPATH= .venv/bin/python bench/throughput_ab.py --tree default=clip-filter-backend \
        --tree torch1=clip-filter-backend,CLIP_TORCH_THREADS=1 --rounds 2

Per round and tree (in the order given, so rounds alternate A B A B): a fresh ViT-B-32 server (random weights)
from that tree's `clip_filter` (PYTHONPATH), then bench.py's rows: best-match p50 over --latency-requests
single requests, 16 concurrent best-match clients (original JSON, JPEG photos; 3 warm-up requests each, then
--requests-per-client), and a bulk ingest job of --ingest-images PNGs (with the model's busy share and its rate
while busy during the job); the server's resident set once ready,
after the load and at its peak (VmHWM). One line of JSON per (round, tree).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (  # noqa: E402
    clients_round, jpeg_b64, make_images, model_counters, model_use, percentile, png_b64, rss_mb, start_server,
)


def measure(args, extra_env: dict[str, str]) -> dict:
    import httpx

    out: dict = {}
    with tempfile.TemporaryDirectory() as data_dir:
        process, url = start_server(args, data_dir, extra_env=extra_env)
        out["ready_rss_mb"] = rss_mb(process.pid, "VmRSS")
        try:
            with httpx.Client(base_url=url, timeout=600, trust_env=False) as http:
                body = {"image_base64": png_b64(make_images(1, seed=5)[0]), "text_input1": "a cat", "text_input2": "a car"}
                http.post("/image_text_similarity_best_match", json=body).raise_for_status()
                latencies = []
                for _ in range(args.latency_requests):
                    start = time.perf_counter()
                    http.post("/image_text_similarity_best_match", json=body).raise_for_status()
                    latencies.append(time.perf_counter() - start)
                out["best_match_p50_ms"] = percentile(latencies, 50) * 1e3
            bodies = [json.dumps({"image_base64": jpeg_b64(im), "text_input1": "a cat", "text_input2": "a car"}).encode()
                      for im in make_images(16, seed=11)]
            path = "/image_text_similarity_best_match"
            asyncio.run(clients_round(url, path, bodies, 3))
            run = asyncio.run(clients_round(url, path, bodies, args.requests_per_client))
            out["clients16_images_s"], out["clients16_errors"] = run["rps"], run["errors"]
            folder = Path(data_dir) / "ingest"
            folder.mkdir()
            for i, image in enumerate(make_images(args.ingest_images, seed=21)):
                image.save(folder / f"{i:04d}.png")
            with httpx.Client(base_url=url, timeout=600, trust_env=False) as http:
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
                if state["state"] != "done" or state["added"] != args.ingest_images:
                    raise SystemExit(f"ingest did not complete: {state}")
                out["ingest_images_s"] = args.ingest_images / elapsed
                # The model's share of the job's time and its rate while busy (the server's /info counters): what a
                # change to the job's pipeline moves, and far steadier than images/s on a shared host.
                use = model_use(counters, model_counters(url), elapsed)
                out["ingest_model_busy"], out["ingest_model_images_s"] = round(use["busy"], 3), use["rate"]
            # Memory after the whole load: the resident set now and its peak (VmHWM) over the run.
            out["rss_after_mb"], out["peak_rss_mb"] = rss_mb(process.pid, "VmRSS"), rss_mb(process.pid, "VmHWM")
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True,
                        help="NAME=path of a clip-filter-backend folder, optionally followed by ,VAR=VALUE server settings")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--latency-requests", type=int, default=20)
    parser.add_argument("--requests-per-client", type=int, default=8)
    parser.add_argument("--ingest-images", type=int, default=128)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the servers (e.g. CLIP_PRECISION=fp32)")
    args = parser.parse_args()
    trees = []
    for tree in args.tree:
        name, spec = tree.split("=", 1)
        path, *settings = spec.split(",")
        trees.append((name, path, dict(kv.split("=", 1) for kv in settings)))
    extra_env = dict(kv.split("=", 1) for kv in args.env)  # after bench.py's own settings, so they win
    for round_ in range(args.rounds):
        for name, path, tree_env in trees:
            os.environ["PYTHONPATH"] = str(Path(path).resolve())
            env = {**extra_env, **tree_env}
            figures = measure(args, env)
            print(json.dumps({"round": round_, "tree": name, "env": env, "load": round(os.getloadavg()[0], 2),
                              **figures}),
                  flush=True)


if __name__ == "__main__":
    main()
