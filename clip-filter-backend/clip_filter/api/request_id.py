"""A request id for every request: in the `X-Request-ID` response header, every error body and every log line.

An incoming `X-Request-ID` is kept when it is short and made of safe characters (so a client or a proxy
can correlate its own logs); anything else is replaced by a fresh random id. The id is set in
`core.logging.request_id_var` for the request, where the log filter and the error handlers read it.

The error handlers (`api/errors.py`) write `request_id` into the envelopes they build. Error bodies
built elsewhere (a middleware's 413, a route's own 503) get it here: a JSON error response's body is
small, so it is read, given `"request_id"` inside `"error"` when missing (and its code counted in the
error metrics), and sent on.
"""

from __future__ import annotations

import json
import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clip_filter.api.metrics import count_error
from clip_filter.core.logging import request_id_var

HEADER = "X-Request-ID"
_HEADER_KEY = HEADER.lower().encode()
VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MAX_PATCHED_BODY = 64 * 1024  # error bodies are far smaller; a larger body passes untouched


def incoming_request_id(scope: Scope) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == _HEADER_KEY:
            text = value.decode("latin-1")
            return text if VALID_ID.fullmatch(text) else None
    return None


def new_request_id() -> str:
    return uuid.uuid4().hex


def with_request_id(body: bytes, request_id: str, status: int) -> bytes | None:
    """The body with `error.request_id` added, or None when it is not an error envelope lacking one.

    Such an envelope was built outside the error handlers, which count theirs: it is counted here.
    """
    try:
        document = json.loads(body)
    except ValueError:
        return None
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict) or "request_id" in error:
        return None
    error["request_id"] = request_id
    count_error(str(error.get("code")), status)
    return json.dumps(document, ensure_ascii=False).encode()


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope) or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        held: Message | None = None  # an error response's start, held until its body is known
        chunks: list[bytes] = []

        async def tagging_send(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if HEADER not in headers:
                    headers.append(HEADER, request_id)
                if message["status"] >= 400 and headers.get("content-type", "").startswith("application/json"):
                    held = message
                    return
                await send(message)
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            size = sum(len(c) for c in chunks)
            if message.get("more_body", False) and size <= _MAX_PATCHED_BODY:
                return
            body = b"".join(chunks)
            patched = with_request_id(body, request_id, held["status"]) if not message.get("more_body", False) else None
            start, held = held, None
            if patched is not None:
                body = patched
                MutableHeaders(scope=start)["content-length"] = str(len(body))
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": message.get("more_body", False)})

        await self.app(scope, receive, tagging_send)
        # Reset only on success: when the app raises, the 500 handler (outside every middleware) still logs
        # and answers with the id. Each request runs in its own task and context, so nothing leaks.
        request_id_var.reset(token)
