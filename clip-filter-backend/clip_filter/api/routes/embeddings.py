"""Raw L2-normalised embeddings for images and captions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from clip_filter.api.deps import ModelDep, SettingsDep
from clip_filter.api.inputs import read_images_and_texts, read_texts
from clip_filter.api.schemas.common import error_responses, request_body
from clip_filter.api.schemas.matching import (
    ImageEmbeddingsResponse,
    ImagesForm,
    ImagesRequest,
    TextEmbeddingsResponse,
    TextsForm,
    TextsRequest,
)

router = APIRouter(tags=["embeddings"])


@router.post(
    "/embeddings/images",
    summary='Image embeddings (multipart `images` files or JSON `{"images": [base64]}`)',
    response_model=ImageEmbeddingsResponse,
    responses=error_responses(400, 413, 415, 422, 429, 503),
    openapi_extra=request_body(ImagesRequest, multipart=ImagesForm),
)
async def image_embeddings(request: Request, service: ModelDep, settings: SettingsDep) -> dict[str, Any]:
    """An undecodable image gets `null` in `embeddings` and its error in `errors`, same index."""
    parsed = await read_images_and_texts(request, settings, want_texts=False)
    service.require_ready()
    good = [slot for slot in parsed.images if slot.image is not None]
    vectors = await service.embed_images([slot.image for slot in good if slot.image is not None])
    by_index = {slot.index: vectors[row].tolist() for row, slot in enumerate(good)}
    return {
        "model": service.model_summary(),
        "weights": service.info.weights,
        "dim": service.info.dim,
        "embeddings": [by_index.get(slot.index) for slot in parsed.images],
        "errors": [slot.error.to_dict() if slot.error else None for slot in parsed.images],
    }


@router.post(
    "/embeddings/texts",
    summary='Caption embeddings (JSON `{"texts": [...]}` or multipart `texts` fields)',
    response_model=TextEmbeddingsResponse,
    responses=error_responses(400, 413, 415, 422, 429, 503),
    openapi_extra=request_body(TextsRequest, multipart=TextsForm),
)
async def text_embeddings(request: Request, service: ModelDep, settings: SettingsDep) -> dict[str, Any]:
    texts = await read_texts(request, settings)
    batch = await service.embed_texts(texts)
    return {
        "model": service.model_summary(),
        "weights": service.info.weights,
        "dim": service.info.dim,
        "embeddings": batch.embeddings.tolist(),
        "truncated": batch.truncated,
    }
