"""Hostile request bodies (security review, issue 11): each is refused with a clear 4xx, or served with bounded
work and memory, and the server keeps answering. Memory is read from the server's own /proc figures."""

from __future__ import annotations

import asyncio
import json
import random
import string
from pathlib import Path

import httpx
import pytest

from .images_for_tests import b64, png_bytes

MODEL_ROUTES = ["/image_text_similarity_best_match", "/similarity", "/embeddings/images", "/embeddings/texts"]


def post_raw(http: httpx.Client, url: str, body: bytes) -> httpx.Response:
    return http.post(url, content=body, headers={"content-type": "application/json"})


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@pytest.mark.parametrize("url", MODEL_ROUTES)
def test_deep_nesting_is_a_400_not_a_500(client, url):
    error = assert_error(
        post_raw(client, url, b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), 400, "invalid_json"
    )
    assert error["limit"] == 64
    # Just inside the budget parses (and is then refused for its shape, not its depth).
    nested = b'{"texts": ["a"], "x": ' + b"[" * 62 + b"]" * 62 + b"}"
    assert post_raw(client, url, nested).status_code != 400
    assert client.get("/health/ready").status_code == 200


def collection_json_routes(client) -> list[tuple[str, str]]:
    name = "bigint" + "".join(random.choices(string.ascii_lowercase, k=6))
    assert client.post("/collections", json={"name": name}).status_code == 201
    item = client.post(f"/collections/{name}/items", json={"texts": ["a red square"]}).json()["results"][0]["id"]
    return [
        ("POST", "/collections"),
        ("PATCH", f"/collections/{name}"),
        ("POST", f"/collections/{name}/items"),
        ("PATCH", f"/collections/{name}/items/{item}"),
        ("POST", f"/collections/{name}/search"),
        ("POST", f"/collections/{name}/map/project"),
        ("POST", f"/collections/{name}/jobs"),
    ]


def test_integers_over_4300_digits_are_a_400_on_every_json_route(client):
    huge = b"9" * 5000
    routes = [("POST", url) for url in MODEL_ROUTES] + collection_json_routes(client)
    for method, url in routes:
        response = client.request(
            method,
            url,
            content=b'{"top_k": ' + huge + b', "texts": ["a"], "name": "x"}',
            headers={"content-type": "application/json"},
        )
        error = assert_error(response, 400, "invalid_json")
        assert "4300" in error["message"], (url, error)
    # A long integer that Python still reads is the route's business, not a parse error.
    assert post_raw(client, "/embeddings/texts", b'{"texts": ["a"], "n": ' + b"9" * 4000 + b"}").status_code == 200


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/embeddings/texts", b'{"texts": ["fine", "bad \\ud800 caption"]}'),
        ("/similarity", b'{"images": ["%s"], "texts": ["\\udfff"]}' % b64(png_bytes(1)).encode()),
        (
            "/image_text_similarity_best_match",
            b'{"image_base64": "%s", "text_input1": "a", "text_input2": "\\ud83d"}' % b64(png_bytes(1)).encode(),
        ),
    ],
)
def test_lone_surrogates_in_captions_are_refused(client, url, body):
    error = assert_error(post_raw(client, url, body), 422, "invalid_text")
    assert "index" in error


def test_an_18_million_element_array_is_refused_with_bounded_memory(server_factory):
    server = server_factory()
    pid = server.process.pid
    # 90 MB (under the 100 MB body limit) of distinct int objects once parsed: 650 MB and a stalled event loop.
    body = b"[" + b"1000," * 18_000_000 + b"1]"
    with server.client() as http:
        http.post("/embeddings/texts", json={"texts": ["warm up"]})
        idle = rss_kib(pid)

        async def bomb_and_probe():
            async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
                bomb = asyncio.create_task(
                    client.post("/embeddings/texts", content=body, headers={"content-type": "application/json"})
                )
                probes = [await client.get("/health/live") for _ in range(3)]
                return await bomb, probes

        refused, probes = asyncio.run(bomb_and_probe())
        assert assert_error(refused, 413, "json_too_large")["limit"] == 1_000_000
        assert [p.status_code for p in probes] == [200] * 3
        peak = rss_kib(pid, "VmHWM")
        # The body itself (and Starlette's copy of it) is most of the growth; nothing is built from it.
        assert peak - idle <= idle // 2, (idle, peak)
        assert http.post("/embeddings/texts", json={"texts": ["still serving"]}).status_code == 200


def test_the_element_budget_is_a_setting_and_counts_outside_strings(server_factory):
    server = server_factory({"CLIP_FILTER_MAX_JSON_ELEMENTS": "300"})
    with server.client() as http:
        assert http.get("/info").json()["limits"]["max_json_elements"] == 300
        assert_error(
            http.post("/embeddings/texts", json={"texts": ["a"] * 200, "pad": list(range(200))}), 413, "json_too_large"
        )
        # Commas and brackets inside a caption are text, not structure.
        caption = "a, b, [c], {d}, " * 100
        response = http.post("/embeddings/texts", json={"texts": [caption] * 3})
        assert response.status_code == 200, response.text


def unique_captions(rng: random.Random, count: int, chars: int) -> list[str]:
    def word() -> str:
        return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9)))

    return [" ".join(word() for _ in range(chars // 6))[:chars] for _ in range(count)]


def test_many_unique_long_captions_keep_memory_bounded(server_factory):
    # open_clip BPE'd every word of every caption and memoised each one: +60 MiB per such request, for ever.
    server = server_factory({"CLIP_TOKENIZER_CACHE_SIZE": "2000"})
    pid = server.process.pid
    rng = random.Random(0)
    with server.client() as http:

        def request() -> None:
            response = http.post("/embeddings/texts", json={"texts": unique_captions(rng, 256, 10_000)})
            assert response.status_code == 200, response.text
            assert response.json()["truncated"] == [True] * 256

        request()
        after_first = rss_kib(pid)
        for _ in range(4):
            request()
        grown = rss_kib(pid) - after_first
        assert grown <= 40 * 1024, f"RSS grew {grown} KiB over 4 requests of new captions"
        assert http.get("/health/ready").status_code == 200


def test_long_words_are_tokenised_only_as_far_as_the_context(client):
    # One 10,000-letter word took 2.8 s of pure-Python BPE on the model thread; now a window of it is BPE'd.
    rng = random.Random(1)
    captions = ["".join(rng.choices(string.ascii_lowercase, k=10_000)) for _ in range(64)]
    response = client.post("/embeddings/texts", json={"texts": captions})
    assert response.status_code == 200, response.text
    assert response.json()["truncated"] == [True] * 64
    assert json.loads(client.get("/health/ready").text)["status"] == "ready"
