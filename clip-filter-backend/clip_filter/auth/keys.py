"""API keys: what a key is, how it is made and hashed, and the `KeyStore` interface any backend implements.

A key is `cfk_` + 43 url-safe characters from `secrets.token_urlsafe(32)`: 256 random bits. It is shown once,
when created, and stored only as its SHA-256. A fast hash is enough here, unlike for passwords: slow hashes
(bcrypt, argon2) exist to make guessing *low-entropy* secrets expensive, while guessing a 256-bit random key
is infeasible at any hash speed, and a fast hash lets every request be checked in microseconds. Lookup is by
the hash itself (an index), so no secret is compared byte by byte in Python.
"""

from __future__ import annotations

import builtins
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, Protocol, get_args

from clip_filter.core.errors import ClipFilterError

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[str, ...] = get_args(Scope)
SCOPE_RANK = {"read": 0, "write": 1, "admin": 2}

KEY_PREFIX = "cfk_"
KEY_BYTES = 32  # 256 bits
MIN_BOOTSTRAP_CHARS = 32  # an operator-chosen key must carry enough entropy too (e.g. `openssl rand -hex 32`)
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
COLLECTION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # the collections' own rule (kept here: no store import)


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_key_id() -> str:
    """A public identifier (logs, rate limits, `keys revoke`): random, unrelated to the secret."""
    return secrets.token_hex(6)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def scope_allows(granted: str | None, needed: str) -> bool:
    return granted in SCOPE_RANK and SCOPE_RANK[granted] >= SCOPE_RANK[needed]


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    id: str
    name: str
    scope: Scope
    collections: tuple[str, ...] | None  # None: every collection
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scope": self.scope,
            "collections": list(self.collections) if self.collections is not None else None,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


def validate_new_key(
    name: str, scope: str, collections: Sequence[str] | None
) -> tuple[str, Scope, tuple[str, ...] | None]:
    if not NAME_PATTERN.fullmatch(name):
        raise ClipFilterError(
            "invalid_key_name",
            f"Invalid key name {name!r}.",
            422,
            fix="Use 1-64 letters, digits, '_', '.', '@' or '-'.",
        )
    if scope not in SCOPES:
        raise ClipFilterError("invalid_scope", f"Unknown scope {scope!r}.", 422, fix="Use read, write or admin.")
    limited = None
    if collections:
        for collection in collections:
            if not COLLECTION_NAME.fullmatch(collection) or set(collection) == {"."}:
                raise ClipFilterError("invalid_name", f"Invalid collection name {collection!r}.", 422)
        limited = tuple(dict.fromkeys(collections))
    return name, scope, limited  # type: ignore[return-value]


def key_not_found(id_or_name: str) -> ClipFilterError:
    return ClipFilterError(
        "key_not_found", f"No active key with id or name {id_or_name!r}.", 404, fix="See `clip-filter keys list`."
    )


class KeyStore(Protocol):
    """Where keys live. Implementations: `auth.sqlite_store.SqliteKeyStore` (a file in the data dir) and
    `auth.postgres_store.PostgresKeyStore` (the CLIP_FILTER_DATABASE_URL database, shared by replicas);
    `auth.open_key_store(settings)` picks one."""

    # Whether a lookup waits on the network (then the HTTP layer runs it in a worker thread, off the event loop).
    lookup_blocks: bool

    def create(self, name: str, scope: Scope, collections: Sequence[str] | None = None) -> tuple[ApiKey, str]:
        """A new key and its secret (the only time the secret exists outside the client)."""
        ...

    def register(self, secret: str, name: str, scope: Scope) -> ApiKey:
        """Store a key whose secret the operator chose (the bootstrap key); idempotent for the same secret."""
        ...

    def lookup(self, secret: str) -> ApiKey | None:
        """The active key with this secret, or None (unknown or revoked)."""
        ...

    def list(self, include_revoked: bool = False) -> list[ApiKey]: ...

    def revoke(self, id_or_name: str) -> builtins.list[ApiKey]:  # `list` is the method above
        """Revoke the key with this id, or every active key with this name; returns those revoked."""
        ...

    def count_active(self) -> int: ...

    def close(self) -> None: ...
