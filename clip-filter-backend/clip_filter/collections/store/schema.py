"""The SQLite schema of the collections store (the PostgreSQL backend keeps the same tables and columns)."""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT,
    model TEXT,
    pretrained TEXT,
    dim INTEGER,
    item_count INTEGER NOT NULL DEFAULT 0,
    image_count INTEGER NOT NULL DEFAULT 0,
    text_count INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('image', 'text')),
    filename TEXT,
    mimetype TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    truncated INTEGER NOT NULL DEFAULT 0,
    text TEXT,
    original_path TEXT,
    width INTEGER,
    height INTEGER,
    embedding BLOB NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (collection_id, sha256)
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    collection_id INTEGER,
    collection TEXT NOT NULL,
    source TEXT NOT NULL,
    path TEXT,
    state TEXT NOT NULL,
    total INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    added INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    failures TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_files (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    filename TEXT,
    path TEXT NOT NULL,
    content_type TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (job_id, seq)
);
"""

ITEM_COLUMNS = (
    "id, collection_id, kind, filename, mimetype, size, sha256, metadata, truncated, text, original_path, "
    "width, height, created_at"
)


def metadata_filter_sql(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    """A WHERE clause (and its parameters) for metadata equality filters on SQLite's JSON functions.

    A string value also matches a number or boolean written the same way, since form fields and
    query strings only carry strings ("year": "2023" finds {"year": 2023}). Keys are validated
    (no quotes or backslashes) before they become JSON paths.
    """
    clauses: list[str] = []
    params: list[Any] = []
    for key, value in filters.items():
        path = '$."' + key + '"'
        if value is None:
            clauses.append("json_type(metadata, ?) = 'null'")
            params.append(path)
        elif isinstance(value, bool):
            clauses.append("json_type(metadata, ?) = ?")
            params += [path, "true" if value else "false"]
        elif isinstance(value, (int, float)):
            clauses.append("(json_type(metadata, ?) IN ('integer', 'real') AND json_extract(metadata, ?) = ?)")
            params += [path, path, value]
        else:
            clauses.append(
                "((json_type(metadata, ?) = 'text' AND json_extract(metadata, ?) = ?) OR "
                "(json_type(metadata, ?) IN ('integer', 'real') AND CAST(json_extract(metadata, ?) AS TEXT) = ?) OR "
                "(json_type(metadata, ?) IN ('true', 'false') AND json_type(metadata, ?) = ?))"
            )
            params += [path, path, value, path, path, value, path, path, value]
    return " AND ".join(clauses) or "1", params
