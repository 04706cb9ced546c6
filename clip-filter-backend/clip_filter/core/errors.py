"""The one error type the service raises on purpose, and its JSON shape.

Every error response is `{"error": {"code": ..., "message": ..., **details}}`. Modules below the web
layer raise `ClipFilterError` (no FastAPI import needed); `api/errors.py` turns it into a response.
"""

from __future__ import annotations

from typing import Any


class ClipFilterError(Exception):
    """An error with a stable machine-readable `code` and the HTTP status that fits it."""

    def __init__(self, code: str, message: str, status: int = 400, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class ModelUnavailableError(ClipFilterError):
    """The model is still loading or failed to load (503)."""

    def __init__(self, message: str, reason: str, fix: str | None = None) -> None:
        details: dict[str, Any] = {"reason": reason}
        if fix:
            details["fix"] = fix
        super().__init__("model_unavailable", message, 503, **details)


class OverloadedError(ClipFilterError):
    """The inference queue (or another bounded stage, named in `message`) is full (429); the client should retry
    after `retry_after` seconds."""

    def __init__(self, retry_after: int = 1, message: str = "The model queue is full; retry shortly.") -> None:
        super().__init__("overloaded", message, 429, retry_after=retry_after)
        self.retry_after = retry_after
