"""The collection CLI on PostgreSQL (CLIP_FILTER_DATABASE_URL, a real server from tests/pg.py): ingest, search,
reindex, and export/import between SQLite and PostgreSQL, run as subprocesses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clip_filter.collections.store.postgres import PostgresCollectionStore

from .test_cli import GOOD_IMAGES, cli, cli_json, items_by_sha, make_folder, tiny_checkpoint


def pg_items(url: str, data_dir: Path, name: str) -> dict[str, tuple]:
    store = PostgresCollectionStore(url, data_dir, pool_size=1)
    try:
        collection = store.get_collection(name)
        out = {}
        for items, vectors in store.items_with_vectors(collection.id):
            for item, vector in zip(items, vectors, strict=True):
                original = store.original_file(item)
                out[item.sha256] = (item, vector.copy(), original.read_bytes() if original else None)
        return out
    finally:
        store.close()


def same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for sha, (item, vector, original) in a.items():
        other, other_vector, other_original = b[sha]
        assert np.array_equal(vector, other_vector)
        assert (
            item.kind,
            item.filename,
            item.mimetype,
            item.size,
            item.metadata,
            item.text,
            item.width,
            item.height,
            original,
        ) == (
            other.kind,
            other.filename,
            other.mimetype,
            other.size,
            other.metadata,
            other.text,
            other.width,
            other.height,
            other_original,
        )


def test_cli_moves_a_collection_sqlite_to_postgres_and_back_and_works_on_postgres(tmp_path, pg_database):
    lite, shared, back = tmp_path / "lite", tmp_path / "pg-data", tmp_path / "back"
    pg = {"CLIP_FILTER_DATABASE_URL": pg_database}
    cli(lite, "ingest", str(make_folder(tmp_path / "photos")), "-c", "pics", "--create", "--no-progress")
    cli(lite, "export", "pics", str(tmp_path / "from-lite.tar"), "--no-progress")
    run = cli(shared, "import", str(tmp_path / "from-lite.tar"), "--no-progress", env=pg)
    assert f"Created 'pics': {GOOD_IMAGES + 1} added" in run.stdout
    same(pg_items(pg_database, shared, "pics"), items_by_sha(lite, "pics"))
    listing = cli_json(shared, "collections", env=pg)["collections"]
    assert [(c["name"], c["item_count"], c["dim"]) for c in listing] == [("pics", GOOD_IMAGES + 1, 64)]
    a = cli_json(lite, "search", "pics", "a red bicycle")["results"]
    b = cli_json(shared, "search", "pics", "a red bicycle", env=pg)["results"]
    assert [r["filename"] for r in a] == [r["filename"] for r in b]
    np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], atol=1e-5)

    cli(shared, "export", "pics", str(tmp_path / "from-pg"), "--no-progress", env=pg)
    cli(back, "import", str(tmp_path / "from-pg"), "--no-progress")
    same(items_by_sha(back, "pics"), items_by_sha(lite, "pics"))

    other = {**pg, "CLIP_PRETRAINED": str(tiny_checkpoint(tmp_path / "seed7.pt", seed=7))}
    mismatch = cli(shared, "search", "pics", "a bicycle", env=other, check=False)
    assert mismatch.returncode != 0 and "clip-filter reindex pics" in mismatch.stderr
    assert "Reindexed 'pics': 5 items" in cli(shared, "reindex", "pics", "--no-progress", env=other).stdout
    image = next(path for path in (tmp_path / "photos").glob("*.png") if path.name == "img0.png")
    best = cli_json(shared, "search", "pics", "--image", str(image), "-k", "1", env=other)["results"][0]
    assert best["filename"].endswith("img0.png") and best["score"] > 0.999
