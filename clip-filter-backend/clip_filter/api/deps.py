"""FastAPI dependencies: what a route may ask for. Everything lives on `app.state`."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from clip_filter.core.config import Settings
from clip_filter.ml.service import ModelService


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_model_service(request: Request) -> ModelService:
    return request.app.state.model


def get_store(request: Request) -> Any:
    return request.app.state.collections
