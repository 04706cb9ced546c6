"""`PostgresKeyStore`: API keys in the PostgreSQL database of CLIP_FILTER_DATABASE_URL, shared by every replica.

The table comes from the collections migrations (`collections/migrations/0002_api_keys.sql`, applied under the
same advisory lock), so the CLI pointed at the same URL, or any replica, sees one set of keys. Each lookup is
one indexed query by the secret's hash on a small pool (no cache): a revoke is seen by every replica at the
next request. The bootstrap key is registered with `INSERT ... ON CONFLICT DO NOTHING` on the unique hash, so
replicas starting together register it once.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from clip_filter.auth.keys import (
    ApiKey,
    Scope,
    hash_secret,
    key_not_found,
    new_key_id,
    new_secret,
    validate_new_key,
)

_COLUMNS = "id, name, scope, collections, created_at, revoked_at"


def _iso(value: datetime | None) -> str | None:
    """As the SQLite store writes them (`keys.now_iso`): UTC, seconds, +00:00."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat(timespec="seconds")


def _row_to_key(row: tuple[Any, ...]) -> ApiKey:
    id_, name, scope, collections, created_at, revoked_at = row
    created = _iso(created_at)
    assert created is not None  # NOT NULL column
    return ApiKey(id_, name, scope, tuple(collections) if collections is not None else None, created, _iso(revoked_at))


class PostgresKeyStore:
    # A network round trip per lookup: the HTTP layer runs it in a worker thread, not on the event loop.
    lookup_blocks = True

    def __init__(self, url: str, pool_size: int = 4, run_migrations: bool = True) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool, PoolTimeout

        from clip_filter.collections.store.postgres_common import database_unavailable
        from clip_filter.collections.store.postgres_migrations import migrate

        try:
            if run_migrations:
                migrate(url)  # idempotent; the keys table may be needed before any server ever ran (the CLI)
            self._pool = ConnectionPool(
                url, min_size=1, max_size=pool_size, kwargs={"autocommit": True}, open=True, name="clip-filter-keys"
            )
            self._pool.wait(timeout=30.0)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise database_unavailable(exc) from exc

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        import psycopg
        from psycopg_pool import PoolTimeout

        from clip_filter.collections.store.postgres_common import database_unavailable

        try:
            with self._pool.connection(timeout=30.0) as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise database_unavailable(exc) from exc

    def _insert(
        self, secret: str, name: str, scope: Scope, collections: tuple[str, ...] | None, conflict_ok: bool
    ) -> tuple[Any, ...] | None:
        on_conflict = " ON CONFLICT (secret_sha256) DO NOTHING" if conflict_ok else ""
        with self._conn() as conn:
            return conn.execute(
                f"INSERT INTO api_keys (id, name, scope, collections, secret_sha256, created_at) "
                f"VALUES (%s, %s, %s, %s, %s, now()){on_conflict} RETURNING {_COLUMNS}",
                (
                    new_key_id(),
                    name,
                    scope,
                    list(collections) if collections is not None else None,
                    hash_secret(secret),
                ),
            ).fetchone()

    def create(self, name: str, scope: Scope, collections: Sequence[str] | None = None) -> tuple[ApiKey, str]:
        name, scope, limited = validate_new_key(name, scope, collections)
        secret = new_secret()
        row = self._insert(secret, name, scope, limited, conflict_ok=False)
        assert row is not None
        return _row_to_key(row), secret

    def register(self, secret: str, name: str, scope: Scope) -> ApiKey:
        name, scope, _ = validate_new_key(name, scope, None)
        row = self._insert(secret, name, scope, None, conflict_ok=True)
        if row is not None:
            return _row_to_key(row)
        # Already there (another replica registered it first, or an earlier start; maybe revoked: that stays).
        with self._conn() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE secret_sha256 = %s", (hash_secret(secret),)
            ).fetchone()
        assert row is not None  # rows are never deleted
        return _row_to_key(row)

    def lookup(self, secret: str) -> ApiKey | None:
        with self._conn() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE secret_sha256 = %s AND revoked_at IS NULL",
                (hash_secret(secret),),
            ).fetchone()
        return _row_to_key(row) if row is not None else None

    def list(self, include_revoked: bool = False) -> list[ApiKey]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY created_at, seq").fetchall()
        return [_row_to_key(row) for row in rows]

    def revoke(self, id_or_name: str) -> builtins.list[ApiKey]:  # `list` is the method above
        if "\x00" in id_or_name:  # PostgreSQL text cannot hold NUL; no key has one
            rows = []
        else:
            with self._conn() as conn:
                rows = conn.execute(
                    f"WITH revoked AS (UPDATE api_keys SET revoked_at = now() WHERE revoked_at IS NULL "
                    f"AND (id = %s OR name = %s) RETURNING seq, {_COLUMNS}) "
                    f"SELECT {_COLUMNS} FROM revoked ORDER BY seq",
                    (id_or_name, id_or_name),
                ).fetchall()
        if not rows:
            raise key_not_found(id_or_name)
        return [_row_to_key(row) for row in rows]

    def count_active(self) -> int:
        with self._conn() as conn:
            row = conn.execute("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()
        return int(row[0])

    def close(self) -> None:
        self._pool.close()
