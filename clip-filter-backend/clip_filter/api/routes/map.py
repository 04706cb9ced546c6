"""The 2-D map of a collection for the UI, and where a text lands on it."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from clip_filter.api.deps import get_model_service, get_settings_dep, get_store
from clip_filter.api.routes.collections import get_collection, item_urls, json_body, text_field
from clip_filter.collections.service import Collections
from clip_filter.core.config import Settings
from clip_filter.ml.service import ModelService

router = APIRouter(tags=["map"])

SNIPPET_CHARS = 200


@router.get("/collections/{name}/map", summary="2-D layout of the collection (UMAP; PCA/fixed when tiny)")
async def get_map(name: str, store: Collections = Depends(get_store)) -> dict[str, Any]:
    collection = await get_collection(store, name)
    layout, points = await run_in_threadpool(store.map_points, collection)
    out = []
    for item, x, y in points:
        point = {"id": item.id, "x": x, "y": y, "kind": item.kind, "filename": item.filename,
                 "thumbnail_url": item_urls(name, item)["thumbnail_url"]}
        if item.kind == "text":
            point["text"] = (item.text or "")[:SNIPPET_CHARS]
        out.append(point)
    return {"method": layout.method, "points": out, "total": layout.total, "sampled": len(layout.ids) < layout.total}


@router.post("/collections/{name}/map/project", summary="Where a text lands on the collection's map")
async def project_text(
    name: str,
    request: Request,
    store: Collections = Depends(get_store),
    service: ModelService = Depends(get_model_service),
    settings: Settings = Depends(get_settings_dep),
) -> dict[str, Any]:
    body = await json_body(request)
    text = text_field(body.get("text"), "text", settings)
    collection = await get_collection(store, name)
    service.require_ready()
    store.check_model(collection)
    batch = await service.embed_texts([text])
    layout, x, y = await run_in_threadpool(store.project, collection, np.asarray(batch.embeddings[0], np.float32))
    return {"x": x, "y": y, "method": layout.method}
