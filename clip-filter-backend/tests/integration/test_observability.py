"""Rate limits, /metrics, request ids and JSON logs, over real HTTP against a live server of this module's own.

The server (`rate_limited_server`) runs with TIGHT_RATE_LIMITS (model 5/minute, write 3/minute), JSON logs and
access lines. Each test talks from its own loopback address (127.0.0.N: Linux routes all of 127/8 to `lo`),
so every test starts with full budgets, and per-address separation can be seen. Nothing else talks to this
server while a test runs, so metric deltas between two scrapes are exact.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import TIGHT_RATE_LIMITS, LiveServer

MODEL_BUDGET = int(TIGHT_RATE_LIMITS["CLIP_FILTER_RATE_LIMIT_MODEL"].split("/")[0])
WRITE_BUDGET = int(TIGHT_RATE_LIMITS["CLIP_FILTER_RATE_LIMIT_WRITE"].split("/")[0])
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


@contextmanager
def client_at(server: LiveServer, address: str) -> Iterator[httpx.Client]:
    """A client whose connections come from `address` (the server sees it as the client address)."""
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=server.base_url, timeout=120.0, transport=transport) as http:
        yield http


def texts_body(count: int = 1) -> dict:
    # Fresh captions each time: the text cache would otherwise answer without the model.
    return {"texts": [f"caption {uuid.uuid4().hex}" for _ in range(count)]}


def assert_rate_limited(response: httpx.Response, klass: str, budget: int) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["limit_class"] == klass
    assert error["limit"] == f"{budget} per 1 minute"
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert error["retry_after"] == retry_after
    assert error["request_id"] == response.headers["X-Request-ID"]


def scrape(http: httpx.Client) -> dict[tuple[str, frozenset], float]:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# ---- rate limits ------------------------------------------------------------------------------------------
def test_model_routes_share_one_budget_then_answer_429_with_retry_after(rate_limited_server: LiveServer) -> None:
    with client_at(rate_limited_server, "127.0.0.2") as http:
        paths = ["/embeddings/texts", "/api/embeddings/texts"] * MODEL_BUDGET
        for path in paths[:MODEL_BUDGET]:
            response = http.post(path, json=texts_body())
            assert response.status_code == 200, response.text
        assert_rate_limited(http.post("/embeddings/texts", json=texts_body()), "model", MODEL_BUDGET)
        # Another model route, by its /api alias too: the same budget, refused before it decodes anything.
        assert_rate_limited(http.post("/api/similarity", json={"texts": ["a"], "images": []}), "model", MODEL_BUDGET)
        assert_rate_limited(http.post("/collections/nope/search", json={"text": "a"}), "model", MODEL_BUDGET)

        # Reads are not limited, and writes have a budget of their own.
        for path in ["/health/ready", "/health/live", "/info", "/collections", "/metrics"]:
            assert http.get(path).status_code == 200, path
        name = f"c{uuid.uuid4().hex[:12]}"
        assert http.post("/collections", json={"name": name}).status_code == 201
        assert http.get(f"/collections/{name}").status_code == 200


def test_budgets_are_per_client_address(rate_limited_server: LiveServer) -> None:
    with client_at(rate_limited_server, "127.0.0.3") as spender, client_at(rate_limited_server, "127.0.0.4") as other:
        for _ in range(MODEL_BUDGET):
            assert spender.post("/embeddings/texts", json=texts_body()).status_code == 200
        assert_rate_limited(spender.post("/embeddings/texts", json=texts_body()), "model", MODEL_BUDGET)
        response = other.post("/embeddings/texts", json=texts_body())
        assert response.status_code == 200, response.text
        assert len(response.json()["embeddings"]) == 1
        assert_rate_limited(spender.post("/embeddings/texts", json=texts_body()), "model", MODEL_BUDGET)


def test_writes_are_limited_and_model_routes_keep_their_budget(rate_limited_server: LiveServer) -> None:
    name = f"w{uuid.uuid4().hex[:12]}"
    with client_at(rate_limited_server, "127.0.0.5") as http:
        assert http.post("/collections", json={"name": name}).status_code == 201
        assert http.patch(f"/collections/{name}", json={"description": "d"}).status_code == 200
        added = http.post(f"/collections/{name}/items", json=texts_body(2))
        assert added.status_code == 200 and added.json()["added"] == 2, added.text
        assert WRITE_BUDGET == 3
        assert_rate_limited(http.delete(f"/collections/{name}"), "write", WRITE_BUDGET)
        assert_rate_limited(http.post("/collections", json={"name": name + "x"}), "write", WRITE_BUDGET)
        # Nothing was done by the refused requests.
        assert http.get(f"/collections/{name}").json()["item_count"] == 2
        assert http.get(f"/collections/{name}x").status_code == 404
        # Reads and model routes are unaffected.
        assert http.get(f"/collections/{name}/items").status_code == 200
        assert http.post("/embeddings/texts", json=texts_body()).status_code == 200
    with client_at(rate_limited_server, "127.0.0.6") as other:
        assert other.delete(f"/collections/{name}").status_code == 204


# ---- metrics ----------------------------------------------------------------------------------------------
def test_metrics_count_requests_latency_and_batches_exactly(rate_limited_server: LiveServer) -> None:
    with client_at(rate_limited_server, "127.0.0.7") as http:
        before = scrape(http)
        sizes = [2, 3, 1]
        for size, path in zip(sizes, ["/embeddings/texts", "/api/embeddings/texts", "/embeddings/texts"], strict=True):
            assert http.post(path, json=texts_body(size)).status_code == 200
        assert http.get("/nowhere").status_code == 404
        assert http.get("/collections/no-such-collection").status_code == 404
        assert http.post("/embeddings/texts", json={"texts": "not a list"}).status_code == 422
        after = scrape(http)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "clip_filter_http_requests_total"
    assert delta(requests, method="POST", route="/embeddings/texts", status="200") == 3  # the /api alias folded in
    assert delta(requests, method="POST", route="/embeddings/texts", status="422") == 1
    assert delta(requests, method="GET", route="unrouted", status="404") == 1
    assert delta(requests, method="GET", route="/collections/{name}", status="404") == 1
    assert delta(requests, method="GET", route="/metrics", status="200") == 1  # the first scrape
    latency = "clip_filter_http_request_duration_seconds"
    assert delta(latency + "_count", method="POST", route="/embeddings/texts") == 4
    assert delta(latency + "_bucket", method="POST", route="/embeddings/texts", le="+Inf") == 4
    assert delta(latency + "_sum", method="POST", route="/embeddings/texts") > 0
    assert delta("clip_filter_errors_total", code="invalid_request", status="422") == 1
    assert delta("clip_filter_errors_total", code="not_found", status="404") == 1
    assert delta("clip_filter_errors_total", code="collection_not_found", status="404") == 1

    # The batcher's own counters: one batch per (sequential) request, one item per new caption.
    assert delta("clip_filter_model_batches_total") == 3
    assert delta("clip_filter_model_batch_items_total") == sum(sizes)
    assert delta("clip_filter_model_busy_seconds_total") > 0
    assert value(after, "clip_filter_model_queue_depth") == 0
    assert value(after, "clip_filter_model_queue_capacity") == 256
    assert value(after, "clip_filter_model_ready") == 1
    assert value(after, "clip_filter_http_requests_in_progress") == 1  # the scrape itself
    assert value(after, "process_resident_memory_bytes") > 0


def test_metrics_count_ingested_items_image_refusals_and_rate_limits(rate_limited_server: LiveServer) -> None:
    name = f"m{uuid.uuid4().hex[:12]}"
    with client_at(rate_limited_server, "127.0.0.8") as http:
        before = scrape(http)
        assert http.post("/collections", json={"name": name}).status_code == 201
        added = http.post(f"/collections/{name}/items", json=texts_body(3))
        assert added.json()["added"] == 3, added.text
        files = [
            ("images", ("a.png", b"this is not an image", "image/png")),
            ("images", ("b.png", b"\x89PNG\r\n\x1a\n truncated", "image/png")),
        ]
        refused = http.post("/embeddings/images", files=files)
        assert refused.status_code == 200, refused.text
        codes = [error["code"] for error in refused.json()["errors"]]
        for _ in range(MODEL_BUDGET - 1):
            assert http.post("/embeddings/texts", json=texts_body()).status_code == 200
        assert http.post("/embeddings/texts", json=texts_body()).status_code == 429
        assert http.post("/embeddings/texts", json=texts_body()).status_code == 429
        after = scrape(http)

    def delta(metric: str, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, **labels)

    assert delta("clip_filter_items_ingested_total", kind="text") == 3
    assert delta("clip_filter_items_ingested_total", kind="image") == 0
    for code in set(codes):
        assert delta("clip_filter_image_refusals_total", code=code) == codes.count(code)
    assert delta("clip_filter_errors_total", code="rate_limited", status="429") == 2
    assert delta("clip_filter_http_requests_total", method="POST", route="/embeddings/texts", status="429") == 2
    assert delta("clip_filter_http_requests_total", method="POST", route="/collections/{name}/items", status="200") == 1


# ---- request ids and logs ---------------------------------------------------------------------------------
def log_records(server: LiveServer) -> list[dict]:
    assert server.log_path is not None
    lines = [line for line in server.log_path.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is JSON: a non-JSON line fails here


def test_request_id_is_echoed_in_the_header_the_error_body_and_the_log(rate_limited_server: LiveServer) -> None:
    request_id = f"test-{uuid.uuid4().hex[:12]}.1_A"
    with client_at(rate_limited_server, "127.0.0.9") as http:
        response = http.get("/collections/missing-one", headers={"X-Request-ID": request_id})
        assert response.status_code == 404
        assert response.headers["X-Request-ID"] == request_id
        assert response.json()["error"]["request_id"] == request_id
        assert response.json()["error"]["code"] == "collection_not_found"

        ok = http.get("/health/live", headers={"X-Request-ID": request_id + "-ok"})
        assert ok.status_code == 200 and ok.headers["X-Request-ID"] == request_id + "-ok"

    records = [r for r in log_records(rate_limited_server) if r.get("request_id") == request_id]
    assert records, "no log line carries the request id"
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert len(access) == 1
    assert access[0]["method"] == "GET" and access[0]["path"] == "/collections/missing-one"
    assert access[0]["status"] == 404 and access[0]["client"].startswith("127.0.0.9:")
    for record in log_records(rate_limited_server):
        assert set(record) >= {"time", "level", "logger", "message", "request_id"}


@pytest.mark.parametrize("sent", ["has space", "x" * 65, "semi;colon", "ünïcode", ""])
def test_unsafe_or_long_request_ids_are_replaced(rate_limited_server: LiveServer, sent: str) -> None:
    with client_at(rate_limited_server, "127.0.0.10") as http:
        response = http.get("/collections/missing-one", headers={"X-Request-ID": sent.encode()})
        generated = response.headers["X-Request-ID"]
        assert GENERATED_ID.fullmatch(generated), generated
        assert response.json()["error"]["request_id"] == generated


def test_every_request_gets_its_own_id(rate_limited_server: LiveServer) -> None:
    with client_at(rate_limited_server, "127.0.0.10") as http:
        ids = {http.get("/health/live").headers["X-Request-ID"] for _ in range(3)}
        assert len(ids) == 3 and all(GENERATED_ID.fullmatch(i) for i in ids)


def test_errors_built_outside_the_handlers_carry_the_request_id(rate_limited_server: LiveServer) -> None:
    # The body limit middleware answers 413 itself, before routing (and before the rate limit).
    limit = int(rate_limited_server.env["CLIP_FILTER_MAX_REQUEST_BYTES"])
    with client_at(rate_limited_server, "127.0.0.11") as http:
        before = scrape(http)
        response = http.post(
            "/embeddings/texts",
            content=b"x" * (limit + 1),
            headers={"X-Request-ID": "too-big-1", "Content-Type": "application/json"},
        )
        after = scrape(http)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and error["request_id"] == "too-big-1"
    assert response.headers["X-Request-ID"] == "too-big-1"
    assert int(response.headers["content-length"]) == len(response.content)
    counted = ("clip_filter_errors_total", frozenset({"code": "request_too_large", "status": "413"}.items()))
    assert after.get(counted, 0) - before.get(counted, 0) == 1
