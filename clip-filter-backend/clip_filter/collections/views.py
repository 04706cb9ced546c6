"""The JSON shapes of the collections records, written once for the HTTP API and the CLI's `--json` output."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from clip_filter.collections.ingest import Outcome
from clip_filter.collections.results import AddResult, CollectionMap, Hit, ItemPage, Projection, SearchResult
from clip_filter.collections.store import CollectionRecord, ItemRecord, JobRecord
from clip_filter.core.errors import ClipFilterError

SNIPPET_CHARS = 200  # text shown per map point


def collection_view(record: CollectionRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "description": record.description,
        "model": record.model,
        "pretrained": record.pretrained,
        "dim": record.dim,
        "item_count": record.item_count,
        "image_count": record.image_count,
        "text_count": record.text_count,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def model_view(record: CollectionRecord) -> dict[str, Any]:
    return {"name": record.model, "pretrained": record.pretrained, "dim": record.dim}


def item_urls(collection: str, item: ItemRecord) -> dict[str, Any]:
    base = f"/collections/{quote(collection, safe='')}/items/{item.id}"
    return {"content_url": f"{base}/content", "thumbnail_url": f"{base}/thumbnail" if item.kind == "image" else None}


def text_fields(item: ItemRecord, preview: int | None) -> dict[str, Any]:
    """A text item's `text`: whole, or its first `preview` characters with `text_truncated: true` (listings and
    search answer with previews, so a collection of long texts never makes a huge response)."""
    text = item.text or ""
    if preview is not None and len(text) > preview:
        return {"text": text[:preview], "text_truncated": True}
    return {"text": text, "text_truncated": False}


def item_view(collection: str, item: ItemRecord, preview: int | None = None) -> dict[str, Any]:
    out = {
        "id": item.id,
        "kind": item.kind,
        "filename": item.filename,
        "mimetype": item.mimetype,
        "size": item.size,
        "sha256": item.sha256,
        "metadata": item.metadata,
        "truncated": item.truncated,
        "width": item.width,
        "height": item.height,
        "created_at": item.created_at,
        **item_urls(collection, item),
    }
    if item.kind == "text":
        out.update(text_fields(item, preview))
    return out


def item_page_view(collection: str, page: ItemPage, preview: int | None = None) -> dict[str, Any]:
    return {
        "items": [item_view(collection, i, preview) for i in page.items],
        "total": page.total,
        "offset": page.offset,
        "limit": page.limit,
    }


def error_view(error: ClipFilterError) -> dict[str, Any]:
    return {**error.to_dict(), "status": error.status}


def outcome_view(
    collection: str, outcome: Outcome, items: dict[int, ItemRecord], preview: int | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"index": outcome.index, "filename": outcome.filename, "status": outcome.status}
    if outcome.error is not None:
        out["error"] = error_view(outcome.error)
    elif outcome.item_id is not None and outcome.item_id in items:
        out["item"] = item_view(collection, items[outcome.item_id], preview)
        out["id"] = outcome.item_id
    return out


def add_result_view(result: AddResult, preview: int | None = None) -> dict[str, Any]:
    name = result.collection.name
    outcomes = result.outcomes
    return {
        "results": [outcome_view(name, o, result.items, preview) for o in outcomes],
        "added": sum(1 for o in outcomes if o.status == "added"),
        "duplicates": sum(1 for o in outcomes if o.status == "duplicate"),
        "errors": sum(1 for o in outcomes if o.status == "error"),
    }


def hit_view(collection: str, hit: Hit, preview: int | None = None) -> dict[str, Any]:
    item = hit.item
    out = {
        "id": item.id,
        "kind": item.kind,
        "filename": item.filename,
        "mimetype": item.mimetype,
        "score": hit.score,
        "metadata": item.metadata,
        **item_urls(collection, item),
    }
    if item.kind == "text":
        out.update(text_fields(item, preview))
    return out


def search_view(result: SearchResult, preview: int | None = None) -> dict[str, Any]:
    name = result.collection.name
    out: dict[str, Any] = {}
    if result.query_truncated is not None:
        out["query_truncated"] = result.query_truncated
    out.update(
        results=[hit_view(name, hit, preview) for hit in result.hits],
        offset=result.query.offset,
        top_k=result.query.top_k,
        method=result.method,
    )
    if result.total is not None:
        out["total"] = result.total
    info = result.model
    out.update(
        model={"name": info.model, "pretrained": info.pretrained, "weights": info.weights, "dim": info.dim},
        weights=info.weights,
    )
    return out


def job_view(job: JobRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": job.id,
        "job_id": job.id,
        "collection": job.collection,
        "state": job.state,
        "done": job.done,
        "total": job.total,
        "added": job.added,
        "duplicates": job.duplicates,
        "failed": job.failed,
        "failures": job.failures,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "source": job.source,
        "restarts": job.attempts,  # how often a crash interrupted it (it was resumed each time)
    }
    if job.error:
        out["error"] = job.error
    return out


def map_view(collection: str, result: CollectionMap) -> dict[str, Any]:
    points = []
    for point in result.points:
        item = point.item
        shown = {
            "id": item.id,
            "x": point.x,
            "y": point.y,
            "kind": item.kind,
            "filename": item.filename,
            "thumbnail_url": item_urls(collection, item)["thumbnail_url"],
        }
        if item.kind == "text":
            shown["text"] = (item.text or "")[:SNIPPET_CHARS]
        points.append(shown)
    return {
        "method": result.method,
        "points": points,
        "total": result.total,
        "sampled": result.sampled,
        "stale": result.stale,
        "computed_at": result.computed_at,
    }


def projection_view(projection: Projection) -> dict[str, Any]:
    return {"x": projection.x, "y": projection.y, "method": projection.method}
