"""Bounded decoding over real HTTP (issue 11, the security review's pixel findings).

Each test measures the live server's own peak memory: `/proc/<pid>/status` VmHWM after resetting it
through `/proc/<pid>/clear_refs` (and a VmRSS sampler beside it), against VmRSS just before the
request. Before this work, 16 one-bit 7000x7000 PNGs in one request took the server from 1.07 to
5.3 GB, and a float TIFF added 1.5 GB.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image, ImageDraw

from .images_for_tests import b64, png_bytes

MB = 1024 * 1024


def one_bit_png(size: int = 7000) -> bytes:
    image = Image.new("1", (size, size), 0)
    draw = ImageDraw.Draw(image)
    for i in range(0, size, 700):
        draw.line((0, i, size, size - i), fill=1, width=5)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def float_tiff(size: int = 5000) -> bytes:
    xx = np.mgrid[0:size, 0:size][1]
    values = ((xx // 250) / (size // 250)).astype(np.float32)  # steps: deflate keeps it small
    buffer = io.BytesIO()
    Image.fromarray(values, "F").save(buffer, "TIFF", compression="tiff_adobe_deflate")
    return buffer.getvalue()


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


@contextmanager
def peak_growth(pid: int) -> Iterator[dict[str, float]]:
    """Yields a dict that holds, afterwards, the server's peak RSS growth in MB during the block."""
    before = status_kb(pid, "VmRSS")
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
        hwm_reset = True
    except OSError:
        hwm_reset = False
    sampled = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            sampled.append(status_kb(pid, "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result: dict[str, float] = {}
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        peak = max(max(sampled), status_kb(pid, "VmHWM") if hwm_reset else 0)
        result["mb"] = (peak - before) / 1024


@pytest.fixture
def bounded_server(server_factory):
    server = server_factory({"CLIP_DECODE_WORKERS": "2"})
    with server.client() as http:  # warm up: first-request allocations are not the images' doing
        assert http.post("/embeddings/images", json={"images": [b64(png_bytes(1, (300, 200)))]}).status_code == 200
    return server


def test_sixteen_one_bit_7000px_pngs_are_refused_from_their_headers(bounded_server):
    bomb = b64(one_bit_png())
    body = {"images": [bomb] * 16, "texts": ["a", "b"]}
    with bounded_server.client() as http, peak_growth(bounded_server.process.pid) as growth:
        response = http.post("/image_text_similarity_best_match", json=body)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "request_too_many_pixels"
    assert error["actual"] == 16 * 49_000_000 and error["limit"] == 256_000_000
    print("sixteen 1-bit PNGs: peak growth MB", growth)
    assert growth["mb"] < 100, growth  # was about 4,200 MB: nothing is decoded
    with bounded_server.client() as http:  # and the server goes on serving
        assert http.post("/embeddings/images", json={"images": [b64(png_bytes(2))]}).status_code == 200


def test_admitted_one_bit_pngs_are_decoded_within_a_memory_bound(bounded_server):
    bomb = one_bit_png()
    files = [("images", (f"bomb{i}.png", bomb, "image/png")) for i in range(4)]
    with bounded_server.client() as http, peak_growth(bounded_server.process.pid) as growth:
        response = http.post("/embeddings/images", files=files)
    assert response.status_code == 200, response.text
    embeddings = response.json()["embeddings"]
    assert len(embeddings) == 4 and all(e is not None for e in embeddings)
    assert embeddings[0] == embeddings[3]  # the same image, the same vector
    # Two decode threads, each at most the 49 MB one-bit image and its 49 MB greyscale copy before
    # the reduction: ~200 MB. Holding the four full-size RGB decodes (the old path) was over 1 GB.
    print("four 1-bit PNGs: peak growth MB", growth)
    assert growth["mb"] < 350, growth


def test_float_tiff_is_decoded_within_a_memory_bound(bounded_server):
    data = float_tiff()
    with bounded_server.client() as http, peak_growth(bounded_server.process.pid) as growth:
        response = http.post("/embeddings/images", files=[("images", ("float.tif", data, "image/tiff"))])
    assert response.status_code == 200, response.text
    assert response.json()["embeddings"][0] is not None
    # 25 M float pixels are 100 MB as decoded; the float64 scaling now runs on the reduced image.
    print("float TIFF: peak growth MB", growth)
    assert growth["mb"] < 250, growth


def test_decode_worker_processes_serve_the_same_embeddings_as_threads(server_factory):
    files = [png_bytes(seed, (320, 240)) for seed in range(3)]
    vectors = []
    for env in ({}, {"CLIP_FILTER_DECODE_PROCESSES": "2"}):
        server = server_factory({**env, "CLIP_FILTER_JPEG_DRAFT": "0", "CLIP_FILTER_REDUCE_LARGE_IMAGES": "0"})
        with server.client() as http:
            response = http.post("/embeddings/images", json={"images": [b64(f) for f in files] + ["bad"]})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["errors"][3]["code"] == "invalid_base64" or body["errors"][3]["code"] == "not_an_image"
            vectors.append(body["embeddings"][:3])
        server.stop()
    assert vectors[0] == vectors[1]


def test_instant_test_encoder_is_refused_unless_allowed_and_flagged_in_info(server_factory):
    refused = server_factory({"CLIP_PRETRAINED": "instant-test"}, wait="live")
    with refused.client() as http:
        for _ in range(600):
            ready = http.get("/health/ready")
            if ready.json().get("error", {}).get("state") == "failed":
                break
            time.sleep(0.1)
        assert ready.status_code == 503
        assert "CLIP_FILTER_ALLOW_TEST_ENCODER=1" in ready.json()["error"]["fix"]
    allowed = server_factory({"CLIP_PRETRAINED": "instant-test", "CLIP_FILTER_ALLOW_TEST_ENCODER": "1"})
    with allowed.client() as http:
        info = http.get("/info").json()
        assert info["weights"] == "instant-test" and info["pretrained"] == "instant-test"
        body = {"image_base64": b64(png_bytes(3)), "text_input1": "a", "text_input2": "b"}
        assert http.post("/image_text_similarity_best_match", json=body).status_code == 200


def test_protocol_adapters_decode_within_the_same_pixel_budget(bounded_server):
    """/v1/embeddings and /vectorize go through the service's bounded decoder too: the bomb never decodes."""
    bomb = b64(one_bit_png())
    with bounded_server.client() as http, peak_growth(bounded_server.process.pid) as growth:
        openai = http.post(
            "/v1/embeddings",
            json={"model": "clip-filter-tiny", "modality": "image", "input": [bomb] * 16, "encoding_format": "float"},
        )
        weaviate = http.post("/vectorize", json={"images": [bomb] * 16})
    assert openai.status_code == 413, openai.text
    assert openai.json()["error"]["code"] == "request_too_many_pixels"
    assert openai.headers["x-should-retry"] == "false"
    assert weaviate.status_code == 413, weaviate.text
    assert "pixels" in weaviate.json()["error"]
    assert growth["mb"] < 100, growth  # nothing was decoded
    with bounded_server.client() as http:  # the adapters still serve normal images
        ok = http.post("/vectorize", json={"images": [b64(png_bytes(3))]})
        assert ok.status_code == 200 and len(ok.json()["imageVectors"]) == 1
