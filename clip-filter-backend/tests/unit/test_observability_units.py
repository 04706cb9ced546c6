"""The pure parts of abuse controls and observability: settings, route classes, client identities, log lines,
and the metrics middleware's auth-failure count (over a real ASGI app; the live tests cover the rest)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from clip_filter.api.metrics import MetricsMiddleware
from clip_filter.api.ratelimit import MODEL, WRITE, RequestRateLimiter, limit_class
from clip_filter.core.config import Settings
from clip_filter.core.errors import ClipFilterError


def test_rate_limit_settings_parse_or_refuse_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().rate_limit_model == "" and Settings().rate_limit_write == ""  # off by default
    monkeypatch.setenv("CLIP_FILTER_RATE_LIMIT_MODEL", " 20/second;600/minute ")
    monkeypatch.setenv("CLIP_FILTER_RATE_LIMIT_WRITE", "30 per minute")
    settings = Settings()
    assert settings.rate_limit_model == "20/second;600/minute"
    limiter = RequestRateLimiter(settings)
    assert limiter.enabled
    assert limiter.describe() == {MODEL: "20 per 1 second; 600 per 1 minute", WRITE: "30 per 1 minute"}
    monkeypatch.setenv("CLIP_FILTER_RATE_LIMIT_WRITE", "lots")
    with pytest.raises(ValidationError, match="'lots' is not a rate limit such as '600/minute'"):
        Settings()
    monkeypatch.setenv("CLIP_FILTER_RATE_LIMIT_WRITE", "")
    monkeypatch.setenv("CLIP_FILTER_RATE_LIMIT_STRATEGY", "leaky-bucket")
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("method", "template", "expected"),
    [
        ("POST", "/similarity", MODEL),
        ("POST", "/image_text_similarity_best_match", MODEL),
        ("POST", "/embeddings/images", MODEL),
        ("POST", "/collections/{name}/search", MODEL),
        ("POST", "/v1/embeddings", MODEL),
        ("POST", "/collections", WRITE),
        ("PATCH", "/collections/{name}/items/{item_id}", WRITE),
        ("DELETE", "/collections/{name}", WRITE),
        ("POST", "/collections/{name}/jobs", WRITE),
        ("GET", "/collections/{name}/items", None),
        ("GET", "/metrics", None),
        ("HEAD", "/health/ready", None),
        ("POST", None, None),  # no route (404, refused before routing): nothing to count
    ],
)
def test_limit_classes(method: str, template: str | None, expected: str | None) -> None:
    assert limit_class(method, template) == expected


def test_fixed_window_refuses_after_the_budget_and_says_when_to_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIP_FILTER_RATE_LIMIT_MODEL", "2/hour")
    monkeypatch.setenv("CLIP_FILTER_RATE_LIMIT_STRATEGY", "fixed-window")
    limiter = RequestRateLimiter(Settings())
    who = f"addr:{uuid.uuid4()}"
    limiter.check(MODEL, who)
    limiter.check(MODEL, who)
    limiter.check(WRITE, who)  # no write limit configured
    with pytest.raises(ClipFilterError) as refused:
        limiter.check(MODEL, who)
    assert refused.value.status == 429 and refused.value.code == "rate_limited"
    assert 1 <= refused.value.details["retry_after"] <= 3600
    limiter.check(MODEL, who + "-other")  # someone else's budget is untouched


def _client_identity_of(host: str, key_id: str | None = None) -> str:
    from types import SimpleNamespace

    from clip_filter.api.ratelimit import client_identity

    scope = {"type": "http", "client": (host, 1234), "headers": [], "state": {}}
    request = Request(scope)
    if key_id is not None:
        request.state.principal = SimpleNamespace(key_id=key_id)
    return client_identity(request)


def test_client_identity_prefers_the_key_then_the_address() -> None:
    assert _client_identity_of("10.0.0.7", key_id="k123") == "key:k123"
    assert _client_identity_of("10.0.0.7", key_id=None) == "addr:10.0.0.7"
    assert _client_identity_of("10.0.0.7") == "addr:10.0.0.7"
    assert _client_identity_of("::ffff:10.0.0.7") == "addr:10.0.0.7"
    # An IPv6 client counts as its /64: rotating addresses inside it gains nothing.
    same_net = _client_identity_of("2001:db8:1:2::5"), _client_identity_of("2001:db8:1:2:ffff::9")
    assert same_net == ("net:2001:db8:1:2::/64",) * 2
    assert _client_identity_of("2001:db8:1:3::5") != _client_identity_of("2001:db8:1:2::5")


def test_auth_failures_are_counted_whoever_answers_them() -> None:
    async def answer(request: Request) -> JSONResponse:
        status = int(request.path_params["status"])
        return JSONResponse({"error": {"code": "x", "message": "x"}}, status_code=status)

    app = MetricsMiddleware(Starlette(routes=[Route("/status/{status}", answer)]))

    def count(status: str) -> float:
        return REGISTRY.get_sample_value("clip_filter_auth_failures_total", {"status": status}) or 0.0

    async def requests() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            for status in (401, 401, 403, 404, 200):
                assert (await http.get(f"/status/{status}")).status_code == status

    before = {s: count(s) for s in ("401", "403")}
    asyncio.run(requests())
    assert count("401") - before["401"] == 2
    assert count("403") - before["403"] == 1
    assert (
        REGISTRY.get_sample_value(
            "clip_filter_http_requests_total", {"method": "GET", "route": "/status/{status}", "status": "401"}
        )
        >= 2
    )


LOGGING_SCRIPT = """
import logging, sys
from clip_filter.core.logging import configure_logging, request_id_var
configure_logging(sys.argv[1])
log = logging.getLogger("clip_filter.test")
log.info("outside a request")
request_id_var.set("rid-42")
log.warning("inside a request %s", "with args")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("failed")
"""


def _log_lines(log_format: str) -> list[str]:
    run = subprocess.run(
        [sys.executable, "-c", LOGGING_SCRIPT, log_format], capture_output=True, text=True, timeout=60, check=True
    )
    return run.stderr.splitlines()


def test_json_log_lines_parse_and_carry_the_request_id() -> None:
    lines = _log_lines("json")
    records = [json.loads(line) for line in lines]  # one JSON object per line, traceback included
    assert len(records) == 3
    assert records[0]["message"] == "outside a request" and records[0]["request_id"] is None
    assert records[0]["level"] == "INFO" and records[0]["logger"] == "clip_filter.test"
    assert records[1]["message"] == "inside a request with args" and records[1]["request_id"] == "rid-42"
    assert records[2]["request_id"] == "rid-42" and "ZeroDivisionError" in records[2]["exc_info"]
    assert records[2]["time"].endswith("+00:00")


def test_text_log_lines_carry_the_request_id() -> None:
    lines = _log_lines("text")
    assert lines[0].endswith("INFO clip_filter.test [-]: outside a request")
    assert lines[1].endswith("WARNING clip_filter.test [rid-42]: inside a request with args")
    assert lines[2].endswith("ERROR clip_filter.test [rid-42]: failed")
    assert lines[-1] == "ZeroDivisionError: division by zero"
