"""The 2-D map of a collection for the UI, and where a text lands on it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from clip_filter.api.bodies import read_model
from clip_filter.api.deps import CollectionsDep
from clip_filter.api.schemas.collections import MapOut, ProjectBody, ProjectionOut, request_body
from clip_filter.collections import views

router = APIRouter(tags=["map"])


@router.get(
    "/collections/{name}/map",
    summary="2-D layout of the collection (UMAP; PCA/fixed when tiny)",
    response_model=MapOut,
    response_model_exclude_unset=True,
)
async def get_map(name: str, collections: CollectionsDep) -> dict[str, Any]:
    return views.map_view(name, await run_in_threadpool(collections.map, name))


@router.post(
    "/collections/{name}/map/project",
    summary="Where a text lands on the collection's map",
    response_model=ProjectionOut,
    openapi_extra=request_body(ProjectBody),
)
async def project_text(name: str, request: Request, collections: CollectionsDep) -> dict[str, Any]:
    body = await read_model(request, ProjectBody)
    return views.projection_view(await run_in_threadpool(collections.project_text, name, body.text))
