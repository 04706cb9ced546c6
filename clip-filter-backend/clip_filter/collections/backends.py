"""Which collections store a process opens: PostgreSQL when CLIP_FILTER_DATABASE_URL is set, else SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clip_filter.collections.store import CollectionStore

if TYPE_CHECKING:
    from clip_filter.core.config import Settings


def uses_postgres(settings: Settings) -> bool:
    return bool(settings.database_url)


def open_store(settings: Settings) -> CollectionStore:
    """The store for these settings (server, CLI and tools alike); originals always live in the data dir."""
    if uses_postgres(settings):
        from clip_filter.collections.store.postgres import PostgresCollectionStore

        assert settings.database_url is not None
        return PostgresCollectionStore(
            settings.database_url,
            Path(settings.data_dir),
            read_url=settings.database_read_url,
            pool_size=settings.database_pool_size,
            index_type=settings.pg_index_type,
            hnsw_m=settings.pg_hnsw_m,
            hnsw_ef_construction=settings.pg_hnsw_ef_construction,
            ef_search=settings.pg_ef_search,
            exact_max_rows=settings.pg_exact_max_rows,
            max_scan_tuples=settings.pg_max_scan_tuples,
            job_lease_s=settings.pg_job_lease_s,
        )
    from clip_filter.collections.store import SqliteCollectionStore

    return SqliteCollectionStore(Path(settings.data_dir), settings.db_readers)
