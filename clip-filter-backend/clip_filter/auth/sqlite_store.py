"""`SqliteKeyStore`: API keys in their own SQLite file, `<data dir>/keys.sqlite3`.

A file apart from the collections database: keys are not collection data (export/import never carries them),
and the CLI can manage them while a server runs (WAL; each call is one short transaction).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clip_filter.auth.keys import (
    ApiKey,
    Scope,
    hash_secret,
    key_not_found,
    new_key_id,
    new_secret,
    now_iso,
    validate_new_key,
)

FILENAME = "keys.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    collections TEXT,            -- JSON list of names, NULL: every collection
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
"""


def _row_to_key(row: sqlite3.Row | tuple[Any, ...]) -> ApiKey:
    id_, name, scope, collections, created_at, revoked_at = row
    return ApiKey(
        id_, name, scope, tuple(json.loads(collections)) if collections is not None else None, created_at, revoked_at
    )


_COLUMNS = "id, name, scope, collections, created_at, revoked_at"


class SqliteKeyStore:
    lookup_blocks = False  # one indexed read of a local file: microseconds, fine on the event loop

    def __init__(self, data_dir: Path) -> None:
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / FILENAME
        # One connection, used under a lock: every statement is a single indexed row access.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(SCHEMA)
        with contextlib.suppress(OSError):
            self.path.chmod(0o600)  # hashes only, but nobody else needs to read them

    def _insert(
        self, secret: str, name: str, scope: Scope, collections: tuple[str, ...] | None, conflict_ok: bool = False
    ) -> ApiKey | None:
        """The new key; None when `conflict_ok` and a key with this secret exists (another process registered it)."""
        key = ApiKey(new_key_id(), name, scope, collections, now_iso())
        on_conflict = " ON CONFLICT (secret_sha256) DO NOTHING" if conflict_ok else ""
        with self._lock:
            cursor = self._conn.execute(
                f"INSERT INTO api_keys ({_COLUMNS}, secret_sha256) VALUES (?, ?, ?, ?, ?, ?, ?){on_conflict}",
                (
                    key.id,
                    key.name,
                    key.scope,
                    json.dumps(list(collections)) if collections is not None else None,
                    key.created_at,
                    None,
                    hash_secret(secret),
                ),
            )
        return key if cursor.rowcount == 1 else None

    def create(self, name: str, scope: Scope, collections: Sequence[str] | None = None) -> tuple[ApiKey, str]:
        name, scope, limited = validate_new_key(name, scope, collections)
        secret = new_secret()
        key = self._insert(secret, name, scope, limited)
        assert key is not None  # no conflict allowed: a (256-bit) collision would have raised
        return key, secret

    def register(self, secret: str, name: str, scope: Scope) -> ApiKey:
        name, scope, _ = validate_new_key(name, scope, None)
        # Insert-or-nothing on the unique hash: two processes registering at once store it once.
        key = self._insert(secret, name, scope, None, conflict_ok=True)
        if key is not None:
            return key
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE secret_sha256 = ?", (hash_secret(secret),)
            ).fetchone()
        return _row_to_key(row)  # already there (maybe revoked on purpose: that stays)

    def lookup(self, secret: str) -> ApiKey | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE secret_sha256 = ? AND revoked_at IS NULL",
                (hash_secret(secret),),
            ).fetchone()
        return _row_to_key(row) if row is not None else None

    def list(self, include_revoked: bool = False) -> list[ApiKey]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY created_at, rowid").fetchall()
        return [_row_to_key(row) for row in rows]

    def revoke(self, id_or_name: str) -> builtins.list[ApiKey]:  # `list` is the method above
        stamp = now_iso()
        with self._lock:
            rows = self._conn.execute(
                f"UPDATE api_keys SET revoked_at = ? WHERE revoked_at IS NULL AND (id = ? OR name = ?) "
                f"RETURNING {_COLUMNS}",
                (stamp, id_or_name, id_or_name),
            ).fetchall()
        if not rows:
            raise key_not_found(id_or_name)
        return [_row_to_key(row) for row in rows]

    def count_active(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
