"""Prometheus metrics, served at `GET /metrics` (text exposition format).

What is counted where:
- HTTP requests, latency and in-flight count: `MetricsMiddleware`, a plain ASGI middleware, labelled by
  the route *template* (`/collections/{name}/items`, the `/api` alias folded in), never the raw path.
- Error codes, image decode refusals: the error handlers (`api/errors.py`) and the image slots
  (`api/inputs.py`) call `count_error` / `count_image_refusal`.
- Auth failures: every 401/403 answer, whoever produced it (a dependency, a middleware).
- Batching (batches, items, busy seconds, queue depth): `ModelCollector` reads the counters the batcher
  already keeps (`ModelService.batching_stats()`, what `/info` reports) at scrape time. It takes no lock
  and never waits for the model thread, so `/metrics` stays cheap while the model is saturated.
- Items ingested: a listener on the store's commit announcements (uploads and background jobs alike).
- `process_*` (RSS, open fds, CPU seconds) and `python_gc_*`: prometheus_client's default collectors.

The metrics live in prometheus_client's default registry: one server process, one set of series.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in prometheus_client; no `*_created` series: half the output, and nothing here reads them
API_PREFIX = "/api"  # the UI's alias of every route (api/main.py): counted as the route itself
# No route: matched none (404), or refused by a middleware before routing (413, ...). One label for all
# keeps the label set bounded whatever paths clients send.
UNROUTED = "unrouted"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Model requests take from milliseconds (a cached caption) to a minute (a full queue on a CPU).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HTTP_REQUESTS = Counter(
    "clip_filter_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "clip_filter_http_request_duration_seconds",
    "Time from request start to the last byte of the response.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_PROGRESS = Gauge("clip_filter_http_requests_in_progress", "HTTP requests being answered now.")
ERRORS = Counter("clip_filter_errors", "Error responses by their stable error code and status.", ["code", "status"])
AUTH_FAILURES = Counter(
    "clip_filter_auth_failures", "Requests refused for authentication (401) or permission (403).", ["status"]
)
IMAGE_REFUSALS = Counter(
    "clip_filter_image_refusals", "Images refused while being checked or decoded, by error code.", ["code"]
)
ITEMS_INGESTED = Counter("clip_filter_items_ingested", "Items committed to collections by this process.", ["kind"])
UPLOADS_ACTIVE = Gauge(
    "clip_filter_uploads_active", "Uploads being read and processed now (api/admission.py).", ["what"]
)
UPLOADS_WAITING = Gauge("clip_filter_uploads_waiting", "Uploads waiting for a place, bodies not read yet.", ["what"])
UPLOAD_REFUSALS = Counter(
    "clip_filter_upload_refusals",
    "Uploads answered 429 before their body was read (all places and backlog taken).",
    ["what"],
)


def route_template(scope: Scope) -> str | None:
    """The template of the route that answered (`/collections/{name}`), without the UI's `/api` prefix.

    None before routing, and when no route matched.
    """
    route = scope.get("route")
    if route is None:
        return None
    if isinstance(route, Mount):
        return (route.path or "") + "/*"
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    # This FastAPI resolves include_router(prefix=...) lazily: the route keeps its own path and the
    # including router (in FastAPI's part of the scope) holds the prefix.
    included = (scope.get("fastapi") or {}).get("included_router")
    prefix = getattr(getattr(included, "include_context", None), "prefix", "")
    if isinstance(prefix, str) and prefix and not path.startswith(prefix + "/"):
        path = prefix + path
    if path.startswith(API_PREFIX + "/"):
        path = path[len(API_PREFIX) :]
    return path


class MetricsMiddleware:
    """Counts every HTTP request by method, route template and status, and times it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        HTTP_IN_PROGRESS.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            HTTP_IN_PROGRESS.dec()
            method = scope.get("method", "")
            method = method if method in _METHODS else "other"
            route = route_template(scope) or UNROUTED
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - started)
            if status in (401, 403):
                AUTH_FAILURES.labels(str(status)).inc()


def count_error(code: str, status: int) -> None:
    ERRORS.labels(code, str(status)).inc()


def count_image_refusal(code: str) -> None:
    IMAGE_REFUSALS.labels(code).inc()


class ModelCollector(Collector):
    """The batcher's own counters, read when scraped (no lock, no call into the model thread)."""

    def __init__(self) -> None:
        self.service: Any = None  # the ModelService of the running app
        self.max_queue = 0

    def attach(self, service: Any, max_queue: int) -> None:
        self.service = service
        self.max_queue = max_queue

    def detach(self) -> None:
        self.service = None

    def collect(self) -> Iterable[Metric]:
        service = self.service
        stats: dict[str, Any] = {"batches_run": 0, "items_run": 0, "busy_s": 0.0, "queued": 0}
        ready = False
        if service is not None:
            stats.update(service.batching_stats())
            ready = bool(service.ready)
        yield CounterMetricFamily("clip_filter_model_batches", "Model batches run.", value=stats["batches_run"])
        yield CounterMetricFamily(
            "clip_filter_model_batch_items",
            "Items (images, captions) run in model batches; divided by batches: the mean batch size.",
            value=stats["items_run"],
        )
        yield CounterMetricFamily(
            "clip_filter_model_busy_seconds", "Seconds the model thread spent running batches.", value=stats["busy_s"]
        )
        yield GaugeMetricFamily("clip_filter_model_queue_depth", "Items waiting for the model.", value=stats["queued"])
        yield GaugeMetricFamily(
            "clip_filter_model_queue_capacity", "Queued items beyond which requests get 429.", value=self.max_queue
        )
        yield GaugeMetricFamily("clip_filter_model_ready", "1 when the model serves requests.", value=int(ready))


MODEL_COLLECTOR = ModelCollector()
REGISTRY.register(MODEL_COLLECTOR)


def count_committed_items(change: Any) -> None:
    """A store listener (runs under the store's write lock: only counts)."""
    try:
        for kind in getattr(change, "added_kinds", ()):
            ITEMS_INGESTED.labels(kind).inc()
    except Exception:  # noqa: BLE001 - a metric must never fail a commit's announcement
        log.exception("counting ingested items failed")


def watch(model_service: Any, collections: Any, max_queue: int) -> None:
    """Called once the app's services exist (lifespan start)."""
    MODEL_COLLECTOR.attach(model_service, max_queue)
    store = getattr(collections, "store", None)
    if store is not None and hasattr(store, "add_listener"):
        store.add_listener(count_committed_items)


def unwatch() -> None:
    MODEL_COLLECTOR.detach()


router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response)
async def metrics() -> Response:
    # A few dozen series rendered on the event loop: cheaper than a hop to a worker thread.
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
