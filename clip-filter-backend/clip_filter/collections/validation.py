"""Request rules of the collections layer (names, metadata, filters), shared by the API and the CLI.

Each rule raises a ClipFilterError with one stable code; nothing here imports a web framework.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from clip_filter.core.errors import ClipFilterError

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # used with fullmatch: `$` would let "c\n" through
MAX_METADATA_BYTES = 64 * 1024
MAX_FILTERS = 64  # each is an AND term; SQLite refuses expressions deeper than 1000


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or set(name) == {"."}:
        raise ClipFilterError(
            "invalid_collection_name",
            "A collection name is 1-64 characters of letters, digits, '_', '.' and '-' (not only dots).",
            422,
            name=name if isinstance(name, str) else None,
        )
    return name


def validate_metadata(value: Any, where: str = "metadata") -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ClipFilterError("invalid_metadata", f"`{where}` must be a JSON object.", 422)
    try:
        # ValueError covers NaN/Infinity and (UnicodeEncodeError) lone surrogates SQLite cannot store.
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ClipFilterError("invalid_metadata", f"`{where}` is not valid JSON: {exc}", 422) from exc
    if len(encoded) > MAX_METADATA_BYTES:
        raise ClipFilterError(
            "metadata_too_large",
            f"`{where}` is over {MAX_METADATA_BYTES} bytes of JSON.",
            413,
            limit=MAX_METADATA_BYTES,
        )
    return value


def validate_filters(filters: Any) -> dict[str, Any]:
    """Metadata equality filters: {key: scalar}. Keys become SQLite JSON paths, so quotes are refused."""
    if filters is None:
        return {}
    if not isinstance(filters, dict):
        raise ClipFilterError("invalid_filters", "`filters` must be a JSON object of {key: value}.", 422)
    if len(filters) > MAX_FILTERS:
        raise ClipFilterError(
            "too_many_filters", f"{len(filters)} filters; at most {MAX_FILTERS} per search.", 422, limit=MAX_FILTERS
        )
    for key, value in filters.items():
        # Control characters (NUL above all: SQLite reads the JSON path as a C string) are refused too.
        if (
            not key
            or '"' in key
            or "\\" in key
            or len(key) > 256
            or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key)
        ):
            raise ClipFilterError(
                "invalid_filters",
                f"Filter key {key!r} is not allowed (1-256 characters, no quotes, backslashes or control characters).",
                422,
            )
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ClipFilterError(
                "invalid_filters", f"Filter {key!r} must be a string, number, boolean or null (equality only).", 422
            )
        if isinstance(value, float) and not np.isfinite(value):
            raise ClipFilterError("invalid_filters", f"Filter {key!r} must be a finite number.", 422)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            raise ClipFilterError("invalid_filters", f"Filter {key!r} is out of the 64-bit integer range.", 422)
        try:
            (key + (value if isinstance(value, str) else "")).encode("utf-8")
        except UnicodeEncodeError:
            raise ClipFilterError("invalid_filters", "Filters must be valid Unicode text.", 422) from None
    return filters
