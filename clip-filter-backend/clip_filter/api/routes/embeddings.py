"""Raw L2-normalised embeddings for images and captions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from clip_filter.api.deps import get_model_service, get_settings_dep
from clip_filter.api.inputs import read_images_and_texts, read_texts
from clip_filter.core.config import Settings
from clip_filter.ml.service import ModelService

router = APIRouter(tags=["embeddings"])


@router.post(
    "/embeddings/images",
    summary="Image embeddings (multipart `images` files or JSON `{\"images\": [base64]}`)",
)
async def image_embeddings(
    request: Request,
    service: ModelService = Depends(get_model_service),
    settings: Settings = Depends(get_settings_dep),
) -> dict[str, Any]:
    """An undecodable image gets `null` in `embeddings` and its error in `errors`, same index."""
    parsed = await read_images_and_texts(request, settings, want_texts=False)
    service.require_ready()
    good = [slot for slot in parsed.images if slot.image is not None]
    vectors = await service.embed_images([slot.image for slot in good])
    by_index = {slot.index: vectors[row].tolist() for row, slot in enumerate(good)}
    return {
        "model": service.model_summary(),
        "weights": service.info.weights,
        "dim": service.info.dim,
        "embeddings": [by_index.get(slot.index) for slot in parsed.images],
        "errors": [slot.error.to_dict() if slot.error else None for slot in parsed.images],
    }


@router.post("/embeddings/texts", summary="Caption embeddings (JSON `{\"texts\": [...]}`)")
async def text_embeddings(
    request: Request,
    service: ModelService = Depends(get_model_service),
    settings: Settings = Depends(get_settings_dep),
) -> dict[str, Any]:
    texts = await read_texts(request, settings)
    batch = await service.embed_texts(texts)
    return {
        "model": service.model_summary(),
        "weights": service.info.weights,
        "dim": service.info.dim,
        "embeddings": batch.embeddings.tolist(),
        "truncated": batch.truncated,
    }
