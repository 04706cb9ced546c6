"""Error factories of the collections layer: one stable code per condition, no web imports."""

from __future__ import annotations

from clip_filter.core.errors import ClipFilterError


def collection_not_found(name: str) -> ClipFilterError:
    return ClipFilterError("collection_not_found", f"Collection {name!r} does not exist.", 404, collection=name)


def item_not_found(name: str, item_id: int) -> ClipFilterError:
    return ClipFilterError("item_not_found", f"Collection {name!r} has no item {item_id}.", 404, item_id=item_id)


def job_not_found(job_id: str) -> ClipFilterError:
    return ClipFilterError("job_not_found", f"There is no job {job_id!r}.", 404, job_id=job_id)


class ModelMismatchError(ClipFilterError):
    """The collection's vectors come from another model than the one asked to add or search (409)."""

    def __init__(self, name: str, recorded: tuple[str, str, int], current: tuple[str, str, int]) -> None:
        fix = f"clip-filter reindex {name}"
        super().__init__(
            "model_mismatch",
            f"Collection {name!r} was indexed with {recorded[0]} ({recorded[1]}, dim {recorded[2]}), but the "
            f"current model is {current[0]} ({current[1]}, dim {current[2]}); their embeddings cannot be "
            f"compared. Run `{fix}` to re-embed the collection with the current model, or run the server "
            f"with CLIP_MODEL={recorded[0]} CLIP_PRETRAINED={recorded[1]}.",
            409,
            collection=name,
            collection_model={"name": recorded[0], "pretrained": recorded[1], "dim": recorded[2]},
            current_model={"name": current[0], "pretrained": current[1], "dim": current[2]},
            fix=fix,
        )
