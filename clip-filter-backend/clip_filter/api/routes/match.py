"""Image-caption matching: the original best-match endpoint and the full similarity matrix."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from clip_filter.api.deps import ModelDep, SettingsDep
from clip_filter.api.inputs import ParsedRequest, read_images_and_texts
from clip_filter.api.schemas.common import error_responses, request_body
from clip_filter.api.schemas.matching import (
    BestMatchResponse,
    MatchForm,
    MatchRequest,
    OriginalMatchRequest,
    SimilarityResponse,
)
from clip_filter.ml.service import ModelService
from clip_filter.scoring import best_indices, clip_score, cosine_matrix, softmax_probabilities

router = APIRouter(tags=["matching"])

_IMAGES_AND_TEXTS = request_body(OriginalMatchRequest, MatchRequest, multipart=MatchForm)
_ERRORS = error_responses(400, 413, 415, 422, 429, 503)


@dataclass
class _Scores:
    """Cosines and probabilities of the decodable images (rows) against every caption."""

    cosines: np.ndarray
    probabilities: np.ndarray
    text_batch: Any
    row_of: dict[int, int]  # image slot index -> row


async def _score(parsed: ParsedRequest, service: ModelService) -> _Scores:
    """Embed the decodable images and all captions (concurrently, through the batcher), then score."""
    service.require_ready()
    good = [slot.index for slot in parsed.images if slot.image is not None]
    image_embeddings, text_batch = await asyncio.gather(
        service.embed_images([image for i in good if (image := parsed.images[i].image) is not None]),
        service.embed_texts(parsed.texts),
    )
    cosines = cosine_matrix(image_embeddings, text_batch.embeddings)
    probabilities = softmax_probabilities(cosines, service.info.logit_scale) if good else cosines
    return _Scores(cosines, probabilities, text_batch, {index: row for row, index in enumerate(good)})


def _envelope(parsed: ParsedRequest, scores: _Scores, service: ModelService) -> dict[str, Any]:
    """What every matching response starts with: the model, its weights mode and the captions."""
    return {
        "model": service.model_summary(),
        "weights": service.info.weights,
        "texts": parsed.texts,
        "truncated": scores.text_batch.truncated,
    }


@router.post(
    "/image_text_similarity_best_match",
    summary="Best caption per image, with cosine scores, probabilities and CLIPScore",
    response_model=BestMatchResponse,
    response_model_exclude_unset=True,  # `best_match` and per-image fields appear only where they apply
    responses=_ERRORS,
    openapi_extra=_IMAGES_AND_TEXTS,
)
async def best_match(request: Request, service: ModelDep, settings: SettingsDep) -> dict[str, Any]:
    """Three request shapes: the original JSON (one image, `text_input1`/`text_input2`), JSON with `images` and
    `texts`, and multipart. Ties between captions go to the lowest caption index."""
    parsed = await read_images_and_texts(request, settings, want_texts=True)
    scores = await _score(parsed, service)
    best: np.ndarray | list[int] = best_indices(scores.cosines) if scores.row_of else []

    # Rounded once, for the whole request, to the 6 decimals the original API answered with (NumPy: the nearest
    # double to k / 1e6, so each prints with at most 6 decimals); the best index comes from the unrounded cosines.
    cosines = np.round(scores.cosines.astype(np.float64), 6).tolist()
    probabilities = np.round(scores.probabilities.astype(np.float64), 6).tolist()
    results: list[dict[str, Any]] = []
    for slot in parsed.images:
        entry: dict[str, Any] = {"index": slot.index, "filename": slot.filename}
        if slot.error is not None:
            entry["error"] = slot.error.to_dict()
        else:
            row = scores.row_of[slot.index]
            top = int(best[row])
            entry.update(
                best_match=parsed.texts[top],
                best_index=top,
                scores=cosines[row],
                probabilities=probabilities[row],
                clip_score=round(float(clip_score(scores.cosines[row, top])), 6),
            )
        results.append(entry)

    response = {**_envelope(parsed, scores, service), "results": results}
    if len(results) == 1 and "best_match" in results[0]:
        response["best_match"] = results[0]["best_match"]
    return response


@router.post(
    "/similarity",
    summary="Cosine matrix (images x captions) and per-image probabilities",
    response_model=SimilarityResponse,
    responses=_ERRORS,
    openapi_extra=_IMAGES_AND_TEXTS,
)
async def similarity(request: Request, service: ModelDep, settings: SettingsDep) -> dict[str, Any]:
    parsed = await read_images_and_texts(request, settings, want_texts=True)
    scores = await _score(parsed, service)
    rows = [scores.row_of.get(slot.index) if slot.error is None else None for slot in parsed.images]
    return {
        **_envelope(parsed, scores, service),
        "logit_scale": service.info.logit_scale,
        "matrix": [None if r is None else [float(v) for v in scores.cosines[r]] for r in rows],
        "probabilities": [None if r is None else [float(v) for v in scores.probabilities[r]] for r in rows],
        "errors": [slot.error.to_dict() if slot.error else None for slot in parsed.images],
    }
