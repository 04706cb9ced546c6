"""The collections store: SQLite (WAL) as the source of truth, originals as files beside it.

Durability rules
- `journal_mode=WAL`, `synchronous=FULL`: every COMMIT fsyncs the WAL before it returns, so a commit
  that was acknowledged survives kill -9 *and* an OS crash or power loss. (NORMAL+WAL would survive
  kill -9 too, but may lose the last commits on power loss.) Writes are batched (one transaction per
  upload request or ingest batch), so the one fsync per commit is cheap.
- An item row holds its embedding, so row + vector are committed together; there is never a vector
  without an item or an item without a vector.
- Originals are files written atomically (temp file, fsync, rename, fsync of the folder) *before* the
  transaction that references them. Every file name carries a random token, so no two items ever share
  a file and deleting one never races with adding the same content again. A crash between the file
  and the commit leaves an unreferenced file, which `collect_garbage` removes at server startup.
- Job progress (done/added/duplicates/failed) is updated in the same transaction as the items it
  counts, so a resumed job continues exactly where the last commit left it.

Thread safety: reads use one connection per thread; all writes go through one lock and one
connection (SQLite serialises writers anyway; the lock avoids SQLITE_BUSY inside one process).
Other processes (the CLI while a server runs) are handled by SQLite's locking and `busy_timeout`,
and each collection carries a `version` that every write bumps, so a server notices changes made
by others and reloads its in-memory index.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from clip_filter.core.errors import ClipFilterError

SCHEMA_VERSION = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_METADATA_BYTES = 64 * 1024
MAX_STORED_FAILURES = 1000  # per job; the counts stay exact beyond it

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


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---- errors ----------------------------------------------------------------------------------------------
def collection_not_found(name: str) -> ClipFilterError:
    return ClipFilterError("collection_not_found", f"Collection {name!r} does not exist.", 404, collection=name)


def item_not_found(name: str, item_id: int) -> ClipFilterError:
    return ClipFilterError("item_not_found", f"Collection {name!r} has no item {item_id}.", 404, item_id=item_id)


def job_not_found(job_id: str) -> ClipFilterError:
    return ClipFilterError("job_not_found", f"There is no job {job_id!r}.", 404, job_id=job_id)


class ModelMismatchError(ClipFilterError):
    """The collection's vectors come from another model than the one asked to add or search (409)."""

    def __init__(self, name: str, recorded: tuple[str, str, int], current: tuple[str, str, int]) -> None:
        fix = f"clip-filter reindex {name}"
        super().__init__(
            "model_mismatch",
            f"Collection {name!r} was indexed with {recorded[0]} ({recorded[1]}, dim {recorded[2]}), but the "
            f"current model is {current[0]} ({current[1]}, dim {current[2]}); their embeddings cannot be "
            f"compared. Run `{fix}` to re-embed the collection with the current model, or run the server "
            f"with CLIP_MODEL={recorded[0]} CLIP_PRETRAINED={recorded[1]}.",
            409,
            collection=name,
            collection_model={"name": recorded[0], "pretrained": recorded[1], "dim": recorded[2]},
            current_model={"name": current[0], "pretrained": current[1], "dim": current[2]},
            fix=fix,
        )


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or set(name) == {"."}:
        raise ClipFilterError(
            "invalid_collection_name",
            "A collection name is 1-64 characters of letters, digits, '_', '.' and '-' (not only dots).",
            422,
            name=name if isinstance(name, str) else None,
        )
    return name


def validate_metadata(value: Any, where: str = "metadata") -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ClipFilterError("invalid_metadata", f"`{where}` must be a JSON object.", 422)
    try:
        # ValueError covers NaN/Infinity and (UnicodeEncodeError) lone surrogates SQLite cannot store.
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ClipFilterError("invalid_metadata", f"`{where}` is not valid JSON: {exc}", 422) from exc
    if len(encoded) > MAX_METADATA_BYTES:
        raise ClipFilterError(
            "metadata_too_large", f"`{where}` is over {MAX_METADATA_BYTES} bytes of JSON.", 413, limit=MAX_METADATA_BYTES
        )
    return value


def validate_filters(filters: Any) -> dict[str, Any]:
    """Metadata equality filters: {key: scalar}. Keys become SQLite JSON paths, so quotes are refused."""
    if filters is None:
        return {}
    if not isinstance(filters, dict):
        raise ClipFilterError("invalid_filters", "`filters` must be a JSON object of {key: value}.", 422)
    for key, value in filters.items():
        if not key or '"' in key or "\\" in key or len(key) > 256:
            raise ClipFilterError(
                "invalid_filters", f"Filter key {key!r} is not allowed (1-256 characters, no quotes or backslashes).",
                422,
            )
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ClipFilterError(
                "invalid_filters", f"Filter {key!r} must be a string, number, boolean or null (equality only).", 422
            )
        if isinstance(value, float) and not np.isfinite(value):
            raise ClipFilterError("invalid_filters", f"Filter {key!r} must be a finite number.", 422)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            raise ClipFilterError("invalid_filters", f"Filter {key!r} is out of the 64-bit integer range.", 422)
        try:
            (key + (value if isinstance(value, str) else "")).encode("utf-8")
        except UnicodeEncodeError:
            raise ClipFilterError("invalid_filters", "Filters must be valid Unicode text.", 422) from None
    return filters


# ---- records ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CollectionRecord:
    id: int
    name: str
    description: str | None
    model: str | None
    pretrained: str | None
    dim: int | None
    item_count: int
    image_count: int
    text_count: int
    version: int
    created_at: str
    updated_at: str

    def check_model(self, model: str, pretrained: str, dim: int) -> None:
        """Raise 409 model_mismatch unless the collection is empty or was embedded with this model."""
        if self.item_count == 0 or self.model is None:
            return
        if (self.model, self.pretrained, self.dim) != (model, pretrained, dim):
            raise ModelMismatchError(self.name, (self.model, self.pretrained or "", self.dim or 0), (model, pretrained, dim))


@dataclass(frozen=True)
class ItemRecord:
    id: int
    collection_id: int
    kind: str
    filename: str | None
    mimetype: str
    size: int
    sha256: str
    metadata: dict[str, Any]
    truncated: bool
    text: str | None
    original_path: str | None
    width: int | None
    height: int | None
    created_at: str


@dataclass
class NewItem:
    kind: str
    filename: str | None
    mimetype: str
    size: int
    sha256: str
    metadata: dict[str, Any]
    embedding: np.ndarray
    truncated: bool = False
    text: str | None = None
    original_path: str | None = None  # relative to the data dir
    width: int | None = None
    height: int | None = None


@dataclass
class JobProgress:
    """Counts to add to a job in the same transaction as the items they describe."""

    job_id: str
    done: int = 0
    added: int = 0
    duplicates: int = 0
    failed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Change:
    """What a committed write did to one collection's vectors; the in-memory index applies it."""

    collection_id: int
    version: int
    added_ids: list[int] = field(default_factory=list)
    added_vectors: list[np.ndarray] = field(default_factory=list)
    added_kinds: list[str] = field(default_factory=list)
    removed_ids: list[int] = field(default_factory=list)
    reset: bool = False  # the vectors changed wholesale (reindex, deleted collection): reload


@dataclass
class JobRecord:
    id: str
    collection_id: int | None
    collection: str
    source: str
    path: str | None
    state: str
    total: int
    done: int
    added: int
    duplicates: int
    failed: int
    failures: list[dict[str, Any]]
    error: dict[str, Any] | None
    attempts: int
    created_at: str
    updated_at: str

    def to_dict(self) -> dict[str, Any]:
        out = {
            "id": self.id, "job_id": self.id, "collection": self.collection, "state": self.state,
            "done": self.done, "total": self.total, "added": self.added, "duplicates": self.duplicates,
            "failed": self.failed, "failures": self.failures, "created_at": self.created_at,
            "updated_at": self.updated_at, "source": self.source,
            "restarts": self.attempts,  # how often a crash interrupted it (it was resumed each time)
        }
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class JobFile:
    seq: int
    filename: str | None
    path: str
    metadata: dict[str, Any]
    content_type: str | None = None


class CollectionStore(Protocol):
    """What the rest of the package needs from storage (SqliteCollectionStore implements it)."""

    data_dir: Path

    def create_collection(self, name: str, description: str | None, model: tuple[str, str, int] | None) -> CollectionRecord: ...
    def get_collection(self, name: str) -> CollectionRecord: ...
    def list_collections(self) -> list[CollectionRecord]: ...
    def delete_collection(self, name: str) -> None: ...
    def known_hashes(self, collection_id: int, hashes: list[str]) -> dict[str, int]: ...
    def add_items(self, collection_id: int, items: list[NewItem], model: tuple[str, str, int] | None,
                  progress: JobProgress | None = None) -> list[tuple[str, int]]: ...
    def get_item(self, collection: CollectionRecord, item_id: int) -> ItemRecord: ...
    def list_items(self, collection_id: int, offset: int, limit: int) -> tuple[list[ItemRecord], int]: ...
    def update_item(self, collection: CollectionRecord, item_id: int, metadata: dict | None, filename: str | None) -> ItemRecord: ...
    def delete_item(self, collection: CollectionRecord, item_id: int) -> None: ...
    def load_vectors(self, collection_id: int) -> tuple[int, np.ndarray, np.ndarray, list[str]]: ...
    def close(self) -> None: ...


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: folders cannot be opened; the rename is what we can do there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _ensure_dir(path: Path) -> None:
    """mkdir -p, fsyncing the parent of each folder we create (a new folder is durable only then)."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            pass
        _fsync_dir(folder.parent)


def write_file_atomic(path: Path, data: bytes, sync_dir: bool = True) -> None:
    """Write `data` to `path` so that after a crash the path holds either nothing or all of it."""
    _ensure_dir(path.parent)
    tmp = path.parent / f".tmp-{secrets.token_hex(8)}"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    if sync_dir:
        _fsync_dir(path.parent)


class SqliteCollectionStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        _ensure_dir(self.data_dir)
        self.db_path = self.data_dir / "collections.sqlite3"
        self.originals_dir = self.data_dir / "originals"
        self.thumbnails_dir = self.data_dir / "thumbnails"
        self.jobs_dir = self.data_dir / "jobs"
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._listeners: list[Callable[[Change], None]] = []
        self._queued: list[Change] = []  # changes of the open transaction, announced after its COMMIT
        self._closed = False
        self._writer = self._connect()
        with self._write_lock:
            self._writer.executescript(SCHEMA)
            self._writer.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    # ---- connections ---------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise ClipFilterError("store_closed", "The collections store is closed.", 503)
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot across several SELECTs."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            if self._closed:
                raise ClipFilterError("store_closed", "The collections store is closed.", 503)
            conn = self._writer
            self._queued = []
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                self._queued = []
                raise
            conn.execute("COMMIT")
            changes, self._queued = self._queued, []
            # Still under the write lock: listeners see changes exactly in commit order.
            for change in changes:
                for listener in self._listeners:
                    listener(change)

    @contextmanager
    def write_barrier(self) -> Iterator[None]:
        """Wait until no write of this process is between its COMMIT and its announcement."""
        with self._write_lock:
            yield

    def add_listener(self, listener: Callable[[Change], None]) -> None:
        """Called after each commit that bumps a collection's version, under the write lock."""
        self._listeners.append(listener)

    def _bump_version(self, conn: sqlite3.Connection, collection_id: int, change: Change | None = None) -> int:
        """Every write to a collection bumps its version (map cache, other processes) and is announced."""
        conn.execute(
            "UPDATE collections SET version = version + 1, updated_at = ? WHERE id = ?", (utc_now(), collection_id)
        )
        version = conn.execute("SELECT version FROM collections WHERE id = ?", (collection_id,)).fetchone()[0]
        change = change or Change(collection_id, version)
        change.version = version
        self._queued.append(change)
        return version

    def close(self) -> None:
        with self._write_lock:
            self._closed = True
            with self._connections_lock:
                for conn in self._connections:
                    try:
                        conn.close()
                    except sqlite3.Error:
                        pass
                self._connections.clear()

    # ---- collections ---------------------------------------------------------------------------------
    @staticmethod
    def _collection(row: sqlite3.Row) -> CollectionRecord:
        return CollectionRecord(**{key: row[key] for key in row.keys()})

    def create_collection(
        self, name: str, description: str | None = None, model: tuple[str, str, int] | None = None
    ) -> CollectionRecord:
        validate_name(name)
        now = utc_now()
        model_name, pretrained, dim = model if model else (None, None, None)
        with self._transaction() as conn:
            try:
                conn.execute(
                    "INSERT INTO collections (name, description, model, pretrained, dim, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, description, model_name, pretrained, dim, now, now),
                )
            except sqlite3.IntegrityError:
                raise ClipFilterError(
                    "collection_exists", f"Collection {name!r} already exists.", 409, collection=name
                ) from None
            row = conn.execute("SELECT * FROM collections WHERE name = ?", (name,)).fetchone()
        return self._collection(row)

    def get_collection(self, name: str) -> CollectionRecord:
        row = self._reader().execute("SELECT * FROM collections WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise collection_not_found(name)
        return self._collection(row)

    def get_collection_by_id(self, collection_id: int) -> CollectionRecord | None:
        row = self._reader().execute("SELECT * FROM collections WHERE id = ?", (collection_id,)).fetchone()
        return self._collection(row) if row else None

    def collection_version(self, collection_id: int) -> int | None:
        row = self._reader().execute("SELECT version FROM collections WHERE id = ?", (collection_id,)).fetchone()
        return row[0] if row else None

    def list_collections(self) -> list[CollectionRecord]:
        rows = self._reader().execute("SELECT * FROM collections ORDER BY name").fetchall()
        return [self._collection(row) for row in rows]

    def delete_collection(self, name: str) -> None:
        with self._transaction() as conn:
            row = conn.execute("SELECT id FROM collections WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise collection_not_found(name)
            collection_id = row[0]
            conn.execute("DELETE FROM collections WHERE id = ?", (collection_id,))
            conn.execute(
                "UPDATE jobs SET state = 'failed', error = ?, updated_at = ? "
                "WHERE collection_id = ? AND state IN ('queued', 'running')",
                (json.dumps({"code": "collection_not_found", "message": "The collection was deleted."}), utc_now(),
                 collection_id),
            )
            self._queued.append(Change(collection_id, -1, reset=True))
        # After the commit: a crash here leaves folders that collect_garbage removes.
        shutil.rmtree(self.originals_dir / str(collection_id), ignore_errors=True)
        shutil.rmtree(self.thumbnails_dir / str(collection_id), ignore_errors=True)

    def update_collection(self, name: str, description: str | None) -> CollectionRecord:
        with self._transaction() as conn:
            row = conn.execute("SELECT id FROM collections WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise collection_not_found(name)
            conn.execute("UPDATE collections SET description = ? WHERE id = ?", (description, row[0]))
            self._bump_version(conn, row[0])
        return self.get_collection(name)

    # ---- originals -----------------------------------------------------------------------------------
    def write_original(self, collection_id: int, sha256: str, extension: str, data: bytes) -> str:
        """Store an original atomically; returns its path relative to the data dir (unique per call)."""
        relative = Path("originals", str(collection_id), sha256[:2], f"{sha256}-{secrets.token_hex(4)}{extension}")
        write_file_atomic(self.data_dir / relative, data)
        return relative.as_posix()

    def original_file(self, item: ItemRecord) -> Path | None:
        return self.data_dir / item.original_path if item.original_path else None

    def remove_files(self, relative_paths: list[str | None]) -> None:
        for relative in relative_paths:
            if relative:
                try:
                    (self.data_dir / relative).unlink()
                except FileNotFoundError:
                    pass

    def thumbnail_path(self, item: ItemRecord, size: int) -> Path:
        return self.thumbnails_dir / str(item.collection_id) / f"{item.id}-{size}.jpg"

    # ---- items ---------------------------------------------------------------------------------------
    @staticmethod
    def _item(row: sqlite3.Row) -> ItemRecord:
        return ItemRecord(
            id=row["id"], collection_id=row["collection_id"], kind=row["kind"], filename=row["filename"],
            mimetype=row["mimetype"], size=row["size"], sha256=row["sha256"], metadata=json.loads(row["metadata"]),
            truncated=bool(row["truncated"]), text=row["text"], original_path=row["original_path"],
            width=row["width"], height=row["height"], created_at=row["created_at"],
        )

    def known_hashes(self, collection_id: int, hashes: list[str]) -> dict[str, int]:
        """sha256 -> item id for the given hashes already in the collection."""
        found: dict[str, int] = {}
        conn = self._reader()
        unique = list(dict.fromkeys(hashes))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                f"SELECT sha256, id FROM items WHERE collection_id = ? AND sha256 IN ({marks})", (collection_id, *chunk)
            ):
                found[row[0]] = row[1]
        return found

    def add_items(
        self,
        collection_id: int,
        items: list[NewItem],
        model: tuple[str, str, int] | None,
        progress: JobProgress | None = None,
    ) -> list[tuple[str, int]]:
        """Insert items in one transaction: [("added" | "duplicate", item id)] in input order.

        `model` (name, pretrained, dim) is checked against the collection inside the transaction, and
        recorded when the collection is empty. Originals of duplicates and of a failed transaction are
        removed afterwards (their file names are unique, nobody else uses them).
        """
        results: list[tuple[str, int]] = []
        now = utc_now()
        try:
            with self._transaction() as conn:
                row = conn.execute("SELECT * FROM collections WHERE id = ?", (collection_id,)).fetchone()
                if row is None:
                    raise ClipFilterError("collection_not_found", "The collection was deleted.", 404)
                collection = self._collection(row)
                if items and model is not None:
                    collection.check_model(*model)
                    if collection.item_count == 0 or collection.model is None:
                        conn.execute(
                            "UPDATE collections SET model = ?, pretrained = ?, dim = ? WHERE id = ?",
                            (model[0], model[1], model[2], collection_id),
                        )
                change = Change(collection_id, 0)
                counts = {"image": 0, "text": 0}
                for item in items:
                    embedding = np.ascontiguousarray(item.embedding, np.float32)
                    cursor = conn.execute(
                        "INSERT INTO items (collection_id, kind, filename, mimetype, size, sha256, metadata, truncated, "
                        "text, original_path, width, height, embedding, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (collection_id, sha256) DO NOTHING",
                        (collection_id, item.kind, item.filename, item.mimetype, item.size, item.sha256,
                         json.dumps(item.metadata, ensure_ascii=False), int(item.truncated), item.text,
                         item.original_path, item.width, item.height, embedding.tobytes(), now),
                    )
                    if cursor.rowcount == 1:
                        item_id = int(cursor.lastrowid)
                        results.append(("added", item_id))
                        counts[item.kind] += 1
                        change.added_ids.append(item_id)
                        change.added_vectors.append(embedding)
                        change.added_kinds.append(item.kind)
                    else:
                        existing = conn.execute(
                            "SELECT id FROM items WHERE collection_id = ? AND sha256 = ?", (collection_id, item.sha256)
                        ).fetchone()
                        results.append(("duplicate", int(existing[0])))
                added = counts["image"] + counts["text"]
                if added:
                    conn.execute(
                        "UPDATE collections SET item_count = item_count + ?, image_count = image_count + ?, "
                        "text_count = text_count + ? WHERE id = ?",
                        (added, counts["image"], counts["text"], collection_id),
                    )
                    self._bump_version(conn, collection_id, change)
                if progress is not None:
                    # The job's counts move in the same transaction as the rows they count.
                    progress.added += added
                    progress.duplicates += sum(1 for status, _ in results if status == "duplicate")
                    self._add_progress(conn, progress, now)
        except BaseException:
            self.remove_files([item.original_path for item in items])
            raise
        self.remove_files([item.original_path for item, (status, _) in zip(items, results) if status == "duplicate"])
        return results

    def get_item(self, collection: CollectionRecord, item_id: int) -> ItemRecord:
        row = self._reader().execute(
            f"SELECT {ITEM_COLUMNS} FROM items WHERE id = ? AND collection_id = ?", (item_id, collection.id)
        ).fetchone()
        if row is None:
            raise item_not_found(collection.name, item_id)
        return self._item(row)

    def list_items(self, collection_id: int, offset: int, limit: int) -> tuple[list[ItemRecord], int]:
        with self._read() as conn:
            total = conn.execute("SELECT item_count FROM collections WHERE id = ?", (collection_id,)).fetchone()
            rows = conn.execute(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE collection_id = ? ORDER BY id LIMIT ? OFFSET ?",
                (collection_id, limit, offset),
            ).fetchall()
        return [self._item(row) for row in rows], (total[0] if total else 0)

    def items_by_ids(self, collection_id: int, ids: list[int]) -> dict[int, ItemRecord]:
        out: dict[int, ItemRecord] = {}
        conn = self._reader()
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE collection_id = ? AND id IN ({marks})", (collection_id, *chunk)
            ):
                out[row["id"]] = self._item(row)
        return out

    def iter_items(self, collection_id: int, batch: int = 500) -> Iterator[list[ItemRecord]]:
        """All items in id order, in batches (keyset pagination: stable while others write)."""
        last = -1
        while True:
            rows = self._reader().execute(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE collection_id = ? AND id > ? ORDER BY id LIMIT ?",
                (collection_id, last, batch),
            ).fetchall()
            if not rows:
                return
            yield [self._item(row) for row in rows]
            last = rows[-1]["id"]

    def items_with_vectors(self, collection_id: int, batch: int = 1000) -> Iterator[tuple[list[ItemRecord], np.ndarray]]:
        """(items, their embeddings) in id order, in batches (export)."""
        for items in self.iter_items(collection_id, batch):
            ids = [item.id for item in items]
            marks = ",".join("?" * len(ids))
            blobs = dict(self._reader().execute(f"SELECT id, embedding FROM items WHERE id IN ({marks})", ids).fetchall())
            present = [item for item in items if item.id in blobs]
            vectors = np.stack([np.frombuffer(blobs[item.id], np.float32) for item in present]) if present else None
            yield present, vectors

    def update_item(
        self, collection: CollectionRecord, item_id: int, metadata: dict | None, filename: str | None
    ) -> ItemRecord:
        with self._transaction() as conn:
            sets, params = [], []
            if metadata is not None:
                sets.append("metadata = ?")
                params.append(json.dumps(metadata, ensure_ascii=False))
            if filename is not None:
                sets.append("filename = ?")
                params.append(filename)
            if sets:
                cursor = conn.execute(
                    f"UPDATE items SET {', '.join(sets)} WHERE id = ? AND collection_id = ?", (*params, item_id, collection.id)
                )
                if cursor.rowcount == 0:
                    raise item_not_found(collection.name, item_id)
                self._bump_version(conn, collection.id)
        return self.get_item(collection, item_id)

    def delete_item(self, collection: CollectionRecord, item_id: int) -> None:
        if not self.delete_items(collection, [item_id]):
            raise item_not_found(collection.name, item_id)

    def delete_items(self, collection: CollectionRecord, item_ids: list[int]) -> int:
        """Delete items (rows, vectors, originals, thumbnails); returns how many existed."""
        removed: list[sqlite3.Row] = []
        with self._transaction() as conn:
            for item_id in dict.fromkeys(int(i) for i in item_ids):
                row = conn.execute(
                    "SELECT id, kind, original_path FROM items WHERE id = ? AND collection_id = ?", (item_id, collection.id)
                ).fetchone()
                if row is not None:
                    conn.execute("DELETE FROM items WHERE id = ?", (item_id,))
                    removed.append(row)
            if removed:
                images = sum(1 for row in removed if row["kind"] == "image")
                conn.execute(
                    "UPDATE collections SET item_count = item_count - ?, image_count = image_count - ?, "
                    "text_count = text_count - ? WHERE id = ?",
                    (len(removed), images, len(removed) - images, collection.id),
                )
                self._bump_version(conn, collection.id, Change(collection.id, 0, removed_ids=[r["id"] for r in removed]))
        # The rows are gone for good: their files are no one else's (unique names).
        self.remove_files([row["original_path"] for row in removed])
        for row in removed:
            for thumbnail in (self.thumbnails_dir / str(collection.id)).glob(f"{row['id']}-*.jpg"):
                thumbnail.unlink(missing_ok=True)
        return len(removed)

    # ---- vectors -------------------------------------------------------------------------------------
    def load_vectors(self, collection_id: int) -> tuple[int, np.ndarray, np.ndarray, list[str]]:
        """(version, ids, vectors, kinds) of a collection, read in one consistent snapshot."""
        with self._read() as conn:
            row = conn.execute("SELECT version, dim FROM collections WHERE id = ?", (collection_id,)).fetchone()
            if row is None:
                raise ClipFilterError("collection_not_found", "The collection was deleted.", 404)
            version, dim = row
            count = conn.execute("SELECT COUNT(*) FROM items WHERE collection_id = ?", (collection_id,)).fetchone()[0]
            ids = np.zeros(count, np.int64)
            vectors: np.ndarray | None = np.zeros((count, dim), np.float32) if dim else None
            kinds: list[str] = []
            cursor = conn.execute(
                "SELECT id, kind, embedding FROM items WHERE collection_id = ? ORDER BY id", (collection_id,)
            )
            for row_index, (item_id, kind, blob) in enumerate(cursor):
                vector = np.frombuffer(blob, np.float32)
                if vectors is None:
                    vectors = np.zeros((count, vector.size), np.float32)
                ids[row_index] = item_id
                vectors[row_index] = vector
                kinds.append(kind)
        if vectors is None:
            vectors = np.zeros((0, 0), np.float32)
        return version, ids, vectors, kinds

    def get_vector(self, collection: CollectionRecord, item_id: int) -> np.ndarray:
        row = self._reader().execute(
            "SELECT embedding FROM items WHERE id = ? AND collection_id = ?", (item_id, collection.id)
        ).fetchone()
        if row is None:
            raise item_not_found(collection.name, item_id)
        return np.frombuffer(row[0], np.float32).copy()

    def replace_embeddings(
        self, collection_id: int, embeddings: dict[int, tuple[np.ndarray, bool]], model: tuple[str, str, int]
    ) -> tuple[bool, set[int]]:
        """Reindex commit: swap every item's vector and the recorded model in one transaction.

        Returns (committed, missing ids). When items were added meanwhile (ids not in `embeddings`),
        nothing is written and their ids come back, so the caller can embed them and try again.
        """
        with self._transaction() as conn:
            current = {row[0] for row in conn.execute("SELECT id FROM items WHERE collection_id = ?", (collection_id,))}
            missing = current - set(embeddings)
            if missing:
                return False, missing
            conn.executemany(
                "UPDATE items SET embedding = ?, truncated = ? WHERE id = ? AND collection_id = ?",
                [(np.ascontiguousarray(vec, np.float32).tobytes(), int(trunc), item_id, collection_id)
                 for item_id, (vec, trunc) in embeddings.items() if item_id in current],
            )
            conn.execute(
                "UPDATE collections SET model = ?, pretrained = ?, dim = ? WHERE id = ?",
                (model[0], model[1], model[2], collection_id),
            )
            self._bump_version(conn, collection_id, Change(collection_id, 0, reset=True))
        return True, set()

    def filter_ids(self, collection_id: int, filters: dict[str, Any]) -> np.ndarray:
        """Ids of items whose metadata equals every filter value (top-level keys).

        A string value also matches a number or boolean written the same way, since form fields and
        query strings only carry strings ("year": "2023" finds {"year": 2023}).
        """
        validate_filters(filters)
        clauses, params = [], []
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
        where = " AND ".join(clauses) or "1"
        rows = self._reader().execute(
            f"SELECT id FROM items WHERE collection_id = ? AND {where} ORDER BY id", (collection_id, *params)
        ).fetchall()
        return np.asarray([row[0] for row in rows], np.int64)

    # ---- jobs ----------------------------------------------------------------------------------------
    @staticmethod
    def _job(row: sqlite3.Row) -> JobRecord:
        return JobRecord(
            id=row["id"], collection_id=row["collection_id"], collection=row["collection"], source=row["source"],
            path=row["path"], state=row["state"], total=row["total"], done=row["done"], added=row["added"],
            duplicates=row["duplicates"], failed=row["failed"], failures=json.loads(row["failures"]),
            error=json.loads(row["error"]) if row["error"] else None, attempts=row["attempts"],
            created_at=row["created_at"], updated_at=row["updated_at"],
        )

    def create_job(
        self, job_id: str, collection: CollectionRecord, source: str, path: str | None, files: list[JobFile],
        failures: list[dict[str, Any]] | None = None,
    ) -> JobRecord:
        """A queued job and its file list, in one transaction (files already spooled when uploaded)."""
        now = utc_now()
        failures = failures or []
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, collection_id, collection, source, path, state, total, failed, failures, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, collection.id, collection.name, source, path, len(files) + len(failures), len(failures),
                 json.dumps(failures[:MAX_STORED_FAILURES]), now, now),
            )
            conn.executemany(
                "INSERT INTO job_files (job_id, seq, filename, path, content_type, metadata) VALUES (?, ?, ?, ?, ?, ?)",
                [(job_id, f.seq, f.filename, f.path, f.content_type, json.dumps(f.metadata, ensure_ascii=False))
                 for f in files],
            )
            if failures:  # files refused up front count as done
                conn.execute("UPDATE jobs SET done = ? WHERE id = ?", (len(failures), job_id))
        return self.get_job(job_id)

    def get_job(self, job_id: str) -> JobRecord:
        row = self._reader().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise job_not_found(job_id)
        return self._job(row)

    def job_files(self, job_id: str, after_seq: int, limit: int) -> list[JobFile]:
        rows = self._reader().execute(
            "SELECT seq, filename, path, metadata, content_type FROM job_files WHERE job_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (job_id, after_seq, limit),
        ).fetchall()
        return [JobFile(row[0], row[1], row[2], json.loads(row[3]), row[4]) for row in rows]

    def job_done_seq(self, job_id: str) -> int:
        """The seq of the last file a job has committed (files are numbered 0.. in order)."""
        job = self.get_job(job_id)
        failed_up_front = job.total - self._reader().execute(
            "SELECT COUNT(*) FROM job_files WHERE job_id = ?", (job_id,)
        ).fetchone()[0]
        return job.done - failed_up_front - 1

    def set_job_state(self, job_id: str, state: str, error: dict[str, Any] | None = None, crashed: bool = False) -> None:
        """`crashed`: the job was found running at startup, i.e. a crash interrupted it (counted in attempts)."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE jobs SET state = ?, error = COALESCE(?, error), attempts = attempts + ?, updated_at = ? WHERE id = ?",
                (state, json.dumps(error) if error else None, int(crashed), utc_now(), job_id),
            )

    def _add_progress(self, conn: sqlite3.Connection, progress: JobProgress, now: str) -> None:
        row = conn.execute("SELECT failures FROM jobs WHERE id = ?", (progress.job_id,)).fetchone()
        failures = json.loads(row[0]) if row else []
        room = MAX_STORED_FAILURES - len(failures)
        if progress.failures and room > 0:
            failures.extend(progress.failures[:room])
        conn.execute(
            "UPDATE jobs SET done = done + ?, added = added + ?, duplicates = duplicates + ?, failed = failed + ?, "
            "failures = ?, updated_at = ? WHERE id = ?",
            (progress.done, progress.added, progress.duplicates, progress.failed, json.dumps(failures), now,
             progress.job_id),
        )

    def record_progress(self, progress: JobProgress) -> None:
        """Progress of files that produced no item rows (all failed or all duplicates)."""
        with self._transaction() as conn:
            self._add_progress(conn, progress, utc_now())

    def unfinished_jobs(self) -> list[JobRecord]:
        rows = self._reader().execute(
            "SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_at"
        ).fetchall()
        return [self._job(row) for row in rows]

    # ---- housekeeping --------------------------------------------------------------------------------
    def collect_garbage(self, min_age_s: float = 3600.0) -> dict[str, int]:
        """Remove files no row references: originals and thumbnails of crashed writes or deleted rows.

        Only files older than `min_age_s` go: another process (the CLI) may have written an original
        whose transaction has not committed yet.
        """
        removed = {"originals": 0, "thumbnails": 0, "temp": 0, "job_spools": 0}
        cutoff = time.time() - min_age_s
        conn = self._reader()
        collection_ids = {row[0] for row in conn.execute("SELECT id FROM collections")}
        referenced = {row[0] for row in conn.execute("SELECT original_path FROM items WHERE original_path IS NOT NULL")}
        item_ids = None

        def old(path: Path) -> bool:
            try:
                return path.stat().st_mtime < cutoff
            except FileNotFoundError:
                return False

        if self.originals_dir.is_dir():
            for path in self.originals_dir.rglob("*"):
                if not path.is_file() or not old(path):
                    continue
                relative = path.relative_to(self.data_dir).as_posix()
                if path.name.startswith(".tmp-"):
                    path.unlink(missing_ok=True)
                    removed["temp"] += 1
                elif relative not in referenced:
                    path.unlink(missing_ok=True)
                    removed["originals"] += 1
        if self.thumbnails_dir.is_dir():
            for folder in self.thumbnails_dir.iterdir():
                if folder.is_dir() and folder.name.isdigit() and int(folder.name) not in collection_ids:
                    shutil.rmtree(folder, ignore_errors=True)
                    continue
                for path in folder.glob("*") if folder.is_dir() else []:
                    if path.name.startswith(".tmp-") and old(path):
                        path.unlink(missing_ok=True)
                        removed["temp"] += 1
                        continue
                    if item_ids is None:
                        item_ids = {row[0] for row in conn.execute("SELECT id FROM items")}
                    head = path.name.split("-", 1)[0]
                    if head.isdigit() and int(head) not in item_ids:
                        path.unlink(missing_ok=True)
                        removed["thumbnails"] += 1
        if self.jobs_dir.is_dir():
            live_jobs = {row[0] for row in conn.execute("SELECT id FROM jobs WHERE state IN ('queued', 'running')")}
            for folder in self.jobs_dir.iterdir():
                if folder.name not in live_jobs and old(folder):
                    shutil.rmtree(folder, ignore_errors=True)
                    removed["job_spools"] += 1
        # Empty per-collection folders of deleted collections.
        if self.originals_dir.is_dir():
            for folder in self.originals_dir.iterdir():
                if folder.is_dir() and folder.name.isdigit() and int(folder.name) not in collection_ids:
                    shutil.rmtree(folder, ignore_errors=True)
        return removed
