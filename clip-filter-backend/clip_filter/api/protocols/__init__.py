"""Wire-protocol adapters: other ecosystems' CLIP APIs, thin over ModelService (see docs/protocols.md).

Each module is one router with its own request/response models and its own error shape, installed by its
route class so the rest of the API keeps the service's one error envelope.
"""

from __future__ import annotations

from fastapi import APIRouter

from clip_filter.core.config import Settings


def enabled_routers(settings: Settings) -> list[APIRouter]:
    """The routers of the protocols CLIP_FILTER_PROTOCOLS turns on (imported only when on)."""
    routers: list[APIRouter] = []
    if "openai" in settings.protocol_set:
        from clip_filter.api.protocols import openai

        routers.append(openai.router)
    if "weaviate" in settings.protocol_set:
        from clip_filter.api.protocols import weaviate

        routers.append(weaviate.router)
    if "immich" in settings.protocol_set:
        from clip_filter.api.protocols import immich

        routers.append(immich.router)
    return routers
