"""What the PostgreSQL store's modules share: value conversions, its errors, the NUL check, and the store
attributes the mixins (postgres_collections.py, postgres_search.py, postgres_jobs.py,
postgres_gc.py) use."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from clip_filter.core.errors import ClipFilterError

if TYPE_CHECKING:
    from clip_filter.collections.store.files import DataFiles
    from clip_filter.collections.store.records import Change


def _iso(value: datetime | str) -> str:
    """timestamptz as the SQLite store writes it: ISO 8601 UTC with milliseconds and a Z."""
    if isinstance(value, str):
        return value
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _array(value: Any) -> np.ndarray:
    """A pgvector value (the adapter's Vector) as float32 NumPy."""
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, np.float32)


def job_lease_lost(job_id: str) -> ClipFilterError:
    return ClipFilterError(
        "job_lease_lost",
        f"Job {job_id!r} was taken over by another replica (this one held it too long).",
        409,
        job_id=job_id,
    )


def database_unavailable(exc: BaseException) -> ClipFilterError:
    return ClipFilterError(
        "database_unavailable",
        f"The PostgreSQL database cannot be reached: {exc}",
        503,
        fix="Check CLIP_FILTER_DATABASE_URL and that the server is running.",
    )


def _no_nul(value: Any, code: str, where: str) -> None:
    """PostgreSQL text and jsonb cannot hold U+0000 (SQLite can): refuse it with a 422, never a 500."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ClipFilterError(code, f"`{where}` contains a NUL character (U+0000), which cannot be stored.", 422)
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key, code, where)
            _no_nul(item, code, where)
    elif isinstance(value, list):
        for item in value:
            _no_nul(item, code, where)


class PostgresStoreBase:
    """The attributes and connection helpers `PostgresCollectionStore` sets up, declared for its mixins."""

    files: DataFiles
    index_type: str
    hnsw_m: int
    hnsw_ef_construction: int
    ef_search: int
    exact_max_rows: int
    max_scan_tuples: int
    filtered_candidates: int
    job_lease_s: float
    _claimed: dict[str, str]
    _queued: list[Change]
    _listeners: list[Callable[[Change], None]]

    if TYPE_CHECKING:

        def _read(self, replica: bool = False, snapshot: bool = False) -> AbstractContextManager[Any]: ...
        def _transaction(self) -> AbstractContextManager[Any]: ...
        def _bump_version(self, conn: Any, collection_id: int, change: Change | None = None) -> int: ...
