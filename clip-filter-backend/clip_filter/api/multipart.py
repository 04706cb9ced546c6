"""Multipart bodies of the collection routes: the repeated `files` parts with their `metadata` parts.

The pairing rules are written once here, for the synchronous add and for bulk upload jobs: one `metadata`
part per file in the same order (or none), each a JSON object; every `files` part a file upload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData, UploadFile

from clip_filter.api import json_body
from clip_filter.collections.validation import validate_metadata
from clip_filter.core.errors import ClipFilterError
from clip_filter.core.validation import invalid

# A metadata part is one small JSON object per file: budgets far below a whole body's.
METADATA_MAX_ELEMENTS = 10_000
METADATA_MAX_DEPTH = 32


@dataclass
class FilePart:
    upload: UploadFile
    filename: str | None
    metadata: dict[str, Any]


def clean_filename(name: str | None) -> str | None:
    """Upload file names are shown and stored as given, but must be valid UTF-8 and of sane length."""
    if not name:
        return None
    return name.encode("utf-8", "replace").decode("utf-8")[:255]


def parse_metadata_part(raw: Any, position: int) -> dict[str, Any]:
    """A multipart `metadata` part: a JSON object (an empty part means none)."""
    if isinstance(raw, UploadFile):
        raise invalid(
            "Every `metadata` part must be a plain form field holding a JSON object.", "invalid_metadata", 422
        )
    if raw is None or not raw.strip():
        return {}
    try:
        # The same scanning parser as JSON bodies: huge integers, deep nesting and floods are 4xx, not 500s.
        value = json_body.parse(raw, METADATA_MAX_ELEMENTS, METADATA_MAX_DEPTH)
    except ClipFilterError as exc:
        raise invalid(
            f"`metadata` {position} is not valid JSON: {exc.message}", "invalid_metadata", 422, index=position
        ) from None
    return validate_metadata(value, f"metadata[{position}]")


def file_parts(form: FormData, limit: int) -> list[FilePart]:
    """The `files` parts (at most `limit`) paired with their `metadata` parts."""
    files = form.getlist("files")
    if not files:
        raise invalid("No files: send one or more in the repeated `files` field.", "no_files", 422)
    if len(files) > limit:
        raise invalid(f"Too many files: {len(files)}; at most {limit} per request.", "too_many_files", 413, limit=limit)
    metadata_parts = form.getlist("metadata")
    if metadata_parts and len(metadata_parts) != len(files):
        raise invalid(
            f"{len(metadata_parts)} `metadata` parts for {len(files)} files: send one per file, in the same order, "
            "or none.",
            "invalid_metadata",
            422,
        )
    metadata = [parse_metadata_part(raw, i) for i, raw in enumerate(metadata_parts)] or [{} for _ in files]
    parts = []
    for upload, meta in zip(files, metadata, strict=True):
        if not isinstance(upload, UploadFile):
            raise invalid("Every `files` part must be a file upload.", status=422)
        parts.append(FilePart(upload, clean_filename(upload.filename), meta))
    return parts
