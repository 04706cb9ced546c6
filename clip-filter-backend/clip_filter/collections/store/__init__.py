"""The collections store: the `CollectionStore` Protocol, its records, and the SQLite implementation.

schema.py (SQL), records.py (dataclasses), protocol.py (what the collections layer needs from a database),
sqlite.py (the SQLite implementation; sqlite_pool.py, sqlite_jobs.py, sqlite_gc.py its parts), postgres.py
(PostgreSQL + pgvector; imported only when used, by backends.py; postgres_*.py its parts), files.py (file
durability), gc.py (garbage collection).
"""

from __future__ import annotations

from clip_filter.collections.store.files import DataFiles, write_file_atomic
from clip_filter.collections.store.protocol import CollectionStore, ModelKey, SearchingStore
from clip_filter.collections.store.records import (
    Change,
    CollectionRecord,
    ItemRecord,
    JobFile,
    JobProgress,
    JobRecord,
    NewItem,
    VectorSet,
)
from clip_filter.collections.store.sqlite import SqliteCollectionStore

__all__ = [
    "Change",
    "CollectionRecord",
    "CollectionStore",
    "DataFiles",
    "ItemRecord",
    "JobFile",
    "JobProgress",
    "JobRecord",
    "ModelKey",
    "NewItem",
    "SearchingStore",
    "SqliteCollectionStore",
    "VectorSet",
    "write_file_atomic",
]
