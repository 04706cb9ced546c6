"""Input rules shared by every entry point (HTTP routes, protocol adapters, CLI), each with one error code.

One rule, one code: a text that is too long is `text_too_long` whether it is a caption to match, a search
query or a text item to store. Modules here import no web framework, so the CLI and the collections layer
use the same checks.
"""

from __future__ import annotations

from typing import Any

from clip_filter.core.errors import ClipFilterError


def invalid(message: str, code: str = "invalid_request", status: int = 400, **details: Any) -> ClipFilterError:
    return ClipFilterError(code, message, status, **details)


def check_text(value: Any, field: str, max_chars: int, index: int | None = None) -> str:
    """A non-empty, valid-Unicode string of at most `max_chars` characters, else a 4xx with one code per rule."""
    where = f"`{field}`" if index is None else f"`{field}[{index}]`"
    position = {} if index is None else {"index": index}
    if not isinstance(value, str):
        raise invalid(f"{where} must be a string.", **position)
    if not value.strip():
        raise invalid(f"{where} is empty.", "empty_text", **position)
    if len(value) > max_chars:
        raise invalid(
            f"{where} has {len(value)} characters; at most {max_chars} are accepted.",
            "text_too_long", 413, limit=max_chars, **position,
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: JSON allows them, UTF-8 and the tokenizer do not
        raise invalid(f"{where} is not valid Unicode (lone surrogate).", "invalid_text", **position) from None
    return value
