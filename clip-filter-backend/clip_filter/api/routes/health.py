"""Liveness, readiness and /info.

All three run on the event loop and touch only plain attributes (no worker thread, no lock, no model
call), so they answer at once however busy the model and the worker threads are: a healthcheck never
restarts a server for being busy. The dependencies they use are `async def` for the same reason
(FastAPI runs a plain `def` dependency on a worker thread).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from clip_filter import __version__
from clip_filter.api.deps import ModelDep, SettingsDep
from clip_filter.api.schemas.common import error_responses
from clip_filter.api.schemas.health import InfoResponse, LiveResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/health/live", summary="The process is up (never depends on the model)", response_model=LiveResponse)
async def live() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/health/ready",
    summary="200 when the model can serve requests, else 503 with the reason and the fix",
    response_model=ReadyResponse,
    responses=error_responses(503),
)
async def ready(service: ModelDep) -> Any:
    if service.ready:
        return {"status": "ready", "weights": service.info.weights}
    error = {
        "code": "model_unavailable",
        "message": f"The model is {service.state}.",
        "state": service.state,
        "reason": service.reason,
        "fix": service.fix,
    }
    return JSONResponse({"error": error}, status_code=503)


@router.get(
    "/info",
    summary="Model, weights mode, device, precision, dimension, limits and version",
    response_model=InfoResponse,
    response_model_exclude_unset=True,  # `reason` and `fix` only while the model is not ready
)
async def info(service: ModelDep, settings: SettingsDep) -> dict[str, Any]:
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
            "max_json_elements": settings.max_json_elements,
            "max_json_depth": settings.max_json_depth,
        },
        "batching": {
            "max_batch": settings.batch_size,
            "max_wait_ms": settings.max_batch_wait_ms,
            "max_queue": settings.max_queue,
            **service.batching_stats(),
        },
    }
