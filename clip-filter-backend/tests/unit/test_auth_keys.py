"""API keys and the access rules, in-process: key store (SQLite and a real PostgreSQL, tests/pg.py), scopes per
route, Host and Origin rules, settings."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import pytest

from clip_filter.api.security import (
    StartupRefused,
    _same_origin,
    allowed_hosts,
    open_access_control,
    required_scope,
)
from clip_filter.auth import open_key_store
from clip_filter.auth.keys import hash_secret, scope_allows
from clip_filter.auth.postgres_store import PostgresKeyStore
from clip_filter.auth.sqlite_store import SqliteKeyStore
from clip_filter.core.config import Settings
from clip_filter.core.errors import ClipFilterError


@pytest.fixture(params=["sqlite", "postgres"])
def key_settings(request, tmp_path: Path):
    """Settings factory for the test's key backend: SQLite in the data dir, or a fresh PostgreSQL database."""
    extra = {"CLIP_FILTER_DATABASE_URL": request.getfixturevalue("pg_database")} if request.param == "postgres" else {}

    def make(**values) -> Settings:
        return Settings(CLIP_FILTER_DATA_DIR=tmp_path, **extra, **values)

    return make


@pytest.fixture
def key_store(key_settings):
    store = open_key_store(key_settings())
    yield store
    store.close()


def stored_hashes(store) -> list[str]:
    """The secret column as the database holds it (read around the store)."""
    if isinstance(store, SqliteKeyStore):
        rows = sqlite3.connect(store.path).execute("SELECT secret_sha256 FROM api_keys").fetchall()
    else:
        assert isinstance(store, PostgresKeyStore)
        with store._pool.connection() as conn:
            rows = conn.execute("SELECT secret_sha256 FROM api_keys").fetchall()
    return sorted(row[0] for row in rows)


def test_the_database_url_selects_the_postgres_key_store(key_settings, key_store):
    expected = PostgresKeyStore if key_settings().database_url else SqliteKeyStore
    assert type(key_store) is expected and key_store.lookup_blocks is (expected is PostgresKeyStore)


def test_keys_are_random_shown_once_and_stored_as_sha256_only(key_store):
    store = key_store
    key, secret = store.create("ci", "write", ["a", "b", "a"])
    other, other_secret = store.create("ci", "read")
    assert secret != other_secret and secret.startswith("cfk_") and len(secret) == 4 + 43
    assert key.collections == ("a", "b") and other.collections is None and key.id != other.id
    assert store.lookup(secret) == key and store.lookup(other_secret) == other and store.lookup(secret + "x") is None
    assert stored_hashes(store) == sorted(hashlib.sha256(s.encode()).hexdigest() for s in (secret, other_secret))
    assert hash_secret(secret) == hashlib.sha256(secret.encode()).hexdigest()
    assert store.count_active() == 2
    revoked = store.revoke("ci")  # by name: every active key with it
    assert [k.id for k in revoked] == [key.id, other.id] and all(k.revoked_at for k in revoked)
    assert store.lookup(secret) is None and store.count_active() == 0
    assert [k.id for k in store.list(include_revoked=True)] == [key.id, other.id] and store.list() == []
    with pytest.raises(ClipFilterError) as err:
        store.revoke("ci")
    assert err.value.code == "key_not_found"
    with pytest.raises(ClipFilterError) as err:
        store.revoke("no\x00such")
    assert err.value.code == "key_not_found"


def test_a_key_made_by_one_store_works_in_another_on_the_same_database_and_revokes_at_once(key_settings):
    """Two processes (the CLI and a server, or two replicas) on one key database: no cache between them."""
    first, second = open_key_store(key_settings()), open_key_store(key_settings())
    try:
        key, secret = first.create("shared", "read", ["photos"])
        assert second.lookup(secret) == key and [k.id for k in second.list()] == [key.id]
        assert [k.id for k in second.revoke(key.id)] == [key.id]
        assert first.lookup(secret) is None and first.count_active() == 0
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    ("name", "scope", "collections", "code"),
    [
        ("bad name", "read", None, "invalid_key_name"),
        ("", "read", None, "invalid_key_name"),
        ("nul\x00", "read", None, "invalid_key_name"),
        ("ok", "root", None, "invalid_scope"),
        ("ok", "read", ["c\n"], "invalid_name"),
        ("ok", "read", [".."], "invalid_name"),
    ],
)
def test_bad_new_keys_are_refused(key_store, name, scope, collections, code):
    with pytest.raises(ClipFilterError) as err:
        key_store.create(name, scope, collections)
    assert err.value.code == code and key_store.count_active() == 0


def test_bootstrap_key_registration_is_idempotent_and_respects_revocation(key_settings):
    secret = "b" * 40
    settings = key_settings(CLIP_FILTER_AUTH="keys", CLIP_FILTER_BOOTSTRAP_KEY=secret)
    first = open_access_control(settings)
    key = first.authenticate(secret)
    assert key is not None and key.scope == "admin" and key.name == "bootstrap"
    first.close()
    again = open_access_control(settings)
    assert again.authenticate(secret) == key and again.keys.count_active() == 1
    again.keys.revoke(key.id)
    again.close()
    with pytest.raises(StartupRefused):  # revoked stays revoked, and then no key is left
        open_access_control(settings)


def test_bootstrap_key_registered_at_once_by_many_processes_is_stored_once(key_settings):
    """Replicas starting together with the same bootstrap secret: one row (the unique hash + ON CONFLICT)."""
    secret = "c" * 40
    stores = [open_key_store(key_settings()) for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    keys, errors = [], []

    def register(store) -> None:
        barrier.wait()
        try:
            keys.append(store.register(secret, "bootstrap", "admin"))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == [] and len(keys) == len(stores) and len({key.id for key in keys}) == 1
        assert stored_hashes(stores[0]) == [hash_secret(secret)] and stores[0].count_active() == 1
    finally:
        for store in stores:
            store.close()


def test_postgres_key_store_on_an_unreachable_database_is_a_503(tmp_path: Path):
    with pytest.raises(ClipFilterError) as err:
        PostgresKeyStore("postgresql://nobody@127.0.0.1:1/none", pool_size=1)
    assert (err.value.code, err.value.status) == ("database_unavailable", 503)


def test_startup_refusals(tmp_path: Path):
    with pytest.raises(StartupRefused, match="keys create"):
        open_access_control(Settings(CLIP_FILTER_DATA_DIR=tmp_path, CLIP_FILTER_HOST="0.0.0.0"))
    with pytest.raises(StartupRefused, match="at least 32"):
        open_access_control(Settings(CLIP_FILTER_DATA_DIR=tmp_path, CLIP_FILTER_BOOTSTRAP_KEY="short"))
    with pytest.raises(StartupRefused, match="cannot be read"):
        open_access_control(Settings(CLIP_FILTER_DATA_DIR=tmp_path, CLIP_FILTER_BOOTSTRAP_KEY_FILE=tmp_path / "none"))
    for host, auth in (("127.0.0.1", "auto"), ("::1", "auto"), ("0.0.0.0", "off")):
        settings = Settings(CLIP_FILTER_DATA_DIR=tmp_path, CLIP_FILTER_HOST=host, CLIP_FILTER_AUTH=auth)
        open_access_control(settings).close()


@pytest.mark.parametrize(
    ("host", "auth", "required"),
    [
        ("127.0.0.1", "auto", False),
        ("127.9.9.9", "auto", False),
        ("::1", "auto", False),
        ("localhost", "auto", False),
        ("0.0.0.0", "auto", True),
        ("::", "auto", True),
        ("192.168.1.5", "auto", True),
        ("myhost", "auto", True),
        ("127.0.0.1", "keys", True),
        ("0.0.0.0", "off", False),
        ("127.0.0.1", "OFF", False),
    ],
)
def test_auth_required_resolves_auto_against_the_bind(host, auth, required):
    assert Settings(CLIP_FILTER_HOST=host, CLIP_FILTER_AUTH=auth).auth_required is required


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/health/ready", None),
        ("GET", "/api/health/live", None),
        ("GET", "/.well-known/ready", None),
        ("GET", "/ping", None),
        ("GET", "/info", "read"),
        ("HEAD", "/collections", "read"),
        ("POST", "/image_text_similarity_best_match", "read"),
        ("POST", "/embeddings/texts", "read"),
        ("POST", "/v1/embeddings", "read"),
        ("POST", "/predict", "read"),
        ("POST", "/vectorize", "read"),
        ("POST", "/collections/{name}/search", "read"),
        ("POST", "/api/collections/{name}/map/project", "read"),
        ("POST", "/collections", "write"),
        ("PATCH", "/collections/{name}", "write"),
        ("POST", "/collections/{name}/items", "write"),
        ("DELETE", "/collections/{name}/items/{item_id}", "write"),
        ("POST", "/collections/{name}/jobs", "write"),
        ("PUT", "/something/new", "write"),
        ("DELETE", "/collections/{name}", "admin"),
        ("POST", "/collections/{name}/reindex", "admin"),
        ("GET", "/keys", "admin"),
        ("DELETE", "/api/keys/{key_id}", "admin"),
    ],
)
def test_required_scope(method, path, scope):
    assert required_scope(method, path) == scope


def test_scope_order():
    assert scope_allows("admin", "read") and scope_allows("write", "write") and not scope_allows("read", "write")
    assert not scope_allows(None, "read") and not scope_allows("bogus", "read")


def test_default_allowed_hosts():
    names, anything = allowed_hosts(Settings(CLIP_FILTER_HOST="127.0.0.1"))
    assert not anything and names == {"localhost", "127.0.0.1", "::1"}
    names, anything = allowed_hosts(Settings(CLIP_FILTER_HOST="10.0.0.7", CLIP_FILTER_AUTH="off"))
    assert not anything and "10.0.0.7" in names
    assert allowed_hosts(Settings(CLIP_FILTER_HOST="0.0.0.0"))[1] is True  # keys required: any name
    assert allowed_hosts(Settings(CLIP_FILTER_HOST="0.0.0.0", CLIP_FILTER_AUTH="off")) == (
        frozenset({"localhost", "127.0.0.1", "::1"}),
        False,
    )
    names, anything = allowed_hosts(Settings(CLIP_FILTER_ALLOWED_HOSTS="clip.example.org:443, Other.example"))
    assert names == {"clip.example.org", "other.example"} and not anything
    assert allowed_hosts(Settings(CLIP_FILTER_ALLOWED_HOSTS="*"))[1] is True


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://127.0.0.1:5000", "127.0.0.1:5000", True),
        ("http://localhost", "localhost:80", True),
        ("https://clip.example.org", "clip.example.org", True),
        ("http://localhost:8080", "localhost:8080", True),
        ("http://127.0.0.1:5001", "127.0.0.1:5000", False),
        ("http://localhost:8080", "localhost", False),
        ("http://evil.example", "127.0.0.1:5000", False),
        ("null", "127.0.0.1:5000", False),
    ],
)
def test_same_origin(origin, host, same):
    assert _same_origin(origin, host) is same
