"""Bad and hostile input: a clear JSON error with the right 4xx, never a 500, and the server keeps serving."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from .images_for_tests import b64, png_bytes

URL = "/image_text_similarity_best_match"


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid PNG header claiming 900 MP, with a tiny (zlib-compressed zero) body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    raw = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "JPEG")
    return buffer.getvalue()[:200]


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if code:
        assert error["code"] == code, error
    return error


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ({"content": b"", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ({"json": [1, 2]}, 400, "invalid_json"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"json": {"texts": ["a"]}}, 422, "no_images"),
        ({"json": {"images": [b64(png_bytes(1))]}}, 422, "invalid_request"),
        ({"json": {"images": [b64(png_bytes(1))], "texts": []}}, 422, "invalid_request"),
        ({"json": {"images": [b64(png_bytes(1))], "texts": ["ok", "  "]}}, 422, "empty_text"),
        ({"json": {"images": [b64(png_bytes(1))], "texts": ["ok", 5]}}, 422, "invalid_request"),
        ({"json": {"images": "not a list", "texts": ["a"]}}, 422, "invalid_request"),
        ({"json": {"images": [b64(png_bytes(1))] * 65, "texts": ["a"]}}, 413, "too_many_images"),
        (
            {"files": [("images", ("a.png", png_bytes(1), "image/png"))] * 66, "data": {"texts": ["a"]}},
            413,
            "too_many_files",
        ),
        ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}}, 400, "invalid_multipart"),
        ({"json": {"images": [b64(png_bytes(1))], "texts": ["a"] * 257}}, 413, "too_many_texts"),
        ({"json": {"images": [b64(png_bytes(1))], "texts": ["a" * 10_001]}}, 413, "text_too_long"),
        ({"json": {"image_base64": "%%%not base64%%%", "text_input1": "a", "text_input2": "b"}}, 400, "invalid_base64"),
        ({"json": {"image_base64": b64(b"hello world"), "text_input1": "a", "text_input2": "b"}}, 415, "not_an_image"),
        ({"json": {"image_base64": b64(b""), "text_input1": "a", "text_input2": "b"}}, 400, None),
        ({"json": {"image_base64": b64(bomb_png()), "text_input1": "a", "text_input2": "b"}}, 413, None),
        ({"json": {"image_base64": b64(truncated_jpeg()), "text_input1": "a", "text_input2": "b"}}, 422, None),
        (
            {"json": {"image_base64": b64(b"%PDF-1.4\n%\xe2\xe3\n1 0 obj"), "text_input1": "a", "text_input2": "b"}},
            415,
            None,
        ),
    ],
)
def test_bad_requests_get_clear_json_errors(client, kwargs, status, code):
    assert_error(client.post(URL, **kwargs), status, code)
    assert client.get("/health/ready").status_code == 200


def test_hostile_files_in_a_batch_are_refused_per_slot(client):
    files = [
        ("images", ("bomb.png", bomb_png(), "image/png")),
        ("images", ("cut.jpg", truncated_jpeg(), "image/jpeg")),
        ("images", ("empty.png", b"", "image/png")),
        ("images", ("fine.png", png_bytes(2), "image/png")),
    ]
    body = client.post(URL, files=files, data={"texts": ["a", "b"]}).json()
    codes = [r.get("error", {}).get("code") for r in body["results"]]
    assert codes[0] in ("decompression_bomb", "image_too_many_pixels")
    assert codes[1] == "truncated_image" and codes[2] == "empty_image" and codes[3] is None


def test_request_body_over_the_limit_is_413(server_factory):
    server = server_factory({"CLIP_FILTER_MAX_REQUEST_BYTES": "2000"})
    with server.client() as http:
        error = assert_error(http.post(URL, json={"images": [b64(png_bytes(1, (80, 80)))], "texts": ["a"]}), 413)
        assert error["code"] == "request_too_large"

        def chunks():  # no Content-Length: the streamed body is counted
            for _ in range(10):
                yield b"x" * 1000

        assert_error(http.post(URL, content=chunks(), headers={"content-type": "application/json"}), 413)
        assert http.get("/health/ready").status_code == 200


def test_unknown_routes_and_methods_are_json(client):
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get(URL), 405, "method_not_allowed")
