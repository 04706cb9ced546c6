"""immich's machine-learning requests, re-created with Node's fetch + FormData as immich's server builds them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .images_for_tests import b64, png_bytes
from .protocol_helpers import (
    assert_same_vectors,
    native_images,
    native_texts,
    served_model,
)

SCRIPT = Path(__file__).with_name("immich_client.mjs")
NODE = shutil.which("node")
pytestmark = [
    pytest.mark.skipif(NODE is None, reason="needs Node.js (immich's server is a Node app)"),
    pytest.mark.may_skip(reason="Node.js is not in the backend test image; CI runs these with the host's Node"),
]


def immich(server, **args) -> dict:
    run = subprocess.run(
        [NODE, str(SCRIPT), json.dumps({"url": server.base_url, **args})],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def visual(model_name: str) -> dict:
    return {"clip": {"visual": {"modelName": model_name}}}


def textual(model_name: str, language: str | None = None) -> dict:
    entry: dict = {"modelName": model_name}
    if language is not None:
        entry["options"] = {"language": language}
    return {"clip": {"textual": entry}}


@pytest.fixture(scope="module")
def model_name(server) -> str:
    with server.client() as http:
        return served_model(http)["id"]


def test_ping_and_root(server, client):
    pong = immich(server, ping=True)
    assert pong["ok"] and pong["body"] == "pong" and pong["type"].startswith("text/plain")
    assert client.get("/").json()["message"] == "Immich ML"


def test_encode_image_equals_the_native_route(server, client, model_name, tmp_path):
    data = png_bytes(7, (70, 50))
    path = tmp_path / "asset.png"
    path.write_bytes(data)
    result = immich(server, entries=visual(model_name), imagePath=str(path))
    assert result["ok"], result
    body = result["body"]
    assert set(body) == {"clip", "imageHeight", "imageWidth"}
    assert (body["imageWidth"], body["imageHeight"]) == (70, 50)
    assert isinstance(body["clip"], str)  # immich stores the string as is (pgvector parses it)
    assert_same_vectors([json.loads(body["clip"])], native_images(client, [b64(data)]))


@pytest.mark.parametrize("language", [None, "de"])
def test_encode_text_equals_the_native_route(server, client, model_name, language):
    result = immich(server, entries=textual(model_name, language), text="a dog on a beach")
    assert result["ok"], result
    assert set(result["body"]) == {"clip"}
    assert_same_vectors([json.loads(result["body"]["clip"])], native_texts(client, ["a dog on a beach"]))


def test_immich_spellings_of_the_model_name(server, model_name):
    # Case and immich's hub prefix do not matter (the hyphen/underscore mapping: tests/unit/test_protocol_names.py).
    for name in (model_name.upper(), "immich-app/" + model_name):
        assert immich(server, entries=textual(name), text="x")["ok"], name


def assert_refused(result: dict, status: int, *mentions: str) -> str:
    assert not result["ok"] and result["status"] == status, result
    detail = json.loads(result["body"])["detail"]
    assert isinstance(detail, str)
    for word in mentions:
        assert word in detail, detail
    return detail


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("not json", 422),
        ("[1, 2]", 422),
        ('{"clip": {"visual": {}}}', 422),  # no modelName
        ('{"clip": {"visual": {"modelName": 5}}}', 422),
        ('{"clip": {"unknown": {"modelName": "x"}}}', 422),
        ('{"clip": {}}', 422),
    ],
)
def test_bad_entries_get_422(server, raw, status):
    assert_refused(immich(server, rawEntries=raw, text="x"), status, "Invalid request format")


def test_neither_image_nor_text_gets_400(server, model_name):
    assert_refused(immich(server, entries=textual(model_name)), 400, "Either image or text")


def test_another_model_gets_a_clear_400(server, model_name, tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(1))
    detail = assert_refused(
        immich(server, entries=visual("ViT-H-14-378-quickgelu__dfn5b"), imagePath=str(path)),
        400,
        "ViT-H-14-378-quickgelu__dfn5b",
        model_name,
    )
    assert "Smart Search" in detail


def test_faces_and_ocr_stay_on_immich(server, tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(1))
    faces = {
        "facial-recognition": {
            "detection": {"modelName": "buffalo_l", "options": {"minScore": 0.7}},
            "recognition": {"modelName": "buffalo_l"},
        }
    }
    assert_refused(immich(server, entries=faces, imagePath=str(path)), 400, "facial-recognition", "immich")
    ocr = {
        "ocr": {
            "detection": {"modelName": "PP-OCRv5_mobile", "options": {"minScore": 0.5, "maxResolution": 736}},
            "recognition": {"modelName": "PP-OCRv5_mobile", "options": {"minScore": 0.8}},
        }
    }
    assert_refused(immich(server, entries=ocr, imagePath=str(path)), 400, "ocr")


def test_asset_id_only_and_bad_images_are_refused(server, model_name, tmp_path):
    assert_refused(immich(server, entries=visual(model_name), imagePath="", assetId="1234"), 400, "image")
    path = tmp_path / "not-an-image.png"
    path.write_bytes(b"hello world")
    assert_refused(immich(server, entries=visual(model_name), imagePath=str(path)), 415, "image")
    assert immich(server, ping=True)["ok"]
