"""The `clip-filter` console script: `serve`, plus the collection commands."""

from __future__ import annotations

import argparse
import logging
import sys

from clip_filter import __version__
from clip_filter.auth.cli import add_subparsers as add_key_commands
from clip_filter.core.config import Settings


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from clip_filter.core.memory import tune_malloc

    tune_malloc()  # before torch and the server's threads allocate anything
    import uvicorn

    from clip_filter.api.main import create_app

    overrides = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    settings = settings.model_copy(update=overrides)
    # One worker process: the model lives in it once; concurrency comes from the batcher.
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clip-filter", description="Image-text matching and search on OpenCLIP.")
    parser.add_argument("--version", action="version", version=f"clip-filter {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP API (and the UI when CLIP_FILTER_UI_DIR is set)")
    serve.add_argument("--host", help="bind address (env CLIP_FILTER_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (env CLIP_FILTER_PORT, default 5000)")
    serve.set_defaults(handler=_serve)

    from clip_filter.collections.cli_commands import add_subparsers

    add_subparsers(commands)
    add_key_commands(commands)  # keys create|list|revoke (clip_filter/auth/cli.py)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.handler(args, Settings()) or 0)


if __name__ == "__main__":
    sys.exit(main())
