"""The PostgreSQL store's collections: collection rows, their `items` partitions and HNSW indexes (a mixin)."""

from __future__ import annotations

import json
from typing import Any

from clip_filter.collections.errors import collection_not_found
from clip_filter.collections.store.postgres_common import PostgresStoreBase, _iso, _no_nul
from clip_filter.collections.store.records import Change, CollectionRecord, utc_now
from clip_filter.collections.validation import validate_name
from clip_filter.core.errors import ClipFilterError

COLLECTION_COLUMNS = (
    "id, name, description, model, pretrained, dim, item_count, image_count, text_count, version, created_at, "
    "updated_at"
)


class PostgresCollectionsMixin(PostgresStoreBase):
    """Collection methods of `PostgresCollectionStore` (create, read, list, delete, update, index builds)."""

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
            # At least 1 GB for this build (a graph that outgrows maintenance_work_mem builds far slower);
            # a server configured with more keeps its value (1M halfvec(512) rows need ~2 GB).
            conn.execute(
                "SELECT set_config('maintenance_work_mem', '1GB', true) "
                "WHERE pg_size_bytes(current_setting('maintenance_work_mem')) < pg_size_bytes('1GB')"
            )
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
