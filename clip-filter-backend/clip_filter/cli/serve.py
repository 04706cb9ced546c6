"""`clip-filter serve`: the HTTP API (and the UI when CLIP_FILTER_UI_DIR is set)."""

from __future__ import annotations

import argparse
from typing import Any

from clip_filter.core.config import Settings
from clip_filter.core.logging import logging_config


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from clip_filter.core.memory import tune_malloc

    tune_malloc()  # before torch and the server's threads allocate anything
    import uvicorn

    from clip_filter.api.main import create_app

    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    settings = settings.model_copy(update=overrides)
    # One worker process: the model lives in it once; concurrency comes from the batcher.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        # "auto": uvloop and the httptools parser (both dependencies; uvloop not on Windows), else asyncio
        # and h11. uvloop takes ~1 ms of event-loop CPU off a small request (docs/benchmarks-pipeline.md).
        loop="auto",
        http="auto",
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
        log_config=logging_config(settings.log_format),
    )
    return 0


def add_subparsers(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the HTTP API (and the UI when CLIP_FILTER_UI_DIR is set)")
    serve.add_argument("--host", help="bind address (env CLIP_FILTER_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (env CLIP_FILTER_PORT, default 5000)")
    serve.set_defaults(handler=_serve)
