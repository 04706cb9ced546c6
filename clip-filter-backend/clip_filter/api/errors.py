"""Every error leaves the service as `{"error": {"code", "message", ...}}` with a fitting status."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from clip_filter.api.metrics import count_error
from clip_filter.core.errors import ClipFilterError
from clip_filter.core.logging import current_request_id

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media_type"}


class ErrorJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error may quote the client's input, lone surrogates included, which
    UTF-8 cannot encode (Starlette's JSONResponse would fail with a 500 while reporting a 422)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(status: int, code: str, message: str, **details: Any) -> JSONResponse:
    return _envelope(status, {"code": code, "message": message, **details})


def _envelope(status: int, error: dict[str, Any]) -> JSONResponse:
    """The one error shape, with the request id (api/request_id.py) to quote in a bug report."""
    count_error(str(error.get("code")), status)
    request_id = current_request_id()
    if request_id is not None:
        error["request_id"] = request_id
    headers = {"X-Request-ID": request_id} if request_id is not None else None
    return ErrorJSONResponse({"error": error}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClipFilterError)
    async def _clip_filter_error(_: Request, exc: ClipFilterError) -> JSONResponse:
        response = _envelope(exc.status, exc.to_dict())
        retry_after = exc.details.get("retry_after")  # overloaded, rate_limited: when trying again can work
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"location": ".".join(str(p) for p in err.get("loc", ())), "problem": err.get("msg", "")}
            for err in exc.errors()
        ]
        first = problems[0] if problems else {"location": "body", "problem": "invalid"}
        return error_response(
            422, "invalid_request", f"Invalid request: {first['location']}: {first['problem']}", problems=problems
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc)
        return error_response(500, "internal_error", "Unexpected server error; see the server log.")
