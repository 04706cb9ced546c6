"""`Collections`: the one facade the HTTP routes and the CLI call for everything about collections.

It owns the store, the in-memory indexes, ingest, bulk jobs, maps, reindex and export/import, and returns
typed records (`results.py`, `store/records.py`); `views.py` turns them into JSON.

Every method here is blocking (database, NumPy, FAISS, UMAP, model calls through the batcher); the routes
call them with `run_in_threadpool`, so the event loop never waits for them and the web layer never
touches torch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clip_filter.collections import reindex as reindexing
from clip_filter.collections import transfer
from clip_filter.collections.backends import open_store
from clip_filter.collections.embedder import Embedder, ModelSource, decode_target_of, model_key
from clip_filter.collections.indexes import IndexCache
from clip_filter.collections.ingest import IngestLimits, Ingestor, Outcome, Source
from clip_filter.collections.jobs import Upload, create_path_job, create_upload_job
from clip_filter.collections.map import MapCache, MapLayout, compute_layout
from clip_filter.collections.pg_jobs import job_runner_class
from clip_filter.collections.results import (
    AddResult,
    CollectionMap,
    Hit,
    IngestSummary,
    ItemPage,
    MapPoint,
    Projection,
    ReindexResult,
    SearchQuery,
    SearchResult,
)
from clip_filter.collections.store import (
    CollectionRecord,
    CollectionStore,
    ItemRecord,
    JobRecord,
    SearchingStore,
    write_file_atomic,
)
from clip_filter.collections.validation import validate_filters, validate_name
from clip_filter.core.errors import ClipFilterError
from clip_filter.core.validation import check_text
from clip_filter.image_base64 import decode_base64_image
from clip_filter.images import DecodeTarget, ImageLimits, decode_image, make_thumbnail, sniff_image_mimetype

if TYPE_CHECKING:
    from clip_filter.core.config import Settings

log = logging.getLogger(__name__)


class Collections:
    def __init__(
        self,
        settings: Settings,
        model_service: ModelSource,
        start_jobs: bool = True,
        collect_garbage: bool = True,
        store: CollectionStore | None = None,
    ) -> None:
        self.settings = settings
        self.model = model_service
        # SQLite in the data dir, or PostgreSQL when CLIP_FILTER_DATABASE_URL is set.
        self.store: CollectionStore = store if store is not None else open_store(settings)
        self.limits = IngestLimits.from_settings(settings)
        # Images are decoded no larger than the model needs, as on the matching routes (the same pixels).
        self.ingestor = Ingestor(self.store, self.limits, lambda: decode_target_of(self.model))
        self.maps = MapCache(settings.map_cache_size)
        self.store.add_listener(self.maps.apply)
        self.indexes = IndexCache(self.store, settings.ann_min_items, self.maps.drop)
        self.jobs = job_runner_class(self.store)(  # replicas share PostgreSQL's jobs under leases
            self.store,
            self.ingestor,
            model_service.blocking_embedder,
            settings.batch_size,
            settings.ingest_root_paths,
        )
        if start_jobs:
            self.jobs.start()  # requeues jobs a restart interrupted
        if collect_garbage:
            # Walking the originals folder can take a while on big stores: not on the startup path.
            threading.Thread(target=self._collect_garbage, name="collections-gc", daemon=True).start()

    def _collect_garbage(self) -> None:
        try:
            removed = self.store.collect_garbage(self.settings.gc_grace_s)
            if any(removed.values()):
                log.info("removed unreferenced files: %s", removed)
        except ClipFilterError:
            pass  # closed while collecting
        except Exception:  # noqa: BLE001 - housekeeping must never take the server down
            log.exception("garbage collection of collection files failed")

    def close(self) -> None:
        self.jobs.close()
        self.maps.close()
        self.store.close()

    # ---- the model ------------------------------------------------------------------------------------
    def embedder(self, wait_for_room: bool = True) -> Embedder:
        """The model's embedder (503 while it is not ready); `wait_for_room=False` refuses a full queue (429)."""
        self.model.require_ready()
        return self.model.blocking_embedder() if wait_for_room else self.model.blocking_embedder(wait_for_room=False)

    def check_model(self, collection: CollectionRecord) -> None:
        """503 while the model is not ready, 409 model_mismatch when the collection has other vectors."""
        collection.check_model(*model_key(self.model.info))

    # ---- collections ----------------------------------------------------------------------------------
    def list_collections(self) -> list[CollectionRecord]:
        return self.store.list_collections()

    def get_collection(self, name: str) -> CollectionRecord:
        return self.store.get_collection(validate_name(name))

    def create_collection(self, name: str, description: str | None = None) -> CollectionRecord:
        model = model_key(self.model.info) if self.model.ready else None  # recorded at the first add otherwise
        return self.store.create_collection(validate_name(name), description, model)

    def update_collection(self, name: str, description: str | None) -> CollectionRecord:
        return self.store.update_collection(validate_name(name), description)

    def delete_collection(self, name: str) -> None:
        self.store.delete_collection(validate_name(name))

    def _fresh(self, collection: CollectionRecord) -> CollectionRecord:
        return self.store.get_collection_by_id(collection.id) or collection

    # ---- items ----------------------------------------------------------------------------------------
    def add(self, name: str, sources: list[Source], wait_for_room: bool = True) -> AddResult:
        """Synchronous add (HTTP upload): one committed transaction for the whole batch. The HTTP route passes
        `wait_for_room=False`: a full model queue answers 429 rather than holding the request's thread."""
        collection = self.get_collection(name)
        embedder = self.embedder(wait_for_room)
        self.check_model(collection)  # before any decoding: a mismatch refuses the whole request
        outcomes = self.ingestor.ingest(collection, sources, embedder)
        ids = [o.item_id for o in outcomes if o.item_id is not None]
        items = self.store.items_by_ids(collection.id, ids) if ids else {}
        return AddResult(self._fresh(collection), outcomes, items)

    def ingest(
        self,
        collection: CollectionRecord,
        sources: list[Source],
        batch_size: int,
        on_batch: Callable[[list[Source], list[Outcome]], None] | None = None,
    ) -> IngestSummary:
        """Add many sources in batches of one transaction each (the CLI). A file whose batch fails on an
        unexpected error is pinned down and reported; a ClipFilterError (mismatch, storage) stops the run,
        keeping what was committed, and re-adding the same sources resumes (known content is skipped)."""
        embedder = self.embedder()
        self.check_model(collection)  # refuse before reading a single file
        summary = IngestSummary(collection, total=len(sources))
        for start in range(0, len(sources), batch_size):
            batch = sources[start : start + batch_size]
            outcomes = self._ingest_batch(self._fresh(collection), batch, embedder)
            for outcome in outcomes:
                if outcome.status == "added":
                    summary.added += 1
                elif outcome.status == "duplicate":
                    summary.duplicates += 1
            if on_batch is not None:
                on_batch(batch, outcomes)
            for source in batch:
                source.data = None  # the bytes of a finished batch are not needed any more
        summary.collection = self._fresh(collection)
        return summary

    def _ingest_batch(self, collection: CollectionRecord, sources: list[Source], embedder: Embedder) -> list[Outcome]:
        try:
            return self.ingestor.ingest(collection, sources, embedder)
        except ClipFilterError:
            raise  # model mismatch, storage failure, deleted collection: fatal for the whole run
        except Exception as exc:  # noqa: BLE001
            if len(sources) == 1:
                log.debug("ingest of %s failed", sources[0].filename, exc_info=True)
                error = ClipFilterError("internal_error", f"{type(exc).__name__}: {exc}", 500)
                return [Outcome(0, sources[0].filename, "error", error=error)]
        outcomes = []
        for index, source in enumerate(sources):  # find the culprit: the others still go in
            for outcome in self._ingest_batch(collection, [source], embedder):
                outcome.index = index
                outcomes.append(outcome)
        return outcomes

    def list_items(self, name: str, offset: int, limit: int) -> ItemPage:
        collection = self.get_collection(name)
        items, total = self.store.list_items(collection.id, offset, limit)
        return ItemPage(items, total, offset, limit)

    def get_item(self, name: str, item_id: int) -> ItemRecord:
        return self.store.get_item(self.get_collection(name), item_id)

    def update_item(self, name: str, item_id: int, metadata: dict[str, Any] | None, filename: str | None) -> ItemRecord:
        return self.store.update_item(self.get_collection(name), item_id, metadata, filename)

    def delete_item(self, name: str, item_id: int) -> None:
        self.store.delete_item(self.get_collection(name), item_id)

    def original_file(self, item: ItemRecord) -> Path | None:
        return self.store.original_file(item)

    # ---- files ----------------------------------------------------------------------------------------
    def content_type(self, item: ItemRecord, data: bytes) -> str:
        """The type an original is served with: sniffed from its bytes (images) or text/plain; never the stored
        mimetype, which an import file could set (text/html would be stored XSS on the UI's origin)."""
        if item.kind == "text":
            return "text/plain; charset=utf-8"
        return sniff_image_mimetype(data) or "application/octet-stream"

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
        path = self.store.files.thumbnail_path(item.collection_id, item.id, size)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        limits = ImageLimits(
            max_bytes=max(self.settings.max_image_bytes, item.size), max_pixels=self.settings.max_image_pixels
        )
        # Decoded at reduced size too (JPEG draft, integer reduction) down to twice the thumbnail, which
        # LANCZOS then scales: never the full-size image for a small JPEG preview.
        target = DecodeTarget(2 * size, 2 * size)
        data = make_thumbnail(decode_image(self.read_content(item), limits, target), size)
        try:
            write_file_atomic(path, data, sync_dir=False)  # a cache: losing it costs a re-render, no fsync
        except OSError:
            log.warning("could not cache the thumbnail of item %s", item.id, exc_info=True)
        return data

    # ---- search ---------------------------------------------------------------------------------------
    def search(self, name: str, query: SearchQuery) -> SearchResult:
        """Rank the collection's items by cosine similarity to the query (score desc, then id asc)."""
        given = [
            key
            for key, value in (("text", query.text), ("image", query.image), ("item_id", query.item_id))
            if value not in (None, "")
        ]
        if len(given) != 1:
            raise ClipFilterError(
                "invalid_query", "Send exactly one query: `text`, `image` or `item_id`.", 422, given=given
            )
        filters = validate_filters(query.filters) or None
        collection = self.get_collection(name)
        embedder = self.embedder()
        self.check_model(collection)  # 409 model_mismatch: other vectors cannot be compared with this model's
        truncated: bool | None = None
        if query.text is not None and query.text != "":
            text = check_text(query.text, "text", self.settings.max_text_chars)
            batch = embedder.encode_texts([text])
            vector, truncated = batch.embeddings[0], bool(batch.truncated[0])
        elif query.image is not None and query.image != "":
            limits, target = self.limits.image, embedder.decode_target  # the pixels the matching routes use
            image = (
                decode_base64_image(query.image, limits, target)
                if isinstance(query.image, str)
                else decode_image(query.image, limits, target)
            )
            vector = embedder.encode_images([image])[0]
        else:
            assert query.item_id is not None
            vector = self.store.get_vector(collection, query.item_id)
        return self._rank(collection, np.asarray(vector, np.float32), query, filters, truncated, embedder)

    def _rank(
        self,
        collection: CollectionRecord,
        vector: np.ndarray,
        query: SearchQuery,
        filters: dict[str, Any] | None,
        truncated: bool | None,
        embedder: Embedder,
    ) -> SearchResult:
        vector = vector.reshape(-1)
        if isinstance(self.store, SearchingStore):  # PostgreSQL: the database is the vector index
            found = self.store.search(
                collection.id, vector, query.top_k, query.offset, filters, query.kind, query.min_score
            )
        else:
            index = self.indexes.get(collection)
            if index is None:
                return SearchResult(collection, query, [], "exact", 0, embedder.info, truncated)
            if vector.shape[0] != index.dim:
                raise ClipFilterError(
                    "dimension_mismatch",
                    f"The query has {vector.shape[0]} dimensions, the collection {index.dim}.",
                    409,
                )
            allowed = self.store.filter_ids(collection.id, filters) if filters else None
            found = index.search(vector, query.top_k, query.offset, allowed, query.kind, query.min_score)
        records = self.store.items_by_ids(collection.id, [int(i) for i in found.ids])
        hits = [
            Hit(records[int(item_id)], float(score))
            for item_id, score in zip(found.ids, found.scores, strict=True)
            if int(item_id) in records
        ]  # deleted between the index read and the row read
        return SearchResult(collection, query, hits, found.method, found.total, embedder.info, truncated)

    # ---- jobs -----------------------------------------------------------------------------------------
    def _job_collection(self, name: str) -> CollectionRecord:
        collection = self.get_collection(name)
        if self.model.ready:
            self.check_model(collection)  # refuse now rather than fail at the first batch
        return collection

    def create_upload_job(self, name: str, uploads: list[Upload]) -> JobRecord:
        """A bulk job of uploaded files: spooled and fsynced, the job committed, then queued (202)."""
        job = create_upload_job(self.store, self._job_collection(name), uploads)
        self.jobs.submit(job.id)
        return job

    def create_folder_job(self, name: str, path: str, include_hidden: bool = False) -> JobRecord:
        """A bulk job of a server-side folder inside CLIP_FILTER_INGEST_ROOTS (regular files; hidden ones only
        when asked)."""
        job = create_path_job(
            self.store, self._job_collection(name), path, self.settings.ingest_root_paths, include_hidden
        )
        self.jobs.submit(job.id)
        return job

    def get_job(self, job_id: str) -> JobRecord:
        return self.store.get_job(job_id)

    # ---- reindex, export, import ----------------------------------------------------------------------
    def reindex(
        self, name: str, batch_size: int | None = None, progress: Callable[[int, int], None] | None = None
    ) -> ReindexResult:
        """Re-embed every item from its original with the current model; all vectors swap in one commit."""
        before = self.get_collection(name)
        embedder = self.embedder()
        count = reindexing.reindex(
            self.store,
            before,
            embedder,
            self.limits.image,
            self.settings.max_text_chars,
            batch_size or self.settings.batch_size,
            progress,
        )
        return ReindexResult(self._fresh(before), before, count)

    def export(self, name: str, out: Path, progress: Callable[[int], None] | None = None) -> transfer.ExportResult:
        return transfer.export_collection(self.store, validate_name(name), out, progress=progress)

    def import_(
        self,
        source: Path,
        name: str | None = None,
        merge: bool = False,
        skip_invalid: bool = False,
        batch_size: int = 256,
        progress: Callable[[int], None] | None = None,
        check_progress: Callable[[int], None] | None = None,
    ) -> transfer.ImportResult:
        """Import an export (no model needed: its embeddings are used as they are)."""
        return transfer.import_collection(
            self.store,
            source,
            name=name,
            merge=merge,
            skip_invalid=skip_invalid,
            batch_size=batch_size,
            progress=progress,
            check_progress=check_progress,
            tar_limits=transfer.TarLimits(self.settings.import_max_members, self.settings.import_max_bytes),
        )

    # ---- map ------------------------------------------------------------------------------------------
    def _layout(self, collection: CollectionRecord) -> tuple[MapLayout, bool]:
        collection_id = collection.id

        def compute() -> tuple[int, MapLayout]:
            version, ids, vectors, _ = self.store.load_vectors(collection_id)
            return version, compute_layout(ids, vectors)

        return self.maps.get_or_stale(collection_id, collection.version, compute)

    def map(self, name: str) -> CollectionMap:
        """The collection's map; after items changed, the previous one (`stale`) while a new one is computed."""
        collection = self.get_collection(name)
        layout, stale = self._layout(collection)
        found = self.store.items_by_ids(collection.id, [int(i) for i in layout.ids])
        points = [
            MapPoint(found[int(item_id)], float(x), float(y))
            for item_id, (x, y) in zip(layout.ids, layout.coords, strict=True)
            if int(item_id) in found
        ]
        return CollectionMap(
            layout.method, points, layout.total, len(layout.ids) < layout.total, stale, layout.computed_at
        )

    def project_text(self, name: str, text: str) -> Projection:
        """Where a text lands on the collection's map."""
        text = check_text(text, "text", self.settings.max_text_chars)
        collection = self.get_collection(name)
        embedder = self.embedder()
        self.check_model(collection)
        vector = np.asarray(embedder.encode_texts([text]).embeddings[0], np.float32)
        layout, _ = self._layout(collection)
        x, y = layout.project(vector)
        return Projection(x, y, layout.method)


def open_collections(settings: Settings, model_service: ModelSource) -> Collections:
    return Collections(settings, model_service)
