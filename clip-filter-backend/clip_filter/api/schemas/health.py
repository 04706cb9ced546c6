"""Response models of liveness, readiness and /info."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LiveResponse(BaseModel):
    status: Literal["alive"]


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    weights: str


class Limits(BaseModel):
    model_config = ConfigDict(extra="allow")

    max_image_bytes: int
    max_image_pixels: int
    max_request_bytes: int
    max_images_per_request: int
    max_texts_per_request: int
    max_text_chars: int
    max_json_elements: int
    max_json_depth: int


class Batching(BaseModel):
    model_config = ConfigDict(extra="allow")

    max_batch: int
    max_wait_ms: float
    max_queue: int
    batches_run: int
    items_run: int
    busy_s: float
    queued: int
    texts_prefetched: int = Field(
        0, description="Captions encoded ahead of their request's images (only with CLIP_PREFETCH_BATCHES on)"
    )


class InfoResponse(BaseModel):
    """What the server runs. Model fields are null until the model has loaded (`state`)."""

    # Other areas (auth, metrics) may report more here; they pass through.
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    version: str
    state: Literal["loading", "ready", "failed"]
    reason: str | None = None
    fix: str | None = None
    model: str
    pretrained: str
    weights: str | None = Field(description='"pretrained", "checkpoint" or "random"')
    device: str | None
    dtype: str | None
    dim: int | None
    logit_scale: float | None
    context_length: int | None
    limits: Limits
    batching: Batching
