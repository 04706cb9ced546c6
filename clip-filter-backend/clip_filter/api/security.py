"""Access control (API keys, scopes, collection limits) and the browser-safety layer. docs/security.md explains it.

- `require_access`: the dependency every router is included with. It finds the scope a route needs from the
  matched route template and method, reads the key (`Authorization: Bearer` or `X-API-Key`), checks scope and
  collection limit, and leaves a `Principal` in `request.state.principal` (`key_id` None: no key was used).
- `SecurityMiddleware`: a pure ASGI middleware in front of everything: the Host allow-list (421), the cross-site
  refusal of state-changing requests (403), JSON-or-multipart bodies only (415), security headers, originals
  served as attachments in a sandbox, `GET /collections` narrowed to a limited key's collections and the auth
  mode in `/info` (those two routes belong to other modules; the middleware adds to their answers).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as AsgiScope

from clip_filter.auth.keys import (
    MIN_BOOTSTRAP_CHARS,
    ApiKey,
    KeyStore,
    Scope,
    scope_allows,
)
from clip_filter.core.config import Settings
from clip_filter.core.errors import ClipFilterError
from clip_filter.core.netaddr import (
    LOOPBACK_NAMES,
    WILDCARD_ADDRESSES,
    split_host_port,
)

log = logging.getLogger(__name__)

# A buffered JSON answer's rewrite: (payload, ASGI scope) -> new payload.
Rewrite = Callable[[Any, AsgiScope], Any]

CREATE_KEY_HINT = (
    "create a key with `clip-filter keys create NAME --scope admin` (same CLIP_FILTER_DATA_DIR, or the same "
    "CLIP_FILTER_DATABASE_URL on PostgreSQL), or give one in "
    "CLIP_FILTER_BOOTSTRAP_KEY / CLIP_FILTER_BOOTSTRAP_KEY_FILE (at least 32 random characters, e.g. "
    "`openssl rand -hex 32`)"
)

# ---- which routes need what ----------------------------------------------------------------------------------
PUBLIC_PREFIXES = ("/health/", "/.well-known/")
PUBLIC_PATHS = frozenset({"/ping", "/"})  # "/": the UI's page, or the service's name card
# POST routes that only compute or read: a read key may call them.
READ_ONLY_POSTS = frozenset(
    {
        "/image_text_similarity_best_match",
        "/similarity",
        "/embeddings/images",
        "/embeddings/texts",
        "/collections/{name}/search",
        "/collections/{name}/map/project",
        "/v1/embeddings",
        "/embeddings",
        "/vectorize",
        "/predict",  # the protocol adapters (OpenAI, Weaviate, immich)
    }
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
WWW_AUTHENTICATE = 'Bearer realm="clip-filter"'


def api_path(path: str) -> str:
    """The route template without the UI's /api prefix."""
    if path == "/api" or path.startswith("/api/"):
        return path[4:] or "/"
    return path


def is_public(path: str) -> bool:
    path = api_path(path)
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def required_scope(method: str, path: str) -> Scope | None:
    """The scope a route template needs for a method; None: public."""
    path = api_path(path)
    if is_public(path):
        return None
    method = method.upper()
    if (
        (method == "DELETE" and path == "/collections/{name}")
        or path.endswith("/reindex")
        or path == "/keys"
        or path.startswith("/keys/")
    ):
        return "admin"
    if method in SAFE_METHODS or (method == "POST" and path in READ_ONLY_POSTS):
        return "read"
    return "write"


# ---- who is calling ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Principal:
    """Who a request acts as. `key_id` None: no key (auth off, or a public route); rate limits then go by address."""

    key_id: str | None
    name: str
    scope: Scope | None  # None: public routes only
    collections: tuple[str, ...] | None = None  # None: every collection

    def may_use(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    @classmethod
    def from_key(cls, key: ApiKey) -> Principal:
        return cls(key.id, key.name, key.scope, key.collections)


ANONYMOUS_FULL = Principal(None, "anonymous", "admin")  # auth off: no key needed for anything
ANONYMOUS_PUBLIC = Principal(None, "anonymous", None)


class AuthError(ClipFilterError):
    """401 (no or unknown key, with `WWW-Authenticate: Bearer`) or 403 (key lacks the scope or collection)."""

    def __init__(self, status: int, message: str, fix: str) -> None:
        super().__init__("unauthorized" if status == 401 else "forbidden", message, status, fix=fix)


class StartupRefused(SystemExit):
    """The server must not start as configured; SystemExit so `clip-filter serve` prints the message, exit 1."""


def read_key(request_headers: Any) -> str | None:
    authorization = request_headers.get("authorization")
    if authorization:
        kind, _, value = authorization.strip().partition(" ")
        if kind.lower() == "bearer" and value.strip():
            return value.strip()
        raise AuthError(
            401,
            "The Authorization header is not 'Bearer <key>'.",
            "Send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
        )
    key = request_headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


# ---- the access-control object on app.state ----------------------------------------------------------------------
class AccessControl:
    def __init__(self, settings: Settings, store: KeyStore) -> None:
        self.settings = settings
        self.keys = store
        self.mode = settings.auth
        self.required = settings.auth_required

    def authenticate(self, secret: str) -> ApiKey | None:
        if len(secret) > 512:  # no key is that long; do not hash megabytes
            return None
        return self.keys.lookup(secret)

    def info(self) -> dict[str, Any]:
        return {"mode": self.mode, "keys_required": self.required, "cors_origins": cors_origins(self.settings)}

    def close(self) -> None:
        self.keys.close()


def _bootstrap_secret(settings: Settings) -> str | None:
    if settings.bootstrap_key_file is not None:
        try:
            secret = settings.bootstrap_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise StartupRefused(
                f"error: CLIP_FILTER_BOOTSTRAP_KEY_FILE={settings.bootstrap_key_file} cannot be "
                f"read: {exc.strerror or exc}"
            ) from None
    else:
        secret = (settings.bootstrap_key or "").strip()
    if not secret:
        return None
    if len(secret) < MIN_BOOTSTRAP_CHARS or any(c.isspace() or ord(c) < 33 or ord(c) > 126 for c in secret):
        raise StartupRefused(
            f"error: the bootstrap key must be at least {MIN_BOOTSTRAP_CHARS} printable ASCII "
            "characters without spaces; fix: use e.g. `openssl rand -hex 32`"
        )
    return secret


def open_access_control(settings: Settings) -> AccessControl:
    """Opens the key store, registers the bootstrap key, and refuses to start when keys are needed but none exist."""
    from clip_filter.auth import open_key_store

    secret = _bootstrap_secret(settings)
    store = open_key_store(settings)
    try:
        if secret is not None:
            key = store.register(secret, "bootstrap", "admin")
            if not key.active:
                log.warning("the configured bootstrap key %s was revoked; it stays revoked", key.id)
        access = AccessControl(settings, store)
        if access.required and store.count_active() == 0:
            why = (
                "CLIP_FILTER_AUTH=keys"
                if settings.auth == "keys"
                else f"the server binds {settings.host!r}, not loopback"
            )
            raise StartupRefused(
                f"error: API keys are required ({why}) but none exists.\n"
                f"fix: {CREATE_KEY_HINT}; or bind 127.0.0.1; or set CLIP_FILTER_AUTH=off to serve everyone "
                "without a key (only on a trusted network)."
            )
    except BaseException:
        store.close()
        raise
    if settings.auth == "off":
        log.warning("CLIP_FILTER_AUTH=off: every request is served without a key, bound to %s", settings.host)
    if "*" in cors_origins(settings) and not access.required:
        log.warning("CLIP_FILTER_CORS_ORIGINS=* without keys: any web page can call this API")
    return access


# ---- the dependency ---------------------------------------------------------------------------------------------
async def require_access(request: Request) -> Principal:
    route = request.scope.get("route")
    template = getattr(route, "path", request.url.path)
    needed = required_scope(request.method, template)
    access: AccessControl = request.app.state.access
    if needed is None:
        request.state.principal = ANONYMOUS_PUBLIC if access.required else ANONYMOUS_FULL
        return request.state.principal
    if not access.required:
        # Keys are not checked at all: clients that always send one (the OpenAI SDK needs an api_key) keep working,
        # and a limit on a key would mean nothing when leaving the key out lifts it.
        request.state.principal = ANONYMOUS_FULL
        return ANONYMOUS_FULL
    secret = read_key(request.headers)
    if secret is None:
        raise AuthError(
            401,
            "This API needs a key.",
            "Send 'Authorization: Bearer <key>' (or 'X-API-Key'); an admin makes one with "
            "`clip-filter keys create NAME --scope read`.",
        )
    if access.keys.lookup_blocks:  # PostgreSQL: a network round trip, in a worker thread
        key = await run_in_threadpool(access.authenticate, secret)
    else:  # one indexed SQLite read: microseconds, fine on the loop
        key = access.authenticate(secret)
    if key is None:
        raise AuthError(
            401, "The API key is unknown or revoked.", "Check the key; `clip-filter keys list` shows the active ones."
        )
    principal = Principal.from_key(key)
    request.state.principal = principal
    if not scope_allows(principal.scope, needed):
        raise AuthError(
            403,
            f"This needs a key with the {needed!r} scope; key {key.id} has {key.scope!r}.",
            f"Use a key created with --scope {needed}.",
        )
    collection = request.path_params.get("name")
    if principal.collections is not None:
        if isinstance(collection, str) and not principal.may_use(collection):
            raise AuthError(
                403,
                f"Key {key.id} may not use collection {collection!r}.",
                "Use a key for this collection, or one without a collection limit.",
            )
        if collection is None and request.method == "POST" and api_path(template) == "/collections":
            raise AuthError(
                403,
                f"Key {key.id} is limited to named collections and cannot create collections.",
                "Create collections with a key that has no collection limit.",
            )
    return principal


AccessDep = Annotated[Principal, Depends(require_access)]


# ---- browser safety ----------------------------------------------------------------------------------------------
def cors_origins(settings: Settings) -> list[str]:
    return [o.strip().rstrip("/") for o in settings.cors_origins.split(",") if o.strip()]


def allowed_hosts(settings: Settings) -> tuple[frozenset[str], bool]:
    """(allowed host names, any host allowed). Names are compared without the port."""
    configured = [h.strip() for h in settings.allowed_hosts.split(",") if h.strip()]
    if "*" in configured:
        return frozenset(), True
    names = {split_host_port(h)[0].lower() for h in configured}
    if not configured:
        names.update(LOOPBACK_NAMES)
        bind = settings.host.strip().strip("[]").lower()
        if bind in WILDCARD_ADDRESSES:
            # A wildcard bind answers under names we cannot know. With keys required a rebound DNS name gains
            # nothing (the page has no key: keys live in the UI's own origin), so any Host is fine; without keys
            # only loopback names are (set CLIP_FILTER_ALLOWED_HOSTS for the others).
            if settings.auth_required:
                return frozenset(), True
        else:
            names.add(bind)
    return frozenset(names), False


UI_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
SANDBOX_CSP = "sandbox; default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"
DOCS_PATHS = ("/docs", "/redoc")  # FastAPI's pages load their scripts from a CDN: no UI CSP there


def _error_body(status: int, code: str, message: str, fix: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": {"code": code, "message": message, "fix": fix}}).encode()


def _is_content_path(path: str) -> bool:
    parts = api_path(path).split("/")  # "", collections, {name}, items, {id}, content
    return len(parts) == 6 and parts[1] == "collections" and parts[3] == "items" and parts[5] == "content"


def _is_collections_list(path: str) -> bool:
    return api_path(path).rstrip("/") == "/collections"


def _is_info(path: str) -> bool:
    return api_path(path) == "/info"


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, access: AccessControl) -> None:
        self.app = app
        self.access = access
        self.hosts, self.any_host = allowed_hosts(settings)
        self.origins = set(cors_origins(settings))

    # -- checks before the app ------------------------------------------------------------------------------
    def _check_host(self, host: str) -> tuple[int, bytes] | None:
        if self.any_host:
            return None
        name = split_host_port(host)[0].lower().rstrip(".")
        if name in self.hosts:
            return None
        # 421 Misdirected Request (RFC 9110 15.5.20): this server is not configured to answer for that authority,
        # which is exactly the case; 400 would say the request itself is malformed.
        return _error_body(
            421,
            "invalid_host",
            f"This server does not answer for the host {host!r}.",
            "Use the address the server is configured for, or add the name to CLIP_FILTER_ALLOWED_HOSTS.",
        )

    def _check_cross_site(self, headers: dict[bytes, bytes], host: str) -> tuple[int, bytes] | None:
        origin = headers.get(b"origin", b"").decode("latin-1").strip().rstrip("/")
        fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").strip().lower()
        if origin and origin != "null":
            if origin in self.origins or "*" in self.origins or _same_origin(origin, host):
                return None
        elif origin == "null" or fetch_site in ("cross-site", "same-site"):
            pass  # an opaque origin (sandboxed page, file:) or a browser that says it comes from elsewhere
        else:
            return None  # no Origin and no Sec-Fetch-Site: not a browser page (curl, SDKs, servers)
        return _error_body(
            403,
            "cross_site_request",
            "A state-changing request from another web site is refused.",
            "Call the API from its own origin, or add the page's origin to CLIP_FILTER_CORS_ORIGINS.",
        )

    @staticmethod
    def _check_body_type(headers: dict[bytes, bytes]) -> tuple[int, bytes] | None:
        length = headers.get(b"content-length", b"0").strip()
        has_body = headers.get(b"transfer-encoding") is not None or length not in (b"0", b"")
        if not has_body:
            return None
        media = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        if (
            media == "application/json"
            or media == "multipart/form-data"
            or (media.startswith("application/") and media.endswith("+json"))
        ):
            return None
        shown = media or "none"
        return _error_body(
            415,
            "unsupported_media_type",
            f"Request bodies must be JSON or multipart/form-data (Content-Type was {shown}).",
            "Send 'Content-Type: application/json' with a JSON body, or a multipart form.",
        )

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET").upper()
        refusal = None if is_public(path) else self._check_host(host)
        if refusal is None and method in UNSAFE_METHODS:
            refusal = self._check_cross_site(headers, host) or self._check_body_type(headers)
        if refusal is not None:
            status, body = refusal
            await _send_json(send, status, body, self._headers(path, "application/json", None))
            return

        rewrite = None
        if method == "GET" and _is_collections_list(path):
            rewrite = self._narrow_collections
        elif method == "GET" and _is_info(path):
            rewrite = self._add_auth_info
        if rewrite is not None:
            await self._buffered(scope, receive, send, rewrite)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = self._secure_start(message, path)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    # -- response headers -----------------------------------------------------------------------------------
    @staticmethod
    def _headers(path: str, content_type: str, disposition: str | None) -> dict[str, str]:
        out = {
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
            # No other site may embed our answers (<img>, <script>) either; CORS requests are not affected.
            "Cross-Origin-Resource-Policy": "same-origin",
        }
        media = content_type.split(";")[0].strip().lower()
        if _is_content_path(path) and not media.startswith("image/"):
            # An original that is not an image: never rendered by the browser on our origin.
            out["Content-Security-Policy"] = SANDBOX_CSP
            filename = ""
            if disposition:
                _, _, filename = disposition.partition(";")
            out["Content-Disposition"] = "attachment" + (f";{filename}" if filename.strip() else "")
        elif _is_content_path(path):
            out["Content-Security-Policy"] = SANDBOX_CSP
        elif media == "text/html":
            if not api_path(path).startswith(DOCS_PATHS):
                out["Content-Security-Policy"] = UI_CSP
        else:
            out["Content-Security-Policy"] = API_CSP
        return out

    def _secure_start(self, message: Message, path: str) -> Message:
        raw = list(message.get("headers") or [])
        existing = {k.lower(): v for k, v in raw}
        content_type = existing.get(b"content-type", b"").decode("latin-1")
        disposition = existing.get(b"content-disposition", b"").decode("latin-1") or None
        extra = self._headers(path, content_type, disposition)
        names = {name.lower().encode("latin-1") for name in extra}
        kept = [(k, v) for k, v in raw if k.lower() not in names]  # ours replace the route's (e.g. inline disposition)
        kept += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in extra.items()]
        if message.get("status") == 401 and b"www-authenticate" not in existing:
            # Other protocols render their own errors (OpenAI on /v1): every 401 says how to authenticate.
            kept.append((b"www-authenticate", WWW_AUTHENTICATE.encode("latin-1")))
        return {**message, "headers": kept}

    # -- answers other modules own, adjusted ----------------------------------------------------------------
    async def _buffered(self, scope: AsgiScope, receive: Receive, send: Send, rewrite: Rewrite) -> None:
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._flush(send, scope, start, b"".join(chunks), rewrite)

        await self.app(scope, receive, capture)

    async def _flush(self, send: Send, scope: AsgiScope, start: Message | None, body: bytes, rewrite: Rewrite) -> None:
        assert start is not None
        headers = [(k, v) for k, v in start.get("headers") or [] if k.lower() != b"content-length"]
        content_type = {k.lower(): v for k, v in headers}.get(b"content-type", b"")
        if start["status"] == 200 and content_type.startswith(b"application/json"):
            # Not the shape we expected: pass it through unchanged.
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                body = json.dumps(rewrite(json.loads(body), scope), separators=(",", ":")).encode()
        headers.append((b"content-length", str(len(body)).encode()))
        await send(self._secure_start({**start, "headers": headers}, scope.get("path", "")))
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _narrow_collections(payload: Any, scope: AsgiScope) -> Any:
        principal = (scope.get("state") or {}).get("principal")
        if principal is None or principal.collections is None or not isinstance(payload, dict):
            return payload
        listed = payload.get("collections")
        if isinstance(listed, list):
            payload["collections"] = [c for c in listed if isinstance(c, dict) and principal.may_use(c.get("name"))]
        return payload

    def _add_auth_info(self, payload: Any, scope: AsgiScope) -> Any:
        if isinstance(payload, dict):
            payload["auth"] = self.access.info()
        return payload


def _same_origin(origin: str, host: str) -> bool:
    """Origin 'http://h:p' against the Host header 'h:p' (scheme ignored: a TLS proxy may stand in front)."""
    _, _, netloc = origin.partition("://")
    return bool(netloc) and _normal_netloc(netloc, origin.startswith("https")) == _normal_netloc(host, None)


def _normal_netloc(value: str, https: bool | None) -> str:
    name, port = split_host_port(value.lower())
    if port in ("80", "443") and (https is None or port == ("443" if https else "80")):
        port = None
    return f"{name}:{port}" if port else name


async def _send_json(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# ---- wiring -----------------------------------------------------------------------------------------------------
def install_security(app: FastAPI, settings: Settings) -> AccessControl:
    """Key store and refusal checks now (so `serve` fails before binding), error handler, CORS, security middleware.

    Call after the other middleware: the security layer ends up outermost, so every answer gets its headers.
    """
    access = open_access_control(settings)
    app.state.access = access

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": WWW_AUTHENTICATE} if exc.status == 401 else None
        return JSONResponse({"error": exc.to_dict()}, status_code=exc.status, headers=headers)

    origins = cors_origins(settings)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "HEAD", "POST", "PATCH", "PUT", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            allow_credentials=False,
            max_age=600,
        )
    app.add_middleware(SecurityMiddleware, settings=settings, access=access)
    return access
