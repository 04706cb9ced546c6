"""In-memory vector search for one collection: exact (NumPy) and approximate (FAISS IVF-Flat).

SQLite is the source of truth; these structures are rebuilt from it at startup and updated after each
commit. Every vector is L2-normalised float32, so the inner product is the cosine.

Exact search (`ExactIndex`) is the reference: one matrix-vector product, `argpartition` for the top k,
then a tie-stable sort (score descending, id ascending) so that pagination is deterministic.

Approximate search (`IvfIndex`): FAISS `IndexIVFFlat` with inner product. Chosen over HNSW because
- it supports deleting vectors (`remove_ids`); HNSW cannot delete, it would need tombstones and rebuilds;
- it builds in seconds on 2 cores at 1M vectors (k-means on a sample + one assignment pass), HNSW takes
  minutes;
- it takes an id selector, so filtered searches scan only allowed vectors;
- it stores the full vectors, so its scores are exact cosines of the candidates it scans: recall only
  depends on how many lists are probed (`nprobe`), measured by bench/search_bench.py.
Candidates are still re-scored with NumPy from the exact matrix so that both paths report the same
scores for the same item (up to float32 rounding: BLAS may sum a dot product in another order).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)

KIND_CODES = {"image": 0, "text": 1}


@dataclass
class Hits:
    ids: np.ndarray  # (k,) int64, best first
    scores: np.ndarray  # (k,) float32
    total: int | None = None  # how many items matched the filters (exact path only)
    method: str = "exact"


def top_k_rows(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Row indices of the k best scores, ordered by score desc then id asc; ties at the cut are exact."""
    n = scores.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, np.int64)
    if k < n:
        part = np.argpartition(-scores, k - 1)[:k]
        threshold = scores[part].min()
        # Every row tied with the k-th score is a candidate, so the id tie-break decides, not argpartition.
        candidates = np.flatnonzero(scores >= threshold)
    else:
        candidates = np.arange(n)
    order = np.lexsort((ids[candidates], -scores[candidates]))[:k]
    return candidates[order]


class ExactIndex:
    """Rows kept in ascending id order (ids only grow), deletions are tombstones compacted in bulk.

    Readers take a snapshot (array references + a copy of the alive mask) under a short lock and do
    the maths outside it: appends write past the snapshot's end and compaction builds new arrays.
    """

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self._lock = threading.Lock()
        self._vectors = np.zeros((capacity, dim), np.float32)
        self._ids = np.zeros(capacity, np.int64)
        self._kinds = np.zeros(capacity, np.int8)
        self._alive = np.zeros(capacity, bool)
        self._n = 0  # rows used (alive or tombstoned)
        self._dead = 0

    # ---- writing ------------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray, kinds: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        if ids.size == 0:
            return
        vectors = np.asarray(vectors, np.float32).reshape(len(ids), self.dim)
        kinds = np.asarray(kinds, np.int8)
        with self._lock:
            if (self._n and ids.min() <= self._ids[self._n - 1]) or np.any(np.diff(ids) <= 0):
                self._rebuild_sorted(ids, vectors, kinds)  # out-of-order ids: rare (imports), O(n)
                return
            self._reserve(self._n + len(ids))
            end = self._n + len(ids)
            self._vectors[self._n : end] = vectors
            self._ids[self._n : end] = ids
            self._kinds[self._n : end] = kinds
            self._alive[self._n : end] = True
            self._n = end

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        with self._lock:
            rows = self._rows_of(ids)
            rows = rows[self._alive[rows]]
            if rows.size == 0:
                return
            alive = self._alive.copy()  # never mutate an array a reader may hold
            alive[rows] = False
            self._alive = alive
            self._dead += rows.size
            if self._dead > max(1024, self._n // 4):
                self._compact()

    def _reserve(self, needed: int) -> None:
        capacity = self._vectors.shape[0]
        if needed <= capacity:
            return
        capacity = max(needed, capacity * 2)
        for name in ("_vectors", "_ids", "_kinds", "_alive"):
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), old.dtype)
            new[: self._n] = old[: self._n]
            setattr(self, name, new)

    def _compact(self) -> None:
        keep = np.flatnonzero(self._alive[: self._n])
        n = keep.size
        capacity = max(1024, n * 2 if n else 1024)
        vectors = np.zeros((capacity, self.dim), np.float32)
        vectors[:n] = self._vectors[keep]
        ids = np.zeros(capacity, np.int64)
        ids[:n] = self._ids[keep]
        kinds = np.zeros(capacity, np.int8)
        kinds[:n] = self._kinds[keep]
        alive = np.zeros(capacity, bool)
        alive[:n] = True
        self._vectors, self._ids, self._kinds, self._alive = vectors, ids, kinds, alive
        self._n, self._dead = n, 0

    def _rebuild_sorted(self, ids: np.ndarray, vectors: np.ndarray, kinds: np.ndarray) -> None:
        keep = self._alive[: self._n]
        all_ids = np.concatenate([self._ids[: self._n][keep], ids])
        all_vectors = np.concatenate([self._vectors[: self._n][keep], vectors])
        all_kinds = np.concatenate([self._kinds[: self._n][keep], kinds])
        order = np.argsort(all_ids, kind="stable")
        all_ids, first = np.unique(all_ids[order], return_index=True)  # a re-added id replaces nothing
        rows = order[first]
        self._vectors = np.zeros((0, self.dim), np.float32)
        self._ids, self._kinds, self._alive = np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, bool)
        self._n = self._dead = 0
        self._reserve(max(1024, len(all_ids)))
        n = len(all_ids)
        self._vectors[:n] = all_vectors[rows]
        self._ids[:n] = all_ids
        self._kinds[:n] = all_kinds[rows]
        self._alive[:n] = True
        self._n = n

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        used = self._ids[: self._n]
        rows = np.searchsorted(used, ids)
        rows = np.clip(rows, 0, max(self._n - 1, 0))
        found = (rows < self._n) & (used[rows] == ids) if self._n else np.zeros(len(ids), bool)
        return rows[found]

    # ---- reading ------------------------------------------------------------------------------------
    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(vectors, ids, kinds, alive) views of the used rows, safe to read without the lock."""
        with self._lock:
            n = self._n
            return self._vectors[:n], self._ids[:n], self._kinds[:n], self._alive[:n]

    def __len__(self) -> int:
        with self._lock:
            return self._n - self._dead

    def alive_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of (ids, vectors, kinds) of the live rows, in id order."""
        vectors, ids, kinds, alive = self.snapshot()
        return ids[alive].copy(), vectors[alive].copy(), kinds[alive].copy()

    def vectors_for(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found ids, their vectors) for the given ids that are alive, in id order."""
        vectors, all_ids, _, alive = self.snapshot()
        ids = np.unique(np.asarray(ids, np.int64))
        rows = np.searchsorted(all_ids, ids)
        ok = rows < all_ids.size
        rows, ids = rows[ok], ids[ok]
        ok = (all_ids[rows] == ids) & alive[rows]
        return ids[ok], vectors[rows[ok]]

    def search(
        self,
        query: np.ndarray,
        k: int,
        offset: int = 0,
        allowed_ids: np.ndarray | None = None,
        kind: str | None = None,
        min_score: float | None = None,
    ) -> Hits:
        vectors, ids, kinds, alive = self.snapshot()
        valid = alive.copy()
        if kind is not None:
            valid &= kinds == KIND_CODES[kind]
        if allowed_ids is not None:
            valid &= np.isin(ids, allowed_ids, assume_unique=False)
        rows = np.flatnonzero(valid)
        query = np.asarray(query, np.float32).reshape(-1)
        if rows.size < valid.size // 4:
            # Selective filters: score only the allowed rows.
            scores = vectors[rows] @ query
            row_ids = ids[rows]
        else:
            all_scores = vectors @ query
            scores, row_ids = all_scores[rows], ids[rows]
        if min_score is not None:
            keep = scores >= np.float32(min_score)
            scores, row_ids = scores[keep], row_ids[keep]
        best = top_k_rows(scores, row_ids, offset + k)[offset:]
        return Hits(row_ids[best], scores[best].astype(np.float32), total=int(scores.size), method="exact")


# ---- approximate ---------------------------------------------------------------------------------------
def ivf_params(n: int) -> tuple[int, int]:
    """(nlist, nprobe) for n vectors: ~sqrt(n) lists with >= 39 training points each, ~1/16 of them probed.

    bench/search_bench.py measures recall@10 >= 0.97 with these on clustered data at 10k-1M vectors.
    """
    nlist = int(max(1, min(4096, round(math.sqrt(n)), n // 39)))
    nprobe = int(min(nlist, max(16, math.ceil(nlist / 16))))
    return nlist, nprobe


class IvfIndex:
    """FAISS IndexIVFFlat (inner product) keyed by item id; thread-safe through one lock."""

    def __init__(self, index: faiss.IndexIVFFlat, nprobe: int, trained_on: int) -> None:
        self._index = index
        self.nprobe = nprobe
        self.trained_on = trained_on
        self._lock = threading.Lock()

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, seed: int = 1234) -> IvfIndex:
        import faiss

        n, dim = vectors.shape
        nlist, nprobe = ivf_params(n)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.niter = 10
        rng = np.random.default_rng(seed)
        sample_size = min(n, nlist * 64)
        sample = vectors if sample_size == n else vectors[np.sort(rng.choice(n, sample_size, replace=False))]
        index.train(np.ascontiguousarray(sample, np.float32))
        index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(ids, np.int64))
        return cls(index, nprobe, n)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def memory_bytes(self) -> int:
        """Vectors + ids in the inverted lists + centroids."""
        index = self._index
        return int(index.ntotal * (index.d * 4 + 8) + index.nlist * index.d * 4)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            with self._lock:
                self._index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(ids, np.int64))

    def remove(self, ids: np.ndarray) -> None:
        import faiss

        if len(ids):
            with self._lock:
                self._index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, np.int64)))

    def search(self, query: np.ndarray, k: int, allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Candidate (ids, scores), best first; fewer than k when the probed lists hold fewer."""
        import faiss

        nprobe = self.nprobe
        if k > 256:  # deep pages need more candidates than the default probe finds
            nprobe = min(self._index.nlist, nprobe * math.ceil(k / 256))
        params = faiss.SearchParametersIVF(nprobe=nprobe)  # type: ignore[call-arg]  # SWIG takes keywords; the stub omits them
        if allowed_ids is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, np.int64))
            params.sel = selector
        q = np.ascontiguousarray(query, np.float32).reshape(1, -1)
        with self._lock:
            scores, ids = self._index.search(q, k, params=params)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]


class CollectionIndex:
    """What one collection searches with: always the exact index, plus IVF once it is large enough."""

    def __init__(self, dim: int, version: int, ann_min_items: int) -> None:
        self.dim = dim
        self.version = version
        self.ann_min_items = ann_min_items
        self.exact = ExactIndex(dim)
        self.ann: IvfIndex | None = None
        self._lock = threading.Lock()
        self._building = False
        self._pending: list[tuple[str, np.ndarray, np.ndarray | None]] | None = None  # deltas during a build

    # ---- writing ------------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray, kinds: list[str] | np.ndarray) -> None:
        codes = np.array([KIND_CODES[k] if isinstance(k, str) else k for k in kinds], np.int8)
        self.exact.add(ids, vectors, codes)
        with self._lock:
            if self.ann is not None:
                self.ann.add(ids, vectors)
            if self._pending is not None:
                self._pending.append(("add", np.asarray(ids, np.int64), np.asarray(vectors, np.float32)))
        self.maybe_build_ann(background=True)

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        self.exact.remove(ids)
        with self._lock:
            if self.ann is not None:
                self.ann.remove(ids)
            if self._pending is not None:
                self._pending.append(("remove", ids, None))
            if self.ann is not None and len(self.exact) < self.ann_min_items // 2:
                self.ann = None  # small again: exact is fast enough and always right

    def __len__(self) -> int:
        return len(self.exact)

    # ---- the approximate index ------------------------------------------------------------------------
    def maybe_build_ann(self, background: bool = True) -> threading.Thread | None:
        """(Re)build IVF when the collection reached ann_min_items, or grew 4x since the last training."""
        n = len(self.exact)
        with self._lock:
            if self._building or n < self.ann_min_items:
                return None
            if self.ann is not None and n < 4 * self.ann.trained_on:
                return None
            self._building = True
            self._pending = []
        ids, vectors, _ = self.exact.alive_arrays()  # a snapshot: later deltas go to _pending

        def build() -> None:
            try:
                ann = IvfIndex.build(ids, vectors)
                with self._lock:
                    for op, delta_ids, delta_vectors in self._pending or []:
                        if op == "add":
                            assert delta_vectors is not None  # an "add" delta carries its vectors
                            ann.add(delta_ids, delta_vectors)
                        else:
                            ann.remove(delta_ids)
                    self.ann = ann
            except Exception:  # noqa: BLE001 - exact search keeps working; log and go on
                log.exception("building the approximate index failed; exact search is used")
            finally:
                with self._lock:
                    self._pending = None
                    self._building = False

        if not background:
            build()
            return None
        thread = threading.Thread(target=build, name="ivf-build", daemon=True)
        thread.start()
        return thread

    # ---- reading ------------------------------------------------------------------------------------
    def search(
        self,
        query: np.ndarray,
        k: int,
        offset: int = 0,
        allowed_ids: np.ndarray | None = None,
        kind: str | None = None,
        min_score: float | None = None,
        exact: bool = False,
    ) -> Hits:
        ann = self.ann
        if exact or ann is None or len(self.exact) < self.ann_min_items:
            return self.exact.search(query, k, offset, allowed_ids, kind, min_score)
        allowed = allowed_ids
        if kind is not None:
            _vectors, ids, kinds, alive = self.exact.snapshot()
            kind_ids = ids[alive & (kinds == KIND_CODES[kind])]
            allowed = kind_ids if allowed is None else np.intersect1d(kind_ids, allowed)
        if allowed is not None and allowed.size < len(self.exact) // 4:
            # Selective filters: the exact path scores only the allowed rows, cheaply and correctly.
            return self.exact.search(query, k, offset, allowed, None, min_score)
        want = offset + k
        cand_ids, _ = ann.search(query, want, allowed)
        if cand_ids.size < want and (allowed is None or cand_ids.size < allowed.size):
            # The probed lists held too few (allowed) vectors: fall back to the exact answer.
            return self.exact.search(query, k, offset, allowed, None, min_score)
        # Exact re-scoring from the same matrix as the exact path: identical scores for the same item.
        found_ids, found_vectors = self.exact.vectors_for(cand_ids)
        scores = found_vectors @ np.asarray(query, np.float32).reshape(-1)
        if min_score is not None:
            keep = scores >= np.float32(min_score)
            found_ids, scores = found_ids[keep], scores[keep]
        best = top_k_rows(scores, found_ids, want)[offset:]
        return Hits(found_ids[best], scores[best].astype(np.float32), total=None, method="ivf")
