"""Image-caption matching: the original best-match endpoint and the full similarity matrix."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request

from clip_filter.api.deps import get_model_service, get_settings_dep
from clip_filter.api.inputs import ParsedRequest, read_images_and_texts
from clip_filter.core.config import Settings
from clip_filter.ml.service import ModelService
from clip_filter.scoring import best_indices, clip_score, cosine_matrix, softmax_probabilities

router = APIRouter(tags=["matching"])

_IMAGES_AND_TEXTS = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {
                            "title": "Original request (one image, two captions)",
                            "type": "object",
                            "required": ["image_base64", "text_input1", "text_input2"],
                            "properties": {
                                "image_base64": {"type": "string"},
                                "text_input1": {"type": "string"},
                                "text_input2": {"type": "string"},
                            },
                        },
                        {
                            "title": "Many images, many captions",
                            "type": "object",
                            "required": ["texts"],
                            "properties": {
                                "images": {"type": "array", "items": {"type": "string"},
                                           "description": "base64 or data: URIs"},
                                "image_base64": {"type": "string"},
                                "texts": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                    ]
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "texts": {"type": "array", "items": {"type": "string"}},
                    },
                }
            },
        },
    }
}


async def _score(parsed: ParsedRequest, service: ModelService) -> tuple[np.ndarray, Any, list[int]]:
    """Embed the decodable images and all captions (concurrently, through the batcher)."""
    service.require_ready()
    good = [slot.index for slot in parsed.images if slot.image is not None]
    image_embeddings, text_batch = await asyncio.gather(
        service.embed_images([parsed.images[i].image for i in good]), service.embed_texts(parsed.texts)
    )
    return cosine_matrix(image_embeddings, text_batch.embeddings), text_batch, good


@router.post(
    "/image_text_similarity_best_match",
    summary="Best caption per image, with cosine scores, probabilities and CLIPScore",
    openapi_extra=_IMAGES_AND_TEXTS,
)
async def best_match(
    request: Request,
    service: ModelService = Depends(get_model_service),
    settings: Settings = Depends(get_settings_dep),
) -> dict[str, Any]:
    """Ties between captions go to the lowest caption index."""
    parsed = await read_images_and_texts(request, settings, want_texts=True)
    cosines, text_batch, good = await _score(parsed, service)
    probabilities = softmax_probabilities(cosines, service.info.logit_scale) if len(good) else cosines
    best = best_indices(cosines) if len(good) else []
    row_of = {index: row for row, index in enumerate(good)}

    results: list[dict[str, Any]] = []
    for slot in parsed.images:
        entry: dict[str, Any] = {"index": slot.index, "filename": slot.filename}
        if slot.error is not None:
            entry["error"] = slot.error.to_dict()
        else:
            row = row_of[slot.index]
            top = int(best[row])
            entry.update(
                best_match=parsed.texts[top],
                best_index=top,
                scores=[round(float(v), 6) for v in cosines[row]],
                probabilities=[round(float(v), 6) for v in probabilities[row]],
                clip_score=round(float(clip_score(cosines[row, top])), 6),
            )
        results.append(entry)

    response: dict[str, Any] = {
        "model": service.model_summary(),
        "weights": service.info.weights,
        "texts": parsed.texts,
        "truncated": text_batch.truncated,
        "results": results,
    }
    if len(results) == 1 and "best_match" in results[0]:
        response["best_match"] = results[0]["best_match"]
    return response


@router.post(
    "/similarity",
    summary="Cosine matrix (images x captions) and per-image probabilities",
    openapi_extra=_IMAGES_AND_TEXTS,
)
async def similarity(
    request: Request,
    service: ModelService = Depends(get_model_service),
    settings: Settings = Depends(get_settings_dep),
) -> dict[str, Any]:
    parsed = await read_images_and_texts(request, settings, want_texts=True)
    cosines, text_batch, good = await _score(parsed, service)
    probabilities = softmax_probabilities(cosines, service.info.logit_scale) if len(good) else cosines
    row_of = {index: row for row, index in enumerate(good)}
    matrix: list[list[float] | None] = []
    probs: list[list[float] | None] = []
    for slot in parsed.images:
        if slot.error is None:
            matrix.append([float(v) for v in cosines[row_of[slot.index]]])
            probs.append([float(v) for v in probabilities[row_of[slot.index]]])
        else:
            matrix.append(None)
            probs.append(None)
    return {
        "model": service.model_summary(),
        "weights": service.info.weights,
        "texts": parsed.texts,
        "truncated": text_batch.truncated,
        "logit_scale": service.info.logit_scale,
        "matrix": matrix,
        "probabilities": probs,
        "errors": [slot.error.to_dict() if slot.error else None for slot in parsed.images],
    }
