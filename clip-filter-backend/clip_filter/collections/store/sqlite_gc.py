"""The SQLite store's garbage-collection guard: gc.py's re-check of references under the write lock."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clip_filter.collections.store.sqlite import SqliteCollectionStore


class _SqliteGcGuard:
    """gc.py's re-check under the writer lock: nothing can commit a reference while files are removed."""

    def __init__(self, store: SqliteCollectionStore) -> None:
        self._store = store
        self._conn: sqlite3.Connection | None = None

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._store._transaction() as conn:  # BEGIN IMMEDIATE: writes of other processes wait too
            self._conn = conn
            try:
                yield
            finally:
                self._conn = None

    def referenced(self, paths: list[str]) -> set[str]:
        assert self._conn is not None
        found: set[str] = set()
        for start in range(0, len(paths), 500):
            chunk = paths[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                row[0]
                for row in self._conn.execute(
                    f"SELECT original_path FROM items WHERE original_path IN ({marks})", chunk
                )
            )
        return found

    def collection_ids(self) -> set[int]:
        assert self._conn is not None
        return {row[0] for row in self._conn.execute("SELECT id FROM collections")}

    def live_jobs(self) -> set[str]:
        assert self._conn is not None
        return {row[0] for row in self._conn.execute("SELECT id FROM jobs WHERE state IN ('queued', 'running')")}
