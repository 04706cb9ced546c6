"""API keys and the access rules, in-process: key store, scopes per route, Host and Origin rules, settings."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from clip_filter.api.security import (
    StartupRefused,
    _same_origin,
    allowed_hosts,
    open_access_control,
    required_scope,
)
from clip_filter.auth.keys import hash_secret, scope_allows
from clip_filter.auth.sqlite_store import SqliteKeyStore
from clip_filter.core.config import Settings
from clip_filter.core.errors import ClipFilterError


def test_keys_are_random_shown_once_and_stored_as_sha256_only(tmp_path: Path):
    store = SqliteKeyStore(tmp_path)
    key, secret = store.create("ci", "write", ["a", "b", "a"])
    other, other_secret = store.create("ci", "read")
    assert secret != other_secret and secret.startswith("cfk_") and len(secret) == 4 + 43
    assert key.collections == ("a", "b") and other.collections is None and key.id != other.id
    assert store.lookup(secret) == key and store.lookup(other_secret) == other and store.lookup(secret + "x") is None
    rows = sqlite3.connect(tmp_path / "keys.sqlite3").execute("SELECT secret_sha256 FROM api_keys").fetchall()
    assert sorted(r[0] for r in rows) == sorted(hashlib.sha256(s.encode()).hexdigest() for s in (secret, other_secret))
    assert hash_secret(secret) == hashlib.sha256(secret.encode()).hexdigest()
    assert store.count_active() == 2
    revoked = store.revoke("ci")  # by name: every active key with it
    assert {k.id for k in revoked} == {key.id, other.id}
    assert store.lookup(secret) is None and store.count_active() == 0
    assert [k.id for k in store.list(include_revoked=True)] == [key.id, other.id] and store.list() == []
    with pytest.raises(ClipFilterError) as err:
        store.revoke("ci")
    assert err.value.code == "key_not_found"
    store.close()


@pytest.mark.parametrize(
    ("name", "scope", "collections", "code"),
    [
        ("bad name", "read", None, "invalid_key_name"),
        ("", "read", None, "invalid_key_name"),
        ("ok", "root", None, "invalid_scope"),
        ("ok", "read", ["c\n"], "invalid_name"),
        ("ok", "read", [".."], "invalid_name"),
    ],
)
def test_bad_new_keys_are_refused(tmp_path: Path, name, scope, collections, code):
    store = SqliteKeyStore(tmp_path)
    with pytest.raises(ClipFilterError) as err:
        store.create(name, scope, collections)
    assert err.value.code == code and store.count_active() == 0


def test_bootstrap_key_registration_is_idempotent_and_respects_revocation(tmp_path: Path):
    secret = "b" * 40
    settings = Settings(CLIP_FILTER_DATA_DIR=tmp_path, CLIP_FILTER_AUTH="keys", CLIP_FILTER_BOOTSTRAP_KEY=secret)
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
