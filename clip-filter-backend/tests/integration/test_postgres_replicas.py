"""Several `clip-filter serve` replicas on one real PostgreSQL (tests/pg.py) and one shared data folder.

Writes through one replica are seen at once by the other; a replica killed with -9 during a bulk job
leaves it to the other, which finishes it with every item stored once; a streaming read replica made
with `pg_basebackup -R` serves searches and listings.
"""

from __future__ import annotations

import hashlib
import time

import psycopg
import pytest

from .images_for_tests import b64, png_bytes
from .test_collections_api import add_files, search, wait_for_job


def replica_env(url: str, **extra: str) -> dict[str, str]:
    return {"CLIP_FILTER_DATABASE_URL": url, "CLIP_BATCH_SIZE": "4", "CLIP_FILTER_PG_JOB_LEASE_S": "2", **extra}


def all_items(client, name: str) -> list[dict]:
    items, offset = [], 0
    while True:
        page = client.get(f"/collections/{name}/items", params={"offset": offset, "limit": 200}).json()
        items += page["items"]
        if len(page["items"]) < 200:
            return items
        offset += 200


def test_writes_through_one_replica_are_seen_by_the_other(server_factory, tmp_path, pg_database):
    shared = tmp_path / "shared"  # the originals volume both replicas mount
    a = server_factory(replica_env(pg_database), data_dir=shared)
    b = server_factory(replica_env(pg_database), data_dir=shared)
    images = [png_bytes(i) for i in range(6)]
    with a.client() as one, b.client() as other:
        assert one.post("/collections", json={"name": "team", "description": "shared"}).status_code == 201
        assert "team" in {c["name"] for c in other.get("/collections").json()["collections"]}
        results = add_files(
            one,
            "team",
            [(f"p{i}.png", d, "image/png") for i, d in enumerate(images)],
            metadata=[f'{{"i": {i}}}' for i in range(6)],
        )["results"]
        assert [r["status"] for r in results] == ["added"] * 6
        assert other.get("/collections/team").json()["item_count"] == 6
        for i, data in enumerate(images):
            hit = search(other, "team", image=b64(data), top_k=1)["results"][0]
            assert hit["metadata"] == {"i": i} and hit["score"] == pytest.approx(1.0, abs=1e-3)
            assert other.get(hit["content_url"]).content == data  # the original, from the shared folder
        # Duplicates are found across replicas; an edit on one is what the other lists and filters on.
        again = add_files(other, "team", [("again.png", images[0], "image/png")])["results"][0]
        assert (again["status"], again["id"]) == ("duplicate", results[0]["id"])
        edited = other.patch(f"/collections/team/items/{results[1]['id']}", json={"metadata": {"i": 100}})
        assert edited.status_code == 200, edited.text
        filtered = search(one, "team", text="anything", top_k=10, filters={"i": 100})["results"]
        assert [r["id"] for r in filtered] == [results[1]["id"]]
        assert one.delete(f"/collections/team/items/{results[2]['id']}").status_code in (200, 204)
        ranked = search(other, "team", text="anything", top_k=10)
        assert results[2]["id"] not in {r["id"] for r in ranked["results"]} and len(ranked["results"]) == 5
        assert len(all_items(other, "team")) == 5


def test_kill_9_of_the_replica_running_a_job_lets_the_other_finish_it(server_factory, tmp_path, pg_database):
    shared = tmp_path / "shared"
    servers = [server_factory(replica_env(pg_database), data_dir=shared) for _ in range(2)]
    job_images = [png_bytes(2000 + i) for i in range(300)]
    acknowledged: set[str] = set()
    with servers[0].client() as client:
        client.post("/collections", json={"name": "bulk"})
        response = client.post(
            "/collections/bulk/jobs",
            files=[("files", (f"job{i}.png", d, "image/png")) for i, d in enumerate(job_images)],
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        while True:  # until the job has committed a batch, with synchronous adds meanwhile
            data = png_bytes(9000 + len(acknowledged))
            assert add_files(client, "bulk", [("sync.png", data, "image/png")])["results"][0]["status"] == "added"
            acknowledged.add(hashlib.sha256(data).hexdigest())
            job = client.get(f"/jobs/{job_id}").json()
            if job["done"] > 0 or job["state"] == "done":
                break
    with psycopg.connect(pg_database) as conn:
        owner = conn.execute("SELECT lease_owner FROM jobs WHERE id = %s", (job_id,)).fetchone()[0]
    assert job["state"] == "running" and job["done"] < job["total"], "the job finished before the kill"
    holder = next(s for s in servers if f":{s.process.pid}:" in owner)
    survivor = next(s for s in servers if s is not holder)
    holder.kill9()

    with survivor.client() as client:
        job = wait_for_job(client, job_id, timeout=300)
        assert job["state"] == "done" and job["restarts"] == 1
        assert (job["done"], job["added"], job["duplicates"], job["failed"]) == (300, 300, 0, 0)
        items = all_items(client, "bulk")
        hashes = [item["sha256"] for item in items]
        assert len(hashes) == len(set(hashes)), "an item was added twice"
        assert set(hashes) == {hashlib.sha256(d).hexdigest() for d in job_images} | acknowledged
        assert client.get("/collections/bulk").json()["item_count"] == len(items)
    assert not (shared / "jobs" / job_id).exists()


def test_a_streaming_read_replica_serves_searches_and_listings(server_factory, tmp_path, pg_server, pg_database):
    replica = pg_server.base_backup_replica()
    try:
        read_url = replica.url_for(pg_database.rsplit("/", 1)[1])
        server = server_factory(replica_env(pg_database, CLIP_FILTER_DATABASE_READ_URL=read_url))
        with server.client() as client:
            client.post("/collections", json={"name": "read"})
            first = add_files(client, "read", [("a.png", png_bytes(1), "image/png")])["results"][0]
            deadline = time.monotonic() + 60
            while client.get("/collections/read/items").json()["total"] != 1:  # until the replica replayed it
                assert time.monotonic() < deadline, "the read replica never caught up"
                time.sleep(0.05)
            assert search(client, "read", image=b64(png_bytes(1)), top_k=1)["results"][0]["id"] == first["id"]
            with psycopg.connect(read_url, autocommit=True) as conn:
                conn.execute("SELECT pg_wal_replay_pause()")  # the replica lags from here on
                second = add_files(client, "read", [("b.png", png_bytes(2), "image/png")])["results"][0]
                # Listings and searches come from the replica: the new item is not there yet ...
                assert [i["id"] for i in client.get("/collections/read/items").json()["items"]] == [first["id"]]
                hits = search(client, "read", image=b64(png_bytes(2)), top_k=5)["results"]
                assert second["id"] not in {h["id"] for h in hits}
                # ... while reads by id go to the primary.
                assert client.get(f"/collections/read/items/{second['id']}").status_code == 200
                conn.execute("SELECT pg_wal_replay_resume()")
            while client.get("/collections/read/items").json()["total"] != 2:
                assert time.monotonic() < deadline, "the read replica never caught up"
                time.sleep(0.05)
            assert search(client, "read", image=b64(png_bytes(2)), top_k=1)["results"][0]["id"] == second["id"]
    finally:
        replica.stop("immediate")


def keys_cli(env: dict[str, str], data_dir, *args: str) -> str:
    """`clip-filter keys ...` as an operator runs it: its own data dir, only the database URL in common."""
    import os
    import subprocess
    import sys

    full_env = {**os.environ, **env, "CLIP_FILTER_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "clip_filter", "keys", *args], env=full_env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_api_keys_live_in_postgres_and_every_replica_sees_creates_and_revokes_at_once(
    server_factory, tmp_path, pg_database
):
    import json
    import secrets

    import httpx

    bootstrap = secrets.token_hex(32)
    env = replica_env(pg_database, CLIP_FILTER_AUTH="keys", CLIP_FILTER_BOOTSTRAP_KEY=bootstrap)
    shared = tmp_path / "shared"
    # Both replicas start at the same moment, each registering the same bootstrap key.
    replicas = [server_factory(env, data_dir=shared, wait=None) for _ in range(2)]
    for replica in replicas:
        replica.wait_ready()
    with psycopg.connect(pg_database) as conn:
        rows = conn.execute("SELECT id, name, scope FROM api_keys").fetchall()
    assert [(name, scope) for _, name, scope in rows] == [("bootstrap", "admin")], "bootstrap key stored once"
    assert not (shared / "keys.sqlite3").exists()  # keys are in the database, not the shared folder

    cli_env = {"CLIP_FILTER_DATABASE_URL": pg_database}
    secret = keys_cli(cli_env, tmp_path / "operator", "create", "reader", "--scope", "read").strip()
    listed = json.loads(keys_cli(cli_env, tmp_path / "operator", "list", "--json"))
    assert sorted(k["name"] for k in listed) == ["bootstrap", "reader"]

    def status(replica, key: str) -> int:
        with httpx.Client(base_url=replica.base_url, timeout=60) as http:
            return http.get("/collections", headers={"Authorization": f"Bearer {key}"}).status_code

    for replica in replicas:
        assert status(replica, bootstrap) == 200
        assert status(replica, secret) == 200  # made by the CLI, known to both at once
        assert status(replica, secret + "x") == 401
    with httpx.Client(base_url=replicas[0].base_url, timeout=60) as http:
        refused = http.post("/collections", json={"name": "c"}, headers={"X-API-Key": secret})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"

    keys_cli(cli_env, tmp_path / "operator", "revoke", "reader")
    for replica in replicas:
        assert status(replica, secret) == 401  # the next request after the revoke, on every replica
        assert status(replica, bootstrap) == 200
    # A replica restarted with the same bootstrap key registers nothing new.
    replicas[0].stop()
    server_factory(env, data_dir=shared)
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT count(*) FROM api_keys WHERE name = 'bootstrap'").fetchone()[0] == 1
