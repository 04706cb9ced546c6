"""Each protocol's error shape, and the OpenAI SDK's retry hint, from one Failure."""

from __future__ import annotations

import json

import pytest

from clip_filter.api.protocols.common import Failure
from clip_filter.api.protocols.immich import render_immich_error
from clip_filter.api.protocols.openai import render_openai_error
from clip_filter.api.protocols.weaviate import render_weaviate_error


@pytest.mark.parametrize(
    ("failure", "status", "kind", "retry"),
    [
        (Failure(400, "empty_text", "empty", "input[0]"), 400, "invalid_request_error", "false"),
        (Failure(422, "invalid_request", "bad schema", "model"), 400, "invalid_request_error", "false"),  # OpenAI's 400
        (Failure(401, "unauthorized", "no key"), 401, "authentication_error", "false"),
        (Failure(404, "model_not_found", "no such model", "model"), 404, "not_found_error", "false"),
        (Failure(413, "too_many_texts", "too many"), 413, "invalid_request_error", "false"),
        (Failure(429, "overloaded", "queue full"), 429, "rate_limit_error", "true"),
        (Failure(503, "model_unavailable", "loading"), 503, "server_error", "true"),
        (Failure(503, "model_unavailable", "failed", permanent=True), 503, "server_error", "false"),
        (Failure(500, "internal_error", "bug"), 500, "server_error", "true"),
    ],
)
def test_openai_shape_and_retry_hint(failure, status, kind, retry):
    response = render_openai_error(failure)
    assert response.status_code == status
    assert json.loads(response.body) == {
        "error": {"message": failure.message, "type": kind, "param": failure.param, "code": failure.code}
    }
    assert response.headers["x-should-retry"] == retry


def test_weaviate_error_is_a_string_and_keeps_the_status():
    response = render_weaviate_error(Failure(415, "not_an_image", "`images[0]`: not an image"))
    assert response.status_code == 415
    assert json.loads(response.body) == {"error": "`images[0]`: not an image (not_an_image)"}


def test_immich_error_is_fastapis_detail():
    response = render_immich_error(Failure(422, "invalid_entries", "Invalid request format."))
    assert response.status_code == 422
    assert json.loads(response.body) == {"detail": "Invalid request format.", "code": "invalid_entries"}
