"""`clip-filter keys create|list|revoke`: manage API keys where the server keeps them (`auth.open_key_store`):
the PostgreSQL database of CLIP_FILTER_DATABASE_URL when set (shared by every replica on it), else the data
directory (CLIP_FILTER_DATA_DIR).

Safe while servers run: they look keys up on every request, so a new key works and a revoked one stops
working at once, on every replica.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clip_filter.auth.keys import SCOPES

if TYPE_CHECKING:
    from clip_filter.auth.keys import KeyStore

Handler = Callable[[argparse.Namespace, Any], int]


def _store(settings: Any) -> KeyStore:
    from clip_filter.auth import open_key_store

    return open_key_store(settings)


def _guard(handler: Handler) -> Handler:
    def run(args: argparse.Namespace, settings: Any) -> int:
        from clip_filter.core.errors import ClipFilterError

        try:
            return handler(args, settings)
        except ClipFilterError as error:
            print(f"error: {error.message}", file=sys.stderr)
            if isinstance(error.details.get("fix"), str):
                print(f"fix: {error.details['fix']}", file=sys.stderr)
            return 1

    return run


def _create(args: argparse.Namespace, settings: Any) -> int:
    store = _store(settings)
    try:
        key, secret = store.create(args.name, args.scope, args.collection or None)
    finally:
        store.close()
    if args.json:
        print(json.dumps({**key.to_dict(), "key": secret}))
    else:
        limit = ", ".join(key.collections) if key.collections else "all collections"
        print(f"created key {key.id} ({key.name}, scope {key.scope}, {limit})", file=sys.stderr)
        print("It is shown only now; store it safely. Send it as 'Authorization: Bearer <key>'.", file=sys.stderr)
        print(secret)
    return 0


def _list(args: argparse.Namespace, settings: Any) -> int:
    store = _store(settings)
    try:
        keys = store.list(include_revoked=args.all)
    finally:
        store.close()
    if args.json:
        print(json.dumps([key.to_dict() for key in keys]))
        return 0
    if not keys:
        print("no keys (create one: clip-filter keys create NAME --scope read|write|admin)", file=sys.stderr)
        return 0
    print(f"{'ID':<12}  {'NAME':<20}  {'SCOPE':<5}  {'COLLECTIONS':<24}  {'CREATED':<25}  REVOKED")
    for key in keys:
        limit = ",".join(key.collections) if key.collections else "*"
        revoked = key.revoked_at or "-"
        print(f"{key.id:<12}  {key.name:<20}  {key.scope:<5}  {limit:<24}  {key.created_at:<25}  {revoked}")
    return 0


def _revoke(args: argparse.Namespace, settings: Any) -> int:
    store = _store(settings)
    try:
        revoked = store.revoke(args.key)
    finally:
        store.close()
    for key in revoked:
        print(f"revoked key {key.id} ({key.name})")
    return 0


def add_subparsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="create, list and revoke API keys (docs/security.md)")
    sub = keys.add_subparsers(dest="keys_command", required=True)

    create = sub.add_parser("create", help="a new key; printed once on stdout, stored only as a hash")
    create.add_argument("name", help="a label for the key (who or what uses it)")
    create.add_argument(
        "--scope",
        required=True,
        choices=SCOPES,
        help="read: matching, search, listing; write: + add/change/delete items, create "
        "collections, jobs; admin: + delete collections, reindex",
    )
    create.add_argument(
        "--collection",
        action="append",
        metavar="C",
        help="limit the key to this collection (repeat for several); default: all",
    )
    create.add_argument("--json", action="store_true", help="print the key and its record as JSON")
    create.set_defaults(handler=_guard(_create))

    listing = sub.add_parser("list", help="the keys (never their secrets)")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_guard(_list))

    revoke = sub.add_parser("revoke", help="revoke a key by id, or every active key with that name")
    revoke.add_argument("key", help="key id (see keys list) or name")
    revoke.set_defaults(handler=_guard(_revoke))
