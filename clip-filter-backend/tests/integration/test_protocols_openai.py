"""The official `openai` Python client, unchanged, against /v1: texts and images, both encodings, errors, retries."""

from __future__ import annotations

import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import openai
import pytest

from .images_for_tests import b64, png_bytes
from .protocol_helpers import (
    assert_same_vectors,
    native_images,
    native_texts,
    served_model,
)

TEXTS = ["a photo of a cat", "a red bicycle", "a photo of a cat"]


def make_client(server, requests: list | None = None, max_retries: int = 0) -> openai.OpenAI:
    """The SDK as an application would build it; `requests` (if given) records every HTTP attempt it makes."""
    hooks = {"request": [requests.append]} if requests is not None else {}
    return openai.OpenAI(
        base_url=server.base_url + "/v1",
        api_key="unused",
        max_retries=max_retries,
        timeout=120,
        http_client=openai.DefaultHttpxClient(event_hooks=hooks),
    )


@pytest.fixture(scope="module")
def model(server) -> dict:
    with server.client() as http:
        return served_model(http)


@pytest.mark.parametrize("encoding", [None, "float", "base64"])
def test_text_embeddings_equal_the_native_route(server, client, model, encoding):
    kwargs = {} if encoding is None else {"encoding_format": encoding}  # None: the SDK's default (base64 on the wire)
    result = make_client(server).embeddings.create(model=model["id"], input=TEXTS, **kwargs)
    assert result.object == "list" and result.model == model["id"]
    assert [item.index for item in result.data] == [0, 1, 2] and all(i.object == "embedding" for i in result.data)
    if encoding == "base64":  # the caller asked for base64: the SDK hands the string through
        vectors = [np.frombuffer(base64.b64decode(item.embedding), "<f4") for item in result.data]
    else:
        vectors = [item.embedding for item in result.data]
    assert len(vectors[0]) == model["dim"]
    assert_same_vectors(vectors, native_texts(client, TEXTS))
    assert result.usage.prompt_tokens == 0 and result.usage.total_tokens == 0


def test_the_sdk_default_sends_base64_and_a_single_string_works(server, client, model):
    sent: list = []
    result = make_client(server, sent).embeddings.create(model=model["id"], input="a lone caption")
    assert b'"encoding_format":"base64"' in sent[0].content.replace(b" ", b"")
    assert_same_vectors([result.data[0].embedding], native_texts(client, ["a lone caption"]))


@pytest.mark.parametrize("encoding", [None, "float"])
def test_image_embeddings_from_data_uris_and_plain_base64(server, client, model, encoding):
    images = [b64(png_bytes(1)), b64(png_bytes(2, (64, 64)))]
    inputs = [f"data:image/png;base64,{images[0]}", images[1]]
    kwargs = {} if encoding is None else {"encoding_format": encoding}
    result = make_client(server).embeddings.create(
        model=model["id"], input=inputs, extra_body={"modality": "image"}, **kwargs
    )
    assert_same_vectors([item.embedding for item in result.data], native_images(client, images))


@pytest.mark.parametrize("name", ["id", "slash", "colon", "architecture", "upper"])
def test_the_documented_model_aliases_are_accepted(server, model, name):
    alias = {
        "id": model["id"],
        "slash": f"{model['model']}/{model['pretrained']}",
        "colon": f"{model['model']}:{model['pretrained']}",
        "architecture": model["model"],
        "upper": model["id"].upper(),
    }[name]
    assert make_client(server).embeddings.create(model=alias, input="x").model == model["id"]


def test_models_lists_the_served_model_and_flags_random_weights(server, model):
    listed = make_client(server).models.list()
    assert [m.id for m in listed.data] == [model["id"]]
    card = listed.data[0]
    assert card.object == "model" and card.owned_by == "clip-filter" and isinstance(card.created, int)
    extra = card.model_dump()
    assert extra["weights"] == model["weights"] and extra["dim"] == model["dim"]
    if model["weights"] == "random":
        assert "random" in extra["warning"]


def test_dimensions_equal_to_the_model_dim_is_accepted(server, model):
    result = make_client(server).embeddings.create(model=model["id"], input="x", dimensions=model["dim"])
    assert len(result.data[0].embedding) == model["dim"]


@pytest.mark.parametrize(
    ("kwargs", "error_class", "status", "code", "param"),
    [
        ({"model": "text-embedding-3-small", "input": "x"}, openai.NotFoundError, 404, "model_not_found", "model"),
        ({"input": [[1, 2, 3]]}, openai.BadRequestError, 400, "token_arrays_unsupported", "input"),
        ({"input": [1, 2, 3]}, openai.BadRequestError, 400, "token_arrays_unsupported", "input"),
        ({"input": "x", "dimensions": 7}, openai.BadRequestError, 400, "unsupported_dimensions", "dimensions"),
        ({"input": ["ok", "  "]}, openai.BadRequestError, 400, "empty_text", "input[1]"),
        ({"input": []}, openai.BadRequestError, 400, "invalid_request", "input"),
        ({"input": ["x"] * 257}, openai.APIStatusError, 413, "too_many_texts", None),
        (
            {"input": ["https://example.com/cat.png"], "extra_body": {"modality": "image"}},
            openai.BadRequestError,
            400,
            "url_not_allowed",
            "input[0]",
        ),
        (
            {"input": ["%%% not base64"], "extra_body": {"modality": "image"}},
            openai.BadRequestError,
            400,
            "invalid_base64",
            "input[0]",
        ),
        (
            {"input": "x", "extra_body": {"modality": "audio"}},
            openai.BadRequestError,
            400,
            "invalid_request",
            "modality",
        ),
    ],
)
def test_bad_requests_get_openai_errors_and_no_retry(server, client, model, kwargs, error_class, status, code, param):
    sent: list = []
    with pytest.raises(error_class) as raised:
        make_client(server, sent, max_retries=3).embeddings.create(**{"model": model["id"], **kwargs})
    error = raised.value
    assert error.status_code == status
    assert error.code == code and error.param == param
    assert error.type == ("not_found_error" if status == 404 else "invalid_request_error")
    assert error.body["message"] and error.body["message"] in error.message  # the SDK read OpenAI's shape
    assert error.response.headers["x-should-retry"] == "false"
    assert len(sent) == 1  # the SDK was told not to retry and did not
    assert client.get("/health/ready").status_code == 200


def test_malformed_json_gets_an_openai_error(client):
    response = client.post("/v1/embeddings", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 400
    # OpenAI's four fields; the request id every error carries (api/request_id.py) is an extra the SDK ignores.
    assert set(response.json()["error"]) - {"request_id"} == {"message", "type", "param", "code"}


def test_infinity_prefix_serves_the_same_route(client, model):
    body = client.post("/embeddings", json={"model": model["id"], "input": ["a red bicycle"]}).json()
    assert_same_vectors([body["data"][0]["embedding"]], native_texts(client, ["a red bicycle"]))


def test_a_model_that_failed_to_load_is_not_retried(server_factory, tmp_path):
    server = server_factory({"CLIP_PRETRAINED": str(tmp_path / "missing.pt")}, wait="live")
    with server.client() as http:  # wait for the load to fail (503 from the start; the reason changes)
        for _ in range(600):
            if http.get("/info").json()["state"] == "failed":
                break
            threading.Event().wait(0.1)
    sent: list = []
    with pytest.raises(openai.InternalServerError) as raised:
        make_client(server, sent, max_retries=3).embeddings.create(model="anything", input="x")
    assert raised.value.status_code == 503 and raised.value.code == "model_unavailable"
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert len(sent) == 1


def test_the_request_counter_does_see_retries_of_a_retryable_error():
    """The counting above can fail: the same SDK set-up retries a 503 that carries no x-should-retry."""
    hits: list[str] = []

    class Unavailable(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hits.append(self.path)
            self.rfile.read(int(self.headers["content-length"]))
            body = b'{"error": {"message": "busy", "type": "server_error", "param": null, "code": null}}'
            self.send_response(503)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.send_header("retry-after-ms", "10")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    stub = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        sent: list = []
        fake = type("Stub", (), {"base_url": f"http://127.0.0.1:{stub.server_port}"})
        with pytest.raises(openai.InternalServerError):
            make_client(fake, sent, max_retries=2).embeddings.create(model="m", input="x")
        assert len(sent) == 3 and len(hits) == 3
    finally:
        stub.shutdown()
