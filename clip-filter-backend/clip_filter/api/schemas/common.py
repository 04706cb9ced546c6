"""Schemas every route shares: the one error envelope, the model summary, and request bodies for OpenAPI.

Routes that parse their bodies by hand (to keep stable per-field error codes and several request shapes)
still describe them: `request_body(...)` turns pydantic models into the route's `requestBody`, so
`/openapi.json` documents every JSON and multipart body.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    """`code` is stable and machine-readable; other members (`index`, `limit`, `reason`, ...) depend on it."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str
    fix: str | None = Field(None, description="What to do about it, where there is something to do.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for the error statuses a route can answer, all in the one envelope."""
    meaning = {
        400: "Unreadable body (bad JSON, base64, multipart)",
        401: "No or unknown API key",
        403: "The key may not do this",
        404: "Not found",
        413: "Over a size or count limit (see GET /info `limits`)",
        415: "Unsupported content type or not an image",
        422: "A field has the wrong shape or value",
        429: "The model queue is full; retry after `Retry-After` seconds",
        503: "The model is loading or failed to load (`reason`, `fix`)",
    }
    return {status: {"model": ErrorResponse, "description": meaning.get(status, "Error")} for status in statuses}


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    # Inline schemas cannot carry $defs (a $ref would point into the OpenAPI document): keep bodies flat.
    assert "$defs" not in schema, f"{model.__name__} nests models; request bodies must stay flat"
    return schema


def request_body(*json_models: type[BaseModel], multipart: type[BaseModel] | None = None) -> dict[str, Any]:
    """`openapi_extra` describing a hand-parsed body: any of `json_models` as JSON, or `multipart` as a form."""
    content: dict[str, Any] = {}
    if json_models:
        schemas = [_inline_schema(model) for model in json_models]
        content["application/json"] = {"schema": schemas[0] if len(schemas) == 1 else {"anyOf": schemas}}
    if multipart is not None:
        content["multipart/form-data"] = {"schema": _inline_schema(multipart)}
    return {"requestBody": {"required": True, "content": content}}


class ModelSummary(BaseModel):
    name: str
    pretrained: str
    weights: str = Field(description='"pretrained", "checkpoint" or "random" (random weights: scores mean nothing)')
    dim: int
