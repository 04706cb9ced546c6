"""The in-memory vector indexes of the collections, kept in step with the store.

Index freshness: each collection's in-memory index carries the collection `version` it reflects.
Writes made by this process are applied as deltas right after their commit (store listener); any other
version seen in the database (the CLI wrote meanwhile) makes the next search rebuild the index from the
store, the source of truth.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from clip_filter.collections.store import Change, CollectionRecord, CollectionStore
from clip_filter.collections.vector_index import CollectionIndex


class IndexCache:
    def __init__(self, store: CollectionStore, ann_min_items: int, on_drop: Callable[[int], None]) -> None:
        self.store = store
        self.ann_min_items = ann_min_items
        self._on_drop = on_drop  # a deleted collection: drop what else is cached for it (its map)
        self._indexes: dict[int, CollectionIndex] = {}
        self._lock = threading.Lock()
        self._build_locks: dict[int, threading.Lock] = {}
        store.add_listener(self.apply)

    def apply(self, change: Change) -> None:
        """Called after each commit of this process (under the store's write lock, in commit order).

        Should applying the delta fail (e.g. MemoryError), the index is dropped and rebuilt from the store on
        the next search: the commit stands either way."""
        try:
            self._apply(change)
        except BaseException:
            with self._lock:
                self._indexes.pop(change.collection_id, None)
            raise

    def _apply(self, change: Change) -> None:
        with self._lock:
            index = self._indexes.get(change.collection_id)
            if index is None:
                pass
            elif change.reset or index.version != change.version - 1:
                self._indexes.pop(change.collection_id, None)  # rebuilt from the store on the next search
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
            self._on_drop(change.collection_id)

    def get(self, collection: CollectionRecord) -> CollectionIndex | None:
        """The collection's index at (at least) the version of `collection`; None while it has no vectors."""
        with self._lock:
            index = self._indexes.get(collection.id)
            if index is not None and index.version >= collection.version:
                return index
            build_lock = self._build_locks.setdefault(collection.id, threading.Lock())
        with build_lock:  # one rebuild per collection at a time; others wait for it
            with self._lock:
                index = self._indexes.get(collection.id)
                if index is not None and index.version >= collection.version:
                    return index
            version, ids, vectors, kinds = self.store.load_vectors(collection.id)
            if vectors.shape[0] == 0 and vectors.shape[1] == 0:
                return None
            index = CollectionIndex(vectors.shape[1], version, self.ann_min_items)
            index.add(ids, vectors, kinds)
            with self._lock:
                current = self._indexes.get(collection.id)
                # A delta applied meanwhile may already have moved a newer index in: keep the newest.
                if current is None or current.version < version:
                    self._indexes[collection.id] = index
                    return index
                return current
