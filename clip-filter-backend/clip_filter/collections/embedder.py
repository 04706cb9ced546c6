"""What a collection needs from a model: an `Embedder` (three members), and a `ModelSource` that hands one out.

`ClipEncoder` satisfies it (the CLI); `ModelService.blocking_embedder()` satisfies it inside the
server (safe to call from worker threads, goes through the dynamic batcher).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # no torch import at runtime for the web layer's sake
    from clip_filter.images import DecodeTarget
    from clip_filter.ml.encoder import ModelInfo, TextBatch


class Embedder(Protocol):
    @property
    def info(self) -> ModelInfo: ...

    def encode_images(self, images: list[Image.Image]) -> np.ndarray: ...

    def encode_texts(self, texts: list[str]) -> TextBatch: ...

    # The decode whose preprocessing gives this model exactly its input (a JPEG draft / integer reduction of a
    # large image, ml/pixels.py): what the matching routes use, so stored and query vectors match theirs.
    @property
    def decode_target(self) -> DecodeTarget | None: ...


def model_key(info: ModelInfo) -> tuple[str, str, int]:
    """What a collection records and compares: (architecture, pretrained tag or path, dimension)."""
    return (info.model, info.pretrained, int(info.dim))


class ModelSource(Protocol):
    """Where the collections get their model: `ModelService` in the server, a locally loaded encoder in the CLI."""

    @property
    def ready(self) -> bool: ...

    @property
    def info(self) -> ModelInfo: ...  # raises ModelUnavailableError (503) while there is no model

    def require_ready(self) -> object: ...  # raises ModelUnavailableError (503) while there is no model

    # Safe to call from worker threads; `wait_for_room=False`: refuse (429) rather than wait for a full queue.
    def blocking_embedder(self, wait_for_room: bool = True) -> Embedder: ...


def decode_target_of(model: ModelSource) -> DecodeTarget | None:
    """The loaded model's decode target; None (full size) while no model is loaded."""
    return model.blocking_embedder().decode_target if model.ready else None
