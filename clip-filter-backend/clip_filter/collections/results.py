"""What the `Collections` facade takes and returns: plain dataclasses, turned into JSON by `views.py`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clip_filter.collections.ingest import Outcome
from clip_filter.collections.store import CollectionRecord, ItemRecord

if TYPE_CHECKING:  # no torch import at runtime
    from clip_filter.ml.encoder import ModelInfo


@dataclass(frozen=True)
class SearchQuery:
    """One search: exactly one of `text`, `image` (raw bytes, or base64 / a data URI) and `item_id`."""

    text: str | None = None
    image: bytes | str | None = None
    item_id: int | None = None
    top_k: int = 20
    offset: int = 0
    min_score: float | None = None
    kind: str | None = None  # "image" | "text" | None (both)
    filters: dict[str, Any] | None = None  # metadata equality filters


@dataclass(frozen=True)
class Hit:
    item: ItemRecord
    score: float  # cosine similarity


@dataclass
class SearchResult:
    collection: CollectionRecord
    query: SearchQuery
    hits: list[Hit]  # best first; items deleted between the index read and the row read are left out
    method: str  # "exact" | "ivf" | "empty"
    total: int | None  # how many items matched the filters (exact searches only)
    model: ModelInfo
    query_truncated: bool | None = None  # text queries: the tokenizer cut the text


@dataclass
class ItemPage:
    items: list[ItemRecord]
    total: int
    offset: int
    limit: int


@dataclass
class AddResult:
    collection: CollectionRecord
    outcomes: list[Outcome]
    items: dict[int, ItemRecord] = field(default_factory=dict)  # the added or duplicate items, by id


@dataclass(frozen=True)
class MapPoint:
    item: ItemRecord
    x: float
    y: float


@dataclass
class CollectionMap:
    method: str  # "umap" | "pca" | "trivial"
    points: list[MapPoint]
    total: int  # items in the collection
    sampled: bool  # the layout was computed from a sample of the items
    stale: bool = False  # the items changed since: this is the previous map, a new one is being computed
    computed_at: str | None = None  # when the layout was computed (UTC, ISO 8601)


@dataclass(frozen=True)
class Projection:
    x: float
    y: float
    method: str


@dataclass
class IngestSummary:
    """A CLI-style ingest of many sources in batches (see `Collections.ingest`)."""

    collection: CollectionRecord
    total: int
    added: int = 0
    duplicates: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ReindexResult:
    collection: CollectionRecord  # after the reindex (the new model recorded)
    before: CollectionRecord
    items: int  # how many items were re-embedded
