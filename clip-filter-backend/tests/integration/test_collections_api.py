"""Collections over real HTTP against a live uvicorn (tiny random model): round trips, search, errors, jobs, map."""

from __future__ import annotations

import hashlib
import io
import itertools
import time

import pytest
from PIL import Image

from .images_for_tests import b64, png_bytes

_names = itertools.count()


def new_collection(client, prefix: str = "c") -> str:
    name = f"{prefix}-{next(_names)}-{time.monotonic_ns() % 10**9}"
    response = client.post("/collections", json={"name": name, "description": "test"})
    assert response.status_code == 201, response.text
    return name


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["code"]
    if code:
        assert error["code"] == code, error
    return error


def add_files(client, name: str, files: list[tuple[str, bytes, str]], metadata: list[str] | None = None) -> dict:
    parts = [("files", f) for f in files]
    response = client.post(f"/collections/{name}/items", files=parts, data={"metadata": metadata} if metadata else None)
    assert response.status_code == 200, response.text
    return response.json()


def search(client, name: str, **body) -> dict:
    response = client.post(f"/collections/{name}/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def assert_ranked(results: list[dict]) -> None:
    keys = [(-r["score"], r["id"]) for r in results]
    assert keys == sorted(keys)


def wait_for_job(client, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "interrupted"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


# ---- collections -----------------------------------------------------------------------------------------
def wait_for_fresh_map(client, name: str, timeout: float = 300.0) -> dict:
    """The map once it reflects the items (after a change the previous one is served, `stale`, meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/collections/{name}/map")
        assert response.status_code == 200, response.text
        if not response.json()["stale"] or time.monotonic() > deadline:
            return response.json()
        time.sleep(0.2)


def test_create_list_get_delete_round_trip(client):
    name = new_collection(client)
    collection = client.get(f"/collections/{name}").json()
    assert collection["name"] == name and collection["description"] == "test" and collection["item_count"] == 0
    assert (
        collection["model"] == "clip-filter-tiny" and collection["pretrained"] == "random" and collection["dim"] == 64
    )
    listed = {c["name"]: c for c in client.get("/collections").json()["collections"]}
    assert listed[name]["item_count"] == 0
    assert_error(client.post("/collections", json={"name": name}), 409, "collection_exists")

    add_files(client, name, [("a.png", png_bytes(1), "image/png")])
    assert client.delete(f"/collections/{name}").status_code == 204
    assert_error(client.get(f"/collections/{name}"), 404, "collection_not_found")
    assert_error(client.delete(f"/collections/{name}"), 404, "collection_not_found")
    assert name not in {c["name"] for c in client.get("/collections").json()["collections"]}
    # The name is free again, and the new collection starts empty.
    assert client.post("/collections", json={"name": name}).status_code == 201
    assert client.get(f"/collections/{name}").json()["item_count"] == 0


def test_api_prefix_serves_the_same_collections(client):
    name = new_collection(client)
    assert client.get(f"/api/collections/{name}").json()["name"] == name


# ---- items -----------------------------------------------------------------------------------------------
def test_add_images_and_text_files_with_duplicates_and_bad_slots(client):
    name = new_collection(client)
    image = png_bytes(10)
    body = add_files(
        client,
        name,
        [
            ("one.png", image, "image/png"),
            ("note.txt", b"a note about cats", "text/plain"),
            ("doc.pdf", b"%PDF-1.4\n%\xe2\xe3\n1 0 obj", "application/pdf"),
            ("same.png", image, "image/png"),
            ("empty.png", b"", "image/png"),
            ("two.png", png_bytes(11), "image/png"),
        ],
        metadata=['{"camera": "fuji"}', '{"lang": "en"}', "", "", "", '{"camera": "leica", "year": 2024}'],
    )
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["added", "added", "error", "duplicate", "error", "added"]
    assert [r["index"] for r in body["results"]] == list(range(6))
    pdf_error = body["results"][2]["error"]
    assert pdf_error["status"] == 415 and pdf_error["code"] == "not_an_image"
    assert body["results"][4]["error"]["status"] == 400
    assert body["results"][3]["item"]["id"] == body["results"][0]["item"]["id"]

    image_item, text_item = body["results"][0]["item"], body["results"][1]["item"]
    assert image_item["kind"] == "image" and image_item["metadata"] == {"camera": "fuji"}
    assert image_item["sha256"] == hashlib.sha256(image).hexdigest() and image_item["size"] == len(image)
    assert text_item["kind"] == "text" and text_item["text"] == "a note about cats" and text_item["truncated"] is False
    assert text_item["thumbnail_url"] is None
    collection = client.get(f"/collections/{name}").json()
    assert (collection["item_count"], collection["image_count"], collection["text_count"]) == (3, 2, 1)

    content = client.get(image_item["content_url"])
    assert content.status_code == 200 and content.content == image
    assert content.headers["content-type"] == "image/png"
    thumbnail = client.get(image_item["thumbnail_url"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumbnail.content)).format == "JPEG"
    text_content = client.get(text_item["content_url"])
    assert text_content.text == "a note about cats" and text_content.headers["content-type"].startswith("text/plain")
    assert_error(client.get(f"/collections/{name}/items/{text_item['id']}/thumbnail"), 404, "no_thumbnail")
    assert client.get(f"/collections/{name}/items/{image_item['id']}").json() == image_item


def test_json_texts_long_text_is_truncated_and_flagged(client):
    name = new_collection(client)
    long_text = " ".join(f"word{i}" for i in range(400))
    response = client.post(
        f"/collections/{name}/items",
        json={
            "texts": ["a red bicycle", long_text, "   ", "a red bicycle"],
            "metadata": [{"source": "json"}, None, None, None],
        },
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["added", "added", "error", "duplicate"]
    assert results[0]["item"]["metadata"] == {"source": "json"} and results[0]["item"]["truncated"] is False
    assert results[1]["item"]["truncated"] is True and results[1]["item"]["text"] == long_text
    assert results[2]["error"]["code"] == "empty_text"
    # The same text as a text/plain file is the same content: a duplicate.
    again = add_files(client, name, [("bike.txt", b"a red bicycle", "text/plain")])
    assert again["results"][0]["status"] == "duplicate"
    hits = search(client, name, text="a red bicycle", top_k=1)["results"]
    assert hits[0]["id"] == results[0]["item"]["id"] and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_patch_and_delete_items(client):
    name = new_collection(client)
    body = add_files(client, name, [(f"{i}.png", png_bytes(20 + i), "image/png") for i in range(3)])
    ids = [r["item"]["id"] for r in body["results"]]
    patched = client.patch(f"/collections/{name}/items/{ids[1]}", json={"metadata": {"tag": "keep"}})
    assert patched.status_code == 200 and patched.json()["metadata"] == {"tag": "keep"}
    found = search(client, name, item_id=ids[0], filters={"tag": "keep"})["results"]
    assert [r["id"] for r in found] == [ids[1]]

    assert client.delete(f"/collections/{name}/items/{ids[0]}").status_code == 204
    assert_error(client.get(f"/collections/{name}/items/{ids[0]}"), 404, "item_not_found")
    assert_error(client.get(f"/collections/{name}/items/{ids[0]}/content"), 404, "item_not_found")
    assert_error(client.delete(f"/collections/{name}/items/{ids[0]}"), 404, "item_not_found")
    results = search(client, name, image=b64(png_bytes(20)), top_k=10)["results"]
    assert ids[0] not in [r["id"] for r in results] and len(results) == 2
    assert client.get(f"/collections/{name}").json()["item_count"] == 2
    # Adding the deleted content again works (a new item).
    again = add_files(client, name, [("0.png", png_bytes(20), "image/png")])["results"][0]
    assert again["status"] == "added" and again["item"]["id"] not in ids


def test_item_pages_are_stable_and_complete(client):
    name = new_collection(client)
    texts = [f"caption number {i}" for i in range(23)]
    assert client.post(f"/collections/{name}/items", json={"texts": texts}).status_code == 200
    pages = [client.get(f"/collections/{name}/items", params={"offset": o, "limit": 5}).json() for o in range(0, 25, 5)]
    assert all(p["total"] == 23 for p in pages)
    ids = [item["id"] for p in pages for item in p["items"]]
    assert len(ids) == 23 and ids == sorted(ids)
    assert [item["text"] for p in pages for item in p["items"]] == texts


# ---- search ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def searchable(server):
    """A collection with images and texts, metadata on each."""
    with server.client() as client:
        name = new_collection(client, "search")
        images = [png_bytes(100 + i) for i in range(8)]
        files = [(f"img{i}.png", data, "image/png") for i, data in enumerate(images)]
        files += [(f"t{i}.txt", f"text item {i}".encode(), "text/plain") for i in range(4)]
        metadata = [f'{{"group": "{"a" if i % 2 else "b"}", "n": {i}}}' for i in range(12)]
        body = add_files(client, name, files, metadata)
        assert all(r["status"] == "added" for r in body["results"])
        ids = [r["item"]["id"] for r in body["results"]]
    return name, images, ids


def test_image_search_finds_the_indexed_image_first(client, searchable):
    name, images, ids = searchable
    for i in (0, 5):
        body = search(client, name, image=b64(images[i]))
        assert body["results"][0]["id"] == ids[i] and body["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)
        assert body["results"][0]["filename"] == f"img{i}.png" and body["results"][0]["metadata"]["n"] == i
        assert len(body["results"]) == 12 and body["total"] == 12
        assert body["model"]["name"] == "clip-filter-tiny" and body["weights"] == "random"
        assert_ranked(body["results"])
    multipart = client.post(
        f"/collections/{name}/search", files={"image": ("q.png", images[3], "image/png")}, data={"top_k": "2"}
    )
    assert multipart.status_code == 200, multipart.text
    assert multipart.json()["results"][0]["id"] == ids[3] and len(multipart.json()["results"]) == 2


def test_item_and_text_searches(client, searchable):
    name, _, ids = searchable
    by_item = search(client, name, item_id=ids[9])["results"]
    assert by_item[0]["id"] == ids[9] and by_item[0]["kind"] == "text" and by_item[0]["text"] == "text item 1"
    by_text = search(client, name, text="text item 2", top_k=3)
    assert by_text["results"][0]["id"] == ids[10] and by_text["query_truncated"] is False
    assert_ranked(by_text["results"])


def test_filters_kind_and_min_score(client, searchable):
    name, _, ids = searchable
    texts = search(client, name, item_id=ids[0], kind="text")["results"]
    assert sorted(r["id"] for r in texts) == sorted(ids[8:])
    group_a = search(client, name, item_id=ids[0], filters={"group": "a"})["results"]
    assert sorted(r["id"] for r in group_a) == sorted(ids[1::2])
    both = search(client, name, item_id=ids[0], filters={"group": "a", "n": 3})["results"]
    assert [r["id"] for r in both] == [ids[3]]
    as_string = search(client, name, item_id=ids[0], filters={"n": "3"})["results"]  # form-style string value
    assert [r["id"] for r in as_string] == [ids[3]]
    everything = search(client, name, item_id=ids[0])["results"]
    cut = everything[4]["score"]
    above = search(client, name, item_id=ids[0], min_score=cut)
    assert [r["id"] for r in above["results"]] == [r["id"] for r in everything if r["score"] >= cut]
    assert above["total"] == len(above["results"])
    form = client.post(
        f"/collections/{name}/search",
        files={"image": ("q.png", png_bytes(100), "image/png")},
        data={"kind": "image", "filters": '{"group": "b"}'},
    )
    assert sorted(r["id"] for r in form.json()["results"]) == sorted(ids[0:8:2])


def test_search_pages_concatenate_to_the_full_ranking(client, searchable):
    name, _, _ids = searchable
    full = search(client, name, text="anything at all", top_k=12)["results"]
    pages = [search(client, name, text="anything at all", top_k=5, offset=o)["results"] for o in (0, 5, 10)]
    assert [r["id"] for page in pages for r in page] == [r["id"] for r in full]
    assert search(client, name, text="anything at all", offset=12)["results"] == []


# ---- bad input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        {"name": "a/b"},
        {"name": ""},
        {"name": "x" * 65},
        {"name": ".."},
        {"name": 5},
        {},
        {"name": "ok-name", "description": 7},
    ],
)
def test_bad_collection_bodies(client, body):
    assert_error(client.post("/collections", json=body), 422)


def test_bad_requests_get_clear_json_errors(client, searchable):
    name, _, ids = searchable
    url = f"/collections/{name}"

    def post_raw(path: str, content: bytes):
        return client.post(path, content=content, headers={"content-type": "application/json"})

    cases = [
        (
            client.post("/collections", content=b"{nope", headers={"content-type": "application/json"}),
            400,
            "invalid_json",
        ),
        (client.post("/collections", content=b"name=x", headers={"content-type": "text/plain"}), 415, None),
        (client.get("/collections/bad%20name"), 422, "invalid_collection_name"),
        (client.get("/collections/missing-one"), 404, "collection_not_found"),
        (client.get("/collections/missing-one/items"), 404, "collection_not_found"),
        (client.post("/collections/missing-one/items", json={"texts": ["x"]}), 404, "collection_not_found"),
        (client.post("/collections/missing-one/search", json={"text": "x"}), 404, "collection_not_found"),
        (client.get("/collections/missing-one/map"), 404, "collection_not_found"),
        (client.post("/collections/missing-one/jobs", json={"path": "/tmp"}), 404, "collection_not_found"),
        (client.get(f"{url}/items/999999999"), 404, "item_not_found"),
        (client.get(f"{url}/items/{2**70}"), 422, "invalid_request"),
        (client.get(f"{url}/items/abc"), 422, "invalid_request"),
        (client.get(f"{url}/items", params={"limit": 0}), 422, "invalid_request"),
        (client.get(f"{url}/items", params={"offset": -1}), 422, "invalid_request"),
        (client.post(f"{url}/items", content=b"[1", headers={"content-type": "application/json"}), 400, "invalid_json"),
        (client.post(f"{url}/items", json={"texts": "not a list"}), 422, None),
        (client.post(f"{url}/items", json={"texts": ["a", 5]}), 422, None),
        (client.post(f"{url}/items", json={"texts": ["a"], "metadata": "x"}), 422, "invalid_metadata"),
        (client.post(f"{url}/items", json={"texts": ["a"], "metadata": [[1]]}), 422, "invalid_metadata"),
        (client.post(f"{url}/items", json={"texts": ["a"] * 300}), 413, "too_many_texts"),
        (
            client.post(
                f"{url}/items", files=[("files", ("a.png", png_bytes(1), "image/png"))], data={"metadata": "{bad"}
            ),
            422,
            "invalid_metadata",
        ),
        (
            client.post(
                f"{url}/items", files=[("files", ("a.png", png_bytes(1), "image/png"))], data={"metadata": "[1]"}
            ),
            422,
            "invalid_metadata",
        ),
        (
            client.post(
                f"{url}/items", files=[("files", ("a.png", png_bytes(1), "image/png"))], data={"metadata": ["{}", "{}"]}
            ),
            422,
            "invalid_metadata",
        ),
        (client.post(f"{url}/items", files=[("other", ("a.png", png_bytes(1), "image/png"))]), 422, "no_files"),
        (client.patch(f"{url}/items/{ids[0]}", json={"metadata": [1]}), 422, "invalid_metadata"),
        (client.patch(f"{url}/items/{ids[0]}", json={}), 422, None),
        (client.post(f"{url}/search", json={"text": "x", "top_k": 0}), 422, None),
        (client.post(f"{url}/search", json={"text": "x", "top_k": 1001}), 422, None),
        (client.post(f"{url}/search", json={"text": "x", "top_k": "many"}), 422, None),
        (client.post(f"{url}/search", json={"text": "x", "offset": -1}), 422, None),
        (client.post(f"{url}/search", json={"text": "x", "kind": "video"}), 422, None),
        (client.post(f"{url}/search", json={"text": "x", "min_score": "high"}), 422, None),
        (client.post(f"{url}/search", json={"text": "x", "filters": [1]}), 422, "invalid_filters"),
        (client.post(f"{url}/search", json={"text": "x", "filters": {"a": {"b": 1}}}), 422, "invalid_filters"),
        (client.post(f"{url}/search", json={"text": "x", "filters": {'a"': 1}}), 422, "invalid_filters"),
        (client.post(f"{url}/search", json={}), 422, "invalid_query"),
        (client.post(f"{url}/search", json={"text": "x", "item_id": ids[0]}), 422, "invalid_query"),
        (client.post(f"{url}/search", json={"text": 5}), 422, None),
        (client.post(f"{url}/search", json={"item_id": 999999999}), 404, "item_not_found"),
        (client.post(f"{url}/search", json={"item_id": 2**80}), 422, None),
        (client.post(f"{url}/search", json={"image": "%%%"}), 400, "invalid_base64"),
        (client.post(f"{url}/search", json={"image": b64(b"plain words")}), 415, "not_an_image"),
        (
            client.post(f"{url}/search", files={"image": ("q.png", png_bytes(1), "image/png")}, data={"filters": "{x"}),
            422,
            "invalid_filters",
        ),
        (client.post(f"{url}/map/project", json={}), 422, None),
        (post_raw(f"{url}/search", b'{"text": "x", "min_score": NaN}'), 422, None),
        (post_raw(f"{url}/search", b'{"text": "x", "filters": {"a": "\\ud800"}}'), 422, "invalid_filters"),
        (post_raw(f"{url}/items", b'{"texts": ["a"], "metadata": [{"a": "\\ud800"}]}'), 422, "invalid_metadata"),
        (post_raw(f"{url}/items", b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), 400, "invalid_json"),
        (client.get("/jobs/no-such-job"), 404, "job_not_found"),
        (client.post(f"{url}/jobs", json={"path": "/etc"}), 403, "path_not_allowed"),
        (client.post(f"{url}/jobs", json={"path": 5}), 422, None),
        (client.post(f"{url}/jobs", files=[("nothing", ("a", b"x", "text/plain"))]), 422, "no_files"),
    ]
    for response, status, code in cases:
        assert_error(response, status, code)
    # A lone surrogate is a bad text in its own slot; the good one next to it is stored.
    mixed = post_raw(f"{url}/items", b'{"texts": ["\\ud800 broken", "a fine text"]}')
    assert [r["status"] for r in mixed.json()["results"]] == ["error", "added"], mixed.text
    assert mixed.json()["results"][0]["error"]["code"] == "invalid_text"
    assert client.delete(f"{url}/items/{mixed.json()['results'][1]['item']['id']}").status_code == 204
    assert client.get("/health/ready").status_code == 200
    assert client.get(url).json()["item_count"] == 12  # nothing stored was lost


# ---- jobs and map ----------------------------------------------------------------------------------------
def test_upload_job_adds_everything_and_reports_failures(client):
    name = new_collection(client, "job")
    files = [("files", (f"{i}.png", png_bytes(300 + i), "image/png")) for i in range(30)]
    files += [
        ("files", ("bad.bin", b"\x00\x01garbage", "application/octet-stream")),
        ("files", ("dup.png", png_bytes(300), "image/png")),
    ]
    response = client.post(f"/collections/{name}/jobs", files=files)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["job_id"] == job["id"] and job["total"] == 32 and job["state"] in ("queued", "running", "done")
    job = wait_for_job(client, job["id"])
    assert (job["state"], job["done"], job["added"], job["duplicates"], job["failed"]) == ("done", 32, 30, 1, 1)
    assert job["failures"][0]["filename"] == "bad.bin" and job["failures"][0]["code"]
    assert client.get(f"/collections/{name}").json()["item_count"] == 30
    hit = search(client, name, image=b64(png_bytes(317)), top_k=1)["results"][0]
    assert hit["filename"] == "17.png" and hit["score"] == pytest.approx(1.0, abs=1e-3)


def test_map_and_projection_follow_the_collection(client):
    name = new_collection(client, "map")
    add_files(client, name, [(f"{i}.png", png_bytes(400 + i), "image/png") for i in range(5)])
    first = client.get(f"/collections/{name}/map").json()
    assert first["method"] == "pca" and len(first["points"]) == 5
    assert all(-1 <= p["x"] <= 1 and -1 <= p["y"] <= 1 and p["thumbnail_url"] for p in first["points"])
    projected = client.post(f"/collections/{name}/map/project", json={"text": "a sunny beach"})
    assert projected.status_code == 200 and {"x", "y"} <= projected.json().keys()

    client.post(f"/collections/{name}/items", json={"texts": [f"caption {i}" for i in range(15)]})
    second = wait_for_fresh_map(client, name)  # the previous map is served (stale) until the new one is in
    assert second["method"] == "umap" and len(second["points"]) == 20 and second["total"] == 20
    assert {p["kind"] for p in second["points"]} == {"image", "text"}
    assert all(p["text"].startswith("caption") for p in second["points"] if p["kind"] == "text")
    empty = new_collection(client, "map-empty")
    empty_map = client.get(f"/collections/{empty}/map").json()
    assert empty_map.pop("computed_at") and empty_map == {
        "method": "trivial",
        "points": [],
        "total": 0,
        "sampled": False,
        "stale": False,
    }
