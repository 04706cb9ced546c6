"""Collections survive restarts and kill -9; another model is refused with 409; other writers are noticed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from .images_for_tests import b64, png_bytes
from .test_collections_api import add_files, assert_error, search, wait_for_job


def all_items(client, name: str) -> list[dict]:
    items, offset = [], 0
    while True:
        page = client.get(f"/collections/{name}/items", params={"offset": offset, "limit": 200}).json()
        items += page["items"]
        offset += 200
        if offset >= page["total"]:
            return items


def test_items_persist_across_a_restart(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    server = server_factory(data_dir=data_dir)
    images = [png_bytes(500 + i) for i in range(4)]
    with server.client() as client:
        client.post("/collections", json={"name": "keep", "description": "survives"})
        add_files(
            client,
            "keep",
            [(f"{i}.png", data, "image/png") for i, data in enumerate(images)],
            metadata=[f'{{"i": {i}}}' for i in range(4)],
        )
        client.post("/collections/keep/items", json={"texts": ["a persistent caption"]})
        before = all_items(client, "keep")
    server.stop()

    again = server_factory(data_dir=data_dir)
    with again.client() as client:
        collection = client.get("/collections/keep").json()
        assert (collection["item_count"], collection["description"]) == (5, "survives")
        assert all_items(client, "keep") == before
        for i, data in enumerate(images):
            hit = search(client, "keep", image=b64(data), top_k=1)["results"][0]
            assert hit["metadata"] == {"i": i} and hit["score"] == pytest.approx(1.0, abs=1e-3)
            assert client.get(hit["content_url"]).content == data
        assert search(client, "keep", text="a persistent caption", top_k=1)["results"][0]["kind"] == "text"
        assert add_files(client, "keep", [("again.png", images[0], "image/png")])["results"][0]["status"] == "duplicate"


def test_kill_9_during_a_bulk_ingest_loses_no_acknowledged_item(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    # Small batches: many commits, so the kill lands between two of them.
    env = {"CLIP_BATCH_SIZE": "4"}
    server = server_factory(env, data_dir=data_dir)
    job_images = [png_bytes(1000 + i) for i in range(400)]
    acknowledged: dict[str, bytes] = {}  # sha256 -> bytes of synchronous adds answered "added"
    with server.client() as client:
        client.post("/collections", json={"name": "bulk"})
        response = client.post(
            "/collections/bulk/jobs",
            files=[("files", (f"job{i}.png", d, "image/png")) for i, d in enumerate(job_images)],
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        seed = 5000
        while True:
            data = png_bytes(seed)
            seed += 1
            result = add_files(client, "bulk", [(f"sync{seed}.png", data, "image/png")])["results"][0]
            assert result["status"] == "added"
            acknowledged[hashlib.sha256(data).hexdigest()] = data
            job = client.get(f"/jobs/{job_id}").json()
            if job["done"] > 0 or job["state"] == "done":
                break
    assert job["state"] == "running" and job["done"] < job["total"], "the job finished before the kill"
    server.kill9()

    again = server_factory(env, data_dir=data_dir)
    with again.client() as client:
        job = wait_for_job(client, job_id)
        assert job["state"] == "done" and job["restarts"] == 1
        assert (job["done"], job["added"], job["duplicates"], job["failed"]) == (400, 400, 0, 0)
        items = all_items(client, "bulk")
        hashes = [item["sha256"] for item in items]
        assert len(hashes) == len(set(hashes)), "an item was added twice"
        expected = {hashlib.sha256(d).hexdigest() for d in job_images} | set(acknowledged)
        assert set(hashes) == expected
        collection = client.get("/collections/bulk").json()
        assert collection["item_count"] == len(items) == len(expected)
        # Every vector belongs to a listed item and every item has one: no orphan vectors.
        ranked = search(client, "bulk", text="anything", top_k=1000)
        assert ranked["total"] == len(items)
        assert sorted(r["id"] for r in ranked["results"]) == sorted(item["id"] for item in items)
        for data in acknowledged.values():
            hit = search(client, "bulk", image=b64(data), top_k=1)["results"][0]
            assert client.get(hit["content_url"]).content == data and hit["score"] == pytest.approx(1.0, abs=1e-3)
    # The spooled upload files of the finished job are gone.
    assert not (data_dir / "jobs" / job_id).exists()


def write_tiny_checkpoint(path: Path) -> None:
    """Weights for clip-filter-tiny from another seed: same architecture, another `pretrained`."""
    import open_clip
    import torch

    import clip_filter.ml.factory  # noqa: F401 - registers the clip-filter-tiny config

    torch.manual_seed(1234)
    torch.save(open_clip.create_model("clip-filter-tiny").state_dict(), path)


def test_another_model_gets_409_with_guidance(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    server = server_factory(data_dir=data_dir)
    with server.client() as client:
        client.post("/collections", json={"name": "old"})
        add_files(client, "old", [("a.png", png_bytes(1), "image/png")])
    server.stop()

    checkpoint = tmp_path / "other.pt"
    write_tiny_checkpoint(checkpoint)
    other = server_factory({"CLIP_PRETRAINED": str(checkpoint)}, data_dir=data_dir)
    with other.client() as client:
        assert client.get("/info").json()["weights"] == "checkpoint"
        for response in (
            client.post("/collections/old/items", json={"texts": ["new text"]}),
            client.post("/collections/old/items", files=[("files", ("b.png", png_bytes(2), "image/png"))]),
            client.post("/collections/old/search", json={"text": "a query"}),
            client.post("/collections/old/search", json={"image": b64(png_bytes(1))}),
            client.post("/collections/old/map/project", json={"text": "a query"}),
            client.post("/collections/old/jobs", files=[("files", ("c.png", png_bytes(3), "image/png"))]),
        ):
            error = assert_error(response, 409, "model_mismatch")
            assert error["fix"] == "clip-filter reindex old" and "clip-filter reindex old" in error["message"]
            assert error["collection_model"]["pretrained"] == "random"
            assert error["current_model"]["pretrained"] == str(checkpoint)
        # Reading still works, and nothing was added or lost.
        assert client.get("/collections/old").json()["item_count"] == 1
        assert len(all_items(client, "old")) == 1
        assert client.get("/collections/old/map").status_code == 200
        # A new collection simply records the new model.
        client.post("/collections", json={"name": "new"})
        assert add_files(client, "new", [("a.png", png_bytes(1), "image/png")])["results"][0]["status"] == "added"
        assert client.get("/collections/new").json()["pretrained"] == str(checkpoint)


def test_writes_by_another_process_are_noticed(server_factory, tmp_path):
    """The CLI writes to the same SQLite file while the server runs: the server's index follows."""
    from clip_filter.collections.store import NewItem, SqliteCollectionStore

    data_dir = tmp_path / "data"
    server = server_factory(data_dir=data_dir)
    with server.client() as client:
        client.post("/collections", json={"name": "shared"})
        client.post("/collections/shared/items", json={"texts": ["from the server"]})
        assert search(client, "shared", text="from the server")["total"] == 1  # index built
        info = client.get("/info").json()
        vector = np.asarray(
            client.post("/embeddings/texts", json={"texts": ["from the cli"]}).json()["embeddings"][0], np.float32
        )

        outside = SqliteCollectionStore(data_dir)
        try:
            collection = outside.get_collection("shared")
            text = "from the cli"
            [(status, item_id)] = outside.add_items(
                collection.id,
                [
                    NewItem(
                        "text",
                        None,
                        "text/plain",
                        len(text),
                        hashlib.sha256(text.encode()).hexdigest(),
                        {"by": "cli"},
                        vector,
                        text=text,
                    )
                ],
                (info["model"], info["pretrained"], info["dim"]),
            )
            assert status == "added"
            hits = search(client, "shared", text="from the cli")
            assert hits["total"] == 2 and hits["results"][0]["id"] == item_id
            assert hits["results"][0]["metadata"] == {"by": "cli"}

            outside.delete_item(outside.get_collection("shared"), item_id)
            hits = search(client, "shared", text="from the cli")
            assert hits["total"] == 1 and item_id not in [r["id"] for r in hits["results"]]
        finally:
            outside.close()


def test_folder_jobs_stay_inside_the_allowed_roots(server_factory, tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(png_bytes(700))
    (root / "sub" / "b.png").write_bytes(png_bytes(701))
    (root / "sub" / "note.txt").write_text("a note in a folder")
    (root / "skip.bin").write_bytes(b"not picked up")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "s.png").write_bytes(png_bytes(702))
    os.symlink(secret / "s.png", root / "link.png")  # a link leaving the root is refused
    server = server_factory({"CLIP_FILTER_INGEST_ROOTS": str(root)})
    with server.client() as client:
        client.post("/collections", json={"name": "folder"})
        assert_error(client.post("/collections/folder/jobs", json={"path": str(secret)}), 403, "path_not_allowed")
        assert_error(
            client.post("/collections/folder/jobs", json={"path": str(root / ".." / "secret")}), 403, "path_not_allowed"
        )
        assert_error(client.post("/collections/folder/jobs", json={"path": "relative/path"}), 403, "path_not_allowed")
        assert_error(
            client.post("/collections/folder/jobs", json={"path": str(root / "missing")}), 404, "path_not_found"
        )
        response = client.post("/collections/folder/jobs", json={"path": str(root)})
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["job_id"])
        assert (job["state"], job["total"], job["added"], job["failed"]) == ("done", 4, 3, 1)
        assert job["failures"][0]["code"] == "path_not_allowed"
        names = sorted(item["filename"] for item in all_items(client, "folder"))
        assert names == ["a.png", "sub/b.png", "sub/note.txt"]
