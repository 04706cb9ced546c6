"""Weaviate's multi2vec-clip inference container: `/.well-known/live|ready`, `/meta`, `/vectorize`.

Weaviate's Go client decodes the body before it looks at the status and reads `error` as a string, so
every error here is `{"error": "<message>"}`; one bad image fails the whole request (Weaviate needs one
vector per input, in order).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from clip_filter import __version__
from clip_filter.api.deps import ModelDep, SettingsDep
from clip_filter.api.protocols.common import (
    Failure,
    check_count,
    model_id,
    prepare_all,
    protocol_route,
)
from clip_filter.core.validation import check_text


def render_weaviate_error(failure: Failure) -> JSONResponse:
    return JSONResponse({"error": f"{failure.message} ({failure.code})"}, status_code=failure.status)


router = APIRouter(tags=["protocol: Weaviate multi2vec-clip"], route_class=protocol_route(render_weaviate_error))


class VectorizeRequest(BaseModel):
    # Go marshals an empty slice as null: both keys may be absent or null.
    texts: list[str] | None = None
    images: list[str] | None = Field(None, description="base64 images (Weaviate blob properties)")


class VectorizeResponse(BaseModel):
    textVectors: list[list[float]]
    imageVectors: list[list[float]]


# Both answer at once from in-memory state (Weaviate polls with a 500 ms timeout).
@router.get("/.well-known/live", status_code=204, response_class=Response, summary="Weaviate liveness: 204")
async def live() -> Response:
    return Response(status_code=204)


@router.get("/.well-known/ready", response_class=Response, summary="Weaviate readiness: 204 once the model is loaded")
async def ready(request: Request) -> Response:
    # app.state read directly: ModelDep is a sync dependency, run on the thread pool that image decoding
    # may be keeping busy, and this answer must never wait for it.
    return Response(status_code=204 if request.app.state.model.ready else 503)


@router.get("/meta", summary="Weaviate module meta: the served model")
async def meta(service: ModelDep) -> dict[str, Any]:
    status = service.status()  # whatever the state: Weaviate reads /meta for display
    out: dict[str, Any] = {"service": "clip-filter", "version": __version__, **status}
    if service.ready:
        out["model_id"] = model_id(service.info)
    if status.get("weights") == "random":
        out["warning"] = "random weights: the vectors carry no meaning (CLIP_PRETRAINED=random)"
    return out


@router.post("/vectorize", summary="Weaviate multi2vec-clip: one normalised vector per text and per image")
async def vectorize(body: VectorizeRequest, service: ModelDep, settings: SettingsDep) -> VectorizeResponse:
    texts, images = body.texts or [], body.images or []
    service.require_ready()
    check_count(len(texts), settings.max_texts_per_request, "texts")
    check_count(len(images), settings.max_images_per_request, "images")
    texts = [check_text(text, "texts", settings.max_text_chars, index) for index, text in enumerate(texts)]
    decoded = await prepare_all(service, images, "images")
    text_vectors = (await service.embed_texts(texts)).embeddings
    image_vectors = await service.embed_images(decoded)
    return VectorizeResponse(textVectors=text_vectors.tolist(), imageVectors=image_vectors.tolist())
