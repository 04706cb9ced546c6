"""Every operation that takes a body describes it in /openapi.json, so schema-driven clients and fuzzers reach it."""

from __future__ import annotations

import pytest

from clip_filter.api.main import create_app
from clip_filter.core.config import Settings


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict:
    settings = Settings(_env_file=None, data_dir=tmp_path_factory.mktemp("data"), ui_dir=None)
    return create_app(settings).openapi()


def test_every_body_taking_operation_has_a_request_body_schema(spec: dict) -> None:
    missing = [
        f"{method.upper()} {path}"
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if method in {"post", "put", "patch"} and "requestBody" not in operation
    ]
    assert not missing, f"operations without a request body schema: {missing}"


def test_request_bodies_name_their_media_types(spec: dict) -> None:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody")
            if body is not None:
                content = body.get("content", {})
                assert content, f"{method.upper()} {path}: request body without media types"
                assert set(content) <= {"application/json", "multipart/form-data"}, (path, set(content))
                for media in content.values():
                    assert media.get("schema"), f"{method.upper()} {path}: a media type without a schema"
