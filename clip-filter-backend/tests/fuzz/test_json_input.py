"""Property-based fuzzing of the JSON body reader of the matching and embedding routes, in process.

The reader under test is `clip_filter.api.inputs.read_json_object(request[, settings])`, the function
`/similarity`, `/image_text_similarity_best_match` and `/embeddings/*` read their JSON with (issue 11 moves it
to `clip_filter/api/json_body.py`, re-exported from `api.inputs`, with a `settings` argument for its budgets:
both forms are handled). It gets a real Starlette `Request` carrying the body bytes.

The property, for any body: the reader returns a dict equal to what `json.loads` makes of the same bytes, or
raises a `ClipFilterError` with a 4xx status. Any other exception (RecursionError, the int-digits ValueError,
UnicodeError, MemoryError) fails. Inputs: hypothesis' recursive JSON values (with NULs, lone surrogates, huge
and non-finite numbers, in keys and values), serialised several ways, plus hostile shapes: deep nesting, 5,000+
digit integers, many elements, invalid UTF-8, BOMs, other encodings, mutations of valid bodies.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from starlette.requests import Request

from clip_filter.api import inputs
from clip_filter.core.config import Settings
from clip_filter.core.errors import ClipFilterError

from .conftest import FUZZ_SETTINGS

READER = inputs.read_json_object
TAKES_SETTINGS = "settings" in inspect.signature(READER).parameters
SETTINGS = Settings()


def read(body: bytes) -> dict[str, Any]:
    """Run the reader on a real Request whose body is `body` (content type JSON, as the routes see it)."""
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/similarity",
        "raw_path": b"/similarity",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 5000),
        "client": ("127.0.0.1", 1),
    }
    request = Request(scope, receive)
    coroutine = READER(request, SETTINGS) if TAKES_SETTINGS else READER(request)
    return asyncio.run(coroutine)


def same_json(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN and keeps 1 != 1.0 != True apart (as JSON does)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return a == b


class Body(bytes):
    """Request body bytes that print short: a failing 200 KB example should not flood the CI log."""

    def __repr__(self) -> str:
        text = bytes.__repr__(self)
        return text if len(text) <= 160 else f"{text[:100]}...{text[-40:]} ({len(self):,} bytes)"


def assert_client_error(error: ClipFilterError) -> None:
    assert 400 <= error.status < 500, (error.status, error.code, error.message)
    assert error.code and error.message


def reads_like_json_or_refuses(body: bytes) -> None:
    body = Body(body)
    try:
        result = read(body)
    except ClipFilterError as exc:
        assert_client_error(exc)
        return
    except Exception as exc:  # noqa: BLE001 - any other exception is the failure this test looks for
        raise AssertionError(
            f"{type(exc).__name__} ({str(exc)[:200]}) instead of a 4xx ClipFilterError, for the body {body!r}"
        ) from exc
    assert isinstance(result, dict), type(result)
    try:
        reference = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AssertionError(f"accepted a body Python's JSON parser refuses ({exc!r}): {body[:200]!r}") from None
    assert same_json(result, reference)


# --- strategies -------------------------------------------------------------------------------------------

# Any code point, lone surrogates and NUL included (hypothesis leaves surrogates out unless asked).
any_char = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
hostile_text = st.one_of(
    st.text(any_char, max_size=20),
    st.sampled_from(["", "\x00", "a\x00b", "\ud800", "\udfff", "\ud83d", "\ud83d\ude00", "\ufeff", "$.a", '"', "\\"]),
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -0.0, 2**63, -(2**63) - 1, 2**64, 1e308, 5e-324]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, hostile_text)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=6), st.dictionaries(hostile_text, children, max_size=6)),
    max_leaves=40,
)
# Bodies shaped like the routes' requests, so nested values also reach the keys they read.
request_like = st.fixed_dictionaries(
    {}, optional={"texts": json_values, "images": json_values, "image_base64": json_values, "text_input1": json_values}
)


@st.composite
def serialised(draw: st.DrawFn, values: st.SearchStrategy[Any] = json_values) -> bytes:
    value = draw(st.one_of(request_like, st.dictionaries(hostile_text, values, max_size=4), values))
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 0, 2])))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32", "latin-1"]))
    # surrogatepass: a lone surrogate written raw (ensure_ascii=False) becomes bytes that are not valid UTF-8
    return Body(text.encode(encoding, errors="surrogatepass" if encoding.startswith("utf") else "replace"))


def nested(depth: int, open_: str, close: str, leaf: str) -> bytes:
    return (open_ * depth + leaf + close * depth).encode()


@st.composite
def hostile_shapes(draw: st.DrawFn) -> bytes:
    return Body(draw(_hostile_shapes()))


@st.composite
def _hostile_shapes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["deep-array", "deep-object", "deep-in-key", "big-int", "many", "mutated", "raw"]))
    depth = draw(st.sampled_from([10, 500, 999, 1000, 1001, 2000, 20_000, 110_000]))
    if kind == "deep-array":
        return b'{"texts": ' + nested(depth, "[", "]", '"x"') + b"}"
    if kind == "deep-object":
        return nested(depth, '{"a":', "}", "1")
    if kind == "deep-in-key":
        return b'{"images": [' + nested(depth, '{"k":', "}", "null") + b"]}"
    if kind == "big-int":
        digits = draw(st.sampled_from([4299, 4300, 4301, 5000, 50_000]))
        sign = draw(st.sampled_from(["", "-"]))
        where = draw(st.sampled_from(["value", "list", "exponent", "fraction"]))
        number = sign + "9" * digits
        if where == "exponent":
            number = "1e" + "9" * min(digits, 6000)
        elif where == "fraction":
            number = "0." + "1" * digits
        return (f'{{"texts": [{number}]}}' if where == "list" else f'{{"n": {number}}}').encode()
    if kind == "many":
        count = draw(st.sampled_from([1000, 100_000, 300_000]))
        return b'{"texts": [' + b",".join([b"0"] * count) + b"]}"
    if kind == "mutated":
        data = bytearray(draw(serialised()))
        for _ in range(draw(st.integers(1, 4))):
            if not data:
                break
            position = draw(st.integers(0, len(data) - 1))
            data[position : position + draw(st.integers(0, 3))] = draw(st.binary(max_size=4))
        return bytes(data)
    return draw(st.binary(max_size=256))


@FUZZ_SETTINGS
@given(serialised())
@example(Body(b'{"texts": ["\\ud800"]}'))
@example(Body(b'{"a\\u0000b": 1}'))
@example(Body(b'{"n": NaN, "m": -Infinity}'))
@example(Body(b'{"texts": [1], "texts": [2]}'))
@example(Body(b"\xef\xbb\xbf{}"))
@example(Body(b"  \n{}  "))
def test_recursive_json_reads_or_refuses_cleanly(body: bytes) -> None:
    reads_like_json_or_refuses(body)


@FUZZ_SETTINGS
@given(hostile_shapes())
@example(Body(b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"))
@example(Body(b'{"n": ' + b"1" * 5000 + b"}"))
@example(Body(b"7" * 5000))
@example(Body(b""))
@example(Body(b"null"))
@example(Body(b'{"texts": ["\xff\xfe"]}'))
def test_hostile_json_reads_or_refuses_cleanly(body: bytes) -> None:
    reads_like_json_or_refuses(body)
