"""Collections: create/list/delete, add items (files or texts), browse, fetch originals, search.

Thin routes over `Collections` (collections/service.py): each reads and validates its request
(api/schemas/collections.py), calls one blocking service method on a worker thread and shapes the
record with collections/views.py. Shapes are documented in docs/architecture.md ("Collections").
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from clip_filter.api.bodies import parse, read_model, read_object
from clip_filter.api.deps import CollectionsDep, ModelDep, SettingsDep, UploadGateDep
from clip_filter.api.inputs import read_form, request_kind
from clip_filter.api.multipart import clean_filename, file_parts
from clip_filter.api.schemas.collections import (
    ADD_FILES_FORM,
    MAX_ID,
    SEARCH_FORM,
    AddItemsOut,
    AddTextsBody,
    CollectionListOut,
    CollectionOut,
    CreateCollectionBody,
    ItemOut,
    ItemPageOut,
    PatchCollectionBody,
    PatchItemBody,
    SearchBody,
    SearchOut,
    request_body,
)
from clip_filter.collections import views
from clip_filter.collections.ingest import Source
from clip_filter.collections.results import SearchQuery
from clip_filter.collections.store import ItemRecord
from clip_filter.collections.validation import validate_name
from clip_filter.core.errors import OverloadedError

router = APIRouter(tags=["collections"])

ItemId = Path(..., ge=1, le=MAX_ID)
OUT: dict[str, Any] = {"response_model_exclude_unset": True}  # optional keys stay absent, as in the views
FullText = Query(False, description="whole texts instead of previews (CLIP_FILTER_TEXT_PREVIEW_CHARS characters)")


# ---- collections ------------------------------------------------------------------------------------------
@router.post(
    "/collections",
    status_code=201,
    summary="Create a collection",
    response_model=CollectionOut,
    openapi_extra=request_body(CreateCollectionBody),
    **OUT,
)
async def create_collection(request: Request, collections: CollectionsDep) -> dict[str, Any]:
    body = await read_model(request, CreateCollectionBody)
    return views.collection_view(await run_in_threadpool(collections.create_collection, body.name, body.description))


@router.get(
    "/collections", summary="All collections with their item counts and model", response_model=CollectionListOut, **OUT
)
async def list_collections(collections: CollectionsDep) -> dict[str, Any]:
    records = await run_in_threadpool(collections.list_collections)
    return {"collections": [views.collection_view(r) for r in records]}


@router.get("/collections/{name}", summary="One collection", response_model=CollectionOut, **OUT)
async def get_collection(name: str, collections: CollectionsDep) -> dict[str, Any]:
    return views.collection_view(await run_in_threadpool(collections.get_collection, name))


@router.patch(
    "/collections/{name}",
    summary="Change a collection's description",
    response_model=CollectionOut,
    openapi_extra=request_body(PatchCollectionBody),
    **OUT,
)
async def update_collection(name: str, request: Request, collections: CollectionsDep) -> dict[str, Any]:
    body = await read_model(request, PatchCollectionBody)
    return views.collection_view(await run_in_threadpool(collections.update_collection, name, body.description))


@router.delete("/collections/{name}", status_code=204, summary="Delete a collection and everything in it")
async def delete_collection(name: str, collections: CollectionsDep) -> Response:
    await run_in_threadpool(collections.delete_collection, name)
    return Response(status_code=204)


# ---- items ------------------------------------------------------------------------------------------------
@router.post(
    "/collections/{name}/items",
    summary="Add files (images, text/plain) or texts",
    response_model=AddItemsOut,
    openapi_extra=request_body(AddTextsBody, ADD_FILES_FORM),
    **OUT,
)
async def add_items(
    name: str,
    request: Request,
    collections: CollectionsDep,
    model: ModelDep,
    settings: SettingsDep,
    uploads: UploadGateDep,
) -> dict[str, Any]:
    """Each file or text gets a slot: added, duplicate (same content already present) or error.

    A full model queue answers 429 (Retry-After) before the body is read or decoded, and again instead of
    waiting should it fill meanwhile: an upload never holds a worker thread waiting for the model. Only
    CLIP_FILTER_UPLOAD_CONCURRENCY uploads are read and processed at once, CLIP_FILTER_UPLOAD_BACKLOG more wait
    unread, and beyond that the answer is 429 before the body is read (api/admission.py)."""
    validate_name(name)
    kind = request_kind(request)
    if model.ready and not model.queue_has_room():
        raise OverloadedError(retry_after=1)
    async with uploads.admit():
        if model.ready and not model.queue_has_room():  # it may have filled while this one waited
            raise OverloadedError(retry_after=1)
        if kind == "json":
            body = parse(AddTextsBody, await read_object(request), max_texts=settings.max_texts_per_request)
            metadata = body.metadata or [None] * len(body.texts)
            sources = [Source(text=text, metadata=meta or {}) for text, meta in zip(body.texts, metadata, strict=True)]
        else:
            limit = settings.max_images_per_request
            form = await read_form(request, max_files=limit + 1, max_fields=2 * limit + 16)
            sources = [
                Source(
                    filename=part.filename,
                    data=await part.upload.read(),
                    content_type=part.upload.content_type,
                    metadata=part.metadata,
                )
                for part in file_parts(form, limit)
            ]
        model.require_ready()  # 503 before any work while the model loads
        # The texts come back whole: each is bounded (CLIP_FILTER_MAX_STORED_TEXT_BYTES) and was just sent.
        return views.add_result_view(await run_in_threadpool(collections.add, name, sources, False))


@router.get("/collections/{name}/items", summary="Items in id order (stable pages)", response_model=ItemPageOut, **OUT)
async def list_items(
    name: str,
    collections: CollectionsDep,
    settings: SettingsDep,
    offset: int = Query(0, ge=0, le=MAX_ID),
    limit: int = Query(50, ge=1, le=1000),
    full_text: bool = FullText,
) -> dict[str, Any]:
    page = await run_in_threadpool(collections.list_items, name, offset, limit)
    return views.item_page_view(name, page, None if full_text else settings.text_preview_chars)


@router.get("/collections/{name}/items/{item_id}", summary="One item", response_model=ItemOut, **OUT)
async def get_item(name: str, collections: CollectionsDep, item_id: int = ItemId) -> dict[str, Any]:
    return views.item_view(name, await run_in_threadpool(collections.get_item, name, item_id))


@router.patch(
    "/collections/{name}/items/{item_id}",
    summary="Replace an item's metadata (and/or filename)",
    response_model=ItemOut,
    openapi_extra=request_body(PatchItemBody),
    **OUT,
)
async def update_item(
    name: str, request: Request, collections: CollectionsDep, item_id: int = ItemId
) -> dict[str, Any]:
    body = await read_model(request, PatchItemBody)
    item = await run_in_threadpool(collections.update_item, name, item_id, body.metadata, clean_filename(body.filename))
    return views.item_view(name, item)


@router.delete("/collections/{name}/items/{item_id}", status_code=204, summary="Delete an item")
async def delete_item(name: str, collections: CollectionsDep, item_id: int = ItemId) -> Response:
    await run_in_threadpool(collections.delete_item, name, item_id)
    return Response(status_code=204)


def _disposition(item: ItemRecord) -> dict[str, str]:
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"}
    if item.filename:
        headers["Content-Disposition"] = f"inline; filename*=UTF-8''{quote(item.filename, safe='')}"
    return headers


@router.get("/collections/{name}/items/{item_id}/content", summary="The original bytes (or the text)")
async def item_content(name: str, collections: CollectionsDep, item_id: int = ItemId) -> Response:
    item = await run_in_threadpool(collections.get_item, name, item_id)
    data = await run_in_threadpool(collections.read_content, item)
    return Response(data, media_type=collections.content_type(item, data), headers=_disposition(item))


@router.get("/collections/{name}/items/{item_id}/thumbnail", summary="A JPEG thumbnail of an image item")
async def item_thumbnail(name: str, collections: CollectionsDep, item_id: int = ItemId) -> Response:
    item = await run_in_threadpool(collections.get_item, name, item_id)
    data = await run_in_threadpool(collections.thumbnail, item)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


# ---- search -----------------------------------------------------------------------------------------------
@router.post(
    "/collections/{name}/search",
    summary="Search by text, image or item; cosine scores",
    response_model=SearchOut,
    openapi_extra=request_body(SearchBody, SEARCH_FORM),
    **OUT,
)
async def search(
    name: str, request: Request, collections: CollectionsDep, settings: SettingsDep, full_text: bool = FullText
) -> dict[str, Any]:
    """Results are sorted by score (cosine) descending, then id ascending, so pages are stable."""
    validate_name(name)
    image: bytes | str | None
    if request_kind(request) == "json":
        body = parse(SearchBody, await read_object(request))
        image = body.image
    else:
        form = await read_form(request, max_files=2, max_fields=32)
        fields = {key: value for key, value in form.items() if key != "image"}
        body = parse(SearchBody, fields)
        part = form.get("image")
        image = await part.read() if isinstance(part, UploadFile) else part
    query = SearchQuery(
        text=body.text,
        image=image,
        item_id=body.item_id,
        top_k=body.top_k,
        offset=body.offset,
        min_score=body.min_score,
        kind=body.kind,
        filters=body.filters,
    )
    result = await run_in_threadpool(collections.search, name, query)
    return views.search_view(result, None if full_text else settings.text_preview_chars)
