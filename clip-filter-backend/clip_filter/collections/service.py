"""Placeholder: the collections facade the web layer uses (filled in by the collections work)."""

from __future__ import annotations

from typing import Any


class Collections:
    def __init__(self, settings: Any, model: Any) -> None:
        self.settings = settings
        self.model = model

    def close(self) -> None:
        pass


def open_collections(settings: Any, model: Any) -> Collections:
    return Collections(settings, model)
