"""Weaviate's multi2vec-clip inference-container smoke test, re-created, plus what Weaviate's Go client expects.

The smoke test (weaviate/multi2vec-clip-inference, smoke_test.py) waits for /.well-known/ready to answer
204, then checks live/ready 204, /meta is a JSON object and /vectorize: 1 text + 1 image -> 1 + 1 vectors,
3 texts + 2 images -> 3 + 2, 1 image alone -> 0 text vectors and 1 image vector. The Go client
(modules/multi2vec-clip/clients) polls ready with a 500 ms timeout, marshals absent slices as null, decodes
the body before the status and reads `error` as a string.
"""

from __future__ import annotations

import io
import time

import httpx
import pytest
from PIL import Image

from .images_for_tests import b64, png_bytes
from .protocol_helpers import (
    assert_same_vectors,
    native_images,
    native_texts,
    served_model,
)


def jpeg_b64(seed: int) -> str:
    image = Image.open(io.BytesIO(png_bytes(seed, (64, 48))))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return b64(buffer.getvalue())


def wait_until_ready(base_url: str, attempts: int = 600) -> None:
    """The smoke test's set-up, with the Go client's 500 ms per-request timeout."""
    for _ in range(attempts):
        try:
            if httpx.get(base_url + "/.well-known/ready", timeout=0.5).status_code == 204:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("did not start up")


def assert_weaviate_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


def test_smoke_test_on_a_fresh_server(server_factory):
    server = server_factory(wait=None)
    wait_until_ready(server.base_url)
    with server.client() as http:
        for path in ("/.well-known/ready", "/.well-known/live"):
            response = http.get(path)
            assert response.status_code == 204 and response.content == b""
        meta = http.get("/meta")
        assert meta.status_code == 200 and isinstance(meta.json(), dict)

        one = http.post("/vectorize", json={"texts": ["This is plane"], "images": [jpeg_b64(1)]}).json()
        assert len(one["textVectors"]) == 1 and len(one["imageVectors"]) == 1
        dim = served_model(http)["dim"]
        assert len(one["textVectors"][0]) == dim and len(one["imageVectors"][0]) == dim

        many = http.post(
            "/vectorize",
            json={"texts": ["This is plane", "Boeing 737", "Blue plane"], "images": [jpeg_b64(1), jpeg_b64(2)]},
        ).json()
        assert len(many["textVectors"]) == 3 and len(many["imageVectors"]) == 2

        alone = http.post("/vectorize", json={"images": [b64(png_bytes(3))]})
        assert alone.status_code == 200
        assert len(alone.json()["textVectors"]) == 0 and len(alone.json()["imageVectors"]) == 1


def test_vectors_equal_the_native_routes_in_order(client):
    texts, images = ["This is plane", "Boeing 737", "Blue plane"], [jpeg_b64(4), b64(png_bytes(5))]
    body = client.post("/vectorize", json={"texts": texts, "images": images}).json()
    assert_same_vectors(body["textVectors"], native_texts(client, texts))
    assert_same_vectors(body["imageVectors"], native_images(client, images))


def test_go_client_nulls_and_empty_requests(client):
    # Go's json.Marshal writes a nil slice as null; Weaviate vectorises texts alone for a text query.
    body = client.post("/vectorize", json={"texts": ["a query"], "images": None}).json()
    assert len(body["textVectors"]) == 1 and body["imageVectors"] == []
    assert_same_vectors(body["textVectors"], native_texts(client, ["a query"]))
    empty = client.post("/vectorize", json={"texts": None, "images": None})
    assert empty.status_code == 200 and empty.json() == {"textVectors": [], "imageVectors": []}
    # Newer Weaviate versions send more keys (e.g. per-request config): ignored, not refused.
    extra = client.post("/vectorize", json={"texts": ["x"], "images": [], "config": {"model": "x"}})
    assert extra.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "mentions"),
    [
        ({"images": [b64(png_bytes(1)), "%%%not base64%%%"]}, 400, "images[1]"),  # one bad image fails it all
        ({"images": [b64(b"hello world")]}, 415, "images[0]"),
        ({"images": ["https://example.com/a.png"]}, 400, "URL"),
        ({"texts": ["fine", "   "]}, 422, "texts[1]"),
        ({"texts": "not a list"}, 422, "texts"),
        ({"texts": ["x"] * 257}, 413, "texts"),
    ],
)
def test_errors_are_a_string_under_error(client, body, status, mentions):
    assert mentions in assert_weaviate_error(client.post("/vectorize", json=body), status)
    assert client.get("/.well-known/ready").status_code == 204


def test_malformed_json_is_a_string_error(client):
    response = client.post("/vectorize", content=b"{nope", headers={"content-type": "application/json"})
    assert_weaviate_error(response, 422)


def test_a_failed_model_is_not_ready_and_vectorize_says_why(server_factory, tmp_path):
    server = server_factory({"CLIP_PRETRAINED": str(tmp_path / "missing.pt")}, wait="live")
    with server.client() as http:
        for _ in range(600):
            if http.get("/info").json()["state"] == "failed":
                break
            time.sleep(0.1)
        live, ready = http.get("/.well-known/live"), http.get("/.well-known/ready")
        assert live.status_code == 204 and live.content == b""
        assert ready.status_code == 503 and ready.content == b""
        meta = http.get("/meta").json()
        assert meta["state"] == "failed" and meta["reason"]
        assert "does not exist" in assert_weaviate_error(http.post("/vectorize", json={"texts": ["x"]}), 503)
