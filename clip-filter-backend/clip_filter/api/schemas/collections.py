"""Request and response models of the collection, job and map routes.

Request models validate a body that `api/bodies.py` has already read (so a broken body keeps its 400/415
codes); where a rule has a stable error code users rely on (`invalid_collection_name`, `invalid_metadata`,
`invalid_filters`, `too_many_texts`, ...), a `mode="before"` validator raises that ClipFilterError itself,
which pydantic lets through. Everything else pydantic refuses becomes 422 `invalid_request`.

The same search model reads JSON bodies and multipart form fields (which arrive as strings: "20", "",
a JSON string for `filters`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from clip_filter.collections.validation import validate_filters, validate_metadata, validate_name
from clip_filter.core.errors import ClipFilterError
from clip_filter.core.validation import invalid

MAX_ID = 2**63 - 1  # SQLite's integer range: larger ids can only be "not found", never an overflow
MAX_TOP_K = 1000
MAX_OFFSET = 100_000
MAX_DESCRIPTION_CHARS = 2000
MAX_FILENAME_CHARS = 255


def _invalid(message: str, code: str = "invalid_request") -> ClipFilterError:
    return invalid(message, code, 422)  # a body that does not fit its schema: 422, as FastAPI's own


def _description(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION_CHARS:
        raise _invalid(f"`description` must be a string of at most {MAX_DESCRIPTION_CHARS} characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid("`description` is not valid Unicode.") from None
    return value


def _not_bool(value: Any, field: str) -> Any:
    if isinstance(value, bool):
        raise _invalid(f"`{field}` must be an integer.")
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---- requests ---------------------------------------------------------------------------------------------
class CreateCollectionBody(_Body):
    name: str = Field(description="1-64 letters, digits, '_', '.' and '-' (not only dots)")
    description: str | None = Field(None, max_length=MAX_DESCRIPTION_CHARS)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        return validate_name(value)

    @field_validator("description", mode="before")
    @classmethod
    def _check_description(cls, value: Any) -> str | None:
        return _description(value)


class PatchCollectionBody(_Body):
    description: str | None = Field(description="the new description, or null to clear it")

    @field_validator("description", mode="before")
    @classmethod
    def _check_description(cls, value: Any) -> str | None:
        return _description(value)


class AddTextsBody(_Body):
    """Texts to add (JSON); files are sent as multipart `files` (+ optional `metadata` parts) instead."""

    texts: list[str] = Field(min_length=1, description="non-empty list of texts")
    metadata: list[dict[str, Any] | None] | None = Field(None, description="one JSON object (or null) per text")

    @field_validator("texts", mode="before")
    @classmethod
    def _texts(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, list) or not value:
            raise _invalid("`texts` must be a non-empty list of strings (or send files as multipart).")
        limit = (info.context or {}).get("max_texts")
        if limit is not None and len(value) > limit:
            raise invalid(
                f"Too many texts: {len(value)}; at most {limit} per request.", "too_many_texts", 413, limit=limit
            )
        if not all(isinstance(t, str) for t in value):
            raise _invalid("Every entry of `texts` must be a string.")
        return value

    @model_validator(mode="before")
    @classmethod
    def _metadata(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("metadata") is not None:
            texts, metadata = data.get("texts"), data["metadata"]
            if not isinstance(metadata, list) or not isinstance(texts, list) or len(metadata) != len(texts):
                raise _invalid("`metadata` must be a list with one JSON object (or null) per text.", "invalid_metadata")
            data = {**data, "metadata": [validate_metadata(m, f"metadata[{i}]") for i, m in enumerate(metadata)]}
        return data


class PatchItemBody(_Body):
    metadata: dict[str, Any] | None = Field(None, description="replaces the item's metadata")
    filename: str | None = Field(None, min_length=1, max_length=MAX_FILENAME_CHARS)

    @model_validator(mode="before")
    @classmethod
    def _fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "metadata" not in data and "filename" not in data:
                raise _invalid("Send `metadata` (a JSON object, replacing the old one) and/or `filename`.")
            if "metadata" in data:
                if not isinstance(data["metadata"], dict):
                    raise _invalid("`metadata` must be a JSON object.", "invalid_metadata")
                validate_metadata(data["metadata"])
            name = data.get("filename")
            if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > MAX_FILENAME_CHARS):
                raise _invalid(f"`filename` must be a non-empty string of at most {MAX_FILENAME_CHARS} characters.")
        return data


FilterValue = str | int | float | bool | None


class SearchBody(_Body):
    """Exactly one of `text`, `image` (base64 or a data URI; a file part in multipart) and `item_id`."""

    text: str | None = None
    image: str | None = Field(None, description="base64 image or data URI (multipart: a file part)")
    item_id: int | None = Field(None, ge=1, le=MAX_ID)
    top_k: int = Field(20, ge=1, le=MAX_TOP_K)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    min_score: float | None = Field(None, allow_inf_nan=False)
    kind: Literal["image", "text"] | None = None
    filters: dict[str, FilterValue] | None = Field(None, description="metadata equality filters {key: value}")

    @model_validator(mode="before")
    @classmethod
    def _blank_is_absent(cls, data: Any) -> Any:
        """Form fields arrive as strings: an empty one means the field was not given."""
        if isinstance(data, dict):
            data = {key: value for key, value in data.items() if value is not None and value != ""}
            if isinstance(data.get("filters"), str):
                try:
                    data["filters"] = json.loads(data["filters"]) if data["filters"].strip() else None
                except (ValueError, RecursionError):  # ValueError: also integers past Python's digit limit
                    raise _invalid("`filters` must be a JSON object of {key: value}.", "invalid_filters") from None
            if data.get("filters") is not None:
                data["filters"] = validate_filters(data["filters"]) or None
            for field in ("top_k", "offset", "item_id"):
                _not_bool(data.get(field), field)
        return data


class ProjectBody(_Body):
    text: str = Field(description="the text to place on the collection's map")


class FolderJobBody(_Body):
    path: str = Field(description="a folder or file inside CLIP_FILTER_INGEST_ROOTS, on the server")
    include_hidden: bool = Field(False, description="also ingest files and folders whose names start with '.'")

    @field_validator("path", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise _invalid("`path` contains a NUL character.")
        return value


# ---- multipart bodies (documented in OpenAPI; parsed by api/multipart.py) ----------------------------------
def _files_form(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["files"],
        "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": description},
            "metadata": {
                "type": "array",
                "items": {"type": "string"},
                "description": "optional: one JSON object per file, in the same order",
            },
        },
    }


ADD_FILES_FORM = _files_form("images or text/plain files to add")
JOB_FILES_FORM = _files_form("files to ingest in the background")
SEARCH_FORM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "the query image"},
        "text": {"type": "string"},
        "item_id": {"type": "integer"},
        "top_k": {"type": "integer"},
        "offset": {"type": "integer"},
        "min_score": {"type": "number"},
        "kind": {"type": "string", "enum": ["image", "text"]},
        "filters": {"type": "string", "description": "a JSON object of {key: value}"},
    },
}


def request_body(json_model: type[BaseModel] | None = None, multipart: dict[str, Any] | None = None) -> dict[str, Any]:
    """`openapi_extra` declaring a route's request body: the routes read the body themselves (to keep the
    stable error codes of a broken body), so FastAPI cannot infer it."""
    content: dict[str, Any] = {}
    if json_model is not None:
        content["application/json"] = {"schema": json_model.model_json_schema()}
    if multipart is not None:
        content["multipart/form-data"] = {"schema": multipart}
    return {"requestBody": {"required": True, "content": content}}


# ---- responses --------------------------------------------------------------------------------------------
class CollectionOut(BaseModel):
    name: str
    description: str | None
    model: str | None
    pretrained: str | None
    dim: int | None
    item_count: int
    image_count: int
    text_count: int
    created_at: str
    updated_at: str


class CollectionListOut(BaseModel):
    collections: list[CollectionOut]


class ItemOut(BaseModel):
    id: int
    kind: Literal["image", "text"]
    filename: str | None
    mimetype: str
    size: int
    sha256: str
    metadata: dict[str, Any]
    truncated: bool
    width: int | None
    height: int | None
    created_at: str
    content_url: str
    thumbnail_url: str | None
    text: str | None = Field(None, description="text items only (a preview in listings unless full_text=true)")
    text_truncated: bool | None = Field(None, description="text items: `text` is only the start of the stored text")


class ItemPageOut(BaseModel):
    items: list[ItemOut]
    total: int
    offset: int
    limit: int


class AddOutcomeOut(BaseModel):
    index: int
    filename: str | None
    status: Literal["added", "duplicate", "error"]
    id: int | None = None
    item: ItemOut | None = None
    error: dict[str, Any] | None = Field(None, description="the error envelope's fields, plus its status")


class AddItemsOut(BaseModel):
    results: list[AddOutcomeOut]
    added: int
    duplicates: int
    errors: int


class HitOut(BaseModel):
    id: int
    kind: Literal["image", "text"]
    filename: str | None
    mimetype: str
    score: float
    metadata: dict[str, Any]
    content_url: str
    thumbnail_url: str | None
    text: str | None = Field(None, description="text items: a preview unless full_text=true")
    text_truncated: bool | None = Field(None, description="text items: `text` is only the start of the stored text")


class ModelOut(BaseModel):
    name: str
    pretrained: str
    weights: str | None
    dim: int


class SearchOut(BaseModel):
    query_truncated: bool | None = Field(None, description="text queries: the tokenizer cut the text")
    results: list[HitOut]
    offset: int
    top_k: int
    method: str
    total: int | None = Field(None, description="how many items matched (exact searches)")
    model: ModelOut
    weights: str | None


class JobOut(BaseModel):
    id: str
    job_id: str
    collection: str
    state: Literal["queued", "running", "done", "failed", "interrupted"]
    done: int
    total: int
    added: int
    duplicates: int
    failed: int
    failures: list[dict[str, Any]]
    created_at: str
    updated_at: str
    source: Literal["upload", "path"]
    restarts: int
    error: dict[str, Any] | None = None


class MapPointOut(BaseModel):
    id: int
    x: float
    y: float
    kind: Literal["image", "text"]
    filename: str | None
    thumbnail_url: str | None
    text: str | None = None


class MapOut(BaseModel):
    method: str
    points: list[MapPointOut]
    total: int
    sampled: bool
    stale: bool = Field(False, description="the items changed since: the previous map, a new one is being computed")
    computed_at: str | None = Field(None, description="when this layout was computed (UTC)")


class ProjectionOut(BaseModel):
    x: float
    y: float
    method: str
