"""API keys: creation, storage (hash only) and lookup. The HTTP side lives in `api/security.py`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clip_filter.auth.keys import KeyStore
    from clip_filter.core.config import Settings


def open_key_store(settings: Settings) -> KeyStore:
    """The key store for these settings (server and CLI alike): in the PostgreSQL database when
    CLIP_FILTER_DATABASE_URL is set (every replica on it shares the keys), else `keys.sqlite3` in the data dir."""
    if settings.database_url:
        from clip_filter.auth.postgres_store import PostgresKeyStore

        return PostgresKeyStore(settings.database_url, pool_size=min(4, settings.database_pool_size))
    from clip_filter.auth.sqlite_store import SqliteKeyStore

    return SqliteKeyStore(settings.data_dir)
