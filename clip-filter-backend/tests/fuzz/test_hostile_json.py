"""Hostile JSON shapes sent to every JSON-accepting operation of the live server: each answer is a 4xx (or a 2xx)
in the error envelope, never a 5xx.

Random generation (schemathesis, hypothesis) rarely builds the shapes that break parsers: nesting 100,000 deep,
a 5,000-digit integer, a NUL or a lone surrogate in a key, a thousand filters. So these are written out, each
merged into a body the operation would otherwise accept (so the hostile part is what gets judged), and sent to
every POST/PUT/PATCH operation listed in `/openapi.json`, not only to the one it was first found on. The list of
operations comes from the live schema, so routes added later are covered without editing this file.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from integration.images_for_tests import b64, png_bytes

from .conftest import (
    FUZZ_COLLECTION,
    STATUS_COUNTS,
    FuzzState,
    foreign_error_shape,
    is_error_envelope,
    is_known,
    operation_label,
)

PNG = b64(png_bytes(970, (8, 8)))

# A body each known operation accepts; hostile fragments are merged into it. Operations not listed (added later,
# e.g. the protocol adapters) get an empty base: the hostile fragment alone.
VALID_BODIES: dict[str, dict[str, Any]] = {
    "POST /similarity": {"texts": ["a cat"], "images": [PNG]},
    "POST /image_text_similarity_best_match": {"texts": ["a cat", "a dog"], "images": [PNG]},
    "POST /embeddings/images": {"images": [PNG]},
    "POST /embeddings/texts": {"texts": ["a cat"]},
    "POST /collections": {"name": "hostile-json"},
    "PATCH /collections/{name}": {"description": "d"},
    "POST /collections/{name}/items": {"texts": ["a hostile text"]},
    "PATCH /collections/{name}/items/{item_id}": {"metadata": {"k": 1}},
    "POST /collections/{name}/search": {"text": "a cat"},
    "POST /collections/{name}/map/project": {"text": "a cat"},
    "POST /collections/{name}/jobs": {},  # `path` is set from the server's ingest root below
}


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def deep_objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# name -> function(base body, ingest root) -> raw request body bytes. Each is a finding of the security review
# (../shared/reviews/security-2026-12.md, L1/L2) or a close relative of one.
def _merge(base: dict[str, Any], **fragment: Any) -> dict[str, Any]:
    return {**base, **fragment}


def _dumps(body: Any) -> bytes:
    return json.dumps(body).encode()  # ensure_ascii: a lone surrogate travels as the escape "\ud800", valid JSON


def _with_raw(base: dict[str, Any], key: str, raw_value: str) -> bytes:
    """The base body with `key` set to a raw JSON text (for values json.dumps cannot make: 100k-deep, huge ints)."""
    rest = json.dumps({k: v for k, v in base.items() if k != key})
    return (rest[:-1] + ("," if len(rest) > 2 else "") + json.dumps(key) + ":" + raw_value + "}").encode()


def _all_keys(base: dict[str, Any], raw_value: str) -> bytes:
    """Every top-level field the routes read, set to the same raw value (whichever the route reads first hits it)."""
    body = raw_value
    keys = (
        "texts",
        "images",
        "text",
        "image",
        "name",
        "description",
        "metadata",
        "filters",
        "path",
        "filename",
        "top_k",
        "offset",
        "item_id",
        "input",
        "query",
        "vector",
    )
    return ("{" + ",".join(f'"{key}":{body}' for key in keys) + "}").encode()


HOSTILE: dict[str, Callable[[dict[str, Any], str], bytes]] = {
    "deep-array-100k": lambda base, root: nested(100_000).encode(),
    "deep-object-100k": lambda base, root: deep_objects(100_000).encode(),
    "deep-array-in-texts": lambda base, root: _with_raw(base, "texts", nested(50_000, '"x"')),
    "deep-array-in-every-field": lambda base, root: _all_keys(base, nested(20_000)),
    "deep-metadata-2000": lambda base, root: _with_raw(base, "metadata", deep_objects(2000)),
    "int-5000-digits": lambda base, root: _with_raw(base, "n", "1" * 5000),
    "int-5000-digits-in-every-field": lambda base, root: _all_keys(base, "9" * 5000),
    "float-overflow-in-every-field": lambda base, root: _all_keys(base, "1e99999"),
    "nan-in-every-field": lambda base, root: _all_keys(base, "NaN"),
    "int-2**70-in-every-field": lambda base, root: _all_keys(base, str(2**70)),
    "negative-int-in-every-field": lambda base, root: _all_keys(base, str(-(2**63) - 1)),
    "nul-in-key": lambda base, root: _dumps(_merge(base, **{"a\u0000b": 1})),
    "nul-in-filter-key": lambda base, root: _dumps(_merge(base, filters={"a\u0000b": 1})),
    "quote-in-filter-key": lambda base, root: _dumps(_merge(base, filters={'a"b': 1, "c.d": 2, "$[0]": 3})),
    "1200-filters": lambda base, root: _dumps(_merge(base, filters={f"k{i}": i for i in range(1200)})),
    "nested-filter-value": lambda base, root: _dumps(_merge(base, filters={"k": {"k": [1, {"k": None}]}})),
    "lone-surrogate-caption": lambda base, root: _dumps(_merge(base, texts=["\ud800"], text="\udfff")),
    "lone-surrogate-in-every-field": lambda base, root: _all_keys(base, '"\\ud800"'),
    "lone-surrogate-key": lambda base, root: _dumps(_merge(base, **{"\ud800": 1}, metadata={"\udc00": "\ud800"})),
    "lone-surrogate-metadata": lambda base, root: _dumps(_merge(base, metadata=[{"k": "\ud800"}])),
    "nul-in-strings": lambda base, root: _all_keys(base, '"a\\u0000b"'),
    "nul-in-job-path": lambda base, root: _dumps(_merge(base, path=f"{root}/\u0000x")),
    "newline-name": lambda base, root: _dumps(_merge(base, name="c\n")),
    "job-path-escape": lambda base, root: _dumps(_merge(base, path=f"{root}/../../../../etc")),
    "huge-top-k": lambda base, root: _dumps(_merge(base, top_k=10**30, offset=10**30, item_id=10**30)),
    "float-top-k": lambda base, root: _dumps(_merge(base, top_k=1.5, offset=-0.0, min_score=1e308)),
    "empty-containers": lambda base, root: _dumps({key: [] for key in base} | {"texts": [], "filters": {}}),
    "wrong-types": lambda base, root: _all_keys(base, '{"": [null, true, 1.5, "x"]}'),
    "top-level-array": lambda base, root: b"[]",
    "top-level-string": lambda base, root: b'"x"',
    "top-level-null": lambda base, root: b"null",
    "top-level-huge-int": lambda base, root: b"7" * 5000,
    "invalid-utf8": lambda base, root: b'{"texts": ["\xff\xfe\xc3"]}',
    "utf16-body": lambda base, root: json.dumps(base or {"a": 1}).encode("utf-16"),
    "bom-prefixed": lambda base, root: b"\xef\xbb\xbf" + _dumps(base),
    "truncated": lambda base, root: _dumps(base)[:-1] if len(_dumps(base)) > 1 else b"{",
    "duplicate-keys": lambda base, root: b'{"texts": ["a"], "texts": [1], "name": "x", "name": null}',
    "many-elements-200k": lambda base, root: _with_raw(base, "texts", "[" + ",".join(["0"] * 200_000) + "]"),
}


@pytest.fixture(scope="session")
def json_operations(fuzz_server, fuzz_headers) -> list[tuple[str, str, bool]]:
    """(method, path template, whether its errors have a foreign shape) of every POST/PUT/PATCH operation the live
    schema lists. Fails if the schema cannot be read."""
    response = httpx.get(f"{fuzz_server.base_url}/openapi.json", headers=fuzz_headers, timeout=30)
    response.raise_for_status()
    operations = [
        (method.upper(), path, foreign_error_shape(operation))
        for path, methods in response.json()["paths"].items()
        for method, operation in methods.items()
        if method in ("post", "put", "patch")
    ]
    if not operations:
        raise AssertionError("the live schema lists no POST/PUT/PATCH operation")
    return operations


def concrete_path(template: str, state: FuzzState) -> str:
    return (
        template.replace("{name}", FUZZ_COLLECTION)
        .replace("{item_id}", str(state.item_ids[0]))
        .replace("{job_id}", state.job_ids[0])
    )


def base_body(label: str, state: FuzzState) -> dict[str, Any]:
    base = dict(VALID_BODIES.get(label, {}))
    if label == "POST /collections/{name}/jobs" and state.ingest_root is not None:
        base["path"] = str(state.ingest_root)
    return base


def check_answer(response: httpx.Response, foreign: bool = False) -> str | None:
    """Why this answer is wrong, or None: no 5xx, and a JSON error answer is in the error envelope (unless the
    operation is a protocol adapter with the error shape of the API it imitates)."""
    if response.status_code >= 500:
        return f"{response.status_code}: {response.text[:300]}"
    is_json = response.headers.get("content-type", "").startswith("application/json")
    if not foreign and response.status_code >= 400 and is_json and not is_error_envelope(response.json()):
        return f"{response.status_code} not in the error envelope: {response.text[:300]}"
    return None


def judge(label: str, what: str, response: httpx.Response, foreign: bool) -> str | None:
    """check_answer, except that a 5xx of an operation in CLIP_FILTER_FUZZ_KNOWN is only a warning."""
    problem = check_answer(response, foreign)
    if problem and response.status_code >= 500 and is_known(*label.split(" ", 1)):
        warnings.warn(f"known 5xx (CLIP_FILTER_FUZZ_KNOWN): {label} <- {what}: {problem}", stacklevel=2)
        return None
    return problem


def send(state: FuzzState, method: str, path: str, **kwargs: Any) -> httpx.Response | str:
    """One request on a fresh connection (after a 500 uvicorn closes the connection, which would make the next
    request on a reused one fail for the wrong reason). A dropped connection comes back as its description."""
    try:
        with state.client() as http:
            return http.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        return f"no answer ({type(exc).__name__}: {exc})"


@pytest.mark.parametrize("shape", sorted(HOSTILE))
def test_hostile_json_never_gives_5xx(shape: str, json_operations, fuzz_state: FuzzState) -> None:
    failures: list[str] = []
    root = str(fuzz_state.ingest_root or "/nonexistent")
    for method, template, foreign in json_operations:
        label = operation_label(method, template)
        body = HOSTILE[shape](base_body(label, fuzz_state), root)
        response = send(
            fuzz_state,
            method,
            concrete_path(template, fuzz_state),
            content=body,
            headers={"content-type": "application/json"},
        )
        if isinstance(response, str):
            failures.append(f"{label} <- {shape} ({len(body):,} bytes): {response}")
            continue
        STATUS_COUNTS[(label, response.status_code)] += 1
        problem = judge(label, shape, response, foreign)
        if problem:
            failures.append(f"{label} <- {shape} ({len(body):,} bytes): {problem}")
        if label == "POST /collections" and response.status_code == 201:
            send(fuzz_state, "DELETE", f"/collections/{quote(response.json()['name'], safe='')}")  # free the name
    assert not failures, "\n".join(failures)


MULTIPART: dict[str, tuple[str, list[tuple[str, tuple[str | None, bytes | str, str | None]]]]] = {
    "metadata-int-5000-digits": (
        "/collections/{name}/items",
        [("files", ("a.png", png_bytes(971), "image/png")), ("metadata", (None, '{"n": ' + "1" * 5000 + "}", None))],
    ),
    "metadata-deep-100k": (
        "/collections/{name}/items",
        [("files", ("a.png", png_bytes(972), "image/png")), ("metadata", (None, nested(100_000), None))],
    ),
    "metadata-lone-surrogate": (
        "/collections/{name}/items",
        [("files", ("a.png", png_bytes(973), "image/png")), ("metadata", (None, '{"k": "\\ud800"}', None))],
    ),
    "job-metadata-int-5000-digits": (
        "/collections/{name}/jobs",
        [("files", ("a.png", png_bytes(974), "image/png")), ("metadata", (None, '{"n": ' + "1" * 5000 + "}", None))],
    ),
    "search-filters-int-5000-digits": (
        "/collections/{name}/search",
        [("text", (None, "a cat", None)), ("filters", (None, '{"n": ' + "1" * 5000 + "}", None))],
    ),
    "search-filters-nul-key": (
        "/collections/{name}/search",
        [("text", (None, "a cat", None)), ("filters", (None, '{"a\\u0000b": 1}', None))],
    ),
    "search-filters-1200": (
        "/collections/{name}/search",
        [("text", (None, "a cat", None)), ("filters", (None, json.dumps({f"k{i}": i for i in range(1200)}), None))],
    ),
    "filename-nul-newline": ("/collections/{name}/items", [("files", ("a\u0000\n.png", png_bytes(975), "image/png"))]),
    "similarity-caption-invalid-utf8": (
        "/similarity",
        [("images", ("a.png", png_bytes(976), "image/png")), ("texts", (None, b"\xff\xfe", None))],
    ),
}


@pytest.mark.parametrize("case", sorted(MULTIPART))
def test_hostile_multipart_never_gives_5xx(case: str, fuzz_state: FuzzState) -> None:
    template, parts = MULTIPART[case]
    response = send(fuzz_state, "POST", concrete_path(template, fuzz_state), files=parts)
    if isinstance(response, str):
        pytest.fail(f"POST {template} <- {case}: {response}")
    STATUS_COUNTS[(operation_label("POST", template), response.status_code)] += 1
    problem = judge(operation_label("POST", template), case, response, foreign=False)
    if problem:
        pytest.fail(f"POST {template} <- {case}: {problem}")
