"""The SQLite store (collections/store/): durability rules, dedup, model records, filters, job progress,
garbage collection, and that it implements the whole CollectionStore Protocol."""

from __future__ import annotations

import os
import sqlite3
import time

import numpy as np
import pytest

from clip_filter.collections.store import JobFile, JobProgress, NewItem, SqliteCollectionStore
from clip_filter.collections.validation import validate_filters, validate_metadata
from clip_filter.core.errors import ClipFilterError

MODEL = ("clip-filter-tiny", "random", 4)


def vec(*values: float) -> np.ndarray:
    v = np.asarray(values, np.float32)
    return v / np.linalg.norm(v)


def text_item(text: str, vector: np.ndarray, **metadata) -> NewItem:
    return NewItem("text", None, "text/plain", len(text), f"sha-{text}", metadata, vector, text=text)


@pytest.fixture
def store(tmp_path):
    s = SqliteCollectionStore(tmp_path / "data")
    yield s
    s.close()


def test_collections_persist_across_reopen(tmp_path):
    store = SqliteCollectionStore(tmp_path / "data")
    c = store.create_collection("photos", "mine", MODEL)
    store.add_items(c.id, [text_item("a", vec(1, 0, 0, 0), year=2023)], MODEL)
    store.close()
    again = SqliteCollectionStore(tmp_path / "data")
    record = again.get_collection("photos")
    assert (record.item_count, record.text_count, record.model, record.dim) == (1, 1, "clip-filter-tiny", 4)
    _version, ids, vectors, kinds = again.load_vectors(record.id)
    assert ids.tolist() == [1] and kinds == ["text"] and vectors[0] == pytest.approx(vec(1, 0, 0, 0))
    again.close()


@pytest.mark.parametrize("name", ["", "a/b", "x" * 65, "..", "spa ce", None, 5])
def test_bad_names_are_refused(store, name):
    with pytest.raises(ClipFilterError) as caught:
        store.create_collection(name)
    assert caught.value.code == "invalid_collection_name" and caught.value.status == 422


def test_same_content_twice_is_a_duplicate(store):
    c = store.create_collection("c", None, MODEL)
    first = store.add_items(c.id, [text_item("a", vec(1, 0, 0, 0)), text_item("a", vec(1, 0, 0, 0))], MODEL)
    assert [s for s, _ in first] == ["added", "duplicate"] and first[0][1] == first[1][1]
    again = store.add_items(c.id, [text_item("a", vec(1, 0, 0, 0))], MODEL)
    assert again == [("duplicate", first[0][1])]
    assert store.get_collection("c").item_count == 1


def test_another_model_is_refused_with_guidance(store):
    c = store.create_collection("c", None, MODEL)
    store.add_items(c.id, [text_item("a", vec(1, 0, 0, 0))], MODEL)
    with pytest.raises(ClipFilterError) as caught:
        store.add_items(c.id, [text_item("b", vec(0, 1, 0, 0))], ("clip-filter-tiny", "/ckpt.pt", 4))
    assert caught.value.status == 409 and caught.value.code == "model_mismatch"
    assert "clip-filter reindex c" in caught.value.message and caught.value.details["fix"] == "clip-filter reindex c"
    assert store.get_collection("c").item_count == 1


def test_a_failed_transaction_leaves_no_half_item_and_no_file(store):
    c = store.create_collection("c", None, MODEL)
    path = store.files.write_original(c.id, "ab" * 32, ".png", b"png bytes")
    good = NewItem("image", "x.png", "image/png", 9, "ab" * 32, {}, vec(1, 0, 0, 0), original_path=path)
    bad = text_item("b", vec(0, 1, 0, 0))
    bad.kind = "video"  # violates the CHECK constraint: the whole batch rolls back
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
        store.add_items(c.id, [good, bad], MODEL)
    assert store.get_collection("c").item_count == 0
    assert store.list_items(c.id, 0, 10) == ([], 0)
    assert not (store.data_dir / path).exists()


def test_delete_removes_row_vector_and_file(store):
    c = store.create_collection("c", None, MODEL)
    path = store.files.write_original(c.id, "cd" * 32, ".png", b"png")
    [(_, item_id)] = store.add_items(
        c.id, [NewItem("image", "x.png", "image/png", 3, "cd" * 32, {}, vec(1, 1, 0, 0), original_path=path)], MODEL
    )
    c = store.get_collection("c")
    store.delete_item(c, item_id)
    assert not (store.data_dir / path).exists()
    assert store.load_vectors(c.id)[1].size == 0
    with pytest.raises(ClipFilterError) as caught:
        store.get_item(c, item_id)
    assert caught.value.status == 404


def test_metadata_filters_match_equal_values(store):
    c = store.create_collection("c", None, MODEL)
    store.add_items(
        c.id,
        [
            text_item("a", vec(1, 0, 0, 0), year=2023, cam="fuji", ok=True),
            text_item("b", vec(0, 1, 0, 0), year=2024, cam="fuji", ok=False),
            text_item("c", vec(0, 0, 1, 0), year="2023", cam="leica"),
        ],
        MODEL,
    )
    assert store.filter_ids(c.id, {"cam": "fuji"}).tolist() == [1, 2]
    assert store.filter_ids(c.id, {"year": 2023}).tolist() == [1]
    assert store.filter_ids(c.id, {"year": "2023"}).tolist() == [1, 3]  # form fields carry strings
    assert store.filter_ids(c.id, {"ok": True}).tolist() == [1]
    assert store.filter_ids(c.id, {"cam": "fuji", "year": 2024}).tolist() == [2]
    assert store.filter_ids(c.id, {"missing": "x"}).tolist() == []


@pytest.mark.parametrize("filters", [[1], {"a": [1]}, {'a"b': 1}, {"": 1}, {"a": float("nan")}, {"a": 2**70}])
def test_bad_filters_are_refused(filters):
    with pytest.raises(ClipFilterError) as caught:
        validate_filters(filters)
    assert caught.value.status == 422


@pytest.mark.parametrize("metadata", [[1], "x", {"a": float("nan")}, {"a": "\ud800"}])
def test_bad_metadata_is_refused(metadata):
    with pytest.raises(ClipFilterError) as caught:
        validate_metadata(metadata)
    assert caught.value.code == "invalid_metadata"


def test_job_progress_commits_with_the_items(store):
    c = store.create_collection("c", None, MODEL)
    files = [JobFile(i, f"{i}.txt", f"/nowhere/{i}", {}) for i in range(4)]
    job = store.create_job("j1", c, "upload", None, files)
    assert (job.state, job.total, job.done) == ("queued", 4, 0)
    store.add_items(
        c.id, [text_item("a", vec(1, 0, 0, 0)), text_item("b", vec(0, 1, 0, 0))], MODEL, JobProgress("j1", done=2)
    )
    assert store.job_done_seq("j1") == 1
    assert [f.seq for f in store.job_files("j1", store.job_done_seq("j1"), 10)] == [2, 3]
    failure = {"filename": "2.txt", "code": "x", "message": "m"}
    store.add_items(c.id, [], None, JobProgress("j1", done=2, failed=2, failures=[failure]))  # no rows, only counts
    job = store.get_job("j1")
    assert (job.done, job.added, job.failed, len(job.failures)) == (4, 2, 2, 1)
    assert [j.id for j in store.unfinished_jobs()] == ["j1"]


def test_every_write_bumps_the_version_and_announces_vector_changes(store):
    changes = []
    store.add_listener(changes.append)
    c = store.create_collection("c", None, MODEL)
    store.add_items(c.id, [text_item("a", vec(1, 0, 0, 0))], MODEL)
    store.update_item(store.get_collection("c"), 1, {"k": 1}, None)
    store.delete_item(store.get_collection("c"), 1)
    assert [len(ch.added_ids) for ch in changes] == [1, 0, 0] and changes[2].removed_ids == [1]
    assert [ch.version for ch in changes] == [1, 2, 3] and store.get_collection("c").version == 3


def test_garbage_collection_removes_only_old_unreferenced_files(store):
    c = store.create_collection("c", None, MODEL)
    kept = store.files.write_original(c.id, "ef" * 32, ".png", b"kept")
    store.add_items(
        c.id, [NewItem("image", "k.png", "image/png", 4, "ef" * 32, {}, vec(1, 0, 0, 1), original_path=kept)], MODEL
    )
    orphan = store.files.write_original(c.id, "12" * 32, ".png", b"crashed before commit")
    fresh = store.files.write_original(c.id, "34" * 32, ".png", b"another process, not committed yet")
    old = time.time() - 7200
    for path in (kept, orphan):
        os.utime(store.data_dir / path, (old, old))
    removed = store.collect_garbage(min_age_s=3600)
    assert removed["originals"] == 1
    assert (store.data_dir / kept).exists() and (store.data_dir / fresh).exists()
    assert not (store.data_dir / orphan).exists()


def test_sqlite_store_implements_the_whole_protocol():
    """Every CollectionStore method exists on the SQLite store with the same parameters (names, defaults)."""
    import inspect

    from clip_filter.collections.store import CollectionStore

    methods = [name for name, value in vars(CollectionStore).items() if callable(value) and not name.startswith("_")]
    assert "add_items" in methods and "load_vectors" in methods and len(methods) >= 25
    for name in methods:
        wanted = inspect.signature(getattr(CollectionStore, name))
        actual = inspect.signature(getattr(SqliteCollectionStore, name))
        assert [(p.name, p.default) for p in actual.parameters.values()] == [
            (p.name, p.default) for p in wanted.parameters.values()
        ], name


# ---- security review M1, M4, M9, L2 --------------------------------------------------------------------------
def image_item(sha: str, original: str) -> NewItem:
    return NewItem("image", "f.png", "image/png", 8, sha, {}, vec(1, 0, 0, 0), original_path=original)


def make_old(path, seconds: float = 7200.0) -> None:
    past = time.time() - seconds
    for folder, _, names in os.walk(path):
        for name in names:
            os.utime(os.path.join(folder, name), (past, past))
        os.utime(folder, (past, past))


def test_gc_keeps_originals_of_a_collection_created_after_its_snapshot(store):
    """M1: GC took its snapshot, then a collection was created and an image uploaded: the image stays."""
    from clip_filter.collections.store.gc import collect_garbage
    from clip_filter.collections.store.records import FileReferences

    stale = FileReferences(collection_ids=set(), originals=set(), live_jobs=set())  # taken before the upload
    c = store.create_collection("new", None, MODEL)
    fresh = store.files.write_original(c.id, "ab" * 32, ".png", b"\x89PNG\r\n\x1a\n")
    store.add_items(c.id, [image_item("ab" * 32, fresh)], MODEL)
    collect_garbage(store.files, stale, set, 600.0)  # young files are never touched, whatever the snapshot says
    assert (store.data_dir / fresh).exists()

    # Even an old file (a slow CLI import) survives: every candidate is re-checked under the writer lock.
    from clip_filter.collections.store.sqlite import _SqliteGcGuard

    make_old(store.files.originals_dir)
    removed = collect_garbage(store.files, stale, set, 600.0, guard=_SqliteGcGuard(store))
    assert (store.data_dir / fresh).exists() and removed["originals"] == 0
    orphan = store.files.write_original(c.id, "cd" * 32, ".png", b"\x89PNG\r\n\x1a\n")
    make_old(store.files.originals_dir)
    assert store.collect_garbage(600.0)["originals"] == 1  # an old unreferenced file still goes
    assert not (store.data_dir / orphan).exists() and (store.data_dir / fresh).exists()
    assert store.get_collection("new").item_count == 1


def test_a_listener_failing_after_commit_keeps_the_committed_originals(store):
    """M9: the rows are committed, so their originals must stay, whatever fails afterwards."""
    c = store.create_collection("c", None, MODEL)
    rel = store.files.write_original(c.id, "cd" * 32, ".png", b"\x89PNG\r\n\x1a\n")

    def failing(change):
        raise MemoryError("simulated")

    store.add_listener(failing)
    store.add_items(c.id, [image_item("cd" * 32, rel)], MODEL)
    assert store.get_collection("c").item_count == 1 and (store.data_dir / rel).exists()


def test_a_failed_commit_is_rolled_back_and_later_writes_work(store):
    """M9: a COMMIT that fails (here a deferred foreign key) must not leave the writer inside a transaction."""
    import sqlite3

    c = store.create_collection("c", None, MODEL)
    transaction = store._transaction()
    conn = transaction.__enter__()
    conn.execute("PRAGMA defer_foreign_keys = ON")  # the violation is only found by COMMIT
    conn.execute(
        "INSERT INTO items (collection_id, kind, mimetype, size, sha256, embedding, created_at) "
        "VALUES (999, 'text', 'text/plain', 1, 'x', x'00', 'now')"
    )
    with pytest.raises(sqlite3.IntegrityError):
        transaction.__exit__(None, None, None)  # the COMMIT
    assert store.add_items(c.id, [text_item("after", vec(1, 0, 0, 0))], MODEL)[0][0] == "added"
    assert store.create_collection("d").name == "d" and store.get_collection("c").item_count == 1


def test_embeddings_of_another_dimension_are_refused(store):
    """M8: a write without a model key (an import) cannot mix dimensions in one collection."""
    c = store.create_collection("c", None, MODEL)
    store.add_items(c.id, [text_item("a", vec(1, 0, 0, 0))], MODEL)
    with pytest.raises(ClipFilterError) as caught:
        store.add_items(c.id, [text_item("b", vec(1, 0, 0, 0, 0, 0, 0, 0))], None)
    assert (caught.value.code, caught.value.status) == ("dimension_mismatch", 409)
    assert store.load_vectors(c.id).vectors.shape == (1, 4)


def test_reader_connections_are_pooled_and_closed(tmp_path):
    """M4: readers come from a bounded pool shared by all threads, whatever the number of threads."""
    import threading

    store = SqliteCollectionStore(tmp_path / "data", readers=2)
    store.create_collection("c")
    barrier = threading.Barrier(16)

    def read():
        barrier.wait()
        for _ in range(20):
            store.list_collections()

    threads = [threading.Thread(target=read) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store._pool.open_connections <= 2
    store.close()
    assert store._pool.open_connections == 0
    with pytest.raises(ClipFilterError) as caught:
        store.list_collections()
    assert caught.value.code == "store_closed"


@pytest.mark.parametrize("name", ["c\n", "c\r", "\nc"])
def test_names_with_line_breaks_are_refused(store, name):
    with pytest.raises(ClipFilterError) as caught:
        store.create_collection(name)
    assert caught.value.code == "invalid_collection_name"


def test_postgres_store_implements_the_whole_protocol_and_searches_itself():
    """The PostgreSQL store has every CollectionStore method with the Protocol's parameters first (names,
    defaults); any extra parameter comes after them and has a default, so Protocol calls work unchanged.
    It is a `SearchingStore` (the facade hands it the search); SQLite is not."""
    import inspect

    from clip_filter.collections.store import CollectionStore, SearchingStore
    from clip_filter.collections.store.postgres import PostgresCollectionStore

    for protocol in (CollectionStore, SearchingStore):
        methods = [n for n, value in vars(protocol).items() if callable(value) and not n.startswith("_")]
        assert methods, protocol
        for name in methods:
            wanted = [(p.name, p.default) for p in inspect.signature(getattr(protocol, name)).parameters.values()]
            params = list(inspect.signature(getattr(PostgresCollectionStore, name)).parameters.values())
            assert [(p.name, p.default) for p in params[: len(wanted)]] == wanted, name
            assert all(p.default is not inspect.Parameter.empty for p in params[len(wanted) :]), name
    assert "search" in vars(SearchingStore)
    assert not isinstance(SqliteCollectionStore.__new__(SqliteCollectionStore), SearchingStore)
