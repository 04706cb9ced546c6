"""immich's machine-learning API, CLIP only: `GET /ping`, `POST /predict` (and `GET /` in main.py).

immich's server posts multipart `entries` (a JSON string naming task, type and model) plus an `image` file
or a `text` field, and reads `{"clip": "<embedding as a JSON array string>"}`. Errors are immich ML's own
(FastAPI's) `{"detail": "<message>"}`. Faces and OCR stay on immich's own service: those tasks get a 400
that immich logs before it moves on.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from clip_filter.api.deps import ModelDep, SettingsDep
from clip_filter.api.inputs import read_form
from clip_filter.api.protocols.common import (
    Failure,
    model_id,
    names_served_model,
    prepare_all,
    protocol_route,
)
from clip_filter.api.schemas.common import request_body
from clip_filter.core.errors import ClipFilterError
from clip_filter.core.validation import check_text
from clip_filter.images import probe_image


def render_immich_error(failure: Failure) -> JSONResponse:
    return JSONResponse({"detail": failure.message, "code": failure.code}, status_code=failure.status)


router = APIRouter(tags=["protocol: immich machine learning"], route_class=protocol_route(render_immich_error))


class ModelEntry(BaseModel):
    modelName: str
    options: dict[str, Any] = {}  # e.g. {"language": "de"}: accepted, unused by open_clip's tokenizer


class ClipEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    visual: ModelEntry | None = None
    textual: ModelEntry | None = None


class Entries(BaseModel):
    clip: ClipEntry


class ClipResponse(BaseModel):
    clip: str
    imageHeight: int | None = None
    imageWidth: int | None = None


def _bad(message: str, status: int = 400, code: str = "invalid_request") -> ClipFilterError:
    return ClipFilterError(code, message, status)


def parse_entries(raw: Any) -> tuple[Literal["visual", "textual"], ModelEntry]:
    if not isinstance(raw, str):
        raise _bad("Invalid request format: `entries` must be a JSON string form field.", 422, "invalid_entries")
    try:
        request = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _bad(f"Invalid request format: `entries` is not JSON ({exc}).", 422, "invalid_entries") from None
    if not isinstance(request, dict) or not request:
        raise _bad(
            'Invalid request format: `entries` must be an object such as {"clip": {"visual": {"modelName": "..."}}}.',
            422,
            "invalid_entries",
        )
    other = sorted(task for task in request if task != "clip")
    if other:
        raise _bad(
            f"clip-filter serves CLIP only; {', '.join(other)} stays on immich's own machine-learning "
            "service (point that job's URL there).",
            400,
            "unsupported_task",
        )
    try:
        clip = Entries.model_validate(request).clip
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _bad(f"Invalid request format: entries.{where}: {first['msg']}", 422, "invalid_entries") from None
    kinds: tuple[tuple[Literal["visual", "textual"], ModelEntry | None], ...] = (
        ("visual", clip.visual),
        ("textual", clip.textual),
    )
    chosen = [(kind, entry) for kind, entry in kinds if entry]
    if len(chosen) != 1:
        raise _bad(
            "Invalid request format: `entries.clip` must name exactly one of visual or textual.", 422, "invalid_entries"
        )
    return chosen[0]


@router.get("/ping", response_class=PlainTextResponse, summary="immich ML health check: pong")
async def ping() -> PlainTextResponse:
    return PlainTextResponse("pong")


class PredictForm(BaseModel):
    """The multipart form immich's server sends (machine-learning.repository.ts)."""

    entries: str = Field(description='JSON: {"clip": {"visual" | "textual": {"modelName": ..., "options"?: {...}}}}')
    image: bytes | None = Field(None, json_schema_extra={"format": "binary"}, description="the image (visual)")
    text: str | None = Field(None, description="the text (textual)")


@router.post(
    "/predict",
    response_model_exclude_none=True,
    openapi_extra=request_body(multipart=PredictForm),
    summary="immich ML: a CLIP embedding of one image or one text (multipart)",
)
async def predict(request: Request, service: ModelDep, settings: SettingsDep) -> ClipResponse:
    form = await read_form(request, max_files=2, max_fields=8)
    kind, entry = parse_entries(form.get("entries"))
    image, text = form.get("image"), form.get("text")
    if image is None and text is None:
        if form.get("assetId") is not None:
            raise _bad(
                "Asset-id-only requests need immich's shared storage; send the image itself.",
                400,
                "asset_id_unsupported",
            )
        raise _bad("Either image or text must be provided")
    info = service.info
    if not names_served_model(entry.modelName, info):
        raise _bad(
            f"Model {entry.modelName!r} is not served here; this server runs {model_id(info)!r}. Set it as "
            "immich's CLIP model (Administration > Settings > Machine Learning > Smart Search).",
            400,
            "model_not_served",
        )
    if kind == "visual":
        if not isinstance(image, UploadFile):
            raise _bad("A visual request needs the `image` file part.")
        data = await image.read()
        # Through the service's bounded decoder (pixel budget, admission, reduced-size decode: the pixels of the
        # native routes); the original's size, which immich records, comes from the header.
        pixels = await prepare_all(service, [data], "image")
        width, height = (await run_in_threadpool(probe_image, data, settings.image_limits())).upright_size
        vector = (await service.embed_images(pixels))[0]
        return ClipResponse(clip=json.dumps(vector.tolist()), imageHeight=height, imageWidth=width)
    if not isinstance(text, str):
        raise _bad("A textual request needs the `text` field.")
    vector = (await service.embed_texts([check_text(text, "text", settings.max_text_chars)])).embeddings[0]
    return ClipResponse(clip=json.dumps(vector.tolist()))
