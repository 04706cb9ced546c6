"""One contract for every collections store: SQLite and PostgreSQL + pgvector (a real server, tests/pg.py).

Each test runs against both backends through the `store` fixture; search results are checked against a
NumPy reference (cosine = inner product of normalised float32 vectors, score desc then id asc).
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import psycopg
import pytest
from PIL import Image

from clip_filter.collections.store import JobFile, JobProgress, NewItem, SqliteCollectionStore
from clip_filter.collections.store.postgres import PostgresCollectionStore
from clip_filter.collections.transfer import export_collection, import_collection
from clip_filter.collections.vector_index import CollectionIndex, top_k_rows
from clip_filter.core.errors import ClipFilterError

MODEL = ("clip-filter-tiny", "random", 16)
DIM = MODEL[2]


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def text_item(text: str, vector: np.ndarray, **metadata) -> NewItem:
    return NewItem(
        "text",
        None,
        "text/plain",
        len(text),
        hashlib.sha256(text.encode()).hexdigest(),
        metadata,
        unit(vector),
        text=text,
    )


def clustered(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """Vectors around 8 centres: neighbour structure like real embeddings (i.i.d. noise has none)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, dim))
    return unit(centres[rng.integers(0, 8, n)] + 0.35 * rng.normal(size=(n, dim)))


def open_pg(url, data_dir, **kwargs) -> PostgresCollectionStore:
    return PostgresCollectionStore(url, data_dir, pool_size=4, **kwargs)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def make_store(backend, tmp_path, request):
    """Opens a store of the test's backend on one database + data folder (several opens: reopen tests)."""
    opened = []
    url = request.getfixturevalue("pg_database") if backend == "postgres" else None

    def make(**kwargs):
        s = open_pg(url, tmp_path / "data", **kwargs) if url else SqliteCollectionStore(tmp_path / "data")
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def store(make_store):
    return make_store()


@pytest.fixture
def make_pg_store(tmp_path, pg_database):
    """For the PostgreSQL-only tests (index plans, HNSW, migrations)."""
    opened = []

    def make(**kwargs):
        opened.append(open_pg(pg_database, tmp_path / "data", **kwargs))
        return opened[-1]

    yield make
    for s in opened:
        s.close()


def search(store, collection, query, k, offset=0, filters=None, kind=None, min_score=None, **kwargs):
    """The search a server runs: PostgreSQL searches in the database, SQLite in the in-memory index."""
    if isinstance(store, PostgresCollectionStore):
        return store.search(collection.id, query, k, offset, filters, kind, min_score, **kwargs)
    version, ids, vectors, kinds = store.load_vectors(collection.id)
    index = CollectionIndex(vectors.shape[1], version, ann_min_items=10**9)
    index.add(ids, vectors, kinds)
    allowed = store.filter_ids(collection.id, filters) if filters else None
    return index.search(query, k, offset, allowed, kind, min_score)


def reference(ids, vectors, query, k, offset=0, mask=None, min_score=None):
    scores = (vectors.astype(np.float64) @ query.astype(np.float64)).astype(np.float32)
    keep = np.ones(len(ids), bool) if mask is None else mask.copy()
    if min_score is not None:
        keep &= scores >= np.float32(min_score)
    rows = np.flatnonzero(keep)
    best = top_k_rows(scores[rows], ids[rows], offset + k)[offset:]
    return ids[rows][best], scores[rows][best], int(rows.size)


# ---- collections, items, duplicates ----------------------------------------------------------------------
def test_collections_persist_across_reopen(make_store):
    store = make_store()
    c = store.create_collection("photos", "mine", MODEL)
    store.add_items(c.id, [text_item("a", np.eye(DIM)[0], year=2023)], MODEL)
    store.close()
    again = make_store()
    record = again.get_collection("photos")
    assert (record.item_count, record.text_count, record.model, record.dim, record.description) == (
        1,
        1,
        "clip-filter-tiny",
        16,
        "mine",
    )
    assert record.created_at.endswith("Z") and record.version >= 1
    version, ids, vectors, kinds = again.load_vectors(record.id)
    assert version == record.version and kinds == ["text"] and len(ids) == 1
    np.testing.assert_allclose(vectors[0], np.eye(DIM)[0], atol=1e-7)
    assert [c.name for c in again.list_collections()] == ["photos"]


def test_names_are_unique_and_checked(store):
    store.create_collection("c", None, MODEL)
    with pytest.raises(ClipFilterError) as caught:
        store.create_collection("c", None, MODEL)
    assert (caught.value.code, caught.value.status) == ("collection_exists", 409)
    with pytest.raises(ClipFilterError) as caught:
        store.create_collection("a/b", None, MODEL)
    assert caught.value.code == "invalid_collection_name"
    with pytest.raises(ClipFilterError) as caught:
        store.get_collection("missing")
    assert (caught.value.code, caught.value.status) == ("collection_not_found", 404)


def test_same_content_twice_is_a_duplicate(store):
    c = store.create_collection("c", None, MODEL)
    first = store.add_items(
        c.id, [text_item("a", np.eye(DIM)[0]), text_item("a", np.eye(DIM)[0]), text_item("b", np.eye(DIM)[1])], MODEL
    )
    assert [s for s, _ in first] == ["added", "duplicate", "added"] and first[0][1] == first[1][1]
    assert store.add_items(c.id, [text_item("a", np.eye(DIM)[0])], MODEL) == [("duplicate", first[0][1])]
    record = store.get_collection("c")
    assert (record.item_count, record.text_count, record.image_count) == (2, 2, 0)
    assert store.known_hashes(c.id, [text_item("a", np.eye(DIM)[0]).sha256, "nope"]) == {
        text_item("a", np.eye(DIM)[0]).sha256: first[0][1]
    }


def test_another_model_is_refused_with_409(store):
    c = store.create_collection("c", None, MODEL)
    store.add_items(c.id, [text_item("a", np.eye(DIM)[0])], MODEL)
    with pytest.raises(ClipFilterError) as caught:
        store.add_items(c.id, [text_item("b", np.eye(DIM)[1])], ("clip-filter-tiny", "/ckpt.pt", 16))
    assert caught.value.status == 409 and caught.value.code == "model_mismatch"
    assert caught.value.details["fix"] == "clip-filter reindex c"
    assert store.get_collection("c").item_count == 1


def test_a_failed_transaction_leaves_no_half_item_and_no_file(store):
    c = store.create_collection("c", None, MODEL)
    path = store.files.write_original(c.id, "ab" * 32, ".png", b"png bytes")
    good = NewItem("image", "x.png", "image/png", 9, "ab" * 32, {}, unit(np.eye(DIM)[0]), original_path=path)
    bad = text_item("b", np.eye(DIM)[1])
    bad.kind = "video"  # violates the CHECK constraint: the whole batch rolls back
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.IntegrityError)):
        store.add_items(c.id, [good, bad], MODEL)
    assert store.get_collection("c").item_count == 0
    assert not (store.data_dir / path).exists()
    assert store.add_items(c.id, [text_item("ok", np.eye(DIM)[2])], MODEL)[0][0] == "added"  # still usable


class AfterCommit(BaseException):
    """Raised by a change listener, after the COMMIT: not an Exception, so it leaves add_items (as an interrupt)."""


def image_item(sha: str, original_path: str) -> NewItem:
    return NewItem("image", "x.png", "image/png", 9, sha, {}, unit(np.eye(DIM)[0]), original_path=original_path)


def test_a_failure_after_the_commit_keeps_the_committed_originals(store):
    """M9 on both stores: a listener failing after the COMMIT (the store's real hook point) leaves the rows and
    their originals; an Exception there is logged and the write answers normally, anything else propagates."""
    c = store.create_collection("c", None, MODEL)
    first = store.files.write_original(c.id, "a1" * 32, ".png", b"\x89PNG first")
    second = store.files.write_original(c.id, "a2" * 32, ".png", b"\x89PNG second")
    failure: list[BaseException] = [MemoryError("simulated, after the commit")]

    def failing(change) -> None:
        raise failure[0]

    store.add_listener(failing)
    [(status, _)] = store.add_items(c.id, [image_item("a1" * 32, first)], MODEL)
    assert status == "added" and (store.data_dir / first).exists()
    failure[0] = AfterCommit()
    with pytest.raises(AfterCommit):
        store.add_items(c.id, [image_item("a2" * 32, second)], MODEL)
    collection = store.get_collection("c")
    assert collection.item_count == 2
    items = {item.sha256: item for batch in store.iter_items(c.id) for item in batch}
    for sha, data in (("a1" * 32, b"\x89PNG first"), ("a2" * 32, b"\x89PNG second")):
        original = store.original_file(items[sha])
        assert original is not None and original.read_bytes() == data
    # The writer is not left inside a transaction, and a failure *before* the commit still removes its file.
    failure[0] = MemoryError()
    third = store.files.write_original(c.id, "a3" * 32, ".png", b"\x89PNG third")
    bad = image_item("a3" * 32, third)
    bad.kind = "video"  # the CHECK constraint: the transaction never commits
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.IntegrityError)):
        store.add_items(c.id, [bad], MODEL)
    assert not (store.data_dir / third).exists() and store.get_collection("c").item_count == 2


def test_ingest_after_a_post_commit_failure_keeps_the_committed_originals(store, tmp_path):
    """The same through the ingest path (upload, folder job): it must not discard what the store committed."""
    from clip_filter.collections.ingest import IngestLimits, Ingestor, Source
    from clip_filter.core.config import Settings
    from clip_filter.images import ImageLimits
    from clip_filter.ml.factory import load_encoder

    encoder = load_encoder(Settings(CLIP_MODEL="clip-filter-tiny", CLIP_PRETRAINED="random", CLIP_DEVICE="cpu"))
    c = store.create_collection("c", None, (encoder.info.model, encoder.info.pretrained, encoder.info.dim))
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buffer, "PNG")
    data = buffer.getvalue()

    def failing(change) -> None:
        raise AfterCommit()

    store.add_listener(failing)
    ingestor = Ingestor(store, IngestLimits(ImageLimits(max_bytes=1 << 20, max_pixels=10**7), 10_000))
    with pytest.raises(AfterCommit):
        ingestor.ingest(store.get_collection("c"), [Source(filename="red.png", data=data)], encoder)
    [[item]] = list(store.iter_items(c.id))
    original = store.original_file(item)
    assert original is not None and original.read_bytes() == data


def test_postgres_a_commit_the_server_refuses_removes_the_originals_and_writes_go_on(make_pg_store, pg_database):
    """A COMMIT that fails (a deferred constraint trigger, checked by PostgreSQL at COMMIT time) rolled back: the
    originals go, and the store keeps working."""
    store = make_pg_store()
    c = store.create_collection("c", None, MODEL)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.filename = 'refused.png' THEN RAISE EXCEPTION 'refused at commit'; END IF; RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON items DEFERRABLE INITIALLY DEFERRED "
            "FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()"
        )
    path = store.files.write_original(c.id, "b1" * 32, ".png", b"\x89PNG refused")
    item = image_item("b1" * 32, path)
    item.filename = "refused.png"
    with pytest.raises(psycopg.errors.RaiseException):
        store.add_items(c.id, [item], MODEL)
    assert store._commits.outcome == "none" and not (store.data_dir / path).exists()
    assert store.get_collection("c").item_count == 0
    assert store.add_items(c.id, [text_item("after", np.eye(DIM)[1])], MODEL)[0][0] == "added"


def test_metadata_round_trips_and_updates_bump_the_version(store):
    c = store.create_collection("c", None, MODEL)
    metadata = {"year": 2023, "tags": ["a", "b"], "nested": {"x": 1.5, "ok": True}, "none": None, "é": "ü"}
    [(_, item_id)] = store.add_items(c.id, [text_item("a", np.eye(DIM)[0], **metadata)], MODEL)
    item = store.get_item(store.get_collection("c"), item_id)
    assert item.metadata == metadata and item.text == "a" and item.kind == "text" and item.truncated is False
    before = store.get_collection("c").version
    updated = store.update_item(store.get_collection("c"), item_id, {"year": 2024}, "renamed.txt")
    assert updated.metadata == {"year": 2024} and updated.filename == "renamed.txt"
    assert store.get_collection("c").version == before + 1
    with pytest.raises(ClipFilterError) as caught:
        store.update_item(store.get_collection("c"), item_id + 1000, {"a": 1}, None)
    assert caught.value.code == "item_not_found"


def test_metadata_filters_match_equal_values(store):
    c = store.create_collection("c", None, MODEL)
    rows = [
        ({"year": 2023, "place": "Oslo"}),
        ({"year": 2023.0}),
        ({"year": "2023"}),
        ({"year": 2024, "ok": True}),
        ({"ok": False, "place": None}),
        ({"place": "oslo"}),
        ({}),
    ]
    ids = [
        item_id
        for _, item_id in store.add_items(
            c.id, [text_item(f"t{i}", np.eye(DIM)[i], **m) for i, m in enumerate(rows)], MODEL
        )
    ]
    cases = {
        json.dumps({"year": 2023}): [0, 1],
        json.dumps({"year": "2023"}): [0, 2],  # a string also matches a number written the same way (not 2023.0)
        json.dumps({"ok": True}): [3],
        json.dumps({"ok": "false"}): [4],
        json.dumps({"place": None}): [4],
        json.dumps({"place": "Oslo"}): [0],
        json.dumps({"year": 2023, "place": "Oslo"}): [0],
        json.dumps({"missing": 1}): [],
    }
    for filters, expected in cases.items():
        assert store.filter_ids(c.id, json.loads(filters)).tolist() == [ids[i] for i in expected], filters
    with pytest.raises(ClipFilterError) as caught:
        store.filter_ids(c.id, {"a": [1]})
    assert (caught.value.code, caught.value.status) == ("invalid_filters", 422)


def test_pagination_is_stable_in_id_order(store):
    c = store.create_collection("c", None, MODEL)
    vectors = clustered(25)
    ids = [i for _, i in store.add_items(c.id, [text_item(f"t{i}", v) for i, v in enumerate(vectors)], MODEL)]
    pages = [store.list_items(c.id, offset, 10) for offset in (0, 10, 20, 30)]
    assert [total for _, total in pages] == [25] * 4
    assert [item.id for page, _ in pages for item in page] == ids
    assert [len(page) for page, _ in pages] == [10, 10, 5, 0]
    assert [item.id for batch in store.iter_items(c.id, 7) for item in batch] == ids
    exported = [(items, vecs) for items, vecs in store.items_with_vectors(c.id, 10)]
    np.testing.assert_allclose(np.concatenate([v for _, v in exported]), vectors, atol=1e-7)
    assert sorted(store.items_by_ids(c.id, [ids[3], ids[0], 10**9])) == [ids[0], ids[3]]


def test_delete_removes_rows_vectors_and_files(store):
    c = store.create_collection("c", None, MODEL)
    path = store.files.write_original(c.id, "cd" * 32, ".png", b"png")
    image = NewItem("image", "x.png", "image/png", 3, "cd" * 32, {}, unit(np.eye(DIM)[0]), original_path=path)
    [(_, image_id), (_, text_id)] = store.add_items(c.id, [image, text_item("t", np.eye(DIM)[1])], MODEL)
    store.delete_item(store.get_collection("c"), image_id)
    assert not (store.data_dir / path).exists()
    record = store.get_collection("c")
    assert (record.item_count, record.image_count, record.text_count) == (1, 0, 1)
    assert store.load_vectors(c.id)[1].tolist() == [text_id]
    with pytest.raises(ClipFilterError):
        store.delete_item(record, image_id)
    store.delete_collection("c")
    assert store.list_collections() == []
    with pytest.raises(ClipFilterError):
        store.delete_collection("c")


# ---- search ----------------------------------------------------------------------------------------------
@pytest.fixture
def searchable(store):
    vectors = clustered(300, seed=1)
    c = store.create_collection("s", None, MODEL)
    items = []
    for i, v in enumerate(vectors):
        item = text_item(f"t{i}", v, group=i % 10, half="yes" if i % 2 else "no")
        if i % 3 == 0:
            item.kind = "image"
            item.mimetype = "image/png"
        items.append(item)
    ids = np.asarray([item_id for _, item_id in store.add_items(c.id, items, MODEL)], np.int64)
    kinds = np.asarray([item.kind for item in items])
    groups = np.asarray([i % 10 for i in range(len(items))])
    return store, store.get_collection("s"), ids, vectors, kinds, groups


CASES = [
    {"k": 10},
    {"k": 7, "offset": 5},
    {"k": 10, "kind": "image"},
    {"k": 10, "filters": {"group": 3}},
    {"k": 5, "filters": {"group": "4", "half": "no"}},
    {"k": 300, "min_score": 0.5},
    {"k": 10, "kind": "text", "filters": {"half": "yes"}, "offset": 3},
]


@pytest.mark.parametrize("case", CASES, ids=[json.dumps(c, sort_keys=True) for c in CASES])
def test_exact_search_equals_the_numpy_reference(searchable, case):
    store, c, ids, vectors, kinds, groups = searchable
    rng = np.random.default_rng(7)
    for query in unit(rng.normal(size=(3, DIM))):
        mask = np.ones(len(ids), bool)
        if case.get("kind"):
            mask &= kinds == case["kind"]
        for key, value in (case.get("filters") or {}).items():
            if key == "group":
                mask &= groups == int(value)
            else:
                mask &= np.asarray(["yes" if i % 2 else "no" for i in range(len(ids))]) == value
        want_ids, want_scores, total = reference(
            ids, vectors, query, case["k"], case.get("offset", 0), mask, case.get("min_score")
        )
        hits = search(
            store,
            c,
            query,
            case["k"],
            case.get("offset", 0),
            case.get("filters"),
            case.get("kind"),
            case.get("min_score"),
        )
        assert hits.ids.tolist() == want_ids.tolist()
        np.testing.assert_allclose(hits.scores, want_scores, atol=2e-6)
        assert hits.total == total and hits.method == "exact"


@pytest.mark.parametrize(
    "case", CASES[:4] + CASES[6:], ids=[json.dumps(c, sort_keys=True) for c in CASES[:4] + CASES[6:]]
)
def test_postgres_hnsw_search_equals_the_reference_when_ef_covers_the_collection(make_pg_store, case):
    """The HNSW path (index scan, iterative for filters, exact re-scoring) with ef_search above the row count
    visits every vector, so it must return exactly the reference answer."""
    store = make_pg_store(exact_max_rows=0, ef_search=400, max_scan_tuples=100_000)
    vectors = clustered(300, seed=2)
    c = store.create_collection("h", None, MODEL)
    items = [text_item(f"t{i}", v, group=i % 10, half="yes" if i % 2 else "no") for i, v in enumerate(vectors)]
    for i in range(0, 300, 3):
        items[i].kind = "image"
    ids = np.asarray([i for _, i in store.add_items(c.id, items, MODEL)], np.int64)
    assert f"items_{c.id}_hnsw" in store.hnsw_plan(c.id, vectors[0], case["k"], case.get("filters"), case.get("kind"))
    kinds = np.asarray([item.kind for item in items])
    mask = np.ones(300, bool)
    if case.get("kind"):
        mask &= kinds == case["kind"]
    for key, value in (case.get("filters") or {}).items():
        mask &= (
            (np.arange(300) % 10 == int(value))
            if key == "group"
            else (np.asarray(["yes" if i % 2 else "no" for i in range(300)]) == value)
        )
    query = unit(np.random.default_rng(3).normal(size=DIM))
    hits = store.search(c.id, query, case["k"], case.get("offset", 0), case.get("filters"), case.get("kind"))
    want_ids, want_scores, _ = reference(ids, vectors, query, case["k"], case.get("offset", 0), mask)
    assert hits.method == "hnsw" and hits.total is None
    assert hits.ids.tolist() == want_ids.tolist()
    np.testing.assert_allclose(hits.scores, want_scores, atol=2e-6)


@pytest.mark.parametrize(
    ("filters", "offset", "min_score", "method"),
    [
        ({"group": 3}, 0, None, "exact"),  # 30 rows <= exact_max_rows: scored exactly, within the bound
        ({"group": "3"}, 4, 0.0, "exact"),
        ({"group": 3}, 0, 0.99, "exact"),  # nothing reaches min_score: an empty page, total 0
        ({"half": "yes"}, 0, None, "hnsw"),  # 150 rows: estimated near the bound, the bound passed: the index
        ({"half": "no"}, 2, 0.0, "hnsw"),
    ],
)
def test_postgres_filtered_search_picks_exact_or_the_index_by_the_matching_rows(
    make_pg_store, pg_database, filters, offset, min_score, method
):
    """A filter matching at most exact_max_rows rows is answered exactly (with its total), a larger one by the
    index; both equal the reference (ef_search covers the collection)."""
    store = make_pg_store(exact_max_rows=40, ef_search=400, max_scan_tuples=100_000)
    vectors = clustered(300, seed=4)
    c = store.create_collection("f", None, MODEL)
    items = [text_item(f"t{i}", v, group=i % 10, half="yes" if i % 2 else "no") for i, v in enumerate(vectors)]
    ids = np.asarray([i for _, i in store.add_items(c.id, items, MODEL)], np.int64)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"ANALYZE items_{c.id}")  # the planner's estimate decides between counting and the index
    key, value = next(iter(filters.items()))
    mask = np.arange(300) % 10 == int(value) if key == "group" else (np.arange(300) % 2 == 1) == (value == "yes")
    query = unit(np.random.default_rng(5).normal(size=DIM))
    hits = store.search(c.id, query, 10, offset, filters, None, min_score)
    want_ids, want_scores, total = reference(ids, vectors, query, 10, offset, mask, min_score)
    assert hits.method == method
    assert hits.ids.tolist() == want_ids.tolist()
    np.testing.assert_allclose(hits.scores, want_scores, atol=2e-6)
    assert hits.total == (total if method == "exact" else None)


def test_postgres_queries_use_the_collections_hnsw_index(make_pg_store):
    store = make_pg_store()
    c = store.create_collection("p", None, MODEL)
    store.add_items(c.id, [text_item(f"t{i}", v, group=i % 4) for i, v in enumerate(clustered(200))], MODEL)
    for filters, kind in ((None, None), ({"group": 1}, None), ({"group": "2"}, "text")):
        plan = store.hnsw_plan(c.id, unit(np.ones(DIM)), 10, filters, kind)
        assert f"Index Scan using items_{c.id}_hnsw" in plan, plan


def test_postgres_search_checks_the_query_dimension(make_pg_store):
    store = make_pg_store()
    c = store.create_collection("c", None, MODEL)
    store.add_items(c.id, [text_item("a", np.eye(DIM)[0])], MODEL)
    with pytest.raises(ClipFilterError) as caught:
        store.search(c.id, np.ones(8, np.float32), 5)
    assert (caught.value.code, caught.value.status) == ("dimension_mismatch", 409)
    empty = store.create_collection("empty", None, None)
    assert store.search(empty.id, np.ones(8, np.float32), 5).ids.tolist() == []


# ---- reindex ---------------------------------------------------------------------------------------------
def test_replace_embeddings_swaps_vectors_model_and_dimension(store):
    c = store.create_collection("c", None, MODEL)
    ids = [i for _, i in store.add_items(c.id, [text_item(f"t{i}", v) for i, v in enumerate(clustered(20))], MODEL)]
    new_vectors = clustered(20, dim=8, seed=5)
    partial = {ids[i]: (new_vectors[i], False) for i in range(19)}
    committed, missing = store.replace_embeddings(c.id, partial, ("other", "random", 8))
    assert (committed, missing) == (False, {ids[19]})
    assert store.get_collection("c").dim == 16  # nothing written
    before = store.get_collection("c").version
    everything = {item_id: (new_vectors[i], i == 0) for i, item_id in enumerate(ids)}
    assert store.replace_embeddings(c.id, everything, ("other", "random", 8)) == (True, set())
    record = store.get_collection("c")
    assert (record.model, record.dim, record.version) == ("other", 8, before + 1)
    np.testing.assert_allclose(store.load_vectors(c.id)[2], new_vectors, atol=1e-7)
    assert store.get_item(record, ids[0]).truncated is True
    query = new_vectors[4]
    hits = search(store, record, query, 3)
    assert hits.ids[0] == ids[4] and hits.scores[0] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ClipFilterError) as caught:
        store.add_items(c.id, [text_item("x", np.eye(DIM)[0])], MODEL)
    assert caught.value.code == "model_mismatch"


# ---- versions and listeners ------------------------------------------------------------------------------
def test_every_write_bumps_the_version_and_announces_vector_changes(store):
    changes = []
    store.add_listener(changes.append)
    c = store.create_collection("c", None, MODEL)
    [(_, a), (_, b)] = store.add_items(c.id, [text_item("a", np.eye(DIM)[0]), text_item("b", np.eye(DIM)[1])], MODEL)
    store.delete_item(store.get_collection("c"), a)
    store.update_collection("c", "described")
    assert [(ch.added_ids, ch.removed_ids) for ch in changes] == [([a, b], []), ([], [a]), ([], [])]
    assert [ch.version for ch in changes] == [1, 2, 3] == list(range(1, store.get_collection("c").version + 1))
    store.delete_collection("c")
    assert changes[-1].reset and changes[-1].version == -1


# ---- jobs ------------------------------------------------------------------------------------------------
def test_job_progress_commits_with_the_items(store):
    c = store.create_collection("c", None, MODEL)
    files = [JobFile(i, f"f{i}.txt", f"/in/f{i}.txt", {"n": i}, "text/plain") for i in range(5)]
    job = store.create_job("job1", c, "path", "/in", files, failures=[{"filename": "bad", "error": {"code": "x"}}])
    assert (job.state, job.total, job.done, job.failed) == ("queued", 6, 1, 1)
    assert [f.seq for f in store.job_files("job1", -1, 3)] == [0, 1, 2]
    assert store.job_files("job1", 2, 10)[0] == files[3]
    assert store.job_done_seq("job1") == -1
    store.set_job_state("job1", "running")
    progress = JobProgress("job1", done=2)
    store.add_items(c.id, [text_item("a", np.eye(DIM)[0]), text_item("a", np.eye(DIM)[0])], MODEL, progress)
    # Files that produced no rows (all failed): their progress commits through an empty add_items.
    store.add_items(c.id, [], MODEL, JobProgress("job1", done=1, failed=1, failures=[{"filename": "f2.txt"}]))
    job = store.get_job("job1")
    assert (job.done, job.added, job.duplicates, job.failed) == (4, 1, 1, 2)
    assert job.failures == [{"filename": "bad", "error": {"code": "x"}}, {"filename": "f2.txt"}]
    assert store.job_done_seq("job1") == 2
    assert [j.id for j in store.unfinished_jobs()] == ["job1"]
    store.set_job_state("job1", "queued", crashed=True)
    assert store.get_job("job1").attempts == 1
    store.set_job_state("job1", "failed", {"code": "boom", "message": "m"})
    job = store.get_job("job1")
    assert job.error == {"code": "boom", "message": "m"} and store.unfinished_jobs() == []
    with pytest.raises(ClipFilterError) as caught:
        store.get_job("nope")
    assert caught.value.code == "job_not_found"


def test_deleting_a_collection_fails_its_jobs(store):
    c = store.create_collection("c", None, MODEL)
    store.create_job("j", c, "upload", None, [JobFile(0, "a.png", "/spool/a", {})])
    store.delete_collection("c")
    job = store.get_job("j")
    assert job.state == "failed" and job.error["code"] == "collection_not_found"


# ---- PostgreSQL specifics ---------------------------------------------------------------------------------
def test_nul_characters_are_refused_with_422_not_a_500(store):
    c = store.create_collection("c", None, MODEL)
    for bad in (text_item("a", np.eye(DIM)[0], note="x\x00y"), text_item("b\x00", np.eye(DIM)[0])):
        try:
            result = store.add_items(c.id, [bad], MODEL)
        except ClipFilterError as error:
            assert error.status == 422  # noqa: PT017 - either outcome is allowed; the else branch checks the other
        else:  # SQLite stores NUL; it must then read back as written
            assert isinstance(store, SqliteCollectionStore)
            assert store.get_item(store.get_collection("c"), result[0][1]).sha256 == bad.sha256


def test_postgres_migrations_are_recorded_and_applied_once(make_pg_store, pg_database):
    from clip_filter.collections.store.postgres import migrate, migration_files

    make_pg_store()
    assert migrate(pg_database) == []  # the first open applied everything
    import psycopg

    with psycopg.connect(pg_database) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [version for version, _, _ in migration_files()] and versions[0] == 1


def test_garbage_collection_removes_only_old_unreferenced_files(store):
    import os
    import time

    c = store.create_collection("c", None, MODEL)
    kept = store.files.write_original(c.id, "ee" * 32, ".png", b"kept")
    store.add_items(
        c.id,
        [NewItem("image", "k.png", "image/png", 4, "ee" * 32, {}, unit(np.eye(DIM)[0]), original_path=kept)],
        MODEL,
    )
    orphan = store.files.write_original(c.id, "ff" * 32, ".png", b"orphan")
    fresh = store.files.write_original(c.id, "aa" * 32, ".png", b"fresh")
    old = time.time() - 7200
    for path in (kept, orphan):
        os.utime(store.data_dir / path, (old, old))
    removed = store.collect_garbage(3600)
    assert removed["originals"] == 1
    assert (store.data_dir / kept).exists() and (store.data_dir / fresh).exists()
    assert not (store.data_dir / orphan).exists()


# ---- moving between backends -----------------------------------------------------------------------------
def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_export_import_round_trip_sqlite_postgres_sqlite(tmp_path, pg_database):
    source = SqliteCollectionStore(tmp_path / "a")
    middle = PostgresCollectionStore(pg_database, tmp_path / "b", pool_size=2)
    target = SqliteCollectionStore(tmp_path / "c")
    try:
        c = source.create_collection("trip", "round", MODEL)
        vectors = clustered(12, seed=9)
        items = []
        for i in range(12):
            if i % 2:
                items.append(text_item(f"caption {i}", vectors[i], i=i, tags=["x", i]))
            else:
                data = png(i)
                sha = hashlib.sha256(data).hexdigest()
                path = source.files.write_original(c.id, sha, ".png", data)
                items.append(
                    NewItem(
                        "image",
                        f"p{i}.png",
                        "image/png",
                        len(data),
                        sha,
                        {"i": i},
                        vectors[i],
                        original_path=path,
                        width=8,
                        height=8,
                    )
                )
        source.add_items(c.id, items, MODEL)
        export_collection(source, "trip", tmp_path / "one.tar")
        assert import_collection(middle, tmp_path / "one.tar").added == 12
        export_collection(middle, "trip", tmp_path / "two")
        assert import_collection(target, tmp_path / "two").added == 12

        def content(store):
            record = store.get_collection("trip")
            rows = {}
            for batch, vecs in store.items_with_vectors(record.id):
                for item, vec in zip(batch, vecs, strict=True):
                    original = store.original_file(item)
                    rows[item.sha256] = (
                        item.kind,
                        item.filename,
                        item.metadata,
                        item.text,
                        item.width,
                        item.height,
                        original.read_bytes() if original else None,
                        vec.tolist(),
                    )
            return (record.model, record.pretrained, record.dim, record.description, record.item_count), rows

        assert content(middle) == content(source) == content(target)
    finally:
        source.close()
        middle.close()
        target.close()


# ---- jobs across replicas (PostgreSQL) -------------------------------------------------------------------
def test_replicas_claim_jobs_under_leases_and_take_over_expired_ones(make_pg_store, pg_database):
    import psycopg

    a, b = make_pg_store(), make_pg_store()
    c = a.create_collection("c", None, MODEL)
    files = [JobFile(i, f"f{i}.txt", f"/in/f{i}", {}) for i in range(4)]
    a.create_job("first", c, "path", "/in", files)
    a.create_job("second", c, "path", "/in", files)
    job, taken_over = a.claim_job("replica-a")
    assert (job.id, job.state, taken_over) == ("first", "running", False)
    job, _ = b.claim_job("replica-b")
    assert job.id == "second"  # the first is held: never claimed twice
    assert b.claim_job("replica-b") is None
    assert [f.seq for f in a.claim_batch("first", "replica-a", -1, 2)] == [0, 1]
    a.add_items(c.id, [text_item("a0", np.eye(DIM)[0])], MODEL, JobProgress("first", done=1))

    with psycopg.connect(pg_database, autocommit=True) as conn:  # replica a stalls past its lease
        conn.execute("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = 'first'")
    job, taken_over = b.claim_job("replica-b")
    assert (job.id, taken_over, job.attempts, job.done) == ("first", True, 1, 1)
    assert b.job_done_seq("first") == 0  # resumes after a's committed batch

    # a wakes up: it can neither fetch nor commit for the job any more, and its batch leaves nothing behind.
    with pytest.raises(ClipFilterError) as caught:
        a.claim_batch("first", "replica-a", 0, 2)
    assert caught.value.code == "job_lease_lost"
    a._claimed["first"] = "replica-a"  # as if a had fetched its batch just before the takeover
    with pytest.raises(ClipFilterError) as caught:
        a.add_items(c.id, [text_item("a1", np.eye(DIM)[1])], MODEL, JobProgress("first", done=1))
    assert caught.value.code == "job_lease_lost"
    assert a.get_collection("c").item_count == 1
    a.set_job_state("first", "done")  # refused too: b holds the job
    assert a.get_job("first").state == "running"

    assert [f.seq for f in b.claim_batch("first", "replica-b", 0, 10)] == [1, 2, 3]
    b.add_items(c.id, [text_item(f"b{i}", np.eye(DIM)[i]) for i in range(1, 4)], MODEL, JobProgress("first", done=3))
    b.set_job_state("first", "done")
    job = b.get_job("first")
    assert (job.state, job.done, job.added, job.total) == ("done", 4, 4, 4)
    b.release_job("second", "replica-b")
    assert b.get_job("second").state == "queued"
    assert a.claim_job("replica-a")[0].id == "second"


def test_garbage_collection_keeps_a_file_another_replica_committed_meanwhile(make_pg_store, monkeypatch):
    """Between GC's first read of the rows and its unlink, another replica commits a row for an old file:
    the re-check right before unlinking sees it, and the file stays."""
    import os
    import time

    gc_replica, writer = make_pg_store(), make_pg_store()
    c = writer.create_collection("c", None, MODEL)
    late = writer.files.write_original(c.id, "bb" * 32, ".png", b"late")
    orphan = writer.files.write_original(c.id, "cc" * 32, ".png", b"orphan")
    old = time.time() - 7200
    for path in (late, orphan):
        os.utime(writer.data_dir / path, (old, old))
    recheck = gc_replica._referenced

    def commit_then_recheck(paths):
        writer.add_items(
            c.id,
            [NewItem("image", "l.png", "image/png", 4, "bb" * 32, {}, unit(np.eye(DIM)[0]), original_path=late)],
            MODEL,
        )
        return recheck(paths)

    monkeypatch.setattr(gc_replica, "_referenced", commit_then_recheck)
    assert gc_replica.collect_garbage(3600)["originals"] == 1
    assert (writer.data_dir / late).exists() and not (writer.data_dir / orphan).exists()


def test_an_unreachable_database_is_a_503_and_the_store_recovers(tmp_path):
    import shutil

    from pg import start_pg_server

    server = start_pg_server()  # its own server (in /tmp: tmp_path is not readable by `nobody`)
    try:
        store = PostgresCollectionStore(server.url, tmp_path / "data", pool_size=2)
        store.create_collection("c", None, MODEL)
        server.stop("immediate")
        with pytest.raises(ClipFilterError) as caught:
            store.get_collection("c")
        assert (caught.value.code, caught.value.status) == ("database_unavailable", 503)
        server.start()
        for _ in range(3):  # broken pooled connections are dropped one by one
            try:
                assert store.get_collection("c").name == "c"
                break
            except ClipFilterError as error:
                assert error.code == "database_unavailable"  # noqa: PT017 - a retry loop, not one expected raise
        else:
            raise AssertionError("the store did not reconnect")
        store.close()
        server.stop("immediate")
        with pytest.raises(ClipFilterError) as caught:
            PostgresCollectionStore(server.url, tmp_path / "data")
        assert (caught.value.code, caught.value.status) == ("database_unavailable", 503)
    finally:
        server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


def test_a_restarted_replica_resumes_the_jobs_its_dead_predecessor_held_at_once(make_pg_store):
    import os
    import socket
    import subprocess
    import sys

    from clip_filter.collections.pg_jobs import ReplicaJobRunner

    store = make_pg_store(job_lease_s=3600)  # the lease alone would hold them for an hour
    c = store.create_collection("c", None, MODEL)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone_pid = int(dead.stdout)  # a process of this host that has exited
    host = socket.gethostname()
    for job_id, owner in (
        ("mine", f"{host}:{gone_pid}:aaaa"),
        ("elsewhere", f"other-host:{gone_pid}:bbbb"),
        ("alive", f"{host}:{os.getppid()}:cccc"),
    ):
        store.create_job(job_id, c, "path", "/in", [JobFile(0, "a", "/in/a", {})])
        assert store.claim_job(owner)[0].id == job_id
    runner = ReplicaJobRunner(store, None, None, 4, [])
    runner._expire_dead_local_owners()
    job, taken_over = store.claim_job("new")
    assert (job.id, taken_over) == ("mine", True)
    assert store.claim_job("new") is None  # the other host's job and a live process's job stay held


def test_an_upload_job_keeps_its_spool_once_its_row_committed(store, monkeypatch):
    # A failure after the job row committed (an interrupt on the way back) must not delete the files the
    # committed job will read; a failure before it leaves no spool behind.
    import io

    from clip_filter.collections.jobs import Upload, create_upload_job

    c = store.create_collection("spools")
    commit_job = store.create_job
    created: list[str] = []

    def commit_then_interrupt(job_id, *args, **kwargs):
        created.append(job_id)
        commit_job(job_id, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "create_job", commit_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        create_upload_job(store, c, [Upload("a.png", "image/png", {}, data=b"spooled")])
    monkeypatch.undo()
    job = store.get_job(created[0])
    (spooled,) = store.job_files(job.id, -1, 10)
    assert Path(spooled.path).read_bytes() == b"spooled"

    class Broken(io.RawIOBase):
        def readinto(self, buffer):
            raise OSError("client went away")

    before = set(store.files.jobs_dir.iterdir())
    with pytest.raises(OSError, match="client went away"):
        create_upload_job(
            store, c, [Upload("b.png", None, {}, data=b"one"), Upload("c.png", None, {}, stream=Broken())]
        )
    assert set(store.files.jobs_dir.iterdir()) == before
