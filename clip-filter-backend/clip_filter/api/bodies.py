"""Reading a JSON request body into a request model, with one error code per failure.

The body is read by hand (not by FastAPI) so that a broken body keeps its stable codes: 415 for another
content type, 400 `invalid_json` for malformed or too deeply nested JSON; then the pydantic model validates
it, and what it refuses becomes FastAPI's 422 `invalid_request` envelope.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from clip_filter.api.inputs import read_json_object, request_kind
from clip_filter.core.errors import ClipFilterError

Model = TypeVar("Model", bound=BaseModel)


async def read_object(request: Request) -> dict[str, Any]:
    """read_json_object, plus a clear 400 for JSON nested too deeply for Python's parser."""
    try:
        return await read_json_object(request)
    except RecursionError:
        raise ClipFilterError("invalid_json", "The JSON body is nested too deeply.", 400) from None


async def json_body(request: Request) -> dict[str, Any]:
    """The JSON object of a JSON-only endpoint (415 for any other content type)."""
    if request_kind(request) != "json":
        raise ClipFilterError("unsupported_media_type", "This endpoint takes a JSON body (application/json).", 415)
    return await read_object(request)


def parse(model: type[Model], data: Any, **context: Any) -> Model:
    """Validate `data` with `model`; its own ClipFilterErrors pass through, the rest is a 422."""
    try:
        return model.model_validate(data, context=context or None)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


async def read_model(request: Request, model: type[Model], **context: Any) -> Model:
    return parse(model, await json_body(request), **context)
