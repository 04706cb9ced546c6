"""The matching API over real HTTP against a live uvicorn (tiny random model)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .images_for_tests import b64, png_bytes

CAPTIONS = ["a photo of a dog", "a diagram of a circuit", "a bowl of soup"]


def multipart(images: list[bytes], texts: list[str], names: list[str] | None = None):
    names = names or [f"img{i}.png" for i in range(len(images))]
    files = [("images", (name, data, "image/png")) for name, data in zip(names, images, strict=True)]
    return {"files": files, "data": {"texts": texts}}


def reference_scores(client, images: list[bytes], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Cosines and probabilities recomputed in NumPy from the service's own embeddings."""
    image_vectors = np.array(
        client.post("/embeddings/images", json={"images": [b64(i) for i in images]}).json()["embeddings"]
    )
    text_vectors = np.array(client.post("/embeddings/texts", json={"texts": texts}).json()["embeddings"])
    scale = client.get("/info").json()["logit_scale"]
    cos = image_vectors @ text_vectors.T
    logits = scale * cos
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return cos, probs / probs.sum(1, keepdims=True)


def test_original_request_as_its_clients_send_it(client):
    # The original Flask clients: requests.post(url, json={...}) with one base64 image and two captions.
    response = client.post(
        "/image_text_similarity_best_match",
        json={"image_base64": b64(png_bytes(1)), "text_input1": "a cat", "text_input2": "a car"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["best_match"] in ("a cat", "a car")
    assert body["weights"] == "random" and body["model"]["weights"] == "random"
    result = body["results"][0]
    assert result["best_match"] == body["best_match"]
    assert body["best_match"] == ["a cat", "a car"][int(np.argmax(result["scores"]))]
    # The original API's 6 decimals, for the scores, the probabilities and the CLIPScore.
    assert all(round(v, 6) == v for v in [*result["scores"], *result["probabilities"], result["clip_score"]])


def test_info_reports_model_weights_and_limits(client):
    info = client.get("/info").json()
    assert info["state"] == "ready" and info["weights"] == "random" and info["pretrained"] == "random"
    assert info["model"] == "clip-filter-tiny" and info["dim"] == 64 and info["context_length"] == 77
    assert info["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-5)
    assert info["limits"]["max_image_bytes"] == 25 * 1024 * 1024
    before = info["batching"]
    response = client.post(
        "/image_text_similarity_best_match", **multipart([png_bytes(i) for i in range(3)], ["a fresh caption"])
    )
    assert response.status_code == 200, response.text
    after = client.get("/info").json()["batching"]
    assert after["items_run"] >= before["items_run"] + 4  # 3 images and 1 uncached caption went through the model
    assert after["batches_run"] >= before["batches_run"] + 2  # images and texts never share a batch
    assert after["busy_s"] > before["busy_s"] and after["queued"] == 0
    assert client.get("/health/live").json() == {"status": "alive"}
    assert client.get("/health/ready").status_code == 200


@pytest.mark.parametrize("prefetch", ["on", "off"])
def test_captions_encoded_ahead_of_the_images_give_the_same_scores(server_factory, prefetch):
    # CLIP_PREFETCH_BATCHES=on (the CUDA default) queues a request's new captions before its images decode and
    # the request then uses that work: each caption goes through the model once, and the scores are unchanged.
    server = server_factory({"CLIP_PREFETCH_BATCHES": prefetch, "CLIP_TEXT_CACHE_SIZE": "0"})
    images, texts = [png_bytes(i) for i in range(2)], ["a lighthouse at dusk", "a plate of noodles"]
    with server.client() as client:
        before = client.get("/info").json()["batching"]
        response = client.post("/image_text_similarity_best_match", **multipart(images, texts))
        assert response.status_code == 200, response.text
        after = client.get("/info").json()["batching"]
        assert after["items_run"] - before["items_run"] == len(images) + len(texts)  # nothing encoded twice
        assert after["texts_prefetched"] - before["texts_prefetched"] == (len(texts) if prefetch == "on" else 0)
        cos, probs = reference_scores(client, images, texts)
    results = response.json()["results"]
    np.testing.assert_allclose([r["scores"] for r in results], cos, atol=2e-6)
    np.testing.assert_allclose([r["probabilities"] for r in results], probs, atol=2e-6)


def test_multipart_many_images_many_captions_match_the_numpy_reference(client):
    images = [png_bytes(i) for i in range(3)]
    response = client.post("/image_text_similarity_best_match", **multipart(images, CAPTIONS))
    assert response.status_code == 200, response.text
    body = response.json()
    assert "best_match" not in body  # only with exactly one image
    cos, probs = reference_scores(client, images, CAPTIONS)
    for row, result in enumerate(body["results"]):
        assert result["index"] == row and result["filename"] == f"img{row}.png"
        np.testing.assert_allclose(result["scores"], cos[row], atol=2e-5)
        np.testing.assert_allclose(result["probabilities"], probs[row], atol=1e-4)
        assert sum(result["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert result["best_index"] == int(np.argmax(cos[row]))
        assert result["best_match"] == CAPTIONS[result["best_index"]]
        assert result["clip_score"] == pytest.approx(2.5 * max(cos[row].max(), 0), abs=1e-4)


def test_json_images_and_similarity_matrix_agree(client):
    images = [png_bytes(10), png_bytes(11)]
    matrix = client.post("/similarity", json={"images": [b64(i) for i in images], "texts": CAPTIONS}).json()
    best = client.post(
        "/image_text_similarity_best_match",
        json={"images": ["data:image/png;base64," + b64(i) for i in images], "texts": CAPTIONS},
    ).json()
    for row in range(2):
        np.testing.assert_allclose(matrix["matrix"][row], best["results"][row]["scores"], atol=1e-6)
        np.testing.assert_allclose(matrix["probabilities"][row], best["results"][row]["probabilities"], atol=1e-5)
    assert matrix["errors"] == [None, None]


def test_ties_go_to_the_lowest_caption_index(client):
    body = client.post(
        "/image_text_similarity_best_match",
        json={"image_base64": b64(png_bytes(3)), "texts": ["same words", "other words", "same words"]},
    ).json()
    scores = body["results"][0]["scores"]
    assert scores[0] == scores[2]
    if scores[0] >= scores[1]:
        assert body["results"][0]["best_index"] == 0


def test_long_captions_are_truncated_and_reported(client):
    long_caption = " ".join(["word"] * 200)
    body = client.post(
        "/image_text_similarity_best_match", json={"image_base64": b64(png_bytes(4)), "texts": ["short", long_caption]}
    ).json()
    assert body["truncated"] == [False, True]
    texts = client.post("/embeddings/texts", json={"texts": [long_caption, "short"]}).json()
    assert texts["truncated"] == [True, False] and texts["dim"] == 64


def test_one_bad_image_gets_an_error_in_its_slot(client):
    images = [png_bytes(5), b"definitely not an image", png_bytes(6)]
    body = client.post("/image_text_similarity_best_match", **multipart(images, CAPTIONS)).json()
    assert [("error" in r) for r in body["results"]] == [False, True, False]
    assert body["results"][1]["error"]["code"] == "not_an_image"
    assert len(body["results"][2]["scores"]) == 3
    embeddings = client.post("/embeddings/images", **multipart(images, [])).json()
    assert embeddings["embeddings"][1] is None and len(embeddings["embeddings"][0]) == 64


def test_cors_is_closed_by_default(client):
    # Other web pages may not call the API (CLIP_FILTER_CORS_ORIGINS allows some; see test_auth.py).
    response = client.options(
        "/image_text_similarity_best_match",
        headers={"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in response.headers


def test_ui_prefix_serves_the_same_api(client):
    assert client.get("/api/info").json()["model"] == "clip-filter-tiny"


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.permutations(range(3)), st.permutations(range(3)))
def test_permuting_images_or_captions_permutes_the_results(client, image_order, caption_order):
    images = [png_bytes(20 + i) for i in range(3)]
    base = client.post("/similarity", json={"images": [b64(i) for i in images], "texts": CAPTIONS}).json()
    permuted = client.post(
        "/similarity",
        json={"images": [b64(images[i]) for i in image_order], "texts": [CAPTIONS[j] for j in caption_order]},
    ).json()
    expected = np.array(base["matrix"])[np.ix_(list(image_order), list(caption_order))]
    np.testing.assert_allclose(permuted["matrix"], expected, atol=1e-6)
    expected_p = np.array(base["probabilities"])[np.ix_(list(image_order), list(caption_order))]
    np.testing.assert_allclose(permuted["probabilities"], expected_p, atol=1e-6)


def test_openapi_describes_every_body_and_response_of_these_routes(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    bodies = {
        "/image_text_similarity_best_match": (
            {"OriginalMatchRequest", "MatchRequest"},
            "MatchForm",
            {"images", "texts"},
        ),
        "/similarity": ({"OriginalMatchRequest", "MatchRequest"}, "MatchForm", {"images", "texts"}),
        "/embeddings/images": ({"ImagesRequest"}, "ImagesForm", {"images"}),
        "/embeddings/texts": ({"TextsRequest"}, "TextsForm", {"texts"}),
    }
    for path, (json_titles, form_title, form_fields) in bodies.items():
        operation = spec["paths"][path]["post"]
        content = operation["requestBody"]["content"]
        json_schema = content["application/json"]["schema"]
        assert {s["title"] for s in json_schema.get("anyOf", [json_schema])} == json_titles, path
        form = content["multipart/form-data"]["schema"]
        assert form["title"] == form_title and set(form["properties"]) == form_fields, path
        for status in ("200", "413", "422", "503"):
            ref = operation["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.split("/")[-1] in schemas, (path, status)
    original = content_of(spec, "/image_text_similarity_best_match")["anyOf"][0]
    assert original["required"] == ["image_base64", "text_input1", "text_input2"]
    for path in ("/health/live", "/health/ready", "/info"):
        ref = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.split("/")[-1] in schemas
    assert schemas["InfoResponse"]["properties"]["limits"]["$ref"].endswith("/Limits")
    assert "max_json_elements" in schemas["Limits"]["properties"]


def content_of(spec: dict, path: str) -> dict:
    return spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
