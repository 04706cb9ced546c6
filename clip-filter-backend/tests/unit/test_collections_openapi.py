"""The OpenAPI of the collection, job and map routes describes every request body and every JSON response."""

from __future__ import annotations

import pytest

from clip_filter.api.main import create_app
from clip_filter.core.config import Settings

BODIES = {
    ("post", "/collections"): {"application/json"},
    ("patch", "/collections/{name}"): {"application/json"},
    ("post", "/collections/{name}/items"): {"application/json", "multipart/form-data"},
    ("patch", "/collections/{name}/items/{item_id}"): {"application/json"},
    ("post", "/collections/{name}/search"): {"application/json", "multipart/form-data"},
    ("post", "/collections/{name}/jobs"): {"application/json", "multipart/form-data"},
    ("post", "/collections/{name}/map/project"): {"application/json"},
}


@pytest.fixture(scope="module")
def spec() -> dict:
    return create_app(Settings()).openapi()  # the lifespan does not run: no model, no data dir


@pytest.mark.parametrize(("method", "path"), sorted(BODIES))
def test_every_body_is_described(spec: dict, method: str, path: str) -> None:
    content = spec["paths"][path][method]["requestBody"]["content"]
    assert set(content) == BODIES[(method, path)]
    for media in content.values():
        schema = media["schema"]
        assert schema.get("properties"), (method, path, schema)


def test_json_bodies_carry_their_rules(spec: dict) -> None:
    search = spec["paths"]["/collections/{name}/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    top_k = search["properties"]["top_k"]
    assert (top_k["minimum"], top_k["maximum"], top_k["default"]) == (1, 1000, 20)
    create = spec["paths"]["/collections"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create["required"] == ["name"]
    assert "$defs" not in search and "$defs" not in create  # flat: valid inside the OpenAPI document


def test_json_responses_have_schemas(spec: dict) -> None:
    for path, operations in spec["paths"].items():
        if not path.startswith(("/collections", "/jobs")) or path.endswith(("/content", "/thumbnail")):
            continue
        for method, operation in operations.items():
            status, response = next((s, r) for s, r in operation["responses"].items() if s.startswith("2"))
            if status == "204":
                continue
            schema = response["content"]["application/json"]["schema"]
            assert "$ref" in schema, (method, path, schema)
