"""Input rules shared by every entry point (HTTP routes, protocol adapters, CLI), each with one error code.

One rule, one code: a text that is too long is `text_too_long` whether it is a caption to match, a search
query or a text item to store. Modules here import no web framework, so the CLI and the collections layer
use the same checks.

Statuses: a value of the wrong shape is 422 (the request parsed but cannot be served), a count or size over
a limit is 413. Errors in the JSON itself (syntax, nesting, huge integers) are 400, raised by the parser.
"""

from __future__ import annotations

from typing import Any

from clip_filter.core.errors import ClipFilterError


def invalid(message: str, code: str = "invalid_request", status: int = 422, **details: Any) -> ClipFilterError:
    return ClipFilterError(code, message, status, **details)


def check_text(value: Any, field: str, max_chars: int, index: int | None = None) -> str:
    """A non-empty, valid-Unicode string of at most `max_chars` characters, else a 4xx with one code per rule."""
    where = f"`{field}`" if index is None else f"`{field}[{index}]`"
    position: dict[str, Any] = {} if index is None else {"index": index}
    if not isinstance(value, str):
        raise invalid(f"{where} must be a string.", **position)
    if not value.strip():
        raise invalid(f"{where} is empty.", "empty_text", **position)
    if len(value) > max_chars:
        raise invalid(
            f"{where} has {len(value)} characters; at most {max_chars} are accepted.",
            "text_too_long",
            413,
            limit=max_chars,
            **position,
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: JSON allows them, UTF-8 and the tokenizer do not
        raise invalid(f"{where} is not valid Unicode (lone surrogate).", "invalid_text", **position) from None
    return value


def check_texts(values: Any, field: str, max_chars: int, max_count: int) -> list[str]:
    """A non-empty list of at most `max_count` texts, each passing check_text."""
    if not isinstance(values, list) or not values:
        raise invalid(f"`{field}` must be a non-empty list of strings.")
    check_count(len(values), max_count, "too_many_texts", "texts")
    return [check_text(value, field, max_chars, index) for index, value in enumerate(values)]


def check_count(count: int, limit: int, code: str, what: str) -> None:
    """413 `code` when a request carries more than `limit` of something (images, texts, files)."""
    if count > limit:
        raise invalid(f"Too many {what}: {count}; at most {limit} per request.", code, 413, limit=limit)


def check_image_count(count: int, limit: int, field: str = "images") -> None:
    """At least one image and at most `limit`."""
    if count == 0:
        raise invalid(f"No images: send at least one in `{field}`.", "no_images")
    check_count(count, limit, "too_many_images", "images")


def check_key(key: str, field: str, code: str = "invalid_request") -> str:
    """An object key that will be stored or matched (metadata, filters): no NUL, valid Unicode.

    `code` is the field's own code (e.g. `invalid_filters`, `invalid_metadata`): one code per field's rule.
    """
    if "\x00" in key:
        raise invalid(f"A key of `{field}` contains a NUL character.", code)
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(f"A key of `{field}` is not valid Unicode (lone surrogate).", code) from None
    return key
