"""A 2-D map of a collection's embeddings, and where a new text lands on it.

- 15+ items: UMAP (cosine), n_neighbors adapted to the size; a text is placed with the fitted UMAP's
  `transform`.
- 3-14 items: PCA (UMAP's neighbour graph is meaningless that small); a text is projected linearly.
- 0-2 items: a fixed layout (origin, or two points on the x axis); a text is placed between them by
  similarity.
Coordinates are scaled into [-1, 1]; projections use the same scaling. Large collections are mapped
from a fixed random sample of MAX_MAP_POINTS items (the response says so), since UMAP time grows with n
and a browser cannot show a million points anyway.

Layouts are cached per collection (`MapCache`, bounded, LRU) and recomputed only when the items or vectors
change, in the background, serving the previous layout marked stale meanwhile.
"""

from __future__ import annotations

import logging
import queue
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from clip_filter.collections.store.records import Change
from clip_filter.core.errors import ClipFilterError

log = logging.getLogger(__name__)

MAX_MAP_POINTS = 5000
UMAP_MIN_ITEMS = 15
DETERMINISTIC_MAX = 1000  # UMAP with a random_state runs single-threaded: only worth it for small maps


Project = Callable[[np.ndarray], np.ndarray]  # (dim,) -> raw 2-D coordinates


@dataclass
class MapLayout:
    method: str  # "umap" | "pca" | "trivial"
    ids: np.ndarray
    coords: np.ndarray  # (n, 2) in [-1, 1]
    total: int  # items in the collection (len(ids) < total when sampled)
    project_raw: Project
    center: np.ndarray
    scale: float
    computed_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="milliseconds"))

    def project(self, vector: np.ndarray) -> tuple[float, float]:
        raw = self.project_raw(np.asarray(vector, np.float32).reshape(-1))
        x, y = (np.asarray(raw, np.float64).reshape(2) - self.center) / self.scale
        return float(x), float(y)


def _scaling(raw: np.ndarray) -> tuple[np.ndarray, float]:
    if raw.shape[0] == 0:
        return np.zeros(2), 1.0
    low, high = raw.min(0), raw.max(0)
    center = (low + high) / 2
    half = float(np.max(high - low) / 2)
    return center, half if half > 1e-9 else 1.0


def _trivial(ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, Project]:
    n = len(ids)
    if n == 2:
        raw = np.array([[-1.0, 0.0], [1.0, 0.0]])

        def project(v: np.ndarray) -> np.ndarray:
            similarity = vectors @ v  # closer to the more similar of the two
            return np.array([float(np.clip(similarity[1] - similarity[0], -1, 1)), 0.0])

        return raw, project
    return np.zeros((n, 2)), lambda v: np.zeros(2)


def _pca(vectors: np.ndarray) -> tuple[np.ndarray, Project]:
    mean = vectors.mean(0)
    _, _, vt = np.linalg.svd(vectors - mean, full_matrices=False)
    components = vt[:2]
    if components.shape[0] < 2:
        components = np.vstack([components, np.zeros((2 - components.shape[0], vectors.shape[1]))])
    # Fix the sign so the same data always maps the same way round.
    signs = np.sign(components[np.arange(2), np.abs(components).argmax(1)])
    components = components * np.where(signs == 0, 1, signs)[:, None]
    raw = (vectors - mean) @ components.T
    return raw, lambda v: (v - mean) @ components.T


def _umap(vectors: np.ndarray) -> tuple[np.ndarray, Project]:
    import umap  # heavy import (numba): only when a map is asked for

    n = vectors.shape[0]
    reducer = umap.UMAP(
        n_neighbors=max(2, min(15, n - 1)),
        n_components=2,
        metric="cosine",
        min_dist=0.1,
        random_state=42 if n <= DETERMINISTIC_MAX else None,
        n_epochs=None if n <= DETERMINISTIC_MAX else 200,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = reducer.fit_transform(vectors)

    lock = threading.Lock()  # UMAP's transform is not documented as thread-safe

    def project(v: np.ndarray) -> np.ndarray:
        with lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return reducer.transform(v.reshape(1, -1))[0]

    return np.asarray(raw, np.float64), project


def compute_layout(ids: np.ndarray, vectors: np.ndarray, seed: int = 0) -> MapLayout:
    total = len(ids)
    if total > MAX_MAP_POINTS:
        rows = np.sort(np.random.default_rng(seed).choice(total, MAX_MAP_POINTS, replace=False))
        ids, vectors = ids[rows], vectors[rows]
    n = len(ids)
    vectors = np.asarray(vectors, np.float32)
    if n <= 2:
        method, (raw, project) = "trivial", _trivial(ids, vectors)
    elif n < UMAP_MIN_ITEMS:
        method, (raw, project) = "pca", _pca(vectors)
    else:
        try:
            method, (raw, project) = "umap", _umap(vectors)
        except Exception:  # noqa: BLE001 - e.g. a degenerate neighbour graph: PCA still gives a map
            log.exception("UMAP failed; falling back to PCA")
            method, (raw, project) = "pca", _pca(vectors)
    raw = np.asarray(raw, np.float64)
    center, scale = _scaling(raw)
    coords = (raw - center) / scale if n else np.zeros((0, 2))
    return MapLayout(method, ids, coords, total, project, center, scale)


@dataclass
class _Cached:
    version: int  # the collection version the layout is valid for (moved on by writes that keep the vectors)
    layout: MapLayout


class MapCache:
    """Layouts per collection (each holding its fitted UMAP reducer), at most `max_entries`, least recently
    used dropped first; one computation at a time per collection.

    A layout stays valid across writes that do not change the vectors (a description or metadata PATCH:
    `apply` moves its version on); after writes that do, `get_or_stale` answers the previous layout marked
    stale and recomputes it on one background thread, so a map request never waits for UMAP again.
    """

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max(1, max_entries)
        self._layouts: OrderedDict[int, _Cached] = OrderedDict()
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()
        self._pending: dict[int, Callable[[], tuple[int, MapLayout]]] = {}
        self._work: queue.Queue[int | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._closed = False

    # ---- reading ---------------------------------------------------------------------------------------
    def get(self, collection_id: int, version: int, compute: Callable[[], tuple[int, MapLayout]]) -> MapLayout:
        """The layout for `version`, computed here when it is not cached; `compute` returns (the version its
        data had, the layout)."""
        with self._guard:
            cached = self._layouts.get(collection_id)
            if cached is not None and cached.version == version:
                self._layouts.move_to_end(collection_id)
                return cached.layout
            lock = self._locks.setdefault(collection_id, threading.Lock())
        with lock:
            with self._guard:
                cached = self._layouts.get(collection_id)
                if cached is not None and cached.version == version:
                    return cached.layout
            computed_version, layout = compute()
            self._store(collection_id, computed_version, layout)
            return layout

    def get_or_stale(
        self, collection_id: int, version: int, compute: Callable[[], tuple[int, MapLayout]]
    ) -> tuple[MapLayout, bool]:
        """(layout, stale): the current layout; else the previous one (stale=True) while a fresh one is
        computed in the background; only the very first map of a collection is computed here."""
        with self._guard:
            cached = self._layouts.get(collection_id)
            if cached is not None:
                self._layouts.move_to_end(collection_id)
                if cached.version == version:
                    return cached.layout, False
                if not self._closed:
                    if collection_id not in self._pending:
                        self._work.put(collection_id)
                    self._pending[collection_id] = compute  # the newest request's view of the data
                    self._start_worker()
                return cached.layout, True
        return self.get(collection_id, version, compute), False

    # ---- keeping it in step ----------------------------------------------------------------------------
    def apply(self, change: Change) -> None:
        """Store listener (after each commit of this process): writes that keep the vectors keep the map."""
        with self._guard:
            cached = self._layouts.get(change.collection_id)
            if cached is None:
                return
            if change.reset and change.version < 0:  # the collection was deleted
                self._layouts.pop(change.collection_id, None)
            elif (
                not change.reset
                and not change.added_ids
                and not change.removed_ids
                and change.version == cached.version + 1
            ):
                cached.version = change.version

    def drop(self, collection_id: int) -> None:
        with self._guard:
            self._layouts.pop(collection_id, None)
            self._pending.pop(collection_id, None)

    def close(self) -> None:
        with self._guard:
            self._closed = True
            self._pending.clear()
        self._work.put(None)

    def _store(self, collection_id: int, version: int, layout: MapLayout) -> None:
        with self._guard:
            current = self._layouts.get(collection_id)
            if current is not None and current.version > version:
                return  # a newer layout went in meanwhile
            self._layouts[collection_id] = _Cached(version, layout)
            self._layouts.move_to_end(collection_id)
            while len(self._layouts) > self.max_entries:  # drops the reducer (and its graph) with the layout
                evicted, _ = self._layouts.popitem(last=False)
                self._locks.pop(evicted, None)

    def _start_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run, name="collections-map", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        while True:
            collection_id = self._work.get()
            if collection_id is None:
                return
            with self._guard:
                compute = self._pending.pop(collection_id, None)
                lock = self._locks.setdefault(collection_id, threading.Lock())
            if compute is None:
                continue
            try:
                with lock:
                    computed_version, layout = compute()
                    if collection_id in self._layouts:  # not dropped (deleted, evicted) meanwhile
                        self._store(collection_id, computed_version, layout)
            except ClipFilterError:
                self.drop(collection_id)  # e.g. the collection was deleted meanwhile
            except Exception:  # noqa: BLE001 - the previous map stays; the next request tries again
                log.exception("recomputing the map of collection %s failed", collection_id)
