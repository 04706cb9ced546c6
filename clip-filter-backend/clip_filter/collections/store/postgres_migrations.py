"""The PostgreSQL store's schema migrations: numbered SQL files applied once each, under an advisory lock.

Plain numbered SQL files in `collections/migrations/` (`0001_initial.sql`, ...), applied at startup inside
one transaction each, under `pg_advisory_lock`, recorded in `schema_migrations`. Not alembic: there is no
ORM model to diff against, the schema is a handful of tables, and plain SQL is what a DBA reviews and what
`psql -f` runs by hand.
"""

from __future__ import annotations

import logging
from importlib import resources

log = logging.getLogger(__name__)

MIGRATIONS_LOCK_KEY = 0x0C11F11E  # pg_advisory_lock key for the schema migrations (any fixed bigint)


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of the packaged migrations, in order."""
    folder = resources.files("clip_filter.collections").joinpath("migrations")
    out = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            out.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    out.sort()
    if len({version for version, _, _ in out}) != len(out):
        raise RuntimeError("two migrations share a number")
    return out


def migrate(conninfo: str) -> list[str]:
    """Apply the migrations this database lacks; returns the names applied. Safe with replicas starting
    together: the advisory lock makes one apply them while the others wait, then find nothing to do."""
    import psycopg

    applied_now = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATIONS_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in migration_files():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)  # no parameters: psycopg sends the file as one simple query
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                log.info("applied migration %s", name)
                applied_now.append(name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATIONS_LOCK_KEY,))
    return applied_now
