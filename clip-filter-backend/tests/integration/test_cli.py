"""The collection CLI, run for real: `python -m clip_filter ...` subprocesses on a temporary data directory
with the tiny random model. Results are checked in the CLI's output and in the SQLite store itself."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from clip_filter.collections.store import SqliteCollectionStore

from .images_for_tests import png_bytes

GOOD_IMAGES = 4  # + 1 text file
BROKEN = {"broken.png": "truncated_image", "fake.jpg": "not_an_image", "empty.png": "empty_file"}


def cli(
    data_dir: Path, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    full_env = {
        **os.environ,
        "CLIP_MODEL": "clip-filter-tiny",
        "CLIP_PRETRAINED": "random",
        "CLIP_FILTER_DATA_DIR": str(data_dir),
        "CLIP_TORCH_THREADS": "1",
        "CLIP_PRECISION": "fp32",  # an image searched by itself scores 1.0 whatever the batch it was embedded in
        **(env or {}),
    }
    result = subprocess.run(
        [sys.executable, "-m", "clip_filter", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, (
            f"{args} exited {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result


def cli_json(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    return json.loads(cli(data_dir, *args, "--json", env=env).stdout)


def make_folder(folder: Path) -> Path:
    """Good images (one in a sub-folder), a caption file, and three broken files."""
    (folder / "sub").mkdir(parents=True)
    for seed in range(GOOD_IMAGES - 1):
        (folder / f"img{seed}.png").write_bytes(png_bytes(seed))
    (folder / "sub" / "deep.png").write_bytes(png_bytes(100))
    (folder / "sub" / "caption.txt").write_text("a photo of a red bicycle", encoding="utf-8")
    (folder / "broken.png").write_bytes(png_bytes(7)[:80])  # truncated PNG
    (folder / "fake.jpg").write_text("this is text posing as a JPEG", encoding="utf-8")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.pdf").write_bytes(b"%PDF-1.4 not picked up by the folder walk")
    return folder


def items_by_sha(data_dir: Path, name: str, originals: bool = True) -> dict[str, tuple]:
    """sha256 -> (item, embedding, original bytes or None), read straight from the store."""
    store = SqliteCollectionStore(data_dir)
    try:
        collection = store.get_collection(name)
        out = {}
        for items, vectors in store.items_with_vectors(collection.id):
            for item, vector in zip(items, vectors, strict=True):
                original = store.original_file(item)
                out[item.sha256] = (item, vector.copy(), original.read_bytes() if original and originals else None)
        return out
    finally:
        store.close()


def collection_record(data_dir: Path, name: str) -> dict:
    listing = cli_json(data_dir, "collections")["collections"]
    return next(c for c in listing if c["name"] == name)


def tiny_checkpoint(path: Path, seed: int) -> Path:
    """clip-filter-tiny weights from another seed, saved as a checkpoint file: a different model."""
    import open_clip
    import torch

    import clip_filter.ml.factory  # noqa: F401 - registers the clip-filter-tiny config

    torch.manual_seed(seed)
    torch.save(open_clip.create_model("clip-filter-tiny").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, subprocess.CompletedProcess]:
    """One data dir with collection `photos` made from the folder (first run, JSON summary)."""
    root = tmp_path_factory.mktemp("cli")
    folder = make_folder(root / "photos")
    data_dir = root / "data"
    first = cli(data_dir, "ingest", str(folder), "--collection", "photos", "--create", "--batch-size", "3", "--json")
    return data_dir, folder, json.loads(first.stdout), first


# ---- ingest ----------------------------------------------------------------------------------------------
def test_ingest_folder_with_broken_files_finishes_with_a_summary(ingested) -> None:
    data_dir, folder, summary, run = ingested
    assert summary["total"] == GOOD_IMAGES + 1 + len(BROKEN)  # the .pdf is not picked up
    assert summary["added"] == GOOD_IMAGES + 1
    assert summary["duplicates"] == 0
    assert summary["failed"] == len(BROKEN)
    reasons = {Path(f["filename"]).name: f["code"] for f in summary["failures"]}
    assert reasons == BROKEN
    assert all(f["message"] for f in summary["failures"])
    assert summary["item_count"] == GOOD_IMAGES + 1
    assert summary["model"] == {"name": "clip-filter-tiny", "pretrained": "random", "dim": 64}
    # Each bad file is also reported while the ingest runs (stderr, beside the progress bar).
    for name in BROKEN:
        assert f"skipped {folder / name}" in run.stderr

    items = items_by_sha(data_dir, "photos")
    assert sorted(item.filename for item, _, _ in items.values()) == sorted(
        ["img0.png", "img1.png", "img2.png", "sub/deep.png", "sub/caption.txt"]
    )
    for item, vector, original in items.values():
        assert vector.shape == (64,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5
        if item.kind == "image":
            assert original == (folder / item.filename).read_bytes()
        else:
            assert item.text == "a photo of a red bicycle" and original is None


def test_ingest_again_adds_nothing_and_prints_the_summary(ingested) -> None:
    data_dir, folder, _, _ = ingested
    before = items_by_sha(data_dir, "photos")
    run = cli(data_dir, "ingest", str(folder), "--collection", "photos", "--no-progress")
    assert (
        f"Ingested into 'photos': 0 added, {GOOD_IMAGES + 1} duplicates (already in the collection), "
        f"{len(BROKEN)} failed, of {GOOD_IMAGES + 1 + len(BROKEN)} files"
    ) in run.stdout
    for name, code in BROKEN.items():
        assert f"{folder / name}: {code}:" in run.stdout
    after = items_by_sha(data_dir, "photos")
    assert after.keys() == before.keys()
    for sha, (item, vector, _) in after.items():
        assert item.id == before[sha][0].id and np.array_equal(vector, before[sha][1])  # nothing re-encoded

    # A new file among the old ones: only it is added.
    extra = folder.parent / "more"
    shutil.copytree(folder, extra)
    (extra / "new.png").write_bytes(png_bytes(55))
    summary = cli_json(data_dir, "ingest", str(extra), "--collection", "photos", "--no-progress")
    assert (summary["added"], summary["duplicates"], summary["failed"]) == (1, GOOD_IMAGES + 1, len(BROKEN))
    assert collection_record(data_dir, "photos")["item_count"] == GOOD_IMAGES + 2


def test_ingest_into_an_unknown_collection_without_create_fails(ingested, tmp_path: Path) -> None:
    data_dir, folder, _, _ = ingested
    run = cli(data_dir, "ingest", str(folder), "--collection", "nope", check=False)
    assert run.returncode != 0
    assert "'nope' does not exist" in run.stderr and "--create" in run.stderr
    assert "nope" not in [c["name"] for c in cli_json(data_dir, "collections")["collections"]]
    missing = cli(data_dir, "ingest", str(tmp_path / "no-such-folder"), "--collection", "photos", check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr


# ---- search ----------------------------------------------------------------------------------------------
def test_search_prints_results(ingested) -> None:
    data_dir, folder, _, _ = ingested
    table = cli(data_dir, "search", "photos", "a red bicycle", "--top-k", "3")
    lines = table.stdout.strip().splitlines()
    assert lines[0].split() == ["RANK", "SCORE", "ID", "KIND", "ITEM"]
    assert len(lines) == 4 and [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]
    # The caption itself is the best match of its own text.
    assert lines[1].split()[3:] == ["text", "a", "photo", "of", "a", "red", "bicycle"]

    found = cli_json(data_dir, "search", "photos", "a red bicycle", "--top-k", "50")
    scores = [r["score"] for r in found["results"]]
    assert len(scores) == collection_record(data_dir, "photos")["item_count"]
    assert scores == sorted(scores, reverse=True)
    assert found["model"]["name"] == "clip-filter-tiny" and found["weights"] == "random"

    by_image = cli_json(data_dir, "search", "photos", "--image", str(folder / "img1.png"), "--kind", "image", "-k", "2")
    best = by_image["results"][0]
    assert best["filename"] == "img1.png" and best["score"] > 0.999
    assert all(r["kind"] == "image" for r in by_image["results"])
    assert Path(best["path"]).read_bytes() == (folder / "img1.png").read_bytes()


# ---- CSV -------------------------------------------------------------------------------------------------
def test_csv_ingest_with_metadata_columns(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for seed in (1, 2, 3):
        (images / f"p{seed}.png").write_bytes(png_bytes(200 + seed))
    listing = tmp_path / "list.csv"
    with listing.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "year", "note"])
        writer.writerow(["images/p1.png", "dog", "2021", "first"])
        writer.writerow(["images/p2.png", "cat", "2022", "second, with a comma"])
        writer.writerow([str(images / "p3.png"), "cat", "2023", ""])  # absolute paths work too
        writer.writerow(["images/missing.png", "bird", "2024", ""])
    data_dir = tmp_path / "data"

    summary = cli_json(data_dir, "ingest", str(listing), "-c", "pets", "--create", "--no-progress")
    assert (summary["added"], summary["failed"]) == (3, 1)
    assert summary["failures"][0]["code"] == "file_not_found"
    items = {item.filename: item for item, _, _ in items_by_sha(data_dir, "pets").values()}
    assert items["images/p1.png"].metadata == {"label": "dog", "year": "2021", "note": "first"}
    assert items["images/p2.png"].metadata == {"label": "cat", "year": "2022", "note": "second, with a comma"}

    # Only the chosen columns, into another collection.
    cli(
        data_dir,
        "ingest",
        str(listing),
        "-c",
        "labels",
        "--create",
        "--metadata-column",
        "label",
        "--metadata-column",
        "year",
        "--no-progress",
    )
    labelled = {item.filename: item.metadata for item, _, _ in items_by_sha(data_dir, "labels").values()}
    assert labelled[str(images / "p3.png")] == {"label": "cat", "year": "2023"}

    # Metadata filters in search.
    cats = cli_json(data_dir, "search", "pets", "an animal", "--filter", "label=cat")
    assert sorted(r["metadata"]["year"] for r in cats["results"]) == ["2022", "2023"]

    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nimages/p1.png,dog\n", encoding="utf-8")
    run = cli(data_dir, "ingest", str(bad), "-c", "pets", check=False)
    assert run.returncode != 0 and "no 'path' column" in run.stderr


def test_filenames_never_reach_the_terminal_as_control_characters(tmp_path: Path) -> None:
    # Review L7: a filename with an escape sequence (from an HTTP upload or a folder) was printed raw by search.
    folder = tmp_path / "evil"
    folder.mkdir()
    name = "clear\x1b[2J\x9btitle\x07.png"
    (folder / name).write_bytes(png_bytes(300))
    data_dir = tmp_path / "data"
    cli(data_dir, "ingest", str(folder), "-c", "evil", "--create", "--no-progress")
    table = cli(data_dir, "search", "evil", "a photo", "--kind", "image").stdout
    assert "\\x1b[2J\\x9btitle\\x07.png" in table
    assert not any(ch in table for ch in "\x1b\x9b\x07")
    # --json output is for programs: the exact name, JSON-escaped.
    assert cli_json(data_dir, "search", "evil", "a photo")["results"][0]["filename"].endswith(name)


# ---- export / import -------------------------------------------------------------------------------------
def test_export_import_round_trip(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    folder = make_folder(tmp_path / "photos")
    listing = tmp_path / "meta.csv"
    listing.write_text("path,label\nphotos/img0.png,zero\nphotos/sub/deep.png,deep\n", encoding="utf-8")
    # Two items get metadata from the CSV; the folder adds the rest (and skips those two).
    cli(data_dir, "ingest", str(listing), str(folder), "-c", "meta", "--create", "--no-progress")

    out = tmp_path / "export"
    run = cli(data_dir, "export", "meta", str(out), "--no-progress")
    assert "Exported 'meta'" in run.stdout
    manifest = json.loads((out / "collection.json").read_text())
    assert manifest["format"] == "clip-filter-collection" and manifest["format_version"] == 1
    assert manifest["model"] == {"name": "clip-filter-tiny", "pretrained": "random", "dim": 64}
    lines = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    embeddings = np.load(out / "embeddings.npy")
    assert embeddings.dtype == np.float32 and embeddings.shape == (len(lines), 64) == (GOOD_IMAGES + 1, 64)
    source = items_by_sha(data_dir, "meta")
    for line, row in zip(lines, embeddings, strict=True):
        assert set(line) >= {
            "id",
            "kind",
            "filename",
            "mimetype",
            "sha256",
            "metadata",
            "truncated",
            "text",
            "original",
        }
        assert np.array_equal(row, source[line["sha256"]][1])
        if line["kind"] == "image":
            assert (out / line["original"]).read_bytes() == source[line["sha256"]][2]

    # Folder and tar both import, under new names, identical to the source.
    tar_path = tmp_path / "export.tar"
    cli(data_dir, "export", "meta", str(tar_path), "--no-progress")
    with tarfile.open(tar_path) as tar:
        assert {"collection.json", "items.jsonl", "embeddings.npy"} <= set(tar.getnames())
    for source_path, name in ((out, "copy"), (tar_path, "copy-from-tar")):
        run = cli(data_dir, "import", str(source_path), "--name", name, "--no-progress")
        assert f"Created '{name}': {GOOD_IMAGES + 1} added, 0 duplicates skipped" in run.stdout
        copy = items_by_sha(data_dir, name)
        assert copy.keys() == source.keys()
        for sha, (item, vector, original) in copy.items():
            old_item, old_vector, old_original = source[sha]
            assert np.array_equal(vector, old_vector)  # exact equality, bit for bit
            assert (
                item.kind,
                item.filename,
                item.mimetype,
                item.size,
                item.metadata,
                item.truncated,
                item.text,
                item.width,
                item.height,
            ) == (
                old_item.kind,
                old_item.filename,
                old_item.mimetype,
                old_item.size,
                old_item.metadata,
                old_item.truncated,
                old_item.text,
                old_item.width,
                old_item.height,
            )
            assert original == old_original
        assert copy[next(s for s, v in source.items() if v[0].filename == "photos/img0.png")][0].metadata == {
            "label": "zero"
        }
        record = collection_record(data_dir, name)
        assert (record["model"], record["pretrained"], record["dim"]) == ("clip-filter-tiny", "random", 64)
    # A search finds the same items with the same scores in the copy.
    a = cli_json(data_dir, "search", "meta", "a red bicycle")["results"]
    b = cli_json(data_dir, "search", "copy", "a red bicycle")["results"]
    assert [(r["filename"], r["score"]) for r in a] == [(r["filename"], r["score"]) for r in b]

    # An existing name is refused without --merge; with it, duplicates are skipped.
    refused = cli(data_dir, "import", str(out), "--name", "copy", check=False)
    assert refused.returncode != 0 and "--merge" in refused.stderr
    merged = cli(data_dir, "import", str(out), "--name", "copy", "--merge", "--no-progress")
    assert f"0 added, {GOOD_IMAGES + 1} duplicates skipped" in merged.stdout
    assert collection_record(data_dir, "copy")["item_count"] == GOOD_IMAGES + 1


def test_import_refuses_a_corrupt_original_and_a_mismatched_dimension(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    folder = make_folder(tmp_path / "photos")
    cli(data_dir, "ingest", str(folder), "-c", "src", "--create", "--no-progress")
    out = tmp_path / "export"
    cli(data_dir, "export", "src", str(out), "--no-progress")

    corrupt = tmp_path / "corrupt"
    shutil.copytree(out, corrupt)
    victim = next(
        json.loads(line)
        for line in (corrupt / "items.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "image"
    )
    original = corrupt / victim["original"]
    data = bytearray(original.read_bytes())
    data[-20] ^= 0xFF
    original.write_bytes(bytes(data))
    run = cli(data_dir, "import", str(corrupt), "--name", "broken", "--no-progress", check=False)
    assert run.returncode != 0 and "sha256" in run.stderr and victim["filename"] in run.stderr
    assert "broken" not in [c["name"] for c in cli_json(data_dir, "collections")["collections"]]  # nothing written
    partial = cli(data_dir, "import", str(corrupt), "--name", "partial", "--skip-invalid", "--no-progress")
    assert "Created 'partial': 4 added" in partial.stdout and "1 invalid skipped" in partial.stdout

    # The same export with 32-dimensional embeddings: refused by a 64-dimensional collection.
    small = tmp_path / "small"
    shutil.copytree(out, small)
    manifest = json.loads((small / "collection.json").read_text())
    manifest["model"]["dim"] = 32
    (small / "collection.json").write_text(json.dumps(manifest))
    vectors = np.load(small / "embeddings.npy")[:, :32]
    np.save(small / "embeddings.npy", (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32))
    run = cli(data_dir, "import", str(small), "--name", "src", "--merge", "--no-progress", check=False)
    assert run.returncode != 0 and "32" in run.stderr and "64" in run.stderr
    # ... and embeddings that do not match their own manifest are refused too.
    manifest["model"]["dim"] = 64
    (small / "collection.json").write_text(json.dumps(manifest))
    run = cli(data_dir, "import", str(small), "--name", "other", "--no-progress", check=False)
    assert run.returncode != 0 and "dimension 32" in run.stderr
    assert collection_record(data_dir, "src")["item_count"] == GOOD_IMAGES + 1


# ---- reindex ---------------------------------------------------------------------------------------------
def test_model_mismatch_then_reindex_records_the_new_model(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    folder = make_folder(tmp_path / "photos")
    cli(data_dir, "ingest", str(folder), "-c", "pics", "--create", "--no-progress")
    before = items_by_sha(data_dir, "pics")
    checkpoint = str(tiny_checkpoint(tmp_path / "tiny-seed7.pt", seed=7))
    other = {"CLIP_PRETRAINED": checkpoint}

    # Another model may not add to (or search) the collection: a clear message pointing at reindex.
    extra = tmp_path / "extra.png"
    extra.write_bytes(png_bytes(77))
    for args in (("ingest", str(extra), "-c", "pics"), ("search", "pics", "a bicycle")):
        run = cli(data_dir, *args, env=other, check=False)
        assert run.returncode != 0
        assert "clip-filter reindex pics" in run.stderr and checkpoint in run.stderr
    assert collection_record(data_dir, "pics")["item_count"] == GOOD_IMAGES + 1

    # Reindex is all or nothing: one missing original and nothing changes.
    store = SqliteCollectionStore(data_dir)
    image = next(item for item, _, _ in before.values() if item.kind == "image")
    path = store.original_file(image)
    store.close()
    saved = path.read_bytes()
    path.unlink()
    run = cli(data_dir, "reindex", "pics", "--no-progress", env=other, check=False)
    assert run.returncode != 0 and f"Item {image.id}" in run.stderr and "nothing was reindexed" in run.stderr
    record = collection_record(data_dir, "pics")
    assert record["pretrained"] == "random"
    for sha, (_, vector, _) in items_by_sha(data_dir, "pics", originals=False).items():
        assert np.array_equal(vector, before[sha][1])
    path.write_bytes(saved)

    run = cli(data_dir, "reindex", "pics", "--no-progress", env=other)
    assert "Reindexed 'pics': 5 items" in run.stdout
    record = collection_record(data_dir, "pics")
    assert (record["model"], record["pretrained"], record["dim"], record["item_count"]) == (
        "clip-filter-tiny",
        checkpoint,
        64,
        GOOD_IMAGES + 1,
    )
    after = items_by_sha(data_dir, "pics")
    assert after.keys() == before.keys()
    for sha, (item, vector, _) in after.items():
        assert item.id == before[sha][0].id
        assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5
        assert not np.allclose(vector, before[sha][1], atol=1e-3)  # re-embedded with other weights

    # Now the new model adds and searches, and the old one is the mismatched one.
    assert cli_json(data_dir, "ingest", str(extra), "-c", "pics", "--no-progress", env=other)["added"] == 1
    best = cli_json(data_dir, "search", "pics", "--image", str(extra), "-k", "1", env=other)["results"][0]
    assert best["filename"] == "extra.png" and best["score"] > 0.999
    old = cli(data_dir, "search", "pics", "a bicycle", check=False)
    assert old.returncode != 0 and "clip-filter reindex pics" in old.stderr
