"""Placeholder: collection subcommands of the CLI (filled in by the collections work)."""


def add_subparsers(commands) -> None:
    pass
