"""The PostgreSQL store's search: metadata filters as SQL, exact scans and HNSW index scans (a mixin)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from clip_filter.collections.store.postgres_common import PostgresStoreBase, _no_nul
from clip_filter.collections.validation import validate_filters
from clip_filter.collections.vector_index import KIND_CODES, Hits, top_k_rows
from clip_filter.core.errors import ClipFilterError

MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search
# A filter the planner estimates at more than this many times exact_max_rows rows goes straight to the
# index (no count); a wrong estimate costs time only: a scan that comes back short ends in the exact answer.
COUNT_MARGIN = 2


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


class PostgresSearchMixin(PostgresStoreBase):
    """`search` (the `SearchingStore` part) of `PostgresCollectionStore`: here the database is the vector index."""

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
            if filters and matching > self.exact_max_rows and not exact and index_type is not None:
                # Exact when few rows match, else the index. Counting the matches costs a heap fetch per
                # row up to the bound (~25 ms for 5000 at 1M rows), so the planner's estimate decides first
                # (jsonb containment is estimated from the column's statistics); only near or below the
                # bound is the filter scored exactly with a bound, which doubles as the count.
                if self._estimated_rows(conn, where, params) <= COUNT_MARGIN * self.exact_max_rows:
                    hits = self._search_exact(
                        conn, query, where, params, want, offset, min_score_param, bound=self.exact_max_rows
                    )
                    if hits is not None:
                        return hits
                matching = self.exact_max_rows + 1  # more than the bound: the index
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
            hits = self._search_exact(conn, query, where, params, want, offset, min_score_param)
            assert hits is not None  # no bound: always the answer
            return hits

    @staticmethod
    def _estimated_rows(conn: Any, where: str, params: list[Any]) -> float:
        """The planner's estimate of the rows `where` matches (one planning, no execution)."""
        plan = conn.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM items WHERE {where}", params).fetchone()
        return float(next(iter(plan.values()))[0]["Plan"]["Plan Rows"])

    @staticmethod
    def _search_exact(
        conn: Any,
        query: np.ndarray,
        where: str,
        params: list[Any],
        want: int,
        offset: int,
        min_score: float | None,
        bound: int | None = None,
    ) -> Hits | None:
        """Every matching row scored exactly; with `bound`, None when more than `bound` rows match."""
        if bound is not None:
            # At most bound + 1 rows are read and scored; `matched` tells whether the bound was passed.
            # min_score is applied after the count (FILTER) so that an empty page still reports it.
            floor = -3.0 if min_score is None else min_score  # below any cosine
            rows = conn.execute(
                "SELECT id, score, count(*) OVER () AS matched, count(*) FILTER (WHERE score >= %s) OVER () AS total "
                f"FROM (SELECT id, (embedding <#> %s) * -1 AS score FROM items WHERE {where} LIMIT %s) AS scored "
                "ORDER BY score >= %s DESC, score DESC, id LIMIT %s",
                (floor, query, *params, bound + 1, floor, want),
            ).fetchall()
            if rows and int(rows[0]["matched"]) > bound:
                return None
            total = int(rows[0]["total"]) if rows else 0
            rows = [r for r in rows if r["score"] >= floor][offset:]
        else:
            score_filter, extra = "", []
            if min_score is not None:
                score_filter = " WHERE score >= %s"
                extra = [min_score]
            # The scores are computed below the window (OFFSET 0 keeps the subquery from being flattened):
            # it then counts narrow (id, score) rows; over the rows themselves it spills every vector to disk.
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
        # set_config(..., true) is SET LOCAL: for this transaction only (the pooled connection keeps its
        # defaults); all four in one round trip. enable_sort off: the decision for the index was made above
        # from exact counts; without it, a filter the planner misestimates (jsonb containment has no useful
        # statistics) makes it sort all matching rows.
        conn.execute(
            "SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', 'relaxed_order', true), "
            "set_config('hnsw.max_scan_tuples', %s, true), set_config('enable_sort', 'off', true)",
            (str(ef), str(int(max(self.max_scan_tuples, candidates)))),
        )
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
        # filter each candidate costs ~1/selectivity visited tuples (iterative scan): at least twice the
        # page, and up to `filtered_candidates` (capped by ef_search) for the exact re-sort to pick from;
        # the relaxed order's first matches alone miss true neighbours at 1M rows.
        unfiltered = max(want, ef)
        candidates = max(2 * want, want + 10, min(ef, self.filtered_candidates)) if filtered else unfiltered
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
