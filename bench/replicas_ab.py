#!/usr/bin/env python3
"""One server against several on the same machine: how much a second process buys past one process's GIL.

    .venv/bin/python bench/replicas_ab.py                      # the real model (ViT-B-32, random weights)
    .venv/bin/python bench/replicas_ab.py --instant            # the pipeline ceiling (instant-test encoder)
    .venv/bin/python bench/replicas_ab.py --layout 1 --layout "2,CLIP_TORCH_THREADS=1,CLIP_DECODE_WORKERS=1"

A layout is `N[,VAR=VALUE...]`: N servers of this checkout, each with its own data folder and those settings.
The clients are spread over a layout's servers round-robin, each on its own keep-alive connection: what a
balancer in front of replicas does, minus the balancer's own CPU. With --nginx every layout (the single server
too) sits behind an nginx of its own on the same cores instead: one worker process, an upstream of the layout's
servers over keep-alive connections, requests spread one by one as docker-compose.replicas.yml's nginx does.

Per round, layouts in the order given (rounds alternate A B A B):
  --clients (16) clients x 1 JPEG (640x480 photo-like, original JSON, 2 captions) to the best-match route;
  a quarter as many clients x 8 JPEGs (multipart) with the real model, as many with --instant;
  10 single requests one at a time to the layout's first server, or its nginx (best match p50: what fewer
  torch threads per replica cost a lone request).
Figures are images/s and ms, with the means over the rounds at the end. Default layouts: one server as the
service starts (torch's default threads); two servers with one torch thread and one decode thread each, so that
both together use the cores once. Nothing here is a setting of the service: replicas are separate processes
(docker-compose.replicas.yml, with PostgreSQL for collections; the matching routes need no store at all).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
import pipeline_ceiling  # noqa: E402
from draft_fidelity import cpu_name, encode, photo_like  # noqa: E402

PATH = "/image_text_similarity_best_match"


async def spread_load(urls: list[str], bodies: list[list[bytes]], content_type: str) -> float:
    """Client c sends its bodies to urls[c % len(urls)]; returns requests/s over the whole round."""
    done = 0

    async def client(url: str, requests: list[bytes]) -> None:
        nonlocal done
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for body in requests:
                status = await pipeline_ceiling.post(reader, writer, host, PATH, content_type, body)
                if status != 200:
                    raise SystemExit(f"{url} answered {status}")
                done += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client(urls[c % len(urls)], requests) for c, requests in enumerate(bodies)))
    return done / (time.perf_counter() - start)


def one_at_a_time_p50_ms(url: str, bodies: list[bytes]) -> float:
    """Best match latency with nothing else in flight (one image, two captions): what a replica's fewer torch
    threads cost a lone request."""
    import httpx

    latencies = []
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as http:
        for body in bodies:
            start = time.perf_counter()
            http.post(PATH, content=body, headers={"Content-Type": "application/json"}).raise_for_status()
            latencies.append(time.perf_counter() - start)
    return statistics.median(latencies) * 1e3


def start_layout(spec: str, instant: bool, model_args, data_root: str, stack: contextlib.ExitStack) -> list[str]:
    count, *settings = spec.split(",")
    env = dict(setting.split("=", 1) for setting in settings)
    urls = []
    for _ in range(int(count)):
        data_dir = tempfile.mkdtemp(dir=data_root)
        if instant:
            env_threads = {"CLIP_FILTER_DECODE_PROCESSES": "0", **env}
            process, url = pipeline_ceiling.start_server(model_args.model, data_dir, env_threads)
        else:
            process, url = bench.start_server(model_args, data_dir, extra_env=env)
        stack.callback(pipeline_ceiling.stop_server, process)
        urls.append(url)
    return urls


NGINX_CONF = """
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    upstream replicas {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 100m;
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def start_nginx(urls: list[str], data_root: str, stack: contextlib.ExitStack) -> str:
    """An nginx in front of `urls` (the Debian package's binary); its URL."""
    import shutil
    import subprocess

    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    root = tempfile.mkdtemp(dir=data_root)
    port = pipeline_ceiling.free_port()
    servers = "\n".join(f"        server {url.removeprefix('http://')};" for url in urls)
    Path(root, "nginx.conf").write_text(NGINX_CONF.format(root=root, port=port, servers=servers))
    process = subprocess.Popen([binary, "-c", f"{root}/nginx.conf", "-p", root], stderr=subprocess.DEVNULL)
    stack.callback(lambda: (process.terminate(), process.wait(timeout=10)))
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health/ready", timeout=2, trust_env=False).status_code == 200:
                return url
        time.sleep(0.1)
    raise SystemExit(f"nginx did not come up: {Path(root, 'error.log').read_text(errors='replace')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", action="append", help="N[,VAR=VALUE...]; give it twice or more")
    parser.add_argument("--instant", action="store_true", help="the instant-test encoder: the pipeline ceiling")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json-requests", type=int, default=0, help="per client (default 30 instant, 8 model)")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="cpu", help="the real model's device (cuda on a GPU machine)")
    parser.add_argument("--clients", type=int, default=16, help="JSON clients (more on a many-core machine)")
    parser.add_argument("--nginx", action="store_true", help="every layout behind an nginx of its own (apt's nginx)")
    args = parser.parse_args()
    layouts = args.layout or ["1", "2,CLIP_TORCH_THREADS=1,CLIP_DECODE_WORKERS=1"]
    model_args = argparse.Namespace(model=args.model, device=args.device, batch=32, threads=os.cpu_count(), repeats=3)

    photos = [encode(photo_like((640, 480), seed), "JPEG", quality=90) for seed in range(32)]
    n = iter(range(10**9))
    per_client = args.json_requests or (30 if args.instant else 8)
    single = [[pipeline_ceiling.json_body(photos[c % 32], next(n))[1] for _ in range(per_client)]
              for c in range(args.clients)]
    multipart_clients = args.clients if args.instant else max(1, args.clients // 4)
    multipart = [pipeline_ceiling.multipart_body([photos[(c * 8 + k) % 32] for k in range(8)], 0)
                 for c in range(multipart_clients)]
    multipart_type = multipart[0][0]
    multi = [[body] * 4 for _, body in multipart]

    rates: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as data_root, contextlib.ExitStack() as stack:
        servers = {spec: start_layout(spec, args.instant, model_args, data_root, stack) for spec in layouts}
        if args.nginx:
            servers = {spec: [start_nginx(urls, data_root, stack)] for spec, urls in servers.items()}
        for round_ in range(args.rounds):
            for spec, urls in servers.items():
                asyncio.run(spread_load(urls, [requests[:2] for requests in single], "application/json"))  # warm-up
                json_rate = asyncio.run(spread_load(urls, single, "application/json"))
                multi_rate = 8 * asyncio.run(spread_load(urls, multi, multipart_type))
                latency = one_at_a_time_p50_ms(urls[0], single[0][:10])
                row = rates.setdefault(spec, {"json": [], "multipart": [], "latency": []})
                row["json"].append(json_rate)
                row["multipart"].append(multi_rate)
                row["latency"].append(latency)
                print(f"round {round_} [{spec}]: {args.clients} clients x 1 JPEG (JSON) {json_rate:.1f} images/s, "
                      f"{multipart_clients} clients x 8 JPEGs (multipart) {multi_rate:.1f} images/s, "
                      f"one request at a time p50 {latency:.1f} ms", flush=True)
    encoder = "instant-test encoder" if args.instant else f"{args.model}, random weights, device {args.device}"
    balancer = ", each layout behind nginx" if args.nginx else ", clients spread over the servers"
    print(f"\nreplicas on one machine: {encoder}, {args.rounds} interleaved rounds{balancer}, {os.cpu_count()} CPUs: "
          f"{cpu_name()}")
    first = layouts[0]
    for spec in layouts:
        json_mean, multi_mean = statistics.mean(rates[spec]["json"]), statistics.mean(rates[spec]["multipart"])
        versus = ("" if spec == first else
                  f"  ({json_mean / statistics.mean(rates[first]['json']):.2f}x / "
                  f"{multi_mean / statistics.mean(rates[first]['multipart']):.2f}x the first)")
        print(f"  [{spec}] JSON {json_mean:.1f}, multipart {multi_mean:.1f} images/s{versus}; one request at a time "
              f"p50 {statistics.mean(rates[spec]['latency']):.1f} ms")


if __name__ == "__main__":
    main()
