"""Liveness, readiness and /info need no worker thread: their endpoints and every dependency are coroutines.

FastAPI runs a plain `def` dependency on the worker thread pool, so a sync dependency made /health/ready wait
for a free worker while uploads held them all (19-23 s under load). The live-server side of this is
tests/integration/test_model_states.py::test_health_answers_while_the_model_and_the_worker_threads_are_busy.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute

from clip_filter.api.routes import health


def dependency_calls(dependant: Any) -> Iterator[Any]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from dependency_calls(dependency)


@pytest.fixture(scope="module")
def routes() -> dict[str, APIRoute]:
    return {route.path: route for route in health.router.routes if isinstance(route, APIRoute)}


@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/info"])
def test_health_routes_run_on_the_event_loop(routes, path):
    route = routes[path]
    assert inspect.iscoroutinefunction(route.endpoint), f"{path} is a plain def: it would run on a worker thread"
    sync = [call for call in dependency_calls(route.dependant) if not inspect.iscoroutinefunction(call)]
    assert not sync, f"{path} depends on {sync}, which FastAPI runs on a worker thread"
