"""A 2-D map of a collection's embeddings, and where a new text lands on it.

- 15+ items: UMAP (cosine), n_neighbors adapted to the size; a text is placed with the fitted UMAP's
  `transform`.
- 3-14 items: PCA (UMAP's neighbour graph is meaningless that small); a text is projected linearly.
- 0-2 items: a fixed layout (origin, or two points on the x axis); a text is placed between them by
  similarity.
Coordinates are scaled into [-1, 1]; projections use the same scaling. Large collections are mapped
from a fixed random sample of MAX_MAP_POINTS items (the response says so), since UMAP time grows with n
and a browser cannot show a million points anyway.

Layouts are cached per collection and keyed by the collection's version, which every write bumps,
so any change invalidates the map.
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

MAX_MAP_POINTS = 5000
UMAP_MIN_ITEMS = 15
DETERMINISTIC_MAX = 1000  # UMAP with a random_state runs single-threaded: only worth it for small maps


@dataclass
class MapLayout:
    method: str  # "umap" | "pca" | "trivial"
    ids: np.ndarray
    coords: np.ndarray  # (n, 2) in [-1, 1]
    total: int  # items in the collection (len(ids) < total when sampled)
    project_raw: Callable[[np.ndarray], np.ndarray]  # (dim,) -> raw 2-D coordinates
    center: np.ndarray
    scale: float

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


def _trivial(ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, Callable]:
    n = len(ids)
    if n == 2:
        raw = np.array([[-1.0, 0.0], [1.0, 0.0]])

        def project(v: np.ndarray) -> np.ndarray:
            similarity = vectors @ v  # closer to the more similar of the two
            return np.array([float(np.clip(similarity[1] - similarity[0], -1, 1)), 0.0])

        return raw, project
    return np.zeros((n, 2)), lambda v: np.zeros(2)


def _pca(vectors: np.ndarray) -> tuple[np.ndarray, Callable]:
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


def _umap(vectors: np.ndarray) -> tuple[np.ndarray, Callable]:
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


class MapCache:
    """One layout per collection, valid for one collection version; one computation at a time each."""

    def __init__(self) -> None:
        self._layouts: dict[int, tuple[int, MapLayout]] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, collection_id: int, version: int, compute: Callable[[], tuple[int, MapLayout]]) -> MapLayout:
        """The layout for `version`; `compute` returns (the version its data had, the layout)."""
        with self._guard:
            lock = self._locks.setdefault(collection_id, threading.Lock())
        with lock:
            cached = self._layouts.get(collection_id)
            if cached is not None and cached[0] == version:
                return cached[1]
            computed_version, layout = compute()
            self._layouts[collection_id] = (computed_version, layout)
            return layout

    def drop(self, collection_id: int) -> None:
        with self._guard:
            self._layouts.pop(collection_id, None)
