"""Ingest roots (collections/roots.py, security review M7): a file swapped for a symlink after the job was listed
is never followed out of the root, FIFOs never block, loops and NULs are clear errors. Real files and links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clip_filter.collections.ingest import IngestLimits, Ingestor, is_supported_filename
from clip_filter.collections.jobs import JobRunner
from clip_filter.collections.roots import list_folder, read_regular_file, resolve_allowed
from clip_filter.collections.store import JobFile, SqliteCollectionStore
from clip_filter.core.errors import ClipFilterError
from clip_filter.images import ImageLimits

pytestmark = pytest.mark.skipif(os.name != "posix", reason="symlinks and FIFOs")


@pytest.fixture
def setup(tmp_path):
    root = (tmp_path / "root").resolve()
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "zz.txt").write_text("a harmless note")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("root:x:0:0:secret")
    store = SqliteCollectionStore(tmp_path / "data")
    collection = store.create_collection("c")
    limits = IngestLimits(ImageLimits(max_bytes=1 << 20, max_pixels=10**7), 10_000)
    ingestor = Ingestor(store, limits)
    runner = JobRunner(store, ingestor, lambda: None, 8, [root])
    yield root, outside, store, collection, ingestor, runner
    store.close()


def scheduled(setup, folder: Path):
    """The job listed and its batch scheduled (Sources built), as the runner does before the prefetch reads."""
    root, _, store, collection, _, runner = setup
    files, failures = list_folder(folder, [root], is_supported_filename)
    job = store.create_job("j" * 32, collection, "path", str(folder), files, failures)
    return [runner._source(job, f) for f in store.job_files(job.id, -1, 100)]


def prepared_texts(setup, sources) -> list:
    _, _, _, collection, ingestor, _ = setup
    batch = ingestor.prepare_batch(collection, sources)
    return [p.text for p in batch.prepared], [o.error.code for o in batch.outcomes if o is not None and o.error]


def test_a_file_swapped_for_a_symlink_after_scheduling_is_not_followed(setup):
    root, outside, *_ = setup
    sources = scheduled(setup, root)
    target = root / "sub" / "zz.txt"
    target.unlink()
    target.symlink_to(outside / "secret.txt")  # the swap, after the checks
    texts, errors = prepared_texts(setup, sources)
    assert texts == [] and errors == ["path_not_allowed"]


def test_a_folder_swapped_for_a_symlink_after_scheduling_is_not_followed(setup):
    root, outside, *_ = setup
    sources = scheduled(setup, root)
    (root / "sub" / "zz.txt").unlink()
    (root / "sub").rmdir()
    (outside / "zz.txt").write_text("outside the root")
    (root / "sub").symlink_to(outside, target_is_directory=True)
    texts, errors = prepared_texts(setup, sources)
    assert texts == [] and errors == ["path_not_allowed"]


def test_unchanged_files_are_read(setup):
    root, *_ = setup
    texts, errors = prepared_texts(setup, scheduled(setup, root))
    assert texts == ["a harmless note"] and errors == []


def test_fifos_never_block_and_are_refused(setup, tmp_path):
    root, *_ = setup
    os.mkfifo(root / "stuck.txt")
    files, failures = list_folder(root, [root], is_supported_filename)
    assert [f.filename for f in files] == ["sub/zz.txt"] and failures[0]["code"] == "not_a_regular_file"
    with pytest.raises(ClipFilterError) as caught:  # also when read directly (a job listed by an older version)
        read_regular_file(root / "stuck.txt", 1 << 20, root)
    assert caught.value.code == "not_a_regular_file"
    with pytest.raises(ClipFilterError) as caught:
        read_regular_file(root / "stuck.txt", 1 << 20)  # the CLI's plain read too
    assert caught.value.code == "not_a_regular_file"


def test_reads_stop_at_the_size_limit(setup):
    root, *_ = setup
    (root / "big.txt").write_bytes(b"x" * 5000)
    with pytest.raises(ClipFilterError) as caught:
        read_regular_file(root / "big.txt", 4096, root)
    assert (caught.value.code, caught.value.status) == ("file_too_large", 413)


@pytest.mark.parametrize(("text", "code"), [("/x\x00y", "invalid_request"), ("", "invalid_request")])
def test_bad_paths_are_4xx(setup, text, code):
    root, *_ = setup
    with pytest.raises(ClipFilterError) as caught:
        resolve_allowed(text, [root])
    assert caught.value.code == code and 400 <= caught.value.status < 500


def test_symlink_loops_are_4xx(setup):
    root, *_ = setup
    (root / "loop.txt").symlink_to("loop.txt")
    with pytest.raises(ClipFilterError) as caught:
        resolve_allowed(str(root / "loop.txt"), [root])
    assert caught.value.code == "unresolvable_path" and caught.value.status == 422
    _, failures = list_folder(root, [root], is_supported_filename)
    assert [f["code"] for f in failures] == ["unresolvable_path"]


def test_the_spool_of_a_job_whose_collection_was_deleted_is_removed(setup):
    """Security review L4: a failed job is never resumed, so its spool must not stay until the next restart."""
    _, _, store, collection, _, runner = setup
    spooled = store.files.spool_file("k" * 32, 0, b"uploaded bytes")
    store.files.sync_spool("k" * 32)
    store.create_job("k" * 32, collection, "upload", None, [JobFile(0, "a.txt", str(spooled), {})])
    store.delete_collection("c")  # marks the queued job failed
    assert store.get_job("k" * 32).state == "failed" and spooled.exists()
    runner._process("k" * 32)  # what the worker does when it reaches the job
    assert not store.files.spool_dir("k" * 32).exists()


def test_ingest_roots_are_split_on_the_platform_path_separator(tmp_path, monkeypatch):
    # Review L7: splitting on ":" made the Windows root "C:\photos" two roots, "C" and "\photos".
    from clip_filter.core.config import Settings

    monkeypatch.setattr(os, "pathsep", ";")
    roots = Settings(CLIP_FILTER_INGEST_ROOTS="C:\\photos;D:\\scans").ingest_root_paths
    assert [p.name for p in roots] == ["C:\\photos", "D:\\scans"]
    monkeypatch.setattr(os, "pathsep", ":")
    assert Settings(CLIP_FILTER_INGEST_ROOTS=f"{tmp_path}/a:{tmp_path}/b").ingest_root_paths == [
        tmp_path / "a",
        tmp_path / "b",
    ]
