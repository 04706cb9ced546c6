"""Rate limits per API key (per client address without one) on the model routes and on writes.

Two classes of request, each with its own limit (`CLIP_FILTER_RATE_LIMIT_MODEL`, `..._WRITE`, in the
`limits` notation, empty = off): "model" is every route that runs the model for the caller (matching,
similarity, embeddings, collection search and map projection, the protocol adapters); "write" is every
other POST/PUT/PATCH/DELETE. Reads (listings, content, thumbnails, health, metrics) are not limited.
A class's budget is shared by all its routes and by their `/api` aliases.

The check is an app-wide dependency, so it runs after routing (the route template is known) and
after the auth dependency has set `request.state.principal`; it runs before the route decodes an image
or runs the model (a body the route declares as a pydantic model is parsed by FastAPI before any
dependency runs, within the body and JSON limits). Counters live in this process's memory (`limits`'
MemoryStorage): one server process, one budget; a restart starts afresh.

Behind a reverse proxy the client address is the proxy's unless uvicorn trusts it to forward the
real one: set `FORWARDED_ALLOW_IPS` to the proxy's address (see docs/observability.md).
"""

from __future__ import annotations

import ipaddress
import math
import time

from fastapi import Request
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter

from clip_filter.api.metrics import route_template
from clip_filter.core.config import Settings
from clip_filter.core.errors import ClipFilterError

MODEL = "model"
WRITE = "write"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# (method, route template without the /api prefix) of the routes that run the model for the caller.
MODEL_ROUTES = frozenset(
    {
        ("POST", "/image_text_similarity_best_match"),
        ("POST", "/similarity"),
        ("POST", "/embeddings/images"),
        ("POST", "/embeddings/texts"),
        ("POST", "/collections/{name}/search"),
        ("POST", "/collections/{name}/map/project"),
        # the protocol adapters (OpenAI, Weaviate multi2vec-clip, immich)
        ("POST", "/v1/embeddings"),
        ("POST", "/embeddings"),
        ("POST", "/vectorize"),
        ("POST", "/predict"),
    }
)


def limit_class(method: str, template: str | None) -> str | None:
    if template is None:
        return None
    if (method, template) in MODEL_ROUTES:
        return MODEL
    if method not in SAFE_METHODS:
        return WRITE
    return None


def client_identity(request: Request) -> str:
    """The API key's id when the request has one, else the client address (an IPv6 client's /64)."""
    principal = getattr(request.state, "principal", None)
    key_id = getattr(principal, "key_id", None)
    if key_id:
        return f"key:{key_id}"
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"addr:{host or 'unknown'}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"addr:{address.ipv4_mapped}"
        # One host usually holds a whole /64: per-address buckets would be free to multiply.
        return f"net:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"addr:{address}"


class RequestRateLimiter:
    """The configured limits and their in-memory counters."""

    def __init__(self, settings: Settings) -> None:
        moving = settings.rate_limit_strategy == "moving-window"
        self._limiter: RateLimiter = (MovingWindowRateLimiter if moving else FixedWindowRateLimiter)(MemoryStorage())
        self._limits: dict[str, list[RateLimitItem]] = {}
        for name, spec in ((MODEL, settings.rate_limit_model), (WRITE, settings.rate_limit_write)):
            if spec.strip():
                self._limits[name] = parse_many(spec)

    @property
    def enabled(self) -> bool:
        return bool(self._limits)

    def describe(self) -> dict[str, str | None]:
        """What /info could report: the limits in force per class."""
        return {name: "; ".join(str(i) for i in self._limits.get(name, [])) or None for name in (MODEL, WRITE)}

    def check(self, klass: str, who: str) -> None:
        """Counts one request of `klass` for `who`, or raises 429 rate_limited (then nothing is counted)."""
        items = self._limits.get(klass)
        if not items:
            return
        # Test all, then hit all: no await in between, so this is atomic on the event loop, and a refused
        # request uses up none of the limits.
        for item in items:
            if not self._limiter.test(item, klass, who):
                reset_at = self._limiter.get_window_stats(item, klass, who).reset_time
                retry_after = max(1, math.ceil(reset_at - time.time()))
                raise ClipFilterError(
                    "rate_limited",
                    f"Too many {klass} requests: the limit is {item} per client; retry in {retry_after} s.",
                    429,
                    limit=str(item),
                    limit_class=klass,
                    retry_after=retry_after,
                )
        for item in items:
            self._limiter.hit(item, klass, who)


async def enforce_rate_limit(request: Request) -> None:
    """App-wide dependency: 429 with Retry-After once the caller's budget for this class of route is spent."""
    limiter: RequestRateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None or not limiter.enabled:
        return
    klass = limit_class(request.method, route_template(request.scope))
    if klass is not None:
        limiter.check(klass, client_identity(request))
