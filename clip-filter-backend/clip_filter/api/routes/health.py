"""Liveness, readiness and /info."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from clip_filter import __version__
from clip_filter.api.deps import get_model_service, get_settings_dep
from clip_filter.core.config import Settings
from clip_filter.ml.service import ModelService

router = APIRouter(tags=["health"])


@router.get("/health/live", summary="The process is up (never depends on the model)")
async def live() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/health/ready", summary="200 when the model can serve requests, else 503 with the reason and the fix")
async def ready(service: ModelService = Depends(get_model_service)) -> Any:
    if service.ready:
        return {"status": "ready", "weights": service.info.weights}
    error = {"code": "model_unavailable", "message": f"The model is {service.state}.", "state": service.state,
             "reason": service.reason, "fix": service.fix}
    return JSONResponse({"error": error}, status_code=503)


@router.get("/info", summary="Model, weights mode, device, precision, dimension, limits and version")
async def info(
    service: ModelService = Depends(get_model_service), settings: Settings = Depends(get_settings_dep)
) -> dict[str, Any]:
    return {
        "version": __version__,
        **service.status(),
        "limits": {
            "max_image_bytes": settings.max_image_bytes,
            "max_image_pixels": settings.max_image_pixels,
            "max_request_bytes": settings.max_request_bytes,
            "max_images_per_request": settings.max_images_per_request,
            "max_texts_per_request": settings.max_texts_per_request,
            "max_text_chars": settings.max_text_chars,
        },
        "batching": {
            "max_batch": settings.batch_size,
            "max_wait_ms": settings.max_batch_wait_ms,
            "max_queue": settings.max_queue,
            **service.batching_stats(),
        },
    }
