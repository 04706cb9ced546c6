"""CLIP_FILTER_PROTOCOLS turns the adapters on and off; GET / is immich's only without a UI."""

from __future__ import annotations

import pytest

PROTOCOL_PATHS = {
    "openai": [("get", "/v1/models"), ("post", "/v1/embeddings"), ("post", "/embeddings"), ("get", "/models")],
    "weaviate": [("get", "/.well-known/live"), ("get", "/.well-known/ready"), ("get", "/meta"), ("post", "/vectorize")],
    "immich": [("get", "/ping"), ("post", "/predict")],
}


def status_of(http, method: str, path: str) -> int:
    return http.request(method, path, json={} if method == "post" else None).status_code


def test_none_turns_every_protocol_off_and_the_native_api_stays(server_factory):
    server = server_factory({"CLIP_FILTER_PROTOCOLS": "none"})
    with server.client() as http:
        for paths in PROTOCOL_PATHS.values():
            for method, path in paths:
                response = http.request(method, path, json={} if method == "post" else None)
                assert response.status_code in (404, 405), (path, response.status_code)
                assert response.json()["error"]["code"] in ("not_found", "method_not_allowed")  # the service's envelope
        root = http.get("/").json()
        assert root["service"] == "clip-filter" and "message" not in root
        assert http.post("/embeddings/texts", json={"texts": ["x"]}).status_code == 200


def test_one_protocol_on_and_the_ui_keeps_the_root(server_factory, tmp_path):
    ui = tmp_path / "ui"
    ui.mkdir()
    (ui / "index.html").write_text("<!doctype html><title>clip-filter</title>")
    server = server_factory({"CLIP_FILTER_PROTOCOLS": "weaviate,immich", "CLIP_FILTER_UI_DIR": str(ui)})
    with server.client() as http:
        root = http.get("/")
        assert root.status_code == 200 and "<title>clip-filter</title>" in root.text  # the UI, not immich's JSON
        # The protocols' routes come before the UI's mount at "/": they still answer.
        assert http.get("/.well-known/ready").status_code == 204
        assert http.get("/ping").text == "pong"
        for method, path in PROTOCOL_PATHS["openai"]:
            assert status_of(http, method, path) in (404, 405), path


@pytest.mark.parametrize("path", ["/v1/embeddings", "/vectorize", "/predict"])
def test_protocol_routes_are_not_under_the_ui_prefix(client, path):
    assert client.post("/api" + path, json={}).status_code in (404, 405)
