"""OpenAI's embeddings API (`POST /v1/embeddings`, `GET /v1/models`), with infinity's image dialect.

`"modality": "image"` makes every input a base64 image or data URI (infinity's extension). Errors are
OpenAI's `{"error": {"message", "type", "param", "code"}}`; where a retry cannot help the response says
`x-should-retry: false`, which the official clients obey.
"""

from __future__ import annotations

import base64
import time
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from clip_filter.api.deps import ModelDep, SettingsDep
from clip_filter.api.protocols.common import (
    Failure,
    check_count,
    model_aliases,
    model_id,
    names_served_model,
    prepare_all,
    protocol_route,
    weights_note,
)
from clip_filter.core.errors import ClipFilterError
from clip_filter.core.validation import check_text

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_STARTED = int(time.time())


def render_openai_error(failure: Failure) -> JSONResponse:
    # OpenAI answers malformed requests with 400; the service's 422 (schema) becomes that here.
    status = 400 if failure.status == 422 else failure.status
    error = {
        "message": failure.message,
        "type": _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
        "param": failure.param,
        "code": failure.code,
    }
    response = JSONResponse({"error": error}, status_code=status)
    # The SDK retries 408/409/429/5xx unless told not to: say so wherever the same request must fail again.
    retryable = status in (408, 409, 429) or (status >= 500 and not failure.permanent)
    response.headers["x-should-retry"] = "true" if retryable else "false"
    return response


router = APIRouter(tags=["protocol: OpenAI embeddings"], route_class=protocol_route(render_openai_error))


class EmbeddingRequest(BaseModel):
    model: str
    input: str | list[Any] = Field(description="A string or a list of strings (token arrays are refused).")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    modality: Literal["text", "image"] = Field("text", description="infinity's dialect: `image` for base64 inputs")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int = 0  # not metered: the service counts no tokens
    total_tokens: int = 0


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage = Usage()


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "clip-filter"
    weights: str
    dim: int
    aliases: list[str]
    warning: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def _invalid(message: str, param: str, code: str = "invalid_request", status: int = 400) -> ClipFilterError:
    return ClipFilterError(code, message, status, param=param)


def _inputs(body: EmbeddingRequest) -> list[str]:
    items = [body.input] if isinstance(body.input, str) else body.input
    if not items:
        raise _invalid("`input` is empty; send a string or a non-empty list of strings.", "input")
    for index, item in enumerate(items):
        if isinstance(item, (int, list)) and not isinstance(item, bool):
            raise _invalid(
                "Token-id arrays are not accepted: CLIP has its own tokenizer; send strings.",
                "input",
                "token_arrays_unsupported",
            )
        if not isinstance(item, str):
            raise _invalid(f"`input[{index}]` must be a string.", f"input[{index}]")
    return items


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
    return vector.tolist()


@router.post("/v1/embeddings", summary="OpenAI-compatible embeddings (texts, or images with modality=image)")
@router.post("/embeddings", include_in_schema=False)  # infinity's default prefix
async def create_embeddings(body: EmbeddingRequest, service: ModelDep, settings: SettingsDep) -> EmbeddingResponse:
    info = service.info  # 503 (and no retry once the load failed) before any work
    if not names_served_model(body.model, info):
        raise ClipFilterError(
            "model_not_found",
            f"The model {body.model!r} is not served here; this server runs {model_id(info)!r} (GET /v1/models).",
            404,
            param="model",
        )
    if body.dimensions is not None and body.dimensions != info.dim:
        raise _invalid(
            f"`dimensions` must be {info.dim} (the model's); CLIP embeddings are not shortened.",
            "dimensions",
            "unsupported_dimensions",
        )
    items = _inputs(body)
    if body.modality == "image":
        check_count(len(items), settings.max_images_per_request, "images")
        vectors = await service.embed_images(await prepare_all(service, items, "input"))
    else:
        check_count(len(items), settings.max_texts_per_request, "texts")
        texts = [check_text(item, "input", settings.max_text_chars, index) for index, item in enumerate(items)]
        vectors = (await service.embed_texts(texts)).embeddings
    return EmbeddingResponse(
        data=[Embedding(index=i, embedding=_encode(row, body.encoding_format)) for i, row in enumerate(vectors)],
        model=model_id(info),
    )


@router.get("/v1/models", summary="The served model, OpenAI's model-list shape")
@router.get("/models", include_in_schema=False)
async def list_models(service: ModelDep) -> ModelList:
    info = service.info
    card = ModelCard(
        id=model_id(info), created=_STARTED, dim=info.dim, aliases=model_aliases(info)[1:], **weights_note(service)
    )
    return ModelList(data=[card])
