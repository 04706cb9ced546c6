"""Collections: create/list/delete, add items (files or texts), browse, fetch originals, search.

Every blocking step (SQLite, files, NumPy/FAISS) runs on a worker thread; model work is awaited through
ModelService. Shapes are documented in docs/architecture.md ("Collections").
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from clip_filter.api.deps import get_model_service, get_settings_dep, get_store
from clip_filter.api.inputs import read_form, read_json_object, request_kind
from clip_filter.collections.ingest import Outcome, Source
from clip_filter.collections.service import Collections
from clip_filter.collections.store import CollectionRecord, ItemRecord, validate_filters, validate_metadata, validate_name
from clip_filter.core.config import Settings
from clip_filter.core.errors import ClipFilterError
from clip_filter.images import ImageLimits, decode_base64_image, decode_image
from clip_filter.ml.service import ModelService

router = APIRouter(tags=["collections"])

MAX_ID = 2**63 - 1  # SQLite's integer range: larger ids can only be "not found", never an overflow
MAX_TOP_K = 1000
MAX_OFFSET = 100_000
MAX_DESCRIPTION_CHARS = 2000
ItemId = Path(..., ge=1, le=MAX_ID)


# ---- shapes -----------------------------------------------------------------------------------------------
def collection_dict(record: CollectionRecord) -> dict[str, Any]:
    return {
        "name": record.name, "description": record.description, "model": record.model,
        "pretrained": record.pretrained, "dim": record.dim, "item_count": record.item_count,
        "image_count": record.image_count, "text_count": record.text_count, "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def item_urls(collection: str, item: ItemRecord) -> dict[str, Any]:
    base = f"/collections/{quote(collection, safe='')}/items/{item.id}"
    return {"content_url": f"{base}/content", "thumbnail_url": f"{base}/thumbnail" if item.kind == "image" else None}


def item_dict(collection: str, item: ItemRecord) -> dict[str, Any]:
    out = {
        "id": item.id, "kind": item.kind, "filename": item.filename, "mimetype": item.mimetype, "size": item.size,
        "sha256": item.sha256, "metadata": item.metadata, "truncated": item.truncated, "width": item.width,
        "height": item.height, "created_at": item.created_at, **item_urls(collection, item),
    }
    if item.kind == "text":
        out["text"] = item.text
    return out


def error_dict(error: ClipFilterError) -> dict[str, Any]:
    return {**error.to_dict(), "status": error.status}


# ---- validation -------------------------------------------------------------------------------------------
def invalid(message: str, code: str = "invalid_request", status: int = 422, **details: Any) -> ClipFilterError:
    return ClipFilterError(code, message, status, **details)


def checked_name(name: str) -> str:
    return validate_name(name)


def int_field(value: Any, field: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise invalid(f"`{field}` must be an integer.") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"`{field}` must be an integer.")
    if not low <= value <= high:
        raise invalid(f"`{field}` must be between {low} and {high}.", low=low, high=high)
    return value


def float_field(value: Any, field: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise invalid(f"`{field}` must be a number.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(f"`{field}` must be a finite number.")
    return float(value)


def text_field(value: Any, field: str, settings: Settings) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid(f"`{field}` must be a non-empty string.")
    if len(value) > settings.max_text_chars:
        raise invalid(
            f"`{field}` has {len(value)} characters; at most {settings.max_text_chars} are accepted.",
            "text_too_long", 413, limit=settings.max_text_chars,
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(f"`{field}` is not valid Unicode.") from None
    return value


def parse_metadata_field(raw: Any, position: int) -> dict[str, Any]:
    """A multipart `metadata` part: a JSON object (an empty part means none)."""
    if isinstance(raw, UploadFile):
        raise invalid("Every `metadata` part must be a plain form field holding a JSON object.", "invalid_metadata")
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise invalid(f"`metadata` {position} is not valid JSON: {exc}", "invalid_metadata", index=position) from None
    return validate_metadata(value, f"metadata[{position}]")


def clean_filename(name: str | None) -> str | None:
    """Upload file names are shown and stored as given, but must be valid UTF-8 and of sane length."""
    if not name:
        return None
    return name.encode("utf-8", "replace").decode("utf-8")[:255]


async def multipart_files(form: FormData, settings: Settings, limit: int) -> list[tuple[str | None, bytes, str | None, dict]]:
    """(filename, bytes, content type, metadata) per `files` part, with the `metadata` parts paired up."""
    files = form.getlist("files")
    if not files:
        raise invalid("No files: send one or more in the repeated `files` field.", "no_files")
    if len(files) > limit:
        raise invalid(f"Too many files: {len(files)}; at most {limit} per request.", "too_many_files", 413, limit=limit)
    metadata_parts = form.getlist("metadata")
    if metadata_parts and len(metadata_parts) != len(files):
        raise invalid(
            f"{len(metadata_parts)} `metadata` parts for {len(files)} files: send one per file, in the same order, "
            "or none.", "invalid_metadata",
        )
    metadata = [parse_metadata_field(raw, i) for i, raw in enumerate(metadata_parts)] or [{} for _ in files]
    out = []
    for item, meta in zip(files, metadata):
        if not isinstance(item, UploadFile):
            raise invalid("Every `files` part must be a file upload.")
        out.append((clean_filename(item.filename), await item.read(), item.content_type, meta))
    return out


def validate_description(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION_CHARS:
        raise invalid(f"`description` must be a string of at most {MAX_DESCRIPTION_CHARS} characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid("`description` is not valid Unicode.") from None
    return value


async def read_object(request: Request) -> dict[str, Any]:
    """read_json_object, plus a clear 400 for JSON nested too deeply for Python's parser."""
    try:
        return await read_json_object(request)
    except RecursionError:
        raise invalid("The JSON body is nested too deeply.", "invalid_json", 400) from None


async def json_body(request: Request) -> dict[str, Any]:
    if request_kind(request) != "json":
        raise ClipFilterError("unsupported_media_type", "This endpoint takes a JSON body (application/json).", 415)
    return await read_object(request)


async def get_collection(store: Collections, name: str) -> CollectionRecord:
    return await run_in_threadpool(store.store.get_collection, checked_name(name))


# ---- collections ------------------------------------------------------------------------------------------
@router.post("/collections", status_code=201, summary="Create a collection")
async def create_collection(request: Request, store: Collections = Depends(get_store)) -> dict[str, Any]:
    body = await json_body(request)
    name = validate_name(body.get("name"))
    description = validate_description(body.get("description"))
    return collection_dict(await run_in_threadpool(store.create_collection, name, description))


@router.get("/collections", summary="All collections with their item counts and model")
async def list_collections(store: Collections = Depends(get_store)) -> dict[str, Any]:
    records = await run_in_threadpool(store.store.list_collections)
    return {"collections": [collection_dict(r) for r in records]}


@router.get("/collections/{name}", summary="One collection")
async def get_collection_route(name: str, store: Collections = Depends(get_store)) -> dict[str, Any]:
    return collection_dict(await get_collection(store, name))


@router.patch("/collections/{name}", summary="Change a collection's description")
async def update_collection(name: str, request: Request, store: Collections = Depends(get_store)) -> dict[str, Any]:
    body = await json_body(request)
    if "description" not in body:
        raise invalid("Send `description` (a string, or null to clear it).")
    description = validate_description(body["description"])
    return collection_dict(await run_in_threadpool(store.store.update_collection, checked_name(name), description))


@router.delete("/collections/{name}", status_code=204, summary="Delete a collection and everything in it")
async def delete_collection(name: str, store: Collections = Depends(get_store)) -> Response:
    await run_in_threadpool(store.delete_collection, checked_name(name))
    return Response(status_code=204)


# ---- items ------------------------------------------------------------------------------------------------
def _sources_from_json(body: dict[str, Any], settings: Settings) -> list[Source]:
    texts = body.get("texts")
    if not isinstance(texts, list) or not texts:
        raise invalid("`texts` must be a non-empty list of strings (or send files as multipart).")
    if len(texts) > settings.max_texts_per_request:
        raise invalid(
            f"Too many texts: {len(texts)}; at most {settings.max_texts_per_request} per request.",
            "too_many_texts", 413, limit=settings.max_texts_per_request,
        )
    if not all(isinstance(t, str) for t in texts):
        raise invalid("Every entry of `texts` must be a string.")
    metadata = body.get("metadata")
    if metadata is None:
        metadata = [None] * len(texts)
    elif not isinstance(metadata, list) or len(metadata) != len(texts):
        raise invalid("`metadata` must be a list with one JSON object (or null) per text.", "invalid_metadata")
    return [
        Source(text=text, metadata=validate_metadata(meta, f"metadata[{i}]"))
        for i, (text, meta) in enumerate(zip(texts, metadata))
    ]


def outcome_dict(collection: str, outcome: Outcome, items: dict[int, ItemRecord]) -> dict[str, Any]:
    out: dict[str, Any] = {"index": outcome.index, "filename": outcome.filename, "status": outcome.status}
    if outcome.error is not None:
        out["error"] = error_dict(outcome.error)
    elif outcome.item_id is not None and outcome.item_id in items:
        out["item"] = item_dict(collection, items[outcome.item_id])
        out["id"] = outcome.item_id
    return out


@router.post("/collections/{name}/items", summary="Add files (images, text/plain) or texts")
async def add_items(
    name: str,
    request: Request,
    store: Collections = Depends(get_store),
    service: ModelService = Depends(get_model_service),
    settings: Settings = Depends(get_settings_dep),
) -> dict[str, Any]:
    """Each file or text gets a slot: added, duplicate (same content already present) or error."""
    checked_name(name)
    if request_kind(request) == "json":
        sources = _sources_from_json(await read_object(request), settings)
    else:
        form = await read_form(
            request, max_files=settings.max_images_per_request + 1, max_fields=2 * settings.max_images_per_request + 16
        )
        uploads = await multipart_files(form, settings, settings.max_images_per_request)
        sources = [Source(filename=f, data=d, content_type=c, metadata=m) for f, d, c, m in uploads]
    service.require_ready()  # 503 before any work while the model loads
    outcomes = await run_in_threadpool(store.add, name, sources)
    ids = [o.item_id for o in outcomes if o.item_id is not None]
    collection = await get_collection(store, name)
    items = await run_in_threadpool(store.store.items_by_ids, collection.id, ids) if ids else {}
    return {
        "results": [outcome_dict(name, o, items) for o in outcomes],
        "added": sum(1 for o in outcomes if o.status == "added"),
        "duplicates": sum(1 for o in outcomes if o.status == "duplicate"),
        "errors": sum(1 for o in outcomes if o.status == "error"),
    }


@router.get("/collections/{name}/items", summary="Items in id order (stable pages)")
async def list_items(
    name: str,
    offset: int = Query(0, ge=0, le=MAX_ID),
    limit: int = Query(50, ge=1, le=1000),
    store: Collections = Depends(get_store),
) -> dict[str, Any]:
    collection = await get_collection(store, name)
    items, total = await run_in_threadpool(store.store.list_items, collection.id, offset, limit)
    return {"items": [item_dict(name, i) for i in items], "total": total, "offset": offset, "limit": limit}


async def _item(store: Collections, name: str, item_id: int) -> tuple[CollectionRecord, ItemRecord]:
    collection = await get_collection(store, name)
    return collection, await run_in_threadpool(store.store.get_item, collection, item_id)


@router.get("/collections/{name}/items/{item_id}", summary="One item")
async def get_item(name: str, item_id: int = ItemId, store: Collections = Depends(get_store)) -> dict[str, Any]:
    _, item = await _item(store, name, item_id)
    return item_dict(name, item)


@router.patch("/collections/{name}/items/{item_id}", summary="Replace an item's metadata (and/or filename)")
async def update_item(
    name: str, request: Request, item_id: int = ItemId, store: Collections = Depends(get_store)
) -> dict[str, Any]:
    body = await json_body(request)
    if "metadata" not in body and "filename" not in body:
        raise invalid("Send `metadata` (a JSON object, replacing the old one) and/or `filename`.")
    metadata = None
    if "metadata" in body:
        if not isinstance(body["metadata"], dict):
            raise invalid("`metadata` must be a JSON object.", "invalid_metadata")
        metadata = validate_metadata(body["metadata"])
    filename = body.get("filename")
    if filename is not None and (not isinstance(filename, str) or not filename.strip() or len(filename) > 255):
        raise invalid("`filename` must be a non-empty string of at most 255 characters.")
    if filename is not None:
        filename = clean_filename(filename)
    collection = await get_collection(store, name)
    item = await run_in_threadpool(store.store.update_item, collection, item_id, metadata, filename)
    return item_dict(name, item)


@router.delete("/collections/{name}/items/{item_id}", status_code=204, summary="Delete an item")
async def delete_item(name: str, item_id: int = ItemId, store: Collections = Depends(get_store)) -> Response:
    collection = await get_collection(store, name)
    await run_in_threadpool(store.store.delete_item, collection, item_id)
    return Response(status_code=204)


def _disposition(item: ItemRecord) -> dict[str, str]:
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"}
    if item.filename:
        headers["Content-Disposition"] = f"inline; filename*=UTF-8''{quote(item.filename, safe='')}"
    return headers


@router.get("/collections/{name}/items/{item_id}/content", summary="The original bytes (or the text)")
async def item_content(name: str, item_id: int = ItemId, store: Collections = Depends(get_store)) -> Response:
    _, item = await _item(store, name, item_id)
    data = await run_in_threadpool(store.read_content, item)
    media_type = f"{item.mimetype}; charset=utf-8" if item.kind == "text" else item.mimetype
    return Response(data, media_type=media_type, headers=_disposition(item))


@router.get("/collections/{name}/items/{item_id}/thumbnail", summary="A JPEG thumbnail of an image item")
async def item_thumbnail(name: str, item_id: int = ItemId, store: Collections = Depends(get_store)) -> Response:
    _, item = await _item(store, name, item_id)
    data = await run_in_threadpool(store.thumbnail, item)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


# ---- search -----------------------------------------------------------------------------------------------
def _search_fields(body: dict[str, Any] | FormData, is_form: bool) -> dict[str, Any]:
    """Options shared by JSON and multipart searches (form fields arrive as strings)."""
    filters = body.get("filters")
    if is_form and isinstance(filters, str):
        if not filters.strip():
            filters = None
        else:
            try:
                filters = json.loads(filters)
            except (json.JSONDecodeError, RecursionError):
                raise invalid("`filters` must be a JSON object of {key: value}.", "invalid_filters") from None
    kind = body.get("kind") or None
    if kind not in (None, "image", "text"):
        raise invalid("`kind` must be 'image' or 'text'.")
    return {
        "top_k": int_field(body.get("top_k"), "top_k", 20, 1, MAX_TOP_K),
        "offset": int_field(body.get("offset"), "offset", 0, 0, MAX_OFFSET),
        "min_score": float_field(body.get("min_score"), "min_score"),
        "kind": kind,
        "filters": validate_filters(filters) or None,
    }


@router.post("/collections/{name}/search", summary="Search by text, image or item; cosine scores")
async def search(
    name: str,
    request: Request,
    store: Collections = Depends(get_store),
    service: ModelService = Depends(get_model_service),
    settings: Settings = Depends(get_settings_dep),
) -> dict[str, Any]:
    """Results are sorted by score (cosine) descending, then id ascending, so pages are stable."""
    checked_name(name)
    limits = ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    image_data: bytes | str | None = None
    if request_kind(request) == "json":
        body: Any = await read_object(request)
        options = _search_fields(body, is_form=False)
        image_data = body.get("image")
        if image_data is not None and not isinstance(image_data, str):
            raise invalid("`image` must be a base64 string or a data URI (or send it as a multipart file).")
    else:
        body = await read_form(request, max_files=2, max_fields=32)
        options = _search_fields(body, is_form=True)
        image_part = body.get("image")
        if image_part is not None:
            image_data = await image_part.read() if isinstance(image_part, UploadFile) else image_part
    text, item_id = body.get("text"), body.get("item_id")
    given = [key for key, value in (("text", text), ("image", image_data), ("item_id", item_id)) if value not in (None, "")]
    if len(given) != 1:
        raise invalid("Send exactly one query: `text`, `image` or `item_id`.", "invalid_query", given=given)

    collection = await get_collection(store, name)
    service.require_ready()
    store.check_model(collection)  # 409 model_mismatch: other vectors cannot be compared with this model's
    response: dict[str, Any] = {}
    if text not in (None, ""):
        batch = await service.embed_texts([text_field(text, "text", settings)])
        query = batch.embeddings[0]
        response["query_truncated"] = bool(batch.truncated[0])
    elif image_data not in (None, ""):
        decode = decode_base64_image if isinstance(image_data, str) else decode_image
        image = await run_in_threadpool(decode, image_data, limits)
        query = (await service.embed_images([image]))[0]
    else:
        item = int_field(item_id, "item_id", 0, 1, MAX_ID)
        query = await run_in_threadpool(store.item_vector, collection, item)
    page = await run_in_threadpool(
        store.search, collection, np.asarray(query, np.float32), options["top_k"], options["offset"],
        options["filters"], options["kind"], options["min_score"],
    )
    results = []
    for item, score in zip(page.items, page.scores):
        hit = {"id": item.id, "kind": item.kind, "filename": item.filename, "mimetype": item.mimetype, "score": score,
               "metadata": item.metadata, **item_urls(name, item)}
        if item.kind == "text":
            hit["text"] = item.text
        results.append(hit)
    response.update(results=results, offset=options["offset"], top_k=options["top_k"], method=page.hits.method)
    if page.hits.total is not None:
        response["total"] = page.hits.total
    response.update(model=service.model_summary(), weights=service.info.weights)
    return response
