"""The collections facade the web layer uses: store + in-memory indexes + ingest + jobs + maps.

Every method here is blocking (SQLite, NumPy, FAISS, UMAP, model calls through the batcher); the routes
call them with `run_in_threadpool`, so the event loop never waits for them and the web layer never
touches torch.

Index freshness: each collection's in-memory index carries the collection `version` it reflects.
Writes made by this process are applied as deltas right after their commit (store listener); any other
version seen in the database (the CLI wrote meanwhile) makes the next search rebuild the index from
SQLite, the source of truth.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from clip_filter.collections.backends import open_store
from clip_filter.collections.embedder import Embedder, model_key
from clip_filter.collections.ingest import IngestLimits, Ingestor, Outcome, Source
from clip_filter.collections.pg_jobs import job_runner_class
from clip_filter.collections.map import MapCache, MapLayout, compute_layout
from clip_filter.collections.store import (
    Change, CollectionRecord, ItemRecord, validate_filters, write_file_atomic,
)
from clip_filter.collections.vector_index import CollectionIndex, Hits
from clip_filter.core.errors import ClipFilterError
from clip_filter.images import ImageLimits, decode_image, make_thumbnail

log = logging.getLogger(__name__)

# Files no row references are removed at startup only when older than this: a CLI process may have
# written an original whose transaction has not committed yet.
GC_MIN_AGE_S = 600.0


@dataclass
class SearchPage:
    hits: Hits
    items: list[ItemRecord]  # in hit order (items deleted meanwhile are left out)
    scores: list[float]


class Collections:
    def __init__(self, settings: Any, model_service: Any, start_jobs: bool = True, collect_garbage: bool = True) -> None:
        self.settings = settings
        self.model = model_service
        self.store = open_store(settings)  # SQLite, or PostgreSQL when CLIP_FILTER_DATABASE_URL is set
        self.limits = IngestLimits.from_settings(settings)
        self.ingestor = Ingestor(self.store, self.limits)
        self.maps = MapCache()
        self._indexes: dict[int, CollectionIndex] = {}
        self._index_lock = threading.Lock()
        self._build_locks: dict[int, threading.Lock] = {}
        self.store.add_listener(self._on_change)
        self.jobs = job_runner_class(self.store)(  # replicas share PostgreSQL's jobs under leases
            self.store, self.ingestor, model_service.blocking_embedder, settings.batch_size,
            settings.ingest_root_paths,
        )
        if start_jobs:
            self.jobs.start()  # requeues jobs a restart interrupted
        if collect_garbage:
            # Walking the originals folder can take a while on big stores: not on the startup path.
            threading.Thread(target=self._collect_garbage, name="collections-gc", daemon=True).start()

    def _collect_garbage(self) -> None:
        try:
            removed = self.store.collect_garbage(GC_MIN_AGE_S)
            if any(removed.values()):
                log.info("removed unreferenced files: %s", removed)
        except ClipFilterError:
            pass  # closed while collecting
        except Exception:  # noqa: BLE001 - housekeeping must never take the server down
            log.exception("garbage collection of collection files failed")

    def close(self) -> None:
        self.jobs.close()
        self.store.close()

    # ---- the model ------------------------------------------------------------------------------------
    def embedder(self) -> Embedder:
        self.model.require_ready()
        return self.model.blocking_embedder()

    def check_model(self, collection: CollectionRecord) -> None:
        """503 while the model is not ready, 409 model_mismatch when the collection has other vectors."""
        collection.check_model(*model_key(self.model.info))

    # ---- collections ----------------------------------------------------------------------------------
    def create_collection(self, name: str, description: str | None) -> CollectionRecord:
        model = model_key(self.model.info) if self.model.ready else None  # recorded at the first add otherwise
        return self.store.create_collection(name, description, model)

    def delete_collection(self, name: str) -> None:
        self.store.delete_collection(name)

    # ---- indexes --------------------------------------------------------------------------------------
    def _on_change(self, change: Change) -> None:
        """Called after each commit of this process (under the store's write lock, in commit order)."""
        with self._index_lock:
            index = self._indexes.get(change.collection_id)
            if index is None:
                pass
            elif change.reset or index.version != change.version - 1:
                self._indexes.pop(change.collection_id, None)  # rebuilt from SQLite on the next search
                index = None
            else:
                if change.removed_ids:
                    index.remove(np.asarray(change.removed_ids, np.int64))
                if change.added_ids:
                    vectors = np.stack(change.added_vectors)
                    if vectors.shape[1] != index.dim:
                        self._indexes.pop(change.collection_id, None)
                        index = None
                    else:
                        index.add(np.asarray(change.added_ids, np.int64), vectors, change.added_kinds)
                if index is not None:
                    index.version = change.version
        if change.reset and change.version < 0:
            self.maps.drop(change.collection_id)

    def index_for(self, collection: CollectionRecord) -> CollectionIndex | None:
        """The collection's index at (at least) the version of `collection`; None while it has no vectors."""
        with self._index_lock:
            index = self._indexes.get(collection.id)
            if index is not None and index.version >= collection.version:
                return index
            build_lock = self._build_locks.setdefault(collection.id, threading.Lock())
        with build_lock:  # one rebuild per collection at a time; others wait for it
            with self._index_lock:
                index = self._indexes.get(collection.id)
                if index is not None and index.version >= collection.version:
                    return index
            version, ids, vectors, kinds = self.store.load_vectors(collection.id)
            if vectors.shape[0] == 0 and vectors.shape[1] == 0:
                return None
            index = CollectionIndex(vectors.shape[1], version, self.settings.ann_min_items)
            index.add(ids, vectors, kinds)
            with self._index_lock:
                current = self._indexes.get(collection.id)
                # A delta applied meanwhile may already have moved a newer index in: keep the newest.
                if current is None or current.version < version:
                    self._indexes[collection.id] = index
                    return index
                return current

    def search(
        self,
        collection: CollectionRecord,
        query: np.ndarray,
        top_k: int,
        offset: int = 0,
        filters: dict[str, Any] | None = None,
        kind: str | None = None,
        min_score: float | None = None,
    ) -> SearchPage:
        if hasattr(self.store, "search"):  # PostgreSQL: the database is the vector index
            hits = self.store.search(collection.id, query, top_k, offset, validate_filters(filters), kind, min_score)
        else:
            index = self.index_for(collection)
            if index is None:
                return SearchPage(Hits(np.zeros(0, np.int64), np.zeros(0, np.float32), total=0), [], [])
            query = np.asarray(query, np.float32).reshape(-1)
            if query.shape[0] != index.dim:
                raise ClipFilterError(
                    "dimension_mismatch", f"The query has {query.shape[0]} dimensions, the collection {index.dim}.", 409
                )
            allowed = self.store.filter_ids(collection.id, validate_filters(filters)) if filters else None
            hits = index.search(query, top_k, offset, allowed, kind, min_score)
        found = self.store.items_by_ids(collection.id, [int(i) for i in hits.ids])
        items, scores = [], []
        for item_id, score in zip(hits.ids, hits.scores):
            item = found.get(int(item_id))
            if item is not None:  # deleted between the index read and the row read
                items.append(item)
                scores.append(float(score))
        return SearchPage(hits, items, scores)

    def item_vector(self, collection: CollectionRecord, item_id: int) -> np.ndarray:
        return self.store.get_vector(collection, item_id)

    # ---- adding ---------------------------------------------------------------------------------------
    def add(self, name: str, sources: list[Source]) -> list[Outcome]:
        """Synchronous add (HTTP upload): one committed transaction for the whole batch."""
        collection = self.store.get_collection(name)
        embedder = self.embedder()
        self.check_model(collection)  # before any decoding: a mismatch refuses the whole request
        return self.ingestor.ingest(collection, sources, embedder)

    # ---- files ----------------------------------------------------------------------------------------
    def read_content(self, item: ItemRecord) -> bytes:
        if item.kind == "text":
            return (item.text or "").encode("utf-8")
        path = self.store.original_file(item)
        try:
            return path.read_bytes() if path is not None else b""
        except FileNotFoundError:
            raise ClipFilterError(
                "content_missing", f"The original file of item {item.id} is missing from the data folder.", 404
            ) from None

    def thumbnail(self, item: ItemRecord) -> bytes:
        """A JPEG thumbnail, made on first request from the original and kept beside it."""
        if item.kind != "image":
            raise ClipFilterError("no_thumbnail", f"Item {item.id} is a text; it has no thumbnail.", 404)
        size = self.settings.thumbnail_size
        path = self.store.thumbnail_path(item, size)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        limits = ImageLimits(max_bytes=max(self.settings.max_image_bytes, item.size),
                             max_pixels=self.settings.max_image_pixels)
        data = make_thumbnail(decode_image(self.read_content(item), limits), size)
        try:
            write_file_atomic(path, data, sync_dir=False)  # a cache: losing it costs a re-render, no fsync
        except OSError:
            log.warning("could not cache the thumbnail of item %s", item.id, exc_info=True)
        return data

    # ---- map ------------------------------------------------------------------------------------------
    def layout(self, collection: CollectionRecord) -> MapLayout:
        def compute() -> tuple[int, MapLayout]:
            version, ids, vectors, _ = self.store.load_vectors(collection.id)
            return version, compute_layout(ids, vectors)

        return self.maps.get(collection.id, collection.version, compute)

    def map_points(self, collection: CollectionRecord) -> tuple[MapLayout, list[tuple[ItemRecord, float, float]]]:
        layout = self.layout(collection)
        found = self.store.items_by_ids(collection.id, [int(i) for i in layout.ids])
        points = [
            (found[int(item_id)], float(x), float(y))
            for item_id, (x, y) in zip(layout.ids, layout.coords)
            if int(item_id) in found
        ]
        return layout, points

    def project(self, collection: CollectionRecord, vector: np.ndarray) -> tuple[MapLayout, float, float]:
        layout = self.layout(collection)
        x, y = layout.project(vector)
        return layout, x, y


def open_collections(settings: Any, model_service: Any) -> Collections:
    return Collections(settings, model_service)
