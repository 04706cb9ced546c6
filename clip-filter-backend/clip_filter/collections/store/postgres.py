"""The collections store on PostgreSQL + pgvector: several stateless replicas share one database.

Implements `CollectionStore` (protocol.py) with the semantics of `SqliteCollectionStore` (records, errors,
dedup, model checks, versions, the `Change` listener), plus `search` (`SearchingStore`): here the database
is the vector index.

Schema and migrations
- Plain numbered SQL files in `collections/migrations/` (`0001_initial.sql`, ...), applied at startup
  inside one transaction each, under `pg_advisory_lock`, recorded in `schema_migrations`. Not alembic:
  there is no ORM model to diff against, the schema is a handful of tables, and plain SQL is what a DBA
  reviews and what `psql -f` runs by hand.
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
  rows share a file. Garbage collection removes only files older than a grace period and re-checks
  the rows just before unlinking, so a replica never deletes a file another replica's transaction is
  about to reference (or has just referenced).
- Job progress commits in the same transaction as the items it counts (as in SQLite).

Concurrency: a connection pool (psycopg_pool) for reads; writes of this process go through one lock,
so listeners see this process's changes in commit order (the in-memory structures of the facade rely
on it). Writers in other replicas are serialised per collection by `SELECT ... FOR UPDATE` on the
collection row, taken first in every write transaction (one lock order: no deadlocks).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from clip_filter.collections.errors import collection_not_found, item_not_found, job_not_found
from clip_filter.collections.store.files import DataFiles
from clip_filter.collections.store.records import (
    MAX_STORED_FAILURES,
    Change,
    CollectionRecord,
    ItemRecord,
    JobFile,
    JobProgress,
    JobRecord,
    NewItem,
    VectorSet,
    utc_now,
)
from clip_filter.collections.validation import validate_filters, validate_name
from clip_filter.collections.vector_index import KIND_CODES, Hits, top_k_rows
from clip_filter.core.errors import ClipFilterError

log = logging.getLogger(__name__)

MIGRATIONS_LOCK_KEY = 0x0C11F11E  # pg_advisory_lock key for the schema migrations (any fixed bigint)
INDEX_TYPES = ("halfvec", "vector")
MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search

ITEM_COLUMNS = (
    "id, collection_id, kind, filename, mimetype, size, sha256, metadata, truncated, text, original_path, "
    "width, height, created_at"
)
COLLECTION_COLUMNS = (
    "id, name, description, model, pretrained, dim, item_count, image_count, text_count, version, created_at, "
    "updated_at"
)


def _iso(value: datetime | str) -> str:
    """timestamptz as the SQLite store writes it: ISO 8601 UTC with milliseconds and a Z."""
    if isinstance(value, str):
        return value
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _array(value: Any) -> np.ndarray:
    """A pgvector value (the adapter's Vector) as float32 NumPy."""
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, np.float32)


def job_lease_lost(job_id: str) -> ClipFilterError:
    return ClipFilterError(
        "job_lease_lost",
        f"Job {job_id!r} was taken over by another replica (this one held it too long).",
        409,
        job_id=job_id,
    )


def database_unavailable(exc: BaseException) -> ClipFilterError:
    return ClipFilterError(
        "database_unavailable",
        f"The PostgreSQL database cannot be reached: {exc}",
        503,
        fix="Check CLIP_FILTER_DATABASE_URL and that the server is running.",
    )


def _no_nul(value: Any, code: str, where: str) -> None:
    """PostgreSQL text and jsonb cannot hold U+0000 (SQLite can): refuse it with a 422, never a 500."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ClipFilterError(code, f"`{where}` contains a NUL character (U+0000), which cannot be stored.", 422)
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key, code, where)
            _no_nul(item, code, where)
    elif isinstance(value, list):
        for item in value:
            _no_nul(item, code, where)


# ---- migrations ------------------------------------------------------------------------------------------
def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of the packaged migrations, in order."""
    folder = resources.files("clip_filter.collections").joinpath("migrations")
    out = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            out.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    out.sort()
    if len({version for version, _, _ in out}) != len(out):
        raise RuntimeError("two migrations share a number")
    return out


def migrate(conninfo: str) -> list[str]:
    """Apply the migrations this database lacks; returns the names applied. Safe with replicas starting
    together: the advisory lock makes one apply them while the others wait, then find nothing to do."""
    import psycopg

    applied_now = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATIONS_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in migration_files():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)  # no parameters: psycopg sends the file as one simple query
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                log.info("applied migration %s", name)
                applied_now.append(name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATIONS_LOCK_KEY,))
    return applied_now


# ---- filters ---------------------------------------------------------------------------------------------
def filters_sql(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    """(SQL condition, parameters) for metadata equality filters, as SQLite's `filter_ids` matches them.

    Numbers and booleans match by containment (`@>`, GIN-indexed; 2023 equals 2023.0 as in SQLite). A
    string also matches a number or boolean written the same way, since form fields and query strings
    only carry strings ("year": "2023" finds {"year": 2023}).
    """
    validate_filters(filters)
    _no_nul(filters, "invalid_filters", "filters")
    clauses, params = [], []
    for key, value in filters.items():
        contained = json.dumps({key: value}, ensure_ascii=False)
        if isinstance(value, str):
            clauses.append(
                "(metadata @> %s::jsonb OR (metadata ? %s AND jsonb_typeof(metadata -> %s) IN ('number', 'boolean') "
                "AND metadata ->> %s = %s))"
            )
            params += [contained, key, key, key, value]
        else:
            clauses.append("metadata @> %s::jsonb")
            params.append(contained)
    return " AND ".join(clauses) or "TRUE", params


class PostgresCollectionStore:
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
        self.job_lease_s = float(job_lease_s)
        self._claimed: dict[str, str] = {}  # job id -> lease owner, for the jobs this process works on
        self._write_lock = threading.RLock()
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
        with self._write_lock, self._connection(self._pool) as conn:
            self._queued = []
            try:
                with conn.transaction():
                    yield conn
            except BaseException:
                self._queued = []
                raise
            changes, self._queued = self._queued, []
            # Still under the write lock: listeners see changes exactly in commit order.
            for change in changes:
                for listener in self._listeners:
                    listener(change)

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

    # ---- collections ---------------------------------------------------------------------------------
    @staticmethod
    def _collection(row: dict[str, Any]) -> CollectionRecord:
        values = {key: row[key] for key in COLLECTION_COLUMNS.split(", ")}
        values["created_at"], values["updated_at"] = _iso(row["created_at"]), _iso(row["updated_at"])
        return CollectionRecord(**values)

    @staticmethod
    def _partition(collection_id: int) -> Any:
        from psycopg import sql

        return sql.Identifier(f"items_{int(collection_id)}")

    @staticmethod
    def _index_name(collection_id: int) -> Any:
        from psycopg import sql

        return sql.Identifier(f"items_{int(collection_id)}_hnsw")

    def _lock_collection(self, conn: Any, collection_id: int) -> dict[str, Any] | None:
        """The collection row, locked until the commit: this collection's writers go one at a time."""
        return conn.execute(
            f"SELECT {COLLECTION_COLUMNS}, index_type FROM collections WHERE id = %s FOR UPDATE", (collection_id,)
        ).fetchone()

    def create_collection(
        self, name: str, description: str | None = None, model: tuple[str, str, int] | None = None
    ) -> CollectionRecord:
        import psycopg
        from psycopg import sql

        validate_name(name)
        _no_nul(description, "invalid_request", "description")
        now = utc_now()
        model_name, pretrained, dim = model if model else (None, None, None)
        with self._transaction() as conn:
            try:
                with conn.transaction():  # a savepoint: the unique violation leaves the outer one usable
                    row = conn.execute(
                        "INSERT INTO collections (name, description, model, pretrained, dim, created_at, updated_at) "
                        f"VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {COLLECTION_COLUMNS}",
                        (name, description, model_name, pretrained, dim, now, now),
                    ).fetchone()
            except psycopg.errors.UniqueViolation:
                raise ClipFilterError(
                    "collection_exists", f"Collection {name!r} already exists.", 409, collection=name
                ) from None
            conn.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF items FOR VALUES IN ({})").format(
                    self._partition(row["id"]), sql.Literal(int(row["id"]))
                )
            )
            if dim:
                self._build_index(conn, row["id"], dim)
        return self._collection(row)

    def get_collection(self, name: str) -> CollectionRecord:
        with self._read() as conn:
            row = conn.execute(f"SELECT {COLLECTION_COLUMNS} FROM collections WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise collection_not_found(name)
        return self._collection(row)

    def get_collection_by_id(self, collection_id: int) -> CollectionRecord | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {COLLECTION_COLUMNS} FROM collections WHERE id = %s", (collection_id,)
            ).fetchone()
        return self._collection(row) if row else None

    def list_collections(self) -> list[CollectionRecord]:
        with self._read(replica=True) as conn:
            rows = conn.execute(f'SELECT {COLLECTION_COLUMNS} FROM collections ORDER BY name COLLATE "C"').fetchall()
        return [self._collection(row) for row in rows]

    def delete_collection(self, name: str) -> None:
        from psycopg import sql

        with self._transaction() as conn:
            row = conn.execute("SELECT id FROM collections WHERE name = %s FOR UPDATE", (name,)).fetchone()
            if row is None:
                raise collection_not_found(name)
            collection_id = row["id"]
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._partition(collection_id)))
            conn.execute("DELETE FROM collections WHERE id = %s", (collection_id,))
            conn.execute(
                "UPDATE jobs SET state = 'failed', error = %s, updated_at = %s "
                "WHERE collection_id = %s AND state IN ('queued', 'running')",
                (
                    json.dumps({"code": "collection_not_found", "message": "The collection was deleted."}),
                    utc_now(),
                    collection_id,
                ),
            )
            self._queued.append(Change(collection_id, -1, reset=True))
        # After the commit: a crash here leaves folders that collect_garbage removes.
        self.files.remove_collection_files(collection_id)

    def update_collection(self, name: str, description: str | None) -> CollectionRecord:
        _no_nul(description, "invalid_request", "description")
        with self._transaction() as conn:
            row = conn.execute("SELECT id FROM collections WHERE name = %s FOR UPDATE", (name,)).fetchone()
            if row is None:
                raise collection_not_found(name)
            conn.execute("UPDATE collections SET description = %s WHERE id = %s", (description, row["id"]))
            self._bump_version(conn, row["id"])
        return self.get_collection(name)

    # ---- the vector index ----------------------------------------------------------------------------
    def _build_index(self, conn: Any, collection_id: int, dim: int) -> None:
        """(Re)create the collection's HNSW index for `dim` (inner product on the normalised vectors).

        Partial on `vector_dims(embedding) = dim`: a reindex to another dimension builds the index in the
        transaction that rewrote the rows, and CREATE INDEX also reads the old (recently dead) row versions,
        whose vectors cannot be cast to the new dimension.
        """
        from psycopg import sql

        kind = self.index_type
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(self._index_name(collection_id)))
        conn.execute(
            sql.SQL(
                "CREATE INDEX {} ON {} USING hnsw ((embedding::{}({})) {}) WITH (m = {}, ef_construction = {}) "
                "WHERE vector_dims(embedding) = {}"
            ).format(
                self._index_name(collection_id),
                self._partition(collection_id),
                sql.SQL(kind),
                sql.Literal(int(dim)),
                sql.SQL(f"{kind}_ip_ops"),
                sql.Literal(int(self.hnsw_m)),
                sql.Literal(int(self.hnsw_ef_construction)),
                sql.Literal(int(dim)),
            )
        )
        conn.execute("UPDATE collections SET index_type = %s WHERE id = %s", (kind, collection_id))

    def rebuild_index(self, collection_id: int) -> None:
        """Drop and rebuild a collection's HNSW index from its rows (bulk build: faster than row by row)."""
        with self._transaction() as conn:
            row = self._lock_collection(conn, collection_id)
            if row is None or not row["dim"]:
                return
            conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
            self._build_index(conn, collection_id, row["dim"])

    def index_size_bytes(self, collection_id: int) -> int:
        from psycopg import sql

        with self._read() as conn:
            row = conn.execute(
                sql.SQL("SELECT pg_relation_size(to_regclass({}))").format(
                    sql.Literal(f"items_{int(collection_id)}_hnsw")
                )
            ).fetchone()
        return int(next(iter(row.values())) or 0)

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

        for item in items:
            _no_nul(item.metadata, "invalid_metadata", "metadata")
            _no_nul(item.filename, "invalid_request", "filename")
            _no_nul(item.text, "invalid_text", "text")
        results: list[tuple[str, int]] = []
        now = utc_now()
        try:
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
        except BaseException:
            self.files.remove_files([item.original_path for item in items])
            raise
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

    # ---- search --------------------------------------------------------------------------------------
    def search(
        self,
        collection_id: int,
        query: np.ndarray,
        top_k: int,
        offset: int = 0,
        filters: dict[str, Any] | None = None,
        kind: str | None = None,
        min_score: float | None = None,
        exact: bool = False,
        ef_search: int | None = None,
    ) -> Hits:
        """Top hits by cosine (score desc, then id), as the in-memory path of the SQLite store returns them.

        - Small collections (< exact_max_rows items) and selective filters (<= exact_max_rows matching
          rows, counted with a LIMIT so the count stops there) are searched exactly: every matching row
          scored in full precision, `total` counts them.
        - Otherwise the collection's HNSW index, `hnsw.ef_search` set for this query, with iterative index
          scans (`relaxed_order`) so filters and kinds still fill the page; the candidates are re-scored
          with the full-precision vectors and re-sorted exactly (the index may hold halfvec). `total` is
          None there (unknown without scanning), as for FAISS.
        """
        if kind is not None and kind not in KIND_CODES:
            raise ClipFilterError("invalid_request", "`kind` must be 'image' or 'text'.", 422)
        query = np.ascontiguousarray(query, np.float32).reshape(-1)
        want = int(offset) + int(top_k)
        empty = Hits(np.zeros(0, np.int64), np.zeros(0, np.float32), total=0)
        conditions, params = ["collection_id = %s"], list[Any]([collection_id])
        if filters:
            where, filter_params = filters_sql(filters)
            conditions.append(where)
            params += filter_params
        if kind is not None:
            conditions.append("kind = %s")
            params.append(kind)
        where = " AND ".join(conditions)
        min_score_param = float(np.float32(min_score)) if min_score is not None else None
        with self._read(replica=True, snapshot=True) as conn:
            row = conn.execute(
                "SELECT dim, item_count, image_count, text_count, index_type FROM collections WHERE id = %s",
                (collection_id,),
            ).fetchone()
            if row is None:
                raise ClipFilterError("collection_not_found", "The collection was deleted.", 404)
            dim, index_type = row["dim"], row["index_type"]
            if not dim or row["item_count"] == 0:
                return empty
            if query.shape[0] != dim:
                raise ClipFilterError(
                    "dimension_mismatch", f"The query has {query.shape[0]} dimensions, the collection {dim}.", 409
                )
            if want <= 0:
                return Hits(np.zeros(0, np.int64), np.zeros(0, np.float32), total=None)
            matching = row["item_count"] if kind is None else row[f"{kind}_count"]
            if filters and matching > self.exact_max_rows:
                matching = conn.execute(
                    f"SELECT count(*) AS n FROM (SELECT 1 FROM items WHERE {where} LIMIT %s) AS limited",
                    (*params, self.exact_max_rows + 1),
                ).fetchone()["n"]
            if matching == 0:
                return empty
            use_exact = exact or index_type is None or matching <= self.exact_max_rows
            if not use_exact:
                hits = self._search_hnsw(
                    conn,
                    query,
                    dim,
                    index_type,
                    where,
                    params,
                    want,
                    offset,
                    min_score_param,
                    ef_search,
                    filtered=len(conditions) > 1,
                )
                if hits is not None:
                    return hits
            return self._search_exact(conn, query, where, params, want, offset, min_score_param)

    @staticmethod
    def _search_exact(
        conn: Any, query: np.ndarray, where: str, params: list[Any], want: int, offset: int, min_score: float | None
    ) -> Hits:
        score_filter, extra = "", []
        if min_score is not None:
            score_filter = " WHERE score >= %s"
            extra = [min_score]
        # The scores are computed below the window (OFFSET 0 keeps the subquery from being flattened): it
        # then counts narrow (id, score) rows; over the rows themselves it spills every vector to disk.
        rows = conn.execute(
            "SELECT id, score, count(*) OVER () AS total FROM ("
            f"  SELECT id, (embedding <#> %s) * -1 AS score FROM items WHERE {where} OFFSET 0"
            f") AS scored{score_filter} ORDER BY score DESC, id LIMIT %s",
            (query, *params, *extra, want),
        ).fetchall()
        total = int(rows[0]["total"]) if rows else 0
        rows = rows[offset:]
        return Hits(
            np.asarray([r["id"] for r in rows], np.int64),
            np.asarray([r["score"] for r in rows], np.float32),
            total=total,
            method="exact",
        )

    def _hnsw_statement(
        self, conn: Any, dim: int, index_type: str, where: str, ef_search: int | None, candidates: int
    ) -> str:
        """Set this transaction up for an HNSW scan and return its statement (params: *where, q, n, q)."""
        ef = int(min(MAX_EF_SEARCH, max(ef_search or self.ef_search, 1)))
        # SET LOCAL: for this transaction only (the pooled connection keeps its defaults).
        conn.execute(f"SET LOCAL hnsw.ef_search = {ef}")
        conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        conn.execute(f"SET LOCAL hnsw.max_scan_tuples = {int(max(self.max_scan_tuples, candidates))}")
        # The decision for the index was made above from exact counts; without this, a filter the planner
        # misestimates (jsonb containment has no useful statistics) makes it sort all matching rows.
        conn.execute("SET LOCAL enable_sort = off")
        cast = f"{index_type}({int(dim)})"
        return (
            "WITH candidates AS MATERIALIZED ("
            f"  SELECT id, embedding FROM items WHERE {where} AND vector_dims(embedding) = {int(dim)}"
            f"  ORDER BY embedding::{cast} <#> %s::{cast} LIMIT %s"
            ") SELECT id, (embedding <#> %s) * -1 AS score FROM candidates"
        )

    def _search_hnsw(
        self,
        conn: Any,
        query: np.ndarray,
        dim: int,
        index_type: str,
        where: str,
        params: list[Any],
        want: int,
        offset: int,
        min_score: float | None,
        ef_search: int | None,
        filtered: bool,
    ) -> Hits | None:
        """Candidates from the HNSW index, re-scored exactly; None when it found fewer than the page needs."""
        ef = int(min(MAX_EF_SEARCH, max(ef_search or self.ef_search, 1)))
        # Unfiltered, the ef_search candidates the graph search found anyway are all re-scored. Under a
        # filter each candidate costs ~1/selectivity visited tuples (iterative scan), so fewer are asked
        # for: twice the page, enough for the exact re-sort to repair the relaxed order.
        candidates = max(2 * want, want + 10) if filtered else max(want, ef)
        statement = self._hnsw_statement(conn, dim, index_type, where, ef_search, candidates)
        rows = conn.execute(statement, (*params, query, candidates, query)).fetchall()
        if len(rows) < want:
            return None  # the scan ended early (max_scan_tuples, a very selective filter): the exact answer
        ids = np.asarray([r["id"] for r in rows], np.int64)
        scores = np.asarray([r["score"] for r in rows], np.float32)
        if min_score is not None:
            keep = scores >= np.float32(min_score)
            ids, scores = ids[keep], scores[keep]
        best = top_k_rows(scores, ids, want)[offset:]
        return Hits(ids[best], scores[best], total=None, method="hnsw")

    def hnsw_plan(
        self,
        collection_id: int,
        query: np.ndarray,
        k: int = 10,
        filters: dict[str, Any] | None = None,
        kind: str | None = None,
    ) -> str:
        """EXPLAIN of the HNSW statement a large-collection search runs (operations: is the index used?)."""
        conditions, params = ["collection_id = %s"], list[Any]([collection_id])
        if filters:
            where, filter_params = filters_sql(filters)
            conditions.append(where)
            params += filter_params
        if kind is not None:
            conditions.append("kind = %s")
            params.append(kind)
        with self._read(replica=True) as conn:
            row = conn.execute("SELECT dim, index_type FROM collections WHERE id = %s", (collection_id,)).fetchone()
            if row is None or not row["index_type"]:
                return ""
            statement = self._hnsw_statement(conn, row["dim"], row["index_type"], " AND ".join(conditions), None, k)
            query = np.ascontiguousarray(query, np.float32).reshape(-1)
            rows = conn.execute("EXPLAIN " + statement, (*params, query, k, query)).fetchall()
        return "\n".join(next(iter(r.values())) for r in rows)

    # ---- jobs ----------------------------------------------------------------------------------------
    @staticmethod
    def _job(row: dict[str, Any]) -> JobRecord:
        return JobRecord(
            id=row["id"],
            collection_id=row["collection_id"],
            collection=row["collection"],
            source=row["source"],
            path=row["path"],
            state=row["state"],
            total=row["total"],
            done=row["done"],
            added=row["added"],
            duplicates=row["duplicates"],
            failed=row["failed"],
            failures=row["failures"],
            error=row["error"] or None,
            attempts=row["attempts"],
            created_at=_iso(row["created_at"]),
            updated_at=_iso(row["updated_at"]),
        )

    def create_job(
        self,
        job_id: str,
        collection: CollectionRecord,
        source: str,
        path: str | None,
        files: list[JobFile],
        failures: list[dict[str, Any]] | None = None,
    ) -> JobRecord:
        """A queued job and its file list, in one transaction (files already spooled when uploaded)."""
        from psycopg.types.json import Jsonb

        now = utc_now()
        failures = failures or []
        for f in files:
            _no_nul(f.filename, "invalid_request", "filename")
            _no_nul(f.metadata, "invalid_metadata", "metadata")
        _no_nul(path, "invalid_request", "path")
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, collection_id, collection, source, path, state, total, done, failed, failures, "
                "created_at, updated_at) VALUES (%s, %s, %s, %s, %s, 'queued', %s, %s, %s, %s, %s, %s)",
                (
                    job_id,
                    collection.id,
                    collection.name,
                    source,
                    path,
                    len(files) + len(failures),
                    len(failures),
                    len(failures),
                    Jsonb(failures[:MAX_STORED_FAILURES]),
                    now,
                    now,
                ),
            )
            with (
                conn.cursor() as cursor,
                cursor.copy("COPY job_files (job_id, seq, filename, path, content_type, metadata) FROM STDIN") as copy,
            ):
                for f in files:
                    copy.write_row(
                        (job_id, f.seq, f.filename, f.path, f.content_type, json.dumps(f.metadata, ensure_ascii=False))
                    )
        return self.get_job(job_id)

    def get_job(self, job_id: str) -> JobRecord:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
        if row is None:
            raise job_not_found(job_id)
        return self._job(row)

    def job_files(self, job_id: str, after_seq: int, limit: int) -> list[JobFile]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT seq, filename, path, metadata, content_type FROM job_files WHERE job_id = %s AND seq > %s "
                "ORDER BY seq LIMIT %s",
                (job_id, after_seq, limit),
            ).fetchall()
        return [JobFile(r["seq"], r["filename"], r["path"], r["metadata"], r["content_type"]) for r in rows]

    def job_done_seq(self, job_id: str) -> int:
        """The seq of the last file a job has committed (files are numbered 0.. in order)."""
        with self._read(snapshot=True) as conn:
            job = conn.execute("SELECT total, done FROM jobs WHERE id = %s", (job_id,)).fetchone()
            if job is None:
                raise job_not_found(job_id)
            listed = conn.execute("SELECT count(*) AS n FROM job_files WHERE job_id = %s", (job_id,)).fetchone()["n"]
        return job["done"] - (job["total"] - listed) - 1

    def set_job_state(
        self, job_id: str, state: str, error: dict[str, Any] | None = None, crashed: bool = False
    ) -> None:
        """`crashed`: the job was found running at startup, i.e. a crash interrupted it (counted in attempts)."""
        from psycopg.types.json import Jsonb

        owner = self._claimed.get(job_id)
        with self._transaction() as conn:
            conn.execute(
                "UPDATE jobs SET state = %s, error = COALESCE(%s, error), attempts = attempts + %s, updated_at = %s, "
                "lease_owner = CASE WHEN %s = 'running' THEN lease_owner END, "
                "lease_expires_at = CASE WHEN %s = 'running' THEN lease_expires_at END "
                "WHERE id = %s" + (" AND (lease_owner = %s OR lease_owner IS NULL)" if owner else ""),
                (
                    state,
                    Jsonb(error) if error else None,
                    int(crashed),
                    utc_now(),
                    state,
                    state,
                    job_id,
                    *((owner,) if owner else ()),
                ),
            )
        if state != "running":
            self._claimed.pop(job_id, None)

    def _add_progress(self, conn: Any, progress: JobProgress, now: str) -> None:
        from psycopg.types.json import Jsonb

        row = conn.execute("SELECT failures FROM jobs WHERE id = %s FOR UPDATE", (progress.job_id,)).fetchone()
        failures = list(row["failures"]) if row else []
        room = MAX_STORED_FAILURES - len(failures)
        if progress.failures and room > 0:
            failures.extend(progress.failures[:room])
        owner = self._claimed.get(progress.job_id)
        lease = ""
        params: list[Any] = [progress.done, progress.added, progress.duplicates, progress.failed, Jsonb(failures), now]
        if owner is not None:
            # Only the lease holder's batches count, and each one renews the lease in the same transaction:
            # a replica that lost its lease (stalled past it, another took over) rolls its batch back.
            lease = ", lease_expires_at = now() + make_interval(secs => %s)"
            params.append(self.job_lease_s)
        params.append(progress.job_id)
        cursor = conn.execute(
            "UPDATE jobs SET done = done + %s, added = added + %s, duplicates = duplicates + %s, failed = failed + %s, "
            f"failures = %s, updated_at = %s{lease} WHERE id = %s" + (" AND lease_owner = %s" if owner else ""),
            (*params, owner) if owner else params,
        )
        if owner is not None and cursor.rowcount == 0:
            raise job_lease_lost(progress.job_id)

    def unfinished_jobs(self) -> list[JobRecord]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_at, id"
            ).fetchall()
        return [self._job(row) for row in rows]

    # ---- jobs across replicas ------------------------------------------------------------------------
    def claim_job(self, owner: str) -> tuple[JobRecord, bool] | None:
        """Claim the oldest job no live replica works on: (job, taken_over) or None.

        `SELECT ... FOR UPDATE SKIP LOCKED`: replicas claiming at the same moment get different jobs. A
        `running` job whose lease expired was left by a replica that died (taken_over: counted in attempts).
        """
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT id, state FROM jobs WHERE state = 'queued' OR (state = 'running' AND "
                "(lease_expires_at IS NULL OR lease_expires_at < now())) ORDER BY created_at, id "
                "FOR UPDATE SKIP LOCKED LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            taken_over = row["state"] == "running"
            job = conn.execute(
                "UPDATE jobs SET state = 'running', lease_owner = %s, "
                "lease_expires_at = now() + make_interval(secs => %s), attempts = attempts + %s, updated_at = %s "
                "WHERE id = %s RETURNING *",
                (owner, self.job_lease_s, int(taken_over), utc_now(), row["id"]),
            ).fetchone()
        self._claimed[job["id"]] = owner
        return self._job(job), taken_over

    def claim_batch(self, job_id: str, owner: str, after_seq: int, limit: int) -> list[JobFile]:
        """The job's next files after `after_seq`, if `owner` still holds its lease (renewed here)."""
        with self._transaction() as conn:
            renewed = conn.execute(
                "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => %s) "
                "WHERE id = %s AND state = 'running' AND lease_owner = %s",
                (self.job_lease_s, job_id, owner),
            ).rowcount
            if renewed == 0:
                self._claimed.pop(job_id, None)
                raise job_lease_lost(job_id)
            rows = conn.execute(
                "SELECT seq, filename, path, metadata, content_type FROM job_files WHERE job_id = %s AND seq > %s "
                "ORDER BY seq LIMIT %s",
                (job_id, after_seq, limit),
            ).fetchall()
        return [JobFile(r["seq"], r["filename"], r["path"], r["metadata"], r["content_type"]) for r in rows]

    def running_job_owners(self) -> dict[str, str]:
        """job id -> lease owner of the jobs some replica holds (running)."""
        with self._read() as conn:
            rows = conn.execute("SELECT id, lease_owner FROM jobs WHERE state = 'running' AND lease_owner IS NOT NULL")
            return {row["id"]: row["lease_owner"] for row in rows}

    def expire_leases(self, job_ids: list[str], owners: list[str]) -> None:
        """End these owners' leases on these jobs now (their processes are known dead): claimable at once."""
        if job_ids:
            with self._transaction() as conn:
                conn.execute(
                    "UPDATE jobs SET lease_expires_at = now() - interval '1 second' "
                    "WHERE id = ANY(%s) AND lease_owner = ANY(%s) AND state = 'running'",
                    (job_ids, owners),
                )

    def release_job(self, job_id: str, owner: str) -> None:
        """Give a claimed job back (clean shutdown): queued again, for any replica."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL, updated_at = %s "
                "WHERE id = %s AND state = 'running' AND lease_owner = %s",
                (utc_now(), job_id, owner),
            )
        self._claimed.pop(job_id, None)

    # ---- housekeeping --------------------------------------------------------------------------------
    def _referenced(self, paths: list[str]) -> set[str]:
        if not paths:
            return set()
        with self._read() as conn:
            rows = conn.execute("SELECT original_path FROM items WHERE original_path = ANY(%s)", (paths,)).fetchall()
        return {row["original_path"] for row in rows}

    def collect_garbage(self, min_age_s: float = 3600.0) -> dict[str, int]:
        """Remove files no row references: originals and thumbnails of crashed writes or deleted rows.

        Safe while other replicas write: only files older than `min_age_s` are candidates (a replica may
        have written an original whose transaction has not committed yet), and the candidates are looked
        up again right before they are unlinked (a row may have committed since the first read).
        """
        removed = {"originals": 0, "thumbnails": 0, "temp": 0, "job_spools": 0}
        cutoff = time.time() - min_age_s
        with self._read(snapshot=True) as conn:
            collection_ids = {row["id"] for row in conn.execute("SELECT id FROM collections")}
            referenced = {
                row["original_path"]
                for row in conn.execute("SELECT original_path FROM items WHERE original_path IS NOT NULL")
            }
            item_ids = {row["id"] for row in conn.execute("SELECT id FROM items")}
            live_jobs = {row["id"] for row in conn.execute("SELECT id FROM jobs WHERE state IN ('queued', 'running')")}

        def old(path: Path) -> bool:
            try:
                return path.stat().st_mtime < cutoff
            except FileNotFoundError:
                return False

        if self.files.originals_dir.is_dir():
            candidates: list[tuple[str, Path]] = []
            for path in self.files.originals_dir.rglob("*"):
                if not path.is_file() or not old(path):
                    continue
                relative = path.relative_to(self.data_dir).as_posix()
                if path.name.startswith(".tmp-"):
                    path.unlink(missing_ok=True)
                    removed["temp"] += 1
                elif relative not in referenced:
                    candidates.append((relative, path))
            for start in range(0, len(candidates), 1000):
                chunk = candidates[start : start + 1000]
                still = self._referenced([relative for relative, _ in chunk])
                for relative, path in chunk:
                    if relative not in still:
                        path.unlink(missing_ok=True)
                        removed["originals"] += 1
        if self.files.thumbnails_dir.is_dir():
            for folder in self.files.thumbnails_dir.iterdir():
                if (
                    folder.is_dir()
                    and folder.name.isdigit()
                    and int(folder.name) not in collection_ids
                    and self.get_collection_by_id(int(folder.name)) is None
                ):
                    shutil.rmtree(folder, ignore_errors=True)
                    continue
                for path in folder.glob("*") if folder.is_dir() else []:
                    if path.name.startswith(".tmp-") and old(path):
                        path.unlink(missing_ok=True)
                        removed["temp"] += 1
                        continue
                    head = path.name.split("-", 1)[0]
                    if head.isdigit() and int(head) not in item_ids and old(path):
                        path.unlink(missing_ok=True)
                        removed["thumbnails"] += 1
        if self.files.jobs_dir.is_dir():
            for folder in self.files.jobs_dir.iterdir():
                if folder.name not in live_jobs and old(folder):
                    try:
                        state = self.get_job(folder.name).state
                    except ClipFilterError:
                        state = None
                    if state not in ("queued", "running"):
                        shutil.rmtree(folder, ignore_errors=True)
                        removed["job_spools"] += 1
        if self.files.originals_dir.is_dir():
            for folder in self.files.originals_dir.iterdir():
                if (
                    folder.is_dir()
                    and folder.name.isdigit()
                    and int(folder.name) not in collection_ids
                    and self.get_collection_by_id(int(folder.name)) is None
                ):
                    shutil.rmtree(folder, ignore_errors=True)
        return removed
