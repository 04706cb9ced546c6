"""The SQLite implementation of `CollectionStore`: SQLite (WAL) as the source of truth, originals as files beside it.

Durability rules
- `journal_mode=WAL`, `synchronous=FULL`: every COMMIT fsyncs the WAL before it returns, so a commit
  that was acknowledged survives kill -9 *and* an OS crash or power loss. (NORMAL+WAL would survive
  kill -9 too, but may lose the last commits on power loss.) Writes are batched (one transaction per
  upload request or ingest batch), so the one fsync per commit is cheap.
- An item row holds its embedding, so row + vector are committed together; there is never a vector
  without an item or an item without a vector.
- Originals are files (see `files.py`) written before the transaction that references them.
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
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from clip_filter.collections.errors import collection_not_found, item_not_found
from clip_filter.collections.store.commits import CommitState, announce, originals_until_commit
from clip_filter.collections.store.files import DataFiles
from clip_filter.collections.store.gc import collect_garbage
from clip_filter.collections.store.records import (
    Change,
    CollectionRecord,
    FileReferences,
    ItemRecord,
    JobProgress,
    NewItem,
    VectorSet,
    utc_now,
)
from clip_filter.collections.store.schema import ITEM_COLUMNS, SCHEMA, SCHEMA_VERSION, metadata_filter_sql
from clip_filter.collections.store.sqlite_gc import _SqliteGcGuard
from clip_filter.collections.store.sqlite_jobs import SqliteJobsMixin
from clip_filter.collections.store.sqlite_pool import _ReaderPool, _rollback
from clip_filter.collections.validation import validate_filters, validate_name
from clip_filter.core.errors import ClipFilterError

log = logging.getLogger(__name__)

DEFAULT_READERS = 8

__all__ = ["DEFAULT_READERS", "SqliteCollectionStore", "_ReaderPool", "_SqliteGcGuard", "_rollback"]


class SqliteCollectionStore(SqliteJobsMixin):
    def __init__(self, data_dir: Path, readers: int = DEFAULT_READERS) -> None:
        self.files = DataFiles(data_dir)
        self.data_dir = self.files.data_dir
        self.db_path = self.data_dir / "collections.sqlite3"
        self._pool = _ReaderPool(self._connect, readers)
        self._commits = CommitState()  # per thread: whether its last write transaction committed
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
        return conn

    def _check_open(self) -> None:
        if self._closed:
            raise ClipFilterError("store_closed", "The collections store is closed.", 503)

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A pooled reader connection (autocommit: each SELECT sees the latest commit)."""
        self._check_open()
        with self._pool.connection() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot across several SELECTs."""
        with self._reader() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def _select(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[sqlite3.Row]:
        with self._reader() as conn:
            return conn.execute(sql, params).fetchall()

    def _select_one(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> sqlite3.Row | None:
        with self._reader() as conn:
            return conn.execute(sql, params).fetchone()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the write lock (BEGIN IMMEDIATE also locks out other processes).

        A failed COMMIT (disk full, a deferred constraint) is rolled back, so the writer never stays inside
        a transaction that makes every later write fail; `self._commits` tells callers whether the COMMIT
        itself went through, which is what decides if their originals may be removed (commits.py). Listener
        errors after a COMMIT are logged, never raised: the data is committed and the caller must not undo anything.
        """
        self._commits.begin()
        with self._write_lock:
            self._check_open()
            conn = self._writer
            self._queued = []
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                _rollback(conn)
                self._queued = []
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                self._queued = []
                self._commits.commit_failed(known_rolled_back=True)  # a local file: a failed COMMIT did not happen
                raise
            self._commits.committed()
            changes, self._queued = self._queued, []
            # Still under the write lock: listeners see changes exactly in commit order.
            announce(changes, self._listeners)

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
            self._pool.close()
            with suppress(sqlite3.Error):
                self._writer.close()

    # ---- collections ---------------------------------------------------------------------------------
    @staticmethod
    def _collection(row: sqlite3.Row) -> CollectionRecord:
        return CollectionRecord(**dict(row))  # sqlite3.Row is a mapping (iterating it yields values)

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
        row = self._select_one("SELECT * FROM collections WHERE name = ?", (name,))
        if row is None:
            raise collection_not_found(name)
        return self._collection(row)

    def get_collection_by_id(self, collection_id: int) -> CollectionRecord | None:
        row = self._select_one("SELECT * FROM collections WHERE id = ?", (collection_id,))
        return self._collection(row) if row else None

    def list_collections(self) -> list[CollectionRecord]:
        rows = self._select("SELECT * FROM collections ORDER BY name")
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
                (
                    json.dumps({"code": "collection_not_found", "message": "The collection was deleted."}),
                    utc_now(),
                    collection_id,
                ),
            )
            self._queued.append(Change(collection_id, -1, reset=True))
        self.files.remove_collection_files(collection_id)  # after the commit: a crash before leaves them to gc

    def update_collection(self, name: str, description: str | None) -> CollectionRecord:
        with self._transaction() as conn:
            row = conn.execute("SELECT id FROM collections WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise collection_not_found(name)
            conn.execute("UPDATE collections SET description = ? WHERE id = ?", (description, row[0]))
            self._bump_version(conn, row[0])
        return self.get_collection(name)

    # ---- files ---------------------------------------------------------------------------------------
    def original_file(self, item: ItemRecord) -> Path | None:
        return self.files.original_file(item.original_path)

    # ---- items ---------------------------------------------------------------------------------------
    @staticmethod
    def _item(row: sqlite3.Row) -> ItemRecord:
        return ItemRecord(
            id=row["id"],
            collection_id=row["collection_id"],
            kind=row["kind"],
            filename=row["filename"],
            mimetype=row["mimetype"],
            size=row["size"],
            sha256=row["sha256"],
            metadata=json.loads(row["metadata"]),
            truncated=bool(row["truncated"]),
            text=row["text"],
            original_path=row["original_path"],
            width=row["width"],
            height=row["height"],
            created_at=row["created_at"],
        )

    def known_hashes(self, collection_id: int, hashes: list[str]) -> dict[str, int]:
        """sha256 -> item id for the given hashes already in the collection."""
        found: dict[str, int] = {}
        unique = list(dict.fromkeys(hashes))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._select(
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
        # Committed rows keep their originals, whatever fails afterwards; otherwise they go (commits.py).
        # The guard wraps the transaction: it acts on how the transaction ended (its COMMIT).
        with originals_until_commit(self.files, [item.original_path for item in items], self._commits):  # noqa: SIM117
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
                # Vectors of another dimension would make every later search and map fail: refused here too.
                dim = model[2] if model is not None else (collection.dim if collection.item_count else None)
                for item in items:
                    embedding = np.ascontiguousarray(item.embedding, np.float32).reshape(-1)
                    if dim and embedding.size != dim:
                        raise ClipFilterError(
                            "dimension_mismatch",
                            f"An embedding has {embedding.size} dimensions; collection "
                            f"{collection.name!r} holds {dim}-dimensional ones.",
                            409,
                            dim=dim,
                        )
                    cursor = conn.execute(
                        "INSERT INTO items (collection_id, kind, filename, mimetype, size, sha256, metadata, "
                        "truncated, text, original_path, width, height, embedding, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (collection_id, sha256) DO NOTHING",
                        (
                            collection_id,
                            item.kind,
                            item.filename,
                            item.mimetype,
                            item.size,
                            item.sha256,
                            json.dumps(item.metadata, ensure_ascii=False),
                            int(item.truncated),
                            item.text,
                            item.original_path,
                            item.width,
                            item.height,
                            embedding.tobytes(),
                            now,
                        ),
                    )
                    if cursor.rowcount == 1:
                        assert cursor.lastrowid is not None  # set by the row just inserted
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
        self.files.remove_files(
            [item.original_path for item, (status, _) in zip(items, results, strict=False) if status == "duplicate"]
        )
        return results

    def get_item(self, collection: CollectionRecord, item_id: int) -> ItemRecord:
        row = self._select_one(
            f"SELECT {ITEM_COLUMNS} FROM items WHERE id = ? AND collection_id = ?", (item_id, collection.id)
        )
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
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._select(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE collection_id = ? AND id IN ({marks})", (collection_id, *chunk)
            ):
                out[row["id"]] = self._item(row)
        return out

    def iter_items(self, collection_id: int, batch: int = 500) -> Iterator[list[ItemRecord]]:
        """All items in id order, in batches (keyset pagination: stable while others write)."""
        last = -1
        while True:
            rows = self._select(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE collection_id = ? AND id > ? ORDER BY id LIMIT ?",
                (collection_id, last, batch),
            )
            if not rows:
                return
            yield [self._item(row) for row in rows]
            last = rows[-1]["id"]

    def items_with_vectors(
        self, collection_id: int, batch: int = 1000
    ) -> Iterator[tuple[list[ItemRecord], np.ndarray]]:
        """(items, their embeddings) in id order, in batches (export)."""
        for items in self.iter_items(collection_id, batch):
            ids = [item.id for item in items]
            marks = ",".join("?" * len(ids))
            rows = self._select(f"SELECT id, embedding FROM items WHERE id IN ({marks})", ids)
            blobs: dict[int, bytes] = {row[0]: row[1] for row in rows}
            present = [item for item in items if item.id in blobs]
            if present:  # all of the batch deleted meanwhile: nothing to yield
                yield present, np.stack([np.frombuffer(blobs[item.id], np.float32) for item in present])

    def update_item(
        self, collection: CollectionRecord, item_id: int, metadata: dict[str, Any] | None, filename: str | None
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
                    f"UPDATE items SET {', '.join(sets)} WHERE id = ? AND collection_id = ?",
                    (*params, item_id, collection.id),
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
                    "SELECT id, kind, original_path FROM items WHERE id = ? AND collection_id = ?",
                    (item_id, collection.id),
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
                self._bump_version(
                    conn, collection.id, Change(collection.id, 0, removed_ids=[r["id"] for r in removed])
                )
        # The rows are gone for good: their files are no one else's (unique names).
        self.files.remove_files([row["original_path"] for row in removed])
        for row in removed:
            self.files.remove_thumbnails(collection.id, row["id"])
        return len(removed)

    # ---- vectors -------------------------------------------------------------------------------------
    def load_vectors(self, collection_id: int) -> VectorSet:
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
        return VectorSet(version, ids, vectors, kinds)

    def get_vector(self, collection: CollectionRecord, item_id: int) -> np.ndarray:
        row = self._select_one(
            "SELECT embedding FROM items WHERE id = ? AND collection_id = ?", (item_id, collection.id)
        )
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
                [
                    (np.ascontiguousarray(vec, np.float32).tobytes(), int(trunc), item_id, collection_id)
                    for item_id, (vec, trunc) in embeddings.items()
                    if item_id in current
                ],
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
        where, params = metadata_filter_sql(validate_filters(filters))
        rows = self._select(
            f"SELECT id FROM items WHERE collection_id = ? AND {where} ORDER BY id", (collection_id, *params)
        )
        return np.asarray([row[0] for row in rows], np.int64)

    # ---- housekeeping --------------------------------------------------------------------------------
    def collect_garbage(self, min_age_s: float = 3600.0) -> dict[str, int]:
        """Remove files no row references (see gc.py): only files older than `min_age_s`, and each candidate is
        re-checked inside a write transaction (this process's write lock and SQLite's lock against others)."""
        with self._read() as conn:
            references = FileReferences(
                collection_ids={row[0] for row in conn.execute("SELECT id FROM collections")},
                originals={
                    row[0] for row in conn.execute("SELECT original_path FROM items WHERE original_path IS NOT NULL")
                },
                live_jobs={row[0] for row in conn.execute("SELECT id FROM jobs WHERE state IN ('queued', 'running')")},
            )
        return collect_garbage(
            self.files,
            references,
            lambda: {row[0] for row in self._select("SELECT id FROM items")},
            min_age_s,
            guard=_SqliteGcGuard(self),
        )
