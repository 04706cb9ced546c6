-- API keys in the database (auth/postgres_store.py), so every replica on it checks the same keys: a key created
-- through one replica or the CLI works on all at once, and a revoke takes effect on all at once (each request
-- looks its key up by hash; nothing is cached). Same columns as the SQLite key store (auth/sqlite_store.py).

CREATE TABLE api_keys (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- creation order (listing ties on created_at)
    id text NOT NULL UNIQUE,                               -- public id (logs, rate limits, revoke)
    name text NOT NULL,
    scope text NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    collections text[],                                    -- NULL: every collection
    -- The lookup key of every request; UNIQUE also makes concurrent bootstrap registrations (replicas starting
    -- together with the same secret) insert one row (INSERT ... ON CONFLICT DO NOTHING).
    secret_sha256 text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);

CREATE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;
