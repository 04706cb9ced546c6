"""The records the collections store reads and writes: plain dataclasses, no storage types."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

import numpy as np

from clip_filter.collections.errors import ModelMismatchError

MAX_STORED_FAILURES = 1000  # per job; the counts stay exact beyond it


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
            raise ModelMismatchError(
                self.name, (self.model, self.pretrained or "", self.dim or 0), (model, pretrained, dim)
            )


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


@dataclass(frozen=True)
class JobFile:
    seq: int
    filename: str | None
    path: str
    metadata: dict[str, Any]
    content_type: str | None = None


class VectorSet(NamedTuple):
    """A collection's vectors read in one consistent snapshot (ids ascending; rows line up)."""

    version: int
    ids: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, dim) float32; (0, 0) while the collection has no dimension yet
    kinds: list[str]


@dataclass(frozen=True)
class FileReferences:
    """What the database references on disk, for garbage collection of the files no row needs."""

    collection_ids: set[int]
    originals: set[str]  # original paths relative to the data dir
    live_jobs: set[str]  # queued or running jobs (their spools stay)
