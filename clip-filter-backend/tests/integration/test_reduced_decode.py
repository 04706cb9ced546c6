"""Collections decode large images at reduced size, exactly as the matching routes do (issue 11, item 3).

Uploads, upload jobs, search by image, reindex (the CLI) and immich's `/predict` decode a large image with the
model's DecodeTarget (JPEG DCT scaling, integer reduction) instead of at full size: the stored vector equals
`/embeddings/images` for the same bytes, the recorded width and height are still the original's (upright), and
ingesting big JPEGs no longer holds their full-size decodes (the server's own peak RSS, /proc).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from clip_filter.collections.store import SqliteCollectionStore

from .images_for_tests import b64
from .protocol_helpers import served_model
from .test_cli import cli
from .test_collections_api import add_files, search, wait_for_job
from .test_decode_bounds import peak_growth

FP32 = {"CLIP_PRECISION": "fp32"}  # one image scores 1.0 against itself, whatever batch it was embedded in


def photo(size: tuple[int, int], seed: int, fmt: str = "JPEG", orientation: int = 1) -> bytes:
    """A photo-like image (gradients + noise, 8x8-block texture), saved with an EXIF orientation."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.uniform(0, 255, (h // 64 + 1, w // 64 + 1, 3)).astype(np.uint8)
    image = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    options = {"quality": 90} if fmt == "JPEG" else {}
    image.save(buffer, fmt, exif=exif.tobytes(), **options)
    return buffer.getvalue()


CASES = {
    # name: (bytes, upright (width, height))
    "turned.jpg": (photo((3000, 2000), 1, orientation=6), (2000, 3000)),  # JPEG draft 1/8, then turned
    "wide.png": (photo((2400, 1500), 2, "PNG"), (2400, 1500)),  # integer reduction
    "small.jpg": (photo((90, 70), 3), (90, 70)),  # below the target: full size
}


def native(client, data: bytes) -> np.ndarray:
    response = client.post("/embeddings/images", json={"images": [b64(data)]})
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embeddings"][0], np.float32)


def stored_vectors(data_dir, name: str) -> dict[str, tuple[np.ndarray, tuple[int | None, int | None]]]:
    """filename -> (stored vector, recorded (width, height)), read from the server's database."""
    store = SqliteCollectionStore(data_dir, readers=1)
    try:
        collection = store.get_collection(name)
        out = {}
        for items, vectors in store.items_with_vectors(collection.id):
            for item, vector in zip(items, vectors, strict=True):
                out[item.filename] = (vector.copy(), (item.width, item.height))
        return out
    finally:
        store.close()


@pytest.fixture(scope="module")
def fp32_server(tmp_path_factory):
    from .conftest import EXTERNAL_URL, start_server

    if EXTERNAL_URL:
        pytest.skip("reads the server's own data directory; CLIP_FILTER_TEST_BASE_URL points at an external one")
    server = start_server(tmp_path_factory.mktemp("reduced") / "data", FP32)
    yield server
    server.stop()


def test_uploads_jobs_and_search_store_the_matching_routes_vectors_and_the_original_size(fp32_server):
    with fp32_server.client() as client:
        assert client.post("/collections", json={"name": "photos"}).status_code == 201
        results = add_files(client, "photos", [(n, d, "image/jpeg") for n, (d, _) in CASES.items()])["results"]
        assert [r["status"] for r in results] == ["added"] * len(CASES)
        for result, (name, (_, upright)) in zip(results, CASES.items(), strict=True):
            assert (result["item"]["width"], result["item"]["height"]) == upright, name
        # The same pipeline through a bulk upload job, into another collection.
        assert client.post("/collections", json={"name": "jobbed"}).status_code == 201
        files = [("files", (n, d, "image/jpeg")) for n, (d, _) in CASES.items()]
        job = client.post("/collections/jobbed/jobs", files=files)
        assert job.status_code == 202, job.text
        assert wait_for_job(client, job.json()["job_id"])["added"] == len(CASES)
        expected = {name: native(client, data) for name, (data, _) in CASES.items()}
        for collection in ("photos", "jobbed"):
            stored = stored_vectors(fp32_server.data_dir, collection)
            for name, (_, upright) in CASES.items():
                vector, size = stored[name]
                np.testing.assert_allclose(vector, expected[name], atol=1e-6, err_msg=f"{collection}/{name}")
                assert size == upright
        # Search by image: the query is decoded the same way, so each image finds itself at cosine 1.
        for result, (name, (data, _)) in zip(results, CASES.items(), strict=True):
            hit = search(client, "photos", image=b64(data), top_k=1)["results"][0]
            assert hit["id"] == result["id"] and hit["score"] == pytest.approx(1.0, abs=1e-5), name
        # The thumbnail keeps the upright proportions (decoded reduced, then scaled to the thumbnail size).
        thumb = client.get(f"/collections/photos/items/{results[0]['id']}/thumbnail")
        assert thumb.status_code == 200
        assert Image.open(io.BytesIO(thumb.content)).size == (171, 256)  # 2000x3000 -> longest side 256


def test_reindex_decodes_as_ingest_did(fp32_server, tmp_path):
    """`clip-filter reindex` (the CLI's own encoder) re-embeds from the originals with the same reduced decode."""
    with fp32_server.client() as client:
        client.post("/collections", json={"name": "again"})
        add_files(client, "again", [(n, d, "image/jpeg") for n, (d, _) in CASES.items()])
        expected = {name: native(client, data) for name, (data, _) in CASES.items()}
    before = stored_vectors(fp32_server.data_dir, "again")
    run = cli(fp32_server.data_dir, "reindex", "again", "--no-progress", env=FP32)
    assert f"Reindexed 'again': {len(CASES)} items" in run.stdout
    after = stored_vectors(fp32_server.data_dir, "again")
    for name in CASES:
        np.testing.assert_allclose(after[name][0], expected[name], atol=1e-6, err_msg=name)
        assert after[name][1] == before[name][1] == CASES[name][1]


def test_immich_predict_reports_the_original_size_and_the_matching_routes_vector(fp32_server):
    with fp32_server.client() as client:
        model_name = served_model(client)["id"]
        for name, (data, (width, height)) in CASES.items():
            entries = json.dumps({"clip": {"visual": {"modelName": model_name}}})
            response = client.post("/predict", data={"entries": entries}, files={"image": (name, data, "image/jpeg")})
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["imageWidth"], body["imageHeight"]) == (width, height), name
            np.testing.assert_allclose(json.loads(body["clip"]), native(client, data), atol=1e-6, err_msg=name)


def test_ingesting_big_jpegs_does_not_hold_their_full_size_decodes(server_factory):
    server = server_factory(FP32)
    big = [photo((6000, 4000), 10 + i) for i in range(4)]  # 24 MP each: 72 MB as a full-size RGB decode
    with server.client() as client:
        client.post("/collections", json={"name": "big"})
        add_files(client, "big", [("warm.jpg", photo((800, 600), 9), "image/jpeg")])  # first-request allocations
        with peak_growth(server.process.pid) as growth:
            results = add_files(client, "big", [(f"big{i}.jpg", d, "image/jpeg") for i, d in enumerate(big)])
    assert [r["status"] for r in results["results"]] == ["added"] * 4
    assert all((r["item"]["width"], r["item"]["height"]) == (6000, 4000) for r in results["results"])
    print("four 6000x4000 JPEGs uploaded: peak growth MB", growth)
    # The JPEGs are decoded at 1/8 scale (750x500, ~1 MB each); the request itself is ~4 x 3 MB. Holding the
    # full-size decodes (the old path) was 4 x 72 MB and more.
    assert growth["mb"] < 120, growth
