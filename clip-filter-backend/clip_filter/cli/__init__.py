"""The `clip-filter` console script: `serve`, plus the collection commands.

Each command group is a module with `add_subparsers(commands)`, registered in COMMAND_MODULES; a new group
(e.g. `keys`) is one module and one entry there. Handlers take `(args, settings)` and return the exit status.
"""

from __future__ import annotations

import argparse
import sys

from clip_filter import __version__
from clip_filter.cli import collections, serve
from clip_filter.core.config import Settings
from clip_filter.core.logging import configure_logging

COMMAND_MODULES = [serve, collections]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clip-filter", description="Image-text matching and search on OpenCLIP.")
    parser.add_argument("--version", action="version", version=f"clip-filter {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.add_subparsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_format)  # CLIP_FILTER_LOG_FORMAT=text|json, with request ids (core/logging.py)
    return int(args.handler(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
