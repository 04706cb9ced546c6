"""FastAPI dependencies: what a route may ask for, as typed `Annotated` aliases. Everything lives on `app.state`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from clip_filter.collections.service import Collections
from clip_filter.core.config import Settings
from clip_filter.ml.service import ModelService


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_model_service(request: Request) -> ModelService:
    return request.app.state.model


def get_collections(request: Request) -> Collections:
    return request.app.state.collections


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
ModelDep = Annotated[ModelService, Depends(get_model_service)]
CollectionsDep = Annotated[Collections, Depends(get_collections)]
