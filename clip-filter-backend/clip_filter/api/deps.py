"""FastAPI dependencies: what a route may ask for, as typed `Annotated` aliases. Everything lives on `app.state`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from clip_filter.api.admission import UploadGate
from clip_filter.collections.service import Collections
from clip_filter.core.config import Settings
from clip_filter.ml.service import ModelService


# `async def` on purpose: FastAPI runs a plain `def` dependency on a worker thread, so with every worker
# busy (uploads waiting for the model) even /health/ready would wait for one.
async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_model_service(request: Request) -> ModelService:
    return request.app.state.model


async def get_collections(request: Request) -> Collections:
    return request.app.state.collections


async def get_upload_gate(request: Request) -> UploadGate:
    return request.app.state.upload_gate


async def get_job_upload_gate(request: Request) -> UploadGate:
    return request.app.state.job_upload_gate


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
ModelDep = Annotated[ModelService, Depends(get_model_service)]
CollectionsDep = Annotated[Collections, Depends(get_collections)]
UploadGateDep = Annotated[UploadGate, Depends(get_upload_gate)]
JobUploadGateDep = Annotated[UploadGate, Depends(get_job_upload_gate)]
