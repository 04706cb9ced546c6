"""Re-embedding a collection with the current model, from its stored originals: all or nothing."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from clip_filter.collections.embedder import Embedder, model_key
from clip_filter.collections.store import CollectionRecord, CollectionStore, ItemRecord
from clip_filter.core.errors import ClipFilterError
from clip_filter.images import ImageLimits, decode_image

MAX_ATTEMPTS = 100  # commits refused because items were added meanwhile


def embed_items(
    items: list[ItemRecord], store: CollectionStore, embedder: Embedder, limits: ImageLimits, max_text_chars: int
) -> dict[int, tuple[np.ndarray, bool]]:
    """Fresh embeddings of stored items, from their originals; a missing or unreadable one is fatal."""
    out: dict[int, tuple[np.ndarray, bool]] = {}
    images, pixels = [], []
    texts = [item for item in items if item.kind == "text"]
    target = embedder.decode_target  # decoded as ingest and the matching routes decode: the same pixels
    for item in items:
        if item.kind != "image":
            continue
        path = store.original_file(item)
        try:
            data = path.read_bytes() if path is not None else None
        except OSError:
            data = None
        if data is None:
            raise ClipFilterError(
                "original_missing",
                f"Item {item.id} ({item.filename}) has no readable original at {path}; nothing was reindexed.",
                500,
                fix="Delete that item (DELETE /collections/{name}/items/{id}) and run reindex again.",
            )
        # The original was accepted once: let it through even if the limits were lowered since.
        accepted = ImageLimits(
            max(limits.max_bytes, len(data)), max(limits.max_pixels, (item.width or 0) * (item.height or 0))
        )
        try:
            pixels.append(decode_image(data, accepted, target))
        except ClipFilterError as exc:
            raise ClipFilterError(
                "original_unreadable",
                f"The original of item {item.id} ({item.filename}) cannot be decoded ({exc.code}); "
                "nothing was reindexed.",
                500,
            ) from None
        images.append(item)
    if images:
        for item, vector in zip(images, embedder.encode_images(pixels), strict=True):
            out[item.id] = (vector, False)
    if texts:
        batch = embedder.encode_texts([(item.text or "")[:max_text_chars] for item in texts])
        for item, vector, truncated in zip(texts, batch.embeddings, batch.truncated, strict=True):
            out[item.id] = (vector, bool(truncated) or len(item.text or "") > max_text_chars)
    return out


def reindex(
    store: CollectionStore,
    collection: CollectionRecord,
    embedder: Embedder,
    limits: ImageLimits,
    max_text_chars: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Re-embed every item, then swap all vectors and the recorded model in one transaction.

    Items added meanwhile make the commit refuse; those are embedded too and the commit tried again.
    `progress(done, total)` after each batch. Returns how many items were embedded.
    """
    new_model = model_key(embedder.info)
    embeddings: dict[int, tuple[np.ndarray, bool]] = {}
    total = collection.item_count
    for items in store.iter_items(collection.id, batch_size):
        embeddings.update(embed_items(items, store, embedder, limits, max_text_chars))
        if progress is not None:
            progress(len(items), total)
    for _ in range(MAX_ATTEMPTS):
        committed, missing = store.replace_embeddings(collection.id, embeddings, new_model)
        if committed:
            return len(embeddings)
        fresh = store.items_by_ids(collection.id, sorted(missing))
        total += len(fresh)
        embeddings.update(embed_items(list(fresh.values()), store, embedder, limits, max_text_chars))
        if progress is not None:
            progress(len(fresh), total)
    raise ClipFilterError(
        "collection_busy", "The collection kept changing during the reindex; nothing was changed. Try again.", 409
    )
