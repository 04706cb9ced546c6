"""The collections store on PostgreSQL + pgvector: several stateless replicas share one database.

Implements `CollectionStore` (protocol.py) with the semantics of `SqliteCollectionStore` (records, errors,
dedup, model checks, versions, the `Change` listener), plus `search` (`SearchingStore`): here the database
is the vector index. This module holds the connection pools, items and vectors; the rest is in mixins
(postgres_collections.py, postgres_search.py, postgres_jobs.py, postgres_gc.py) over postgres_common.py.

Schema (migrations: postgres_migrations.py)
- `items` is LIST-partitioned by collection (one partition per collection, created with it): each
  collection's HNSW index is built on its own rows and dimension (an expression index casting the
  untyped `vector` column to `halfvec(dim)` or `vector(dim)`), deleting a collection drops one table,
  and every query names one collection, so it reads one partition. Chosen over one table with partial
  indexes per collection: building a partial index scans the whole table and blocks writes to every
  collection meanwhile.

Durability rules
- Every write runs in one transaction that is committed (synchronous_commit, PostgreSQL's default)
  before the method returns, so an acknowledged write survives a crash of the replica or the server.
- Originals are written to the shared data folder (temp file, fsync, rename, fsync of the folder) by
  `files.write_original` before the transaction that references them; names carry a random token, so no two
  rows share a file. They are removed again only when that transaction certainly did not commit
  (commits.py: never after a COMMIT, nor when the COMMIT's outcome is unknown). Garbage collection
  removes only files older than a grace period and re-checks the rows just before unlinking, so a replica
  never deletes a file another replica's transaction is about to reference (or has just referenced).
- Job progress commits in the same transaction as the items it counts (as in SQLite).

Concurrency: a connection pool (psycopg_pool) for reads; writes of this process go through one lock,
so listeners see this process's changes in commit order (the in-memory structures of the facade rely
on it). Writers in other replicas are serialised per collection by `SELECT ... FOR UPDATE` on the
collection row, taken first in every write transaction (one lock order: no deadlocks).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from clip_filter.collections.errors import item_not_found
from clip_filter.collections.store.commits import CommitState, announce, originals_until_commit
from clip_filter.collections.store.files import DataFiles
from clip_filter.collections.store.postgres_collections import COLLECTION_COLUMNS, PostgresCollectionsMixin
from clip_filter.collections.store.postgres_common import _array, _iso, _no_nul, database_unavailable, job_lease_lost
from clip_filter.collections.store.postgres_gc import PostgresGcMixin
from clip_filter.collections.store.postgres_jobs import PostgresJobsMixin
from clip_filter.collections.store.postgres_migrations import MIGRATIONS_LOCK_KEY, migrate, migration_files
from clip_filter.collections.store.postgres_search import MAX_EF_SEARCH, PostgresSearchMixin, filters_sql
from clip_filter.collections.store.records import (
    Change,
    CollectionRecord,
    ItemRecord,
    JobProgress,
    NewItem,
    VectorSet,
    utc_now,
)
from clip_filter.core.errors import ClipFilterError

log = logging.getLogger(__name__)

__all__ = [
    "COLLECTION_COLUMNS",
    "INDEX_TYPES",
    "ITEM_COLUMNS",
    "MAX_EF_SEARCH",
    "MIGRATIONS_LOCK_KEY",
    "PostgresCollectionStore",
    "_array",
    "_iso",
    "_no_nul",
    "database_unavailable",
    "filters_sql",
    "job_lease_lost",
    "migrate",
    "migration_files",
]

INDEX_TYPES = ("halfvec", "vector")

ITEM_COLUMNS = (
    "id, collection_id, kind, filename, mimetype, size, sha256, metadata, truncated, text, original_path, "
    "width, height, created_at"
)


class PostgresCollectionStore(PostgresCollectionsMixin, PostgresSearchMixin, PostgresJobsMixin, PostgresGcMixin):
    def __init__(
        self,
        url: str,
        data_dir: Path,
        read_url: str | None = None,
        pool_size: int = 10,
        index_type: str = "halfvec",
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 64,
        ef_search: int = 100,
        exact_max_rows: int = 5_000,
        max_scan_tuples: int = 20_000,
        filtered_candidates: int = 20,
        job_lease_s: float = 30.0,
        run_migrations: bool = True,
    ) -> None:
        from psycopg_pool import ConnectionPool

        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}")
        self.files = DataFiles(data_dir)  # originals, thumbnails, spools: the shared data folder
        self.data_dir = self.files.data_dir
        self.index_type = index_type
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.ef_search = ef_search
        self.exact_max_rows = exact_max_rows
        self.max_scan_tuples = max_scan_tuples
        self.filtered_candidates = filtered_candidates
        self.job_lease_s = float(job_lease_s)
        self._claimed: dict[str, str] = {}  # job id -> lease owner, for the jobs this process works on
        self._write_lock = threading.RLock()
        self._commits = CommitState()  # per thread: whether its last write transaction committed
        self._listeners: list[Callable[[Change], None]] = []
        self._queued: list[Change] = []
        self._closed = False
        try:
            if run_migrations:
                migrate(url)
            self._pool = ConnectionPool(
                url,
                min_size=1,
                max_size=pool_size,
                kwargs={"autocommit": True},
                configure=self._configure,
                open=True,
                name="clip-filter",
            )
            self._pool.wait(timeout=30.0)
            self._read_pool = self._pool
            if read_url:
                self._read_pool = ConnectionPool(
                    read_url,
                    min_size=1,
                    max_size=pool_size,
                    kwargs={"autocommit": True},
                    configure=self._configure,
                    open=True,
                    name="clip-filter-read",
                )
                self._read_pool.wait(timeout=30.0)
        except Exception as exc:
            import psycopg
            from psycopg_pool import PoolTimeout

            if isinstance(exc, (psycopg.OperationalError, PoolTimeout)):
                raise database_unavailable(exc) from exc
            raise

    @staticmethod
    def _configure(conn: Any) -> None:
        from pgvector.psycopg import register_vector

        register_vector(conn)

    # ---- connections ---------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClipFilterError("store_closed", "The collections store is closed.", 503)

    @contextmanager
    def _connection(self, pool: Any) -> Iterator[Any]:
        import psycopg
        from psycopg.rows import dict_row
        from psycopg_pool import PoolTimeout

        self._check_open()
        try:
            with pool.connection(timeout=30.0) as conn:
                conn.row_factory = dict_row
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise database_unavailable(exc) from exc

    @contextmanager
    def _read(self, replica: bool = False, snapshot: bool = False) -> Iterator[Any]:
        """A read-only transaction; `snapshot`: one consistent snapshot across several SELECTs.
        `replica`: on CLIP_FILTER_DATABASE_READ_URL when set (searches and listings; may lag)."""
        with self._connection(self._read_pool if replica else self._pool) as conn, conn.transaction():
            if snapshot:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """One write transaction under this process's write lock, committed when the block ends.

        `self._commits` records whether the COMMIT went through (commits.py): a COMMIT the server answered
        with an error (a deferred constraint, a serialization failure) was rolled back; one whose connection
        dropped has an unknown outcome, so the caller keeps its originals (gc removes them if unreferenced).
        psycopg ends the transaction either way, and the pool discards a broken connection, so no later write
        finds this one still open. Listener errors after a COMMIT are logged, never raised.
        """
        self._commits.begin()
        with self._write_lock, self._connection(self._pool) as conn:
            self._queued = []
            body_done = False
            try:
                with conn.transaction():
                    yield conn
                    body_done = True  # from here on, leaving the block is the COMMIT
            except BaseException as exc:
                self._queued = []
                if body_done:
                    self._commits.commit_failed(known_rolled_back=getattr(exc, "sqlstate", None) is not None)
                raise
            self._commits.committed()
            changes, self._queued = self._queued, []
            # Still under the write lock: listeners see changes exactly in commit order.
            announce(changes, self._listeners)

    def add_listener(self, listener: Callable[[Change], None]) -> None:
        """Called after each commit of this process that bumps a collection's version, under the write lock."""
        self._listeners.append(listener)

    def _bump_version(self, conn: Any, collection_id: int, change: Change | None = None) -> int:
        row = conn.execute(
            "UPDATE collections SET version = version + 1, updated_at = %s WHERE id = %s RETURNING version",
            (utc_now(), collection_id),
        ).fetchone()
        change = change or Change(collection_id, row["version"])
        change.version = row["version"]
        self._queued.append(change)
        return row["version"]

    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            for pool in {id(self._pool): self._pool, id(self._read_pool): self._read_pool}.values():
                pool.close()

    # ---- originals -----------------------------------------------------------------------------------
    def original_file(self, item: ItemRecord) -> Path | None:
        return self.files.original_file(item.original_path)

    # ---- items ---------------------------------------------------------------------------------------
    @staticmethod
    def _item(row: dict[str, Any]) -> ItemRecord:
        return ItemRecord(
            id=row["id"],
            collection_id=row["collection_id"],
            kind=row["kind"],
            filename=row["filename"],
            mimetype=row["mimetype"],
            size=row["size"],
            sha256=row["sha256"],
            metadata=row["metadata"],
            truncated=bool(row["truncated"]),
            text=row["text"],
            original_path=row["original_path"],
            width=row["width"],
            height=row["height"],
            created_at=_iso(row["created_at"]),
        )

    def known_hashes(self, collection_id: int, hashes: list[str]) -> dict[str, int]:
        """sha256 -> item id for the given hashes already in the collection."""
        unique = list(dict.fromkeys(hashes))
        if not unique:
            return {}
        with self._read() as conn:
            rows = conn.execute(
                "SELECT sha256, id FROM items WHERE collection_id = %s AND sha256 = ANY(%s)", (collection_id, unique)
            ).fetchall()
        return {row["sha256"]: row["id"] for row in rows}

    def add_items(
        self,
        collection_id: int,
        items: list[NewItem],
        model: tuple[str, str, int] | None,
        progress: JobProgress | None = None,
    ) -> list[tuple[str, int]]:
        """Insert items in one transaction: [("added" | "duplicate", item id)] in input order (as SQLite)."""
        from psycopg.types.json import Jsonb

        results: list[tuple[str, int]] = []
        now = utc_now()
        # Committed rows keep their originals, whatever fails afterwards; otherwise they go (commits.py).
        with originals_until_commit(self.files, [item.original_path for item in items], self._commits):
            for item in items:
                _no_nul(item.metadata, "invalid_metadata", "metadata")
                _no_nul(item.filename, "invalid_request", "filename")
                _no_nul(item.text, "invalid_text", "text")
            with self._transaction() as conn:
                row = self._lock_collection(conn, collection_id)
                if row is None:
                    raise ClipFilterError("collection_not_found", "The collection was deleted.", 404)
                collection = self._collection(row)
                if items and model is not None:
                    collection.check_model(*model)
                    if collection.item_count == 0 or collection.model is None:
                        conn.execute(
                            "UPDATE collections SET model = %s, pretrained = %s, dim = %s WHERE id = %s",
                            (model[0], model[1], model[2], collection_id),
                        )
                        if row["index_type"] != self.index_type or row["dim"] != model[2]:
                            self._build_index(conn, collection_id, model[2])  # empty: instant
                change = Change(collection_id, 0)
                counts = {"image": 0, "text": 0}
                for item in items:
                    embedding = np.ascontiguousarray(item.embedding, np.float32).reshape(-1)
                    inserted = conn.execute(
                        "INSERT INTO items (collection_id, kind, filename, mimetype, size, sha256, metadata, "
                        "truncated, text, original_path, width, height, embedding, created_at) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (collection_id, sha256) DO NOTHING RETURNING id",
                        (
                            collection_id,
                            item.kind,
                            item.filename,
                            item.mimetype,
                            item.size,
                            item.sha256,
                            Jsonb(item.metadata),
                            bool(item.truncated),
                            item.text,
                            item.original_path,
                            item.width,
                            item.height,
                            embedding,
                            now,
                        ),
                    ).fetchone()
                    if inserted is not None:
                        item_id = int(inserted["id"])
                        results.append(("added", item_id))
                        counts[item.kind] += 1
                        change.added_ids.append(item_id)
                        change.added_vectors.append(embedding)
                        change.added_kinds.append(item.kind)
                    else:
                        existing = conn.execute(
                            "SELECT id FROM items WHERE collection_id = %s AND sha256 = %s",
                            (collection_id, item.sha256),
                        ).fetchone()
                        results.append(("duplicate", int(existing["id"])))
                added = counts["image"] + counts["text"]
                if added:
                    conn.execute(
                        "UPDATE collections SET item_count = item_count + %s, image_count = image_count + %s, "
                        "text_count = text_count + %s WHERE id = %s",
                        (added, counts["image"], counts["text"], collection_id),
                    )
                    self._bump_version(conn, collection_id, change)
                if progress is not None:
                    progress.added += added
                    progress.duplicates += sum(1 for status, _ in results if status == "duplicate")
                    self._add_progress(conn, progress, now)
        self.files.remove_files(
            [item.original_path for item, (status, _) in zip(items, results, strict=False) if status == "duplicate"]
        )
        return results

    def get_item(self, collection: CollectionRecord, item_id: int) -> ItemRecord:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE collection_id = %s AND id = %s", (collection.id, item_id)
            ).fetchone()
        if row is None:
            raise item_not_found(collection.name, item_id)
        return self._item(row)

    def list_items(self, collection_id: int, offset: int, limit: int) -> tuple[list[ItemRecord], int]:
        with self._read(replica=True, snapshot=True) as conn:
            total = conn.execute("SELECT item_count FROM collections WHERE id = %s", (collection_id,)).fetchone()
            rows = conn.execute(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE collection_id = %s ORDER BY id LIMIT %s OFFSET %s",
                (collection_id, limit, offset),
            ).fetchall()
        return [self._item(row) for row in rows], (total["item_count"] if total else 0)

    def items_by_ids(self, collection_id: int, ids: list[int], replica: bool = False) -> dict[int, ItemRecord]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        with self._read(replica=replica) as conn:
            rows = conn.execute(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE collection_id = %s AND id = ANY(%s)", (collection_id, ids)
            ).fetchall()
        return {row["id"]: self._item(row) for row in rows}

    def iter_items(self, collection_id: int, batch: int = 500) -> Iterator[list[ItemRecord]]:
        """All items in id order, in batches (keyset pagination: stable while others write)."""
        last = -1
        while True:
            with self._read() as conn:
                rows = conn.execute(
                    f"SELECT {ITEM_COLUMNS} FROM items WHERE collection_id = %s AND id > %s ORDER BY id LIMIT %s",
                    (collection_id, last, batch),
                ).fetchall()
            if not rows:
                return
            yield [self._item(row) for row in rows]
            last = rows[-1]["id"]

    def items_with_vectors(
        self, collection_id: int, batch: int = 1000
    ) -> Iterator[tuple[list[ItemRecord], np.ndarray]]:
        """(items, their embeddings) in id order, in batches (export)."""
        last = -1
        while True:
            with self._read() as conn:
                rows = conn.execute(
                    f"SELECT {ITEM_COLUMNS}, embedding FROM items WHERE collection_id = %s AND id > %s ORDER BY id "
                    "LIMIT %s",
                    (collection_id, last, batch),
                ).fetchall()
            if not rows:
                return
            yield [self._item(row) for row in rows], np.stack([_array(row["embedding"]) for row in rows])
            last = rows[-1]["id"]

    def update_item(
        self, collection: CollectionRecord, item_id: int, metadata: dict[str, Any] | None, filename: str | None
    ) -> ItemRecord:
        from psycopg.types.json import Jsonb

        _no_nul(metadata, "invalid_metadata", "metadata")
        _no_nul(filename, "invalid_request", "filename")
        with self._transaction() as conn:
            sets, params = list[str](), list[Any]()
            if metadata is not None:
                sets.append("metadata = %s")
                params.append(Jsonb(metadata))
            if filename is not None:
                sets.append("filename = %s")
                params.append(filename)
            if sets:
                if self._lock_collection(conn, collection.id) is None:
                    raise item_not_found(collection.name, item_id)
                cursor = conn.execute(
                    f"UPDATE items SET {', '.join(sets)} WHERE collection_id = %s AND id = %s",
                    (*params, collection.id, item_id),
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
        ids = list(dict.fromkeys(int(i) for i in item_ids))
        removed: list[dict[str, Any]] = []
        with self._transaction() as conn:
            if ids and self._lock_collection(conn, collection.id) is not None:
                removed = conn.execute(
                    "DELETE FROM items WHERE collection_id = %s AND id = ANY(%s) RETURNING id, kind, original_path",
                    (collection.id, ids),
                ).fetchall()
            if removed:
                images = sum(1 for row in removed if row["kind"] == "image")
                conn.execute(
                    "UPDATE collections SET item_count = item_count - %s, image_count = image_count - %s, "
                    "text_count = text_count - %s WHERE id = %s",
                    (len(removed), images, len(removed) - images, collection.id),
                )
                removed_ids = sorted(row["id"] for row in removed)
                self._bump_version(conn, collection.id, Change(collection.id, 0, removed_ids=removed_ids))
        self.files.remove_files([row["original_path"] for row in removed])
        for row in removed:
            self.files.remove_thumbnails(collection.id, row["id"])
        return len(removed)

    # ---- vectors -------------------------------------------------------------------------------------
    def load_vectors(self, collection_id: int) -> VectorSet:
        """(version, ids, vectors, kinds) of a collection, read in one consistent snapshot."""
        with self._read(replica=True, snapshot=True) as conn:
            row = conn.execute("SELECT version, dim FROM collections WHERE id = %s", (collection_id,)).fetchone()
            if row is None:
                raise ClipFilterError("collection_not_found", "The collection was deleted.", 404)
            rows = conn.execute(
                "SELECT id, kind, embedding FROM items WHERE collection_id = %s ORDER BY id", (collection_id,)
            ).fetchall()
        ids = np.asarray([r["id"] for r in rows], np.int64)
        kinds = [r["kind"] for r in rows]
        if rows:
            vectors = np.stack([_array(r["embedding"]) for r in rows])
        elif row["dim"]:
            vectors = np.zeros((0, row["dim"]), np.float32)
        else:
            vectors = np.zeros((0, 0), np.float32)
        return VectorSet(row["version"], ids, vectors, kinds)

    def get_vector(self, collection: CollectionRecord, item_id: int) -> np.ndarray:
        with self._read() as conn:
            row = conn.execute(
                "SELECT embedding FROM items WHERE collection_id = %s AND id = %s", (collection.id, item_id)
            ).fetchone()
        if row is None:
            raise item_not_found(collection.name, item_id)
        return _array(row["embedding"]).copy()

    def replace_embeddings(
        self, collection_id: int, embeddings: dict[int, tuple[np.ndarray, bool]], model: tuple[str, str, int]
    ) -> tuple[bool, set[int]]:
        """Reindex commit: swap every item's vector and the recorded model in one transaction.

        Returns (committed, missing ids). When items were added meanwhile (ids not in `embeddings`),
        nothing is written and their ids come back, so the caller can embed them and try again. The HNSW
        index is dropped first and rebuilt in bulk after the update (the dimension may change).
        """
        from psycopg import sql

        with self._transaction() as conn:
            if self._lock_collection(conn, collection_id) is None:
                raise ClipFilterError("collection_not_found", "The collection was deleted.", 404)
            current = {r["id"] for r in conn.execute("SELECT id FROM items WHERE collection_id = %s", (collection_id,))}
            missing = current - set(embeddings)
            if missing:
                return False, missing
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(self._index_name(collection_id)))
            with conn.cursor() as cursor:
                cursor.executemany(
                    "UPDATE items SET embedding = %s, truncated = %s WHERE collection_id = %s AND id = %s",
                    [
                        (np.ascontiguousarray(vec, np.float32).reshape(-1), bool(trunc), collection_id, item_id)
                        for item_id, (vec, trunc) in embeddings.items()
                        if item_id in current
                    ],
                )
            conn.execute(
                "UPDATE collections SET model = %s, pretrained = %s, dim = %s WHERE id = %s",
                (model[0], model[1], model[2], collection_id),
            )
            conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
            self._build_index(conn, collection_id, model[2])
            self._bump_version(conn, collection_id, Change(collection_id, 0, reset=True))
        return True, set()

    def filter_ids(self, collection_id: int, filters: dict[str, Any]) -> np.ndarray:
        """Ids of items whose metadata equals every filter value (top-level keys), in id order."""
        where, params = filters_sql(filters)
        with self._read(replica=True) as conn:
            rows = conn.execute(
                f"SELECT id FROM items WHERE collection_id = %s AND {where} ORDER BY id", (collection_id, *params)
            ).fetchall()
        return np.asarray([row["id"] for row in rows], np.int64)
