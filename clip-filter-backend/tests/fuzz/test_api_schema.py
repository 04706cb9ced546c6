"""Schemathesis against the live server's own `/openapi.json`: every operation, no 5xx, errors in the one envelope.

What runs per operation (schemathesis phases): the schema's examples, its coverage cases (boundary values,
missing and wrongly typed fields, undeclared content types and methods) and `CLIP_FILTER_FUZZ_EXAMPLES`
generated cases, valid and invalid. Path parameters are steered to the seeded collection `fuzz`, its items and
its job about half of the time, so the routes behind a 404 are reached too. Operations whose request body the
schema does not describe get an arbitrary JSON object as their body, so their parsers are fuzzed anyway (once
every body is described this adds nothing).

Checks: `not_a_server_error` (any 5xx fails, unless the operation is listed in CLIP_FILTER_FUZZ_KNOWN), and
`error_envelope`: a 4xx/5xx answered as JSON is `{"error": {"code": str, "message": str, ...}}` (except on the
protocol adapters, which answer in the shape of the API they imitate). Schema
conformance of the 2xx bodies is not checked here (the routes' own tests do that).
"""

from __future__ import annotations

import warnings
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from .conftest import (
    EXAMPLES,
    FUZZ_COLLECTION,
    SEED,
    STATUS_COUNTS,
    FuzzState,
    foreign_error_shape,
    is_error_envelope,
    is_known,
    operation_label,
)

METHODS_WITH_BODIES = ("post", "put", "patch")
REQUEST_TIMEOUT_S = 60.0  # a request this slow is a stuck worker: it fails as a transport error


def schemathesis_config(base_url: str) -> schemathesis.Config:
    """Built here, not discovered from a schemathesis.toml, so the run is the same wherever pytest starts."""
    generation: dict[str, Any] = {"max-examples": EXAMPLES, "deterministic": SEED is None, "database": "none"}
    config: dict[str, Any] = {
        "generation": generation,
        # Inputs come from the schema and the seed only: no values learnt from earlier responses (ids, timestamps,
        # error messages differ between runs), so the same command sends the same requests every time.
        "phases": {
            "examples": {"enabled": True, "fill-missing": True, "extra-data-sources": {"responses": False}},
            "coverage": {"enabled": True, "extra-data-sources": {"responses": False}},
            "fuzzing": {
                "enabled": True,
                "extra-data-sources": {"responses": False},
                "error-feedback": {"enabled": False},
            },
            "stateful": {"enabled": False},  # the schema has no links; state is steered by the hooks below
        },
        "request-timeout": REQUEST_TIMEOUT_S,
        "base-url": base_url,
    }
    if SEED is not None:
        config["seed"] = SEED
    return schemathesis.Config.from_dict(config)


def describe_missing_bodies(raw: dict[str, Any]) -> None:
    """Give every POST/PUT/PATCH without a documented request body a free-form JSON object body."""
    for methods in raw.get("paths", {}).values():
        for method, operation in methods.items():
            if method in METHODS_WITH_BODIES and isinstance(operation, dict) and "requestBody" not in operation:
                operation["requestBody"] = {
                    "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}}
                }


def steer_path_parameters(state: FuzzState) -> Any:
    """A flatmap hook: keep the generated path parameters, or replace them by the seeded objects' names."""

    def hook(context: schemathesis.HookContext, path_parameters: dict[str, Any] | None) -> st.SearchStrategy:
        generated = dict(path_parameters or {})
        real = dict(generated)
        if "name" in real:
            real["name"] = FUZZ_COLLECTION
        if "item_id" in real:
            real["item_id"] = st.integers(0, 1000).map(lambda i: state.item_ids[i % len(state.item_ids)])
        if "job_id" in real:
            real["job_id"] = st.integers(0, 1000).map(lambda i: state.job_ids[i % len(state.job_ids)])
        if real == generated:
            return st.just(generated)
        fixed = st.fixed_dictionaries(
            {key: value if isinstance(value, st.SearchStrategy) else st.just(value) for key, value in real.items()}
        )
        return st.one_of(st.just(generated), fixed)

    return hook


def error_envelope(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """Every JSON error answer has the one shape `{"error": {"code": str, "message": str, ...}}`."""
    if response.status_code < 400 or foreign_error_shape(case.operation.definition.raw):
        return None
    content_type = response.headers.get("content-type", [""])[0].split(";")[0].strip().lower()
    if content_type != "application/json":
        return None
    if not is_error_envelope(response.json()):
        raise AssertionError(f"{response.status_code} error body is not the error envelope: {response.text[:500]}")
    return None


@pytest.fixture(scope="session")
def api_schema(fuzz_server, fuzz_state: FuzzState, fuzz_headers: dict[str, str]) -> schemathesis.BaseSchema:
    """The live server's schema. A server or schema that cannot be reached raises here: the test fails, never skips."""
    response = httpx.get(f"{fuzz_server.base_url}/openapi.json", headers=fuzz_headers, timeout=30)
    response.raise_for_status()
    raw = response.json()
    if not raw.get("paths"):
        raise AssertionError(f"{fuzz_server.base_url}/openapi.json lists no operations: {raw}")
    describe_missing_bodies(raw)
    loaded = schemathesis.openapi.from_dict(raw, config=schemathesis_config(fuzz_server.base_url))
    loaded.hook("flatmap_path_parameters")(steer_path_parameters(fuzz_state))
    return loaded


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_operation_answers_without_5xx(case: schemathesis.Case, fuzz_state: FuzzState, fuzz_headers) -> None:
    response = case.call(headers=fuzz_headers, timeout=REQUEST_TIMEOUT_S)
    STATUS_COUNTS[(operation_label(case.method, case.operation.path), response.status_code)] += 1
    if response.status_code >= 500 and is_known(case.method, case.path):
        warnings.warn(
            f"known 5xx (CLIP_FILTER_FUZZ_KNOWN): {case.method} {case.formatted_path} -> {response.status_code}",
            stacklevel=1,
        )
        case.validate_response(response, checks=[error_envelope])
    else:
        case.validate_response(response, checks=[not_a_server_error, error_envelope])
    if case.method.upper() == "DELETE" and 200 <= response.status_code < 300:
        fuzz_state.seed()  # a fuzzed DELETE hit the seeded objects: put them back for the next cases
