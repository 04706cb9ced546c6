"""`CollectionStore`: what the collections layer needs from its database, and nothing else.

`SqliteCollectionStore` and `PostgresCollectionStore` (postgres.py) implement it. Signatures carry
only records (`records.py`), NumPy arrays and plain Python types: no connection, cursor or row types.
Transactions stay inside the methods: each write method is one transaction, committed before it returns.

Durability contract (every implementation):
- "Durable" means: once the method returns, the write survives kill -9 and an OS crash or power loss
  (SQLite: WAL with synchronous=FULL; PostgreSQL: a committed transaction with synchronous_commit=on).
- An item row and its vector are committed together; no vector without an item or item without a vector.
- Original files are written (with `files`, fsynced) by the caller *before* the transaction that references
  them; a write that fails or turns out a duplicate removes the originals it was handed.
- Every write to a collection bumps its `version` and, after the commit, announces a `Change` to the
  listeners of this process, in commit order (the in-memory indexes apply it as a delta). Writes of other
  processes are noticed through the version alone.
- Reads see committed data only; methods that read several things (`list_items`, `load_vectors`) read
  them in one consistent snapshot.
- Errors are `ClipFilterError`s with the collections layer's codes (`collection_not_found`,
  `item_not_found`, `job_not_found`, `collection_exists`, `model_mismatch`, `store_closed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from clip_filter.collections.store.files import DataFiles
from clip_filter.collections.store.records import (
    Change,
    CollectionRecord,
    ItemRecord,
    JobFile,
    JobProgress,
    JobRecord,
    NewItem,
    VectorSet,
)

if TYPE_CHECKING:
    from clip_filter.collections.vector_index import Hits

ModelKey = tuple[str, str, int]  # (architecture, pretrained tag or path, dimension)


class CollectionStore(Protocol):
    files: DataFiles  # originals, thumbnails and job spools of the data folder

    # ---- lifecycle and changes -----------------------------------------------------------------------
    def add_listener(self, listener: Callable[[Change], None]) -> None:
        """Call `listener` after each commit of this process that changes a collection, in commit order."""
        ...

    def close(self) -> None:
        """Release connections; later calls raise `store_closed` (503)."""
        ...

    # ---- collections ---------------------------------------------------------------------------------
    def create_collection(
        self, name: str, description: str | None = None, model: ModelKey | None = None
    ) -> CollectionRecord:
        """Durable on return. 409 `collection_exists` when the name is taken; `model` may be recorded up front."""
        ...

    def get_collection(self, name: str) -> CollectionRecord:
        """The committed collection (404 `collection_not_found`)."""
        ...

    def get_collection_by_id(self, collection_id: int) -> CollectionRecord | None:
        """The committed collection, or None when it was deleted."""
        ...

    def list_collections(self) -> list[CollectionRecord]:
        """All collections, by name."""
        ...

    def update_collection(self, name: str, description: str | None) -> CollectionRecord:
        """Durable on return; bumps the version. 404 when missing."""
        ...

    def delete_collection(self, name: str) -> None:
        """Durable on return: the rows go in one transaction, its unfinished jobs are marked failed, and a
        `Change(reset=True, version=-1)` is announced; its files are removed after the commit (gc finishes a
        crash in between)."""
        ...

    # ---- items ---------------------------------------------------------------------------------------
    def known_hashes(self, collection_id: int, hashes: list[str]) -> dict[str, int]:
        """sha256 -> item id for those of `hashes` already committed in the collection."""
        ...

    def add_items(
        self, collection_id: int, items: list[NewItem], model: ModelKey | None, progress: JobProgress | None = None
    ) -> list[tuple[str, int]]:
        """One durable transaction: [("added" | "duplicate", item id)] in input order.

        `model` is checked against the collection inside the transaction (409 `model_mismatch`) and recorded
        while it is empty. `progress` (a job's counts) commits in the same transaction, so a resumed job
        continues after the last commit. Originals of duplicates and of a failed transaction are removed.
        """
        ...

    def get_item(self, collection: CollectionRecord, item_id: int) -> ItemRecord:
        """One committed item (404 `item_not_found`)."""
        ...

    def list_items(self, collection_id: int, offset: int, limit: int) -> tuple[list[ItemRecord], int]:
        """A page in id order and the collection's item count, from one snapshot."""
        ...

    def items_by_ids(self, collection_id: int, ids: list[int]) -> dict[int, ItemRecord]:
        """The committed items among `ids` (deleted ones are absent)."""
        ...

    def iter_items(self, collection_id: int, batch: int = 500) -> Iterator[list[ItemRecord]]:
        """All items in id order, in batches (keyset pagination: stable while others write)."""
        ...

    def items_with_vectors(
        self, collection_id: int, batch: int = 1000
    ) -> Iterator[tuple[list[ItemRecord], np.ndarray]]:
        """(items, their embeddings as an (n, dim) float32 array) in id order, in batches (export)."""
        ...

    def update_item(
        self, collection: CollectionRecord, item_id: int, metadata: dict[str, Any] | None, filename: str | None
    ) -> ItemRecord:
        """Durable on return; replaces the given fields (None: unchanged) and bumps the version."""
        ...

    def delete_item(self, collection: CollectionRecord, item_id: int) -> None:
        """Durable on return; removes its original and thumbnails after the commit (404 when missing)."""
        ...

    def original_file(self, item: ItemRecord) -> Path | None:
        """Where the item's original lies (None for texts)."""
        ...

    # ---- vectors -------------------------------------------------------------------------------------
    def load_vectors(self, collection_id: int) -> VectorSet:
        """Every vector of a collection with the version it reflects, from one snapshot (the in-memory
        index is built from it)."""
        ...

    def get_vector(self, collection: CollectionRecord, item_id: int) -> np.ndarray:
        """One item's embedding (404 `item_not_found`)."""
        ...

    def filter_ids(self, collection_id: int, filters: dict[str, Any]) -> np.ndarray:
        """Ids (int64, ascending) of items whose metadata equals every filter value (top-level keys). A string
        value also matches a number or boolean written the same way ("2023" finds 2023)."""
        ...

    def replace_embeddings(
        self, collection_id: int, embeddings: dict[int, tuple[np.ndarray, bool]], model: ModelKey
    ) -> tuple[bool, set[int]]:
        """Reindex commit: every vector (and truncated flag) and the recorded model, in one durable
        transaction. When items exist that `embeddings` lacks, nothing is written and their ids come back."""
        ...

    # ---- jobs ----------------------------------------------------------------------------------------
    def create_job(
        self,
        job_id: str,
        collection: CollectionRecord,
        source: str,
        path: str | None,
        files: list[JobFile],
        failures: list[dict[str, Any]] | None = None,
    ) -> JobRecord:
        """A queued job and its file list, durable on return (spooled files must be fsynced before)."""
        ...

    def get_job(self, job_id: str) -> JobRecord:
        """404 `job_not_found` when unknown."""
        ...

    def job_files(self, job_id: str, after_seq: int, limit: int) -> list[JobFile]:
        """The job's next files after `after_seq`, in seq order."""
        ...

    def job_done_seq(self, job_id: str) -> int:
        """The seq of the last file whose batch committed (-1 before the first)."""
        ...

    def set_job_state(
        self, job_id: str, state: str, error: dict[str, Any] | None = None, crashed: bool = False
    ) -> None:
        """Durable on return; `crashed` counts a restart that interrupted the job."""
        ...

    def unfinished_jobs(self) -> list[JobRecord]:
        """Queued and running jobs, oldest first (resumed at startup)."""
        ...

    # ---- housekeeping --------------------------------------------------------------------------------
    def collect_garbage(self, min_age_s: float = 3600.0) -> dict[str, int]:
        """Remove files no committed row references, older than `min_age_s` (see gc.py)."""
        ...


@runtime_checkable
class SearchingStore(Protocol):
    """A store that is its own vector index (PostgreSQL + pgvector): the facade hands it the whole search
    instead of ranking in an in-memory index. SQLite is not one."""

    def search(
        self,
        collection_id: int,
        query: np.ndarray,
        top_k: int,
        offset: int = 0,
        filters: dict[str, Any] | None = None,
        kind: str | None = None,
        min_score: float | None = None,
    ) -> Hits:
        """Top hits by cosine (score desc, then id asc), as the in-memory index returns them; 409
        `dimension_mismatch` when the query's dimension is not the collection's."""
        ...
