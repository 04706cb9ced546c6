"""Reading images and captions out of a request, in each shape the API accepts.

JSON bodies carry base64 images (raw or data URIs); multipart bodies carry files in the repeated
`images` field and captions in the repeated `texts` field. Images are decoded by the model service's
decode pipeline (ml/decode_pool.py: bounded, straight to model pixels, on threads or worker processes);
one undecodable image becomes an error in its own slot, the rest go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from clip_filter.api.json_body import read_json_object
from clip_filter.api.metrics import count_image_refusal
from clip_filter.core.config import Settings
from clip_filter.core.errors import ClipFilterError
from clip_filter.core.validation import check_image_count, check_texts, invalid

__all__ = [
    "ImageSlot",
    "ParsedRequest",
    "read_form",
    "read_images_and_texts",
    "read_json_object",
    "read_texts",
    "request_kind",
    "validate_texts",
]


@dataclass
class ImageSlot:
    index: int
    filename: str | None
    image: Image.Image | np.ndarray | None = None  # model pixels once decoded (ml/decode_pool.py)
    error: ClipFilterError | None = None


@dataclass
class ParsedRequest:
    images: list[ImageSlot] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    legacy: bool = False  # the original {"image_base64", "text_input1", "text_input2"} request


async def read_form(request: Request, max_files: int, max_fields: int) -> FormData:
    """request.form() with the multipart parser's own refusals turned into our JSON errors.

    The caps stop a request with thousands of parts before it is buffered; going over one is "too
    many", a 413 like the other per-request limits, not the parser's generic 400.
    """
    try:
        return await request.form(max_files=max_files, max_fields=max_fields)
    except HTTPException as exc:
        detail = str(exc.detail)
        if "Too many files" in detail:
            limit = max(max_files - 1, 0)  # callers allow one past their limit so their own check can answer
            raise ClipFilterError("too_many_files", f"At most {limit} files per request.", 413, limit=limit) from None
        if "Too many fields" in detail:
            raise ClipFilterError("too_many_fields", f"Too many form fields (limit {max_fields}).", 413) from None
        raise ClipFilterError("invalid_multipart", f"Malformed multipart body: {detail}", 400) from None


def request_kind(request: Request) -> str:
    """'json' or 'multipart'; anything else is refused with 415."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("", "application/json") or content_type.endswith("+json"):
        return "json"
    if content_type == "multipart/form-data":
        return "multipart"
    raise ClipFilterError(
        "unsupported_media_type",
        f"Content type {content_type!r} is not accepted; send application/json or multipart/form-data.",
        415,
    )


def validate_texts(texts: Any, settings: Settings, field_name: str = "texts") -> list[str]:
    return check_texts(texts, field_name, settings.max_text_chars, settings.max_texts_per_request)


async def read_images_and_texts(request: Request, settings: Settings, want_texts: bool) -> ParsedRequest:
    """Parse a matching/embedding request; captions are required when `want_texts`."""
    parsed = ParsedRequest()
    raw_images: list[tuple[str | None, bytes | str]] = []

    if request_kind(request) == "json":
        body = await read_json_object(request, settings)
        if "image_base64" in body and ("text_input1" in body or "text_input2" in body) and "texts" not in body:
            parsed.legacy = True
            texts: Any = [body.get("text_input1"), body.get("text_input2")]
        else:
            texts = body.get("texts")
        if "images" in body:
            images = body["images"]
            if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
                raise invalid("`images` must be a list of base64 strings or data URIs.")
        elif "image_base64" in body:
            if not isinstance(body["image_base64"], str):
                raise invalid("`image_base64` must be a base64 string or a data URI.")
            images = [body["image_base64"]]
        else:
            images = []
        check_image_count(len(images), settings.max_images_per_request)
        raw_images = [(None, item) for item in images]
    else:
        form = await read_form(
            request, max_files=settings.max_images_per_request + 1, max_fields=settings.max_texts_per_request + 16
        )
        files = form.getlist("images")
        check_image_count(len(files), settings.max_images_per_request)
        for item in files:
            if not isinstance(item, UploadFile):
                raise invalid("Every `images` part must be a file upload.")
            raw_images.append((item.filename, await item.read()))
        texts = list(form.getlist("texts"))
        if any(not isinstance(value, str) for value in texts):
            raise invalid("Every `texts` part must be a plain form field, not a file.")

    if want_texts:
        parsed.texts = validate_texts(texts, settings)
        if raw_images:
            # With batch prefetch on (a CUDA model) the captions are encoded while the images decode; a no-op on
            # a CPU model, where both would share the same cores (docs/benchmarks-pipeline.md, "Best match").
            request.app.state.model.prefetch_texts(parsed.texts)
    parsed.images = [ImageSlot(index, name) for index, (name, _) in enumerate(raw_images)]
    # Bounded decoding straight to model pixels (413/429 for the whole request before any decode).
    decoded = await request.app.state.model.decode_images([data for _, data in raw_images])
    for slot, result in zip(parsed.images, decoded, strict=True):
        if isinstance(result, ClipFilterError):
            slot.error = result
            count_image_refusal(result.code)
        else:
            slot.image = result
    if parsed.legacy and parsed.images[0].error is not None:
        raise parsed.images[0].error  # the original contract has one image: its failure is the request's
    return parsed


async def read_texts(request: Request, settings: Settings) -> list[str]:
    if request_kind(request) == "json":
        body = await read_json_object(request, settings)
        return validate_texts(body.get("texts"), settings)
    form = await read_form(request, max_files=0, max_fields=settings.max_texts_per_request + 16)
    return validate_texts(list(form.getlist("texts")), settings)
