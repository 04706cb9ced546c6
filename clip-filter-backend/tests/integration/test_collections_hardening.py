"""Regression tests of the security review's collection findings (docs/architecture.md, "Durability and limits"),
each over real HTTP against a live server (or the real CLI): M2 stored texts, M4 reader connections, M5 uploads
and the model queue, M6 the map, M7 ingest roots, M8 import, L1/L2 filters, names and job paths."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import socket
import tarfile
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from clip_filter.collections import transfer
from clip_filter.collections.store import JobFile, SqliteCollectionStore

from .images_for_tests import png_bytes
from .test_cli import cli
from .test_collections_api import add_files, assert_error, new_collection, search, wait_for_fresh_map, wait_for_job

MIB = 1024 * 1024


# ---- M2: stored texts are bounded; listings and search answer with previews --------------------------------
def test_stored_texts_are_bounded_and_listed_as_previews(client):
    name = new_collection(client, "texts")
    too_long = "x" * (MIB + 1)
    results = client.post(f"/collections/{name}/items", json={"texts": [too_long, "short"]}).json()["results"]
    assert [r["status"] for r in results] == ["error", "added"]
    assert results[0]["error"]["code"] == "text_too_long" and results[0]["error"]["status"] == 413
    file_results = add_files(client, name, [("big.txt", too_long.encode(), "text/plain")])["results"]
    assert file_results[0]["error"]["code"] == "text_too_long"

    long_text = "a long caption " + "word " * 400  # 2015 characters, stored whole
    added = client.post(f"/collections/{name}/items", json={"texts": [long_text]}).json()["results"][0]
    assert added["item"]["text"] == long_text  # the add answer echoes what was just sent
    listed = {i["id"]: i for i in client.get(f"/collections/{name}/items").json()["items"]}
    preview = listed[added["id"]]
    assert preview["text"] == long_text[:500] and preview["text_truncated"] is True
    assert next(i for i in listed.values() if i["text"] == "short")["text_truncated"] is False
    full = {i["id"]: i for i in client.get(f"/collections/{name}/items", params={"full_text": "true"}).json()["items"]}
    assert full[added["id"]]["text"] == long_text and full[added["id"]]["text_truncated"] is False
    assert client.get(f"/collections/{name}/items/{added['id']}").json()["text"] == long_text
    assert client.get(added["item"]["content_url"]).text == long_text
    hit = next(h for h in search(client, name, text="a long caption")["results"] if h["id"] == added["id"])
    assert hit["text"] == long_text[:500] and hit["text_truncated"] is True
    response = client.post(f"/collections/{name}/search", params={"full_text": "true"}, json={"text": "a long caption"})
    assert next(h for h in response.json()["results"] if h["id"] == added["id"])["text"] == long_text


# ---- M4: a bounded reader pool, not one SQLite connection per worker thread ----------------------------------
def database_fds(pid: int, db: Path) -> int:
    """Descriptors of the server process open on the database file itself (one per connection)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == str(db):
                count += 1
        except OSError:
            pass
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
@pytest.mark.may_skip(reason="counts descriptors in /proc (Linux only)")
def test_reader_connections_stay_bounded_over_bursts(server_factory):
    server = server_factory({"CLIP_FILTER_DB_READERS": "3"})
    with server.client() as client:
        client.post("/collections", json={"name": "fds"})
        client.post("/collections/fds/items", json={"texts": [f"caption number {i}" for i in range(200)]})

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:
            responses = await asyncio.gather(
                *[
                    http.get("/collections/fds/items", params={"limit": 1000})
                    if i % 2
                    else http.get("/collections/fds")
                    for i in range(64)
                ]
            )
            return [r.status_code for r in responses]

    db = (server.data_dir / "collections.sqlite3").resolve()
    for _ in range(3):
        assert set(asyncio.run(burst())) == {200}
        # 3 pooled readers + the writer; one connection per thread would hold dozens after 64 concurrent reads.
        assert database_fds(server.process.pid, db) <= 4


# ---- M5: uploads are refused with 429 when the model queue is full, never parked on a worker thread --------
def test_uploads_answer_429_when_the_model_queue_is_full(server_factory):
    server = server_factory({"CLIP_MAX_QUEUE": "1", "CLIP_MAX_BATCH_WAIT_MS": "50"})
    with server.client() as client:
        client.post("/collections", json={"name": "busy"})

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=300) as http:
            return await asyncio.gather(
                *[
                    http.post(
                        "/collections/busy/items",
                        files=[
                            ("files", (f"{k}-{i}.png", png_bytes(10_000 + 16 * k + i, (224, 224)), "image/png"))
                            for i in range(8)
                        ],
                    )
                    for k in range(24)
                ]
            )

    responses = asyncio.run(main())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429} and 429 in statuses and 200 in statuses, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "1" and refused.json()["error"]["code"] == "overloaded"
    with server.client() as client:  # refused uploads left nothing behind; accepted ones are all there
        assert client.get("/collections/busy").json()["item_count"] == 8 * statuses.count(200)


# Uploads admitted a few at a time (api/admission.py): a flood is refused before its bodies are read.
def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "clip-filter-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{n}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for n, data in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class RawUpload:
    """One POST on its own socket: the headers (and as much of the body as asked) now, the rest later."""

    def __init__(self, base_url: str, path: str, body: bytes, content_type: str, send_now: int = 0) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        self.body, self.sent = body, send_now
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + body[:send_now])

    def finish(self) -> None:
        self.sock.sendall(self.body[self.sent :])

    def response(self) -> tuple[int, dict[str, str], dict]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed before an answer: {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(rest) < int(headers["content-length"]):
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed inside the answer"
            rest += chunk
        self.sock.close()
        return int(lines[0].split()[1]), headers, json.loads(rest)


def _gate_metric(base_url: str, name: str, what: str) -> float:
    text = httpx.get(base_url + "/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(f'{name}{{what="{what}"}} '):
            return float(line.split()[-1])
    return 0.0


def _wait_for_metric(base_url: str, name: str, what: str, value: float, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _gate_metric(base_url, name, what) != value:
        assert time.monotonic() < deadline, f"{name}{{what={what!r}}} never reached {value}"
        time.sleep(0.05)


def test_a_flood_of_uploads_is_refused_before_its_bodies_are_read(server_factory):
    server = server_factory({"CLIP_FILTER_UPLOAD_CONCURRENCY": "1", "CLIP_FILTER_UPLOAD_BACKLOG": "1"})
    with server.client() as client:
        client.post("/collections", json={"name": "gate"}).raise_for_status()
    path = "/collections/gate/items"
    body_a, kind = _multipart([("a.png", png_bytes(501, (64, 64)))])
    body_b, _ = _multipart([("b.png", png_bytes(502, (64, 64)))])
    first = RawUpload(server.base_url, path, body_a, kind, send_now=len(body_a) // 2)  # admitted, body half sent
    _wait_for_metric(server.base_url, "clip_filter_uploads_active", "uploads", 1)
    second = RawUpload(server.base_url, path, body_b, kind)  # headers only: waits in the backlog, unread
    _wait_for_metric(server.base_url, "clip_filter_uploads_waiting", "uploads", 1)
    # Every place and the backlog are taken: 429 at once, although not one byte of these bodies was sent.
    third = RawUpload(server.base_url, path, b"x" * 10 * MIB, kind)
    status, headers, error = third.response()
    assert status == 429 and headers["retry-after"] == "1", error
    assert error["error"]["code"] == "overloaded" and "uploads" in error["error"]["message"]
    assert _gate_metric(server.base_url, "clip_filter_upload_refusals_total", "uploads") == 1

    first.finish()
    status, _, added = first.response()
    assert status == 200 and [r["status"] for r in added["results"]] == ["added"]
    second.finish()  # admitted once the first was done
    status, _, added = second.response()
    assert status == 200 and [r["status"] for r in added["results"]] == ["added"]
    _wait_for_metric(server.base_url, "clip_filter_uploads_active", "uploads", 0)
    with server.client() as client:  # the refused upload left nothing; the admitted ones are both there
        assert client.get("/collections/gate").json()["item_count"] == 2


def test_job_uploads_have_their_own_places(server_factory):
    server = server_factory({"CLIP_FILTER_UPLOAD_CONCURRENCY": "1", "CLIP_FILTER_UPLOAD_BACKLOG": "0"})
    with server.client() as client:
        client.post("/collections", json={"name": "jobgate"}).raise_for_status()
    body, kind = _multipart([("j.png", png_bytes(503, (64, 64)))])
    job = RawUpload(server.base_url, "/collections/jobgate/jobs", body, kind, send_now=len(body) // 2)
    _wait_for_metric(server.base_url, "clip_filter_uploads_active", "job uploads", 1)
    refused = RawUpload(server.base_url, "/collections/jobgate/jobs", b"x" * MIB, kind)
    status, headers, error = refused.response()
    assert status == 429 and headers["retry-after"] == "1" and error["error"]["code"] == "overloaded", error
    with server.client() as client:  # a job upload does not take an item upload's place
        added = client.post("/collections/jobgate/items", files=[("files", ("i.png", png_bytes(504), "image/png"))])
        assert added.status_code == 200, added.text
        job.finish()
        status, _, started = job.response()
        assert status == 202, started
        assert wait_for_job(client, started["id"])["state"] == "done"


# ---- M6: the map survives metadata writes and is recomputed in the background -------------------------------
def test_map_is_kept_across_metadata_writes_and_refreshed_in_the_background(client):
    name = new_collection(client, "map-keep")
    added = client.post(f"/collections/{name}/items", json={"texts": [f"caption {i}" for i in range(20)]}).json()
    first = wait_for_fresh_map(client, name)
    assert first["stale"] is False and first["total"] == 20 and first["computed_at"]
    client.patch(f"/collections/{name}", json={"description": "a new description"})
    client.patch(f"/collections/{name}/items/{added['results'][0]['id']}", json={"metadata": {"k": 1}})
    again = client.get(f"/collections/{name}/map").json()
    assert again["stale"] is False and again["computed_at"] == first["computed_at"]  # not recomputed
    assert again["points"] == first["points"]

    client.post(f"/collections/{name}/items", json={"texts": ["one more caption"]})
    stale = client.get(f"/collections/{name}/map").json()  # answered at once with the previous layout
    assert stale["stale"] is True and stale["total"] == 20 and stale["computed_at"] == first["computed_at"]
    fresh = wait_for_fresh_map(client, name)
    assert fresh["stale"] is False and fresh["total"] == 21 and fresh["computed_at"] != first["computed_at"]


# ---- M7: ingest roots ----------------------------------------------------------------------------------------
@pytest.fixture
def roots_server(server_factory, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    server = server_factory({"CLIP_FILTER_INGEST_ROOTS": str(root)})
    with server.client() as client:
        client.post("/collections", json={"name": "r"})
    return server, root


def test_a_fifo_in_an_ingest_root_fails_its_file_and_the_job_finishes(roots_server):
    server, root = roots_server
    folder = root / "fifo"
    folder.mkdir()
    os.mkfifo(folder / "stuck.jpg")
    (folder / "ok.png").write_bytes(png_bytes(800))
    with server.client() as client:
        response = client.post("/collections/r/jobs", json={"path": str(folder)})
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["id"], timeout=60)
        assert (job["state"], job["added"], job["failed"]) == ("done", 1, 1)
        assert job["failures"][0] == {
            "filename": "stuck.jpg",
            "code": "not_a_regular_file",
            "message": job["failures"][0]["message"],
        }
        assert_error(
            client.post("/collections/r/jobs", json={"path": str(folder / "stuck.jpg")}), 422, "not_a_regular_file"
        )


def test_a_fifo_job_left_running_by_an_older_server_finishes_after_a_restart(server_factory, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "stuck.jpg")
    data_dir = tmp_path / "data"
    store = SqliteCollectionStore(data_dir)  # what an older version left: a running job listing the FIFO
    collection = store.create_collection("r")
    listed = [JobFile(0, "stuck.jpg", str(root / "stuck.jpg"), {})]
    job = store.create_job("a" * 32, collection, "path", str(root), listed)
    store.set_job_state(job.id, "running")
    store.close()
    server = server_factory({"CLIP_FILTER_INGEST_ROOTS": str(root)}, data_dir=data_dir)
    with server.client() as client:
        done = wait_for_job(client, job.id, timeout=60)
        assert (done["state"], done["failed"], done["restarts"]) == ("done", 1, 1)
        assert done["failures"][0]["code"] == "not_a_regular_file"


def test_loops_nul_and_hidden_files_in_ingest_roots(roots_server):
    server, root = roots_server
    loop = root / "loop"
    loop.mkdir()
    os.symlink("loop.jpg", loop / "loop.jpg")  # a link to itself
    (loop / "fine.png").write_bytes(png_bytes(801))
    hidden = root / "hidden"
    (hidden / ".cache").mkdir(parents=True)
    (hidden / "seen.png").write_bytes(png_bytes(802))
    (hidden / ".dot.png").write_bytes(png_bytes(803))
    (hidden / ".cache" / "inner.png").write_bytes(png_bytes(804))
    with server.client() as client:
        response = client.post("/collections/r/jobs", json={"path": str(loop)})
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["id"])
        assert (job["state"], job["added"], job["failed"]) == ("done", 1, 1)
        assert job["failures"][0]["filename"] == "loop.jpg" and job["failures"][0]["code"] == "unresolvable_path"
        assert_error(
            client.post("/collections/r/jobs", json={"path": str(loop / "loop.jpg")}), 422, "unresolvable_path"
        )
        assert_error(client.post("/collections/r/jobs", json={"path": str(root) + "/\u0000x"}), 422)

        job = wait_for_job(client, client.post("/collections/r/jobs", json={"path": str(hidden)}).json()["id"])
        assert (job["state"], job["total"], job["added"]) == ("done", 1, 1)
        job = wait_for_job(
            client, client.post("/collections/r/jobs", json={"path": str(hidden), "include_hidden": True}).json()["id"]
        )
        assert (job["state"], job["total"], job["added"], job["duplicates"]) == ("done", 3, 2, 1)


# ---- L1/L2: filters, names and paths that used to reach the 500 handler -------------------------------------
def test_nul_in_filter_keys_too_many_filters_and_newline_names_are_refused(client):
    name = new_collection(client, "filters")
    client.post(f"/collections/{name}/items", json={"texts": ["a cat"]})
    assert_error(
        client.post(f"/collections/{name}/search", json={"text": "x", "filters": {"a\u0000b": 1}}),
        422,
        "invalid_filters",
    )
    many = {f"k{i}": i for i in range(1200)}
    assert_error(
        client.post(f"/collections/{name}/search", json={"text": "x", "filters": many}), 422, "too_many_filters"
    )
    ok = client.post(f"/collections/{name}/search", json={"text": "x", "filters": {f"k{i}": i for i in range(64)}})
    assert ok.status_code == 200 and ok.json()["results"] == []
    assert_error(client.post("/collections", json={"name": "c\n"}), 422, "invalid_collection_name")
    assert_error(client.get("/collections/c%0A"), 422, "invalid_collection_name")
    assert_error(client.post(f"/collections/{name}/jobs", json={"path": "/tmp/\u0000x"}), 422)


# ---- M8: import checks every item's type against its bytes, the model, the tar and the arrays ---------------
def write_export(folder: Path, items: list[dict], vectors: np.ndarray, model: dict | None, files: dict | None = None):
    (folder / "originals").mkdir(parents=True, exist_ok=True)
    manifest = {"format": "clip-filter-collection", "format_version": 1, "name": folder.name}
    if model is not None:
        manifest["model"] = model
    (folder / "collection.json").write_text(json.dumps(manifest))
    (folder / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    np.save(folder / "embeddings.npy", vectors)
    for relative, data in (files or {}).items():
        (folder / relative).write_bytes(data)
    return folder


def unit_rows(n: int, dim: int) -> np.ndarray:
    rows = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


MODEL = {"name": "clip-filter-tiny", "pretrained": "random", "dim": 64}


def text_item(text: str, mimetype: str | None = "text/plain") -> dict:
    item = {"kind": "text", "sha256": hashlib.sha256(text.encode()).hexdigest(), "text": text}
    if mimetype is not None:
        item["mimetype"] = mimetype
    return item


def test_import_refuses_spoofed_types_and_serves_originals_by_their_bytes(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    script = "<script>alert(document.domain)</script>"
    evil = write_export(tmp_path / "evil", [text_item(script, "text/html")], unit_rows(1, 64), MODEL)
    run = cli(data_dir, "import", str(evil), "--no-progress", check=False)
    assert run.returncode != 0 and "text/html" in run.stderr
    png = png_bytes(900)
    sha = hashlib.sha256(png).hexdigest()
    image = {"kind": "image", "sha256": sha, "original": f"originals/{sha}.png", "mimetype": "text/html"}
    spoofed = write_export(tmp_path / "spoofed", [image], unit_rows(1, 64), MODEL, {f"originals/{sha}.png": png})
    run = cli(data_dir, "import", str(spoofed), "--no-progress", check=False)
    assert run.returncode != 0 and "does not match the bytes" in run.stderr

    # Without a declared type the bytes decide; the server serves what it sniffs, never a stored word.
    del image["mimetype"]
    fine = write_export(
        tmp_path / "fine",
        [image, text_item("plain words", None)],
        unit_rows(2, 64),
        MODEL,
        {f"originals/{sha}.png": png},
    )
    cli(data_dir, "import", str(fine), "--no-progress")
    store = SqliteCollectionStore(data_dir)  # an older store may hold a hostile type: it is not what is served
    with store._transaction() as conn:
        conn.execute("UPDATE items SET mimetype = 'text/html'")
    store.close()
    server = server_factory(data_dir=data_dir)
    with server.client() as client:
        items = client.get("/collections/fine/items").json()["items"]
        types = {i["kind"]: client.get(i["content_url"]).headers["content-type"] for i in items}
        assert types == {"image": "image/png", "text": "text/plain; charset=utf-8"}


def test_import_refuses_a_manifest_without_a_model_and_other_dimensions(tmp_path):
    data_dir = tmp_path / "data"
    no_model = write_export(tmp_path / "nomodel", [text_item("hello")], unit_rows(1, 8), {})
    run = cli(data_dir, "import", str(no_model), "--no-progress", check=False)
    assert run.returncode != 0 and "model" in run.stderr
    no_dim = write_export(tmp_path / "nodim", [text_item("hello")], unit_rows(1, 8), {"name": "clip-filter-tiny"})
    run = cli(data_dir, "import", str(no_dim), "--no-progress", check=False)
    assert run.returncode != 0 and "dimension" in run.stderr
    # An empty collection that already records a 64-dimensional model refuses 8-dimensional vectors.
    store = SqliteCollectionStore(data_dir)
    store.create_collection("mix", None, ("clip-filter-tiny", "random", 64))
    store.close()
    small = write_export(
        tmp_path / "mix", [text_item("hello")], unit_rows(1, 8), {"name": "other", "pretrained": "x", "dim": 8}
    )
    run = cli(data_dir, "import", str(small), "--merge", "--no-progress", check=False)
    assert run.returncode != 0 and "8" in run.stderr and "64" in run.stderr
    store = SqliteCollectionStore(data_dir)
    assert store.get_collection("mix").item_count == 0
    store.close()


def test_import_refuses_npz_and_pickled_arrays(tmp_path):
    data_dir = tmp_path / "data"
    folder = write_export(tmp_path / "npz", [text_item("hello")], unit_rows(1, 64), MODEL)
    with open(folder / "embeddings.npy", "wb") as handle:
        np.savez(handle, unit_rows(1, 64))
    run = cli(data_dir, "import", str(folder), "--no-progress", check=False)
    assert run.returncode != 0 and "not a NumPy .npy file" in run.stderr and "Traceback" not in run.stderr
    np.save(folder / "embeddings.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    run = cli(data_dir, "import", str(folder), "--no-progress", check=False)
    assert run.returncode != 0 and "embeddings.npy" in run.stderr and "Traceback" not in run.stderr


def test_import_tars_are_bounded_and_extracted_inside_the_data_folder(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    folder = write_export(tmp_path / "export", [text_item(f"text {i}") for i in range(3)], unit_rows(3, 64), MODEL)
    archive = tmp_path / "export.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname="export")
        tar.addfile(tarfile.TarInfo("export/padding.bin"), io.BytesIO())
    run = cli(
        data_dir, "import", str(archive), "--no-progress", check=False, env={"CLIP_FILTER_IMPORT_MAX_MEMBERS": "4"}
    )
    assert run.returncode != 0 and "CLIP_FILTER_IMPORT_MAX_MEMBERS" in run.stderr
    run = cli(
        data_dir, "import", str(archive), "--no-progress", check=False, env={"CLIP_FILTER_IMPORT_MAX_BYTES": "100"}
    )
    assert run.returncode != 0 and "CLIP_FILTER_IMPORT_MAX_BYTES" in run.stderr

    # Extracted inside the data folder, never into the system temp dir (often RAM): with no usable temp dir
    # at all the import still works, and nothing is left behind.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-temp-dir"))
    store = SqliteCollectionStore(data_dir)
    try:
        result = transfer.import_collection(store, archive)
    finally:
        store.close()
    assert (result.created, result.added) == (True, 3)
    assert not list(data_dir.glob(".import-*"))
