"""The JSON pre-scan counts exactly what it claims, whatever strings hold, and parse() refuses hostile bodies
with 4xx codes (the live-server side is tests/integration/test_api_hostile.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clip_filter.api import json_body
from clip_filter.api.json_body import parse, scan
from clip_filter.core.errors import ClipFilterError

# Strings full of what the scan must not mistake for structure: quotes, backslashes, brackets, commas.
TRICKY = st.text(alphabet=st.sampled_from(list('"\\[]{},: ab\u00e9\U0001f602')), max_size=12)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TRICKY,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TRICKY, inner, max_size=5),
    max_leaves=40,
)


def counted(value: Any) -> tuple[int, int]:
    """(values, depth) as the scan defines them: items + members, an empty container counting one."""
    if isinstance(value, (list, dict)):
        children = list(value.values()) if isinstance(value, dict) else value
        inner = [counted(child) for child in children]
        return max(len(children), 1) + sum(v for v, _ in inner), 1 + max((d for _, d in inner), default=0)
    return 0, 0


def code_of(raw: bytes, max_elements: int, max_depth: int) -> str | None:
    try:
        scan(raw, max_elements, max_depth)
    except ClipFilterError as exc:
        return exc.code
    return None


@settings(max_examples=300, deadline=None)
@given(VALUES, st.sampled_from([1, 2, 3, 7, 1 << 20]), st.booleans())
def test_scan_counts_values_and_depth_exactly(value, chunk, ascii_only):
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    values, depth = counted(value)
    original = json_body.SCAN_CHUNK_BYTES
    json_body.SCAN_CHUNK_BYTES = chunk  # chunk edges inside strings and escape runs
    try:
        assert code_of(raw, values, depth) is None
        if values:
            assert code_of(raw, values - 1, 10**9) == "json_too_large"
        if depth:
            assert code_of(raw, 10**9, depth - 1) == "invalid_json"
        assert parse(raw, values, depth) == json.loads(raw)
    finally:
        json_body.SCAN_CHUNK_BYTES = original


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"", 400, "invalid_json"),
        (b"  \n", 400, "invalid_json"),
        (b"{nope", 400, "invalid_json"),
        (b'{"a": "\xff"}', 400, "invalid_json"),  # not UTF-8
        (b'{"a": ' + b"1" * 4301 + b"}", 400, "invalid_json"),  # past Python's int digit limit
        (b"[" * 65 + b"]" * 65, 400, "invalid_json"),
        (b"[" + b"0," * 2000 + b"0]", 413, "json_too_large"),
    ],
)
def test_parse_refuses_with_4xx(raw, status, code):
    with pytest.raises(ClipFilterError) as caught:
        parse(raw, 1000, 64)
    assert (caught.value.status, caught.value.code) == (status, code)


def test_parse_accepts_what_fits():
    value = parse(b"[" * 64 + b"]" * 64, 1000, 64)
    for _ in range(63):
        (value,) = value
    assert value == []
    assert parse(b'{"a": ' + b"1" * 4300 + b"}", 1000, 64)["a"] == int("1" * 4300)
    assert parse(b'{"t": "\\ud800"}', 10, 4) == {"t": "\ud800"}  # lone surrogates are the fields' business


def test_parse_takes_form_field_text_too():
    assert parse('{"k": "v\u00e9"}', 10, 4) == {"k": "v\u00e9"}
    with pytest.raises(ClipFilterError) as caught:
        parse('{"k": ' + "7" * 5000 + "}", 10, 4)
    assert caught.value.code == "invalid_json"


def test_quick_bound_and_exact_scan_agree_at_the_edges():
    """The translate bound accepts only what the exact scan accepts; strings full of structure fall through to it."""
    body = json.dumps({"image_base64": "QUJD" * 100_000, "text_input1": "a", "text_input2": "b"}).encode()
    assert code_of(body, 3, 1) is None  # 3 members at depth 1: the bound alone answers
    assert code_of(body, 2, 1) == "json_too_large" and code_of(body, 3, 0) == "invalid_json"
    commas = json.dumps({"t": "," * 5000 + "[{" * 100}).encode()  # the bound says 5201 values, 201 levels
    assert code_of(commas, 1, 1) is None  # the exact scan: one member, depth 1
    assert code_of(commas, 0, 1) == "json_too_large"
