"""Vector search: exact search is the reference (brute force, tie rules, pages); IVF recall is measured against it."""

from __future__ import annotations

import numpy as np
import pytest

from clip_filter.collections.vector_index import CollectionIndex, ExactIndex, top_k_rows


def normalised(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, n: int, dim: int, clusters: int = 64) -> np.ndarray:
    centres = normalised(rng, clusters, dim)
    v = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim)).astype(np.float32) / np.sqrt(dim)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def brute_force(ids, vectors, query, k, keep=None):
    scores = vectors @ query
    order = sorted(range(len(ids)), key=lambda r: (-scores[r], ids[r]))
    if keep is not None:
        order = [r for r in order if keep(r)]
    return [int(ids[r]) for r in order[:k]], [float(scores[r]) for r in order[:k]]


def test_top_k_breaks_ties_by_id_even_at_the_cut():
    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.1], np.float32)
    ids = np.array([40, 10, 30, 20, 50])
    rows = top_k_rows(scores, ids, 3)
    assert ids[rows].tolist() == [10, 20, 30]


def test_exact_search_equals_brute_force_with_filters_kinds_and_min_score():
    rng = np.random.default_rng(0)
    vectors = normalised(rng, 500, 32)
    ids = np.arange(1, 501) * 3
    kinds = rng.choice(["image", "text"], 500)
    index = ExactIndex(32)
    index.add(ids, vectors, np.array([0 if k == "image" else 1 for k in kinds], np.int8))
    query = normalised(rng, 1, 32)[0]
    allowed = ids[rng.random(500) < 0.5]

    hits = index.search(query, 25)
    expected_ids, expected_scores = brute_force(ids, vectors, query, 25)
    assert hits.ids.tolist() == expected_ids
    np.testing.assert_allclose(hits.scores, expected_scores, rtol=1e-6)
    assert hits.total == 500

    allowed_set = set(allowed.tolist())
    hits = index.search(query, 10, allowed_ids=allowed, kind="text", min_score=0.0)
    keep = lambda r: ids[r] in allowed_set and kinds[r] == "text" and vectors[r] @ query >= 0.0  # noqa: E731
    assert hits.ids.tolist() == brute_force(ids, vectors, query, 10, keep)[0]
    assert hits.total == sum(1 for r in range(500) if keep(r))


def test_pages_concatenate_to_the_full_ranking_even_with_equal_scores():
    rng = np.random.default_rng(1)
    base = normalised(rng, 10, 16)
    vectors = np.repeat(base, 7, axis=0)  # 7 exact copies of each vector: many ties
    ids = np.arange(1, 71)
    index = ExactIndex(16)
    index.add(ids, vectors, np.zeros(70, np.int8))
    query = base[3]
    full = index.search(query, 70).ids.tolist()
    pages = [index.search(query, 9, offset=o).ids.tolist() for o in range(0, 70, 9)]
    assert [i for page in pages for i in page] == full
    assert full == brute_force(ids, vectors, query, 70)[0]


def test_removed_items_never_come_back_and_out_of_order_adds_are_sorted():
    rng = np.random.default_rng(2)
    vectors = normalised(rng, 3000, 8)
    index = ExactIndex(8, capacity=16)
    index.add(np.arange(1001, 3001), vectors[1000:], np.zeros(2000, np.int8))
    index.add(np.arange(1, 1001), vectors[:1000], np.zeros(1000, np.int8))  # older ids after newer ones
    removed = np.arange(1, 3001, 2)
    index.remove(removed)  # enough tombstones to trigger compaction
    assert len(index) == 1500
    query = vectors[0]
    hits = index.search(query, 3000)
    assert set(hits.ids.tolist()) == set(range(2, 3001, 2))
    keep_rows = np.arange(1, 3000, 2)
    assert hits.ids.tolist() == brute_force(np.arange(1, 3001)[keep_rows], vectors[keep_rows], query, 3000)[0]


def test_ivf_recall_against_exact_and_identical_scores():
    rng = np.random.default_rng(3)
    n, dim = 20_000, 64
    vectors = clustered(rng, n, dim)
    ids = np.arange(1, n + 1)
    index = CollectionIndex(dim, version=1, ann_min_items=5_000)
    index.exact.add(ids, vectors, np.zeros(n, np.int8))
    index.maybe_build_ann(background=False)
    assert index.ann is not None and index.ann.ntotal == n

    queries = clustered(rng, 100, dim)
    recalls = []
    for query in queries:
        approx = index.search(query, 10)
        exact = index.search(query, 10, exact=True)
        assert approx.method == "ivf" and exact.method == "exact"
        recalls.append(len(set(approx.ids.tolist()) & set(exact.ids.tolist())) / 10)
        # Both paths score an item with the same cosine (re-scored from the exact matrix; BLAS may round
        # a dot product differently depending on how many rows it multiplies, hence the 1e-6).
        common = np.intersect1d(approx.ids, exact.ids)
        a = dict(zip(approx.ids.tolist(), approx.scores.tolist(), strict=True))
        e = dict(zip(exact.ids.tolist(), exact.scores.tolist(), strict=True))
        assert all(abs(a[i] - e[i]) <= 1e-6 for i in common.tolist())
    assert np.mean(recalls) >= 0.95, np.mean(recalls)


def test_ivf_follows_adds_and_removes():
    rng = np.random.default_rng(4)
    n, dim = 6_000, 32
    vectors = clustered(rng, n, dim, clusters=16)
    index = CollectionIndex(dim, version=1, ann_min_items=2_000)
    index.exact.add(np.arange(1, n + 1), vectors, np.zeros(n, np.int8))
    index.maybe_build_ann(background=False)
    new = clustered(rng, 1, dim, clusters=4)
    index.add(np.array([n + 1]), new, ["text"])
    hits = index.search(new[0], 5)
    assert hits.method == "ivf" and hits.ids[0] == n + 1
    assert (
        index.search(new[0], 5, kind="image").ids.tolist()
        == index.search(new[0], 5, kind="image", exact=True).ids.tolist()
    )
    index.remove(np.array([n + 1]))
    assert n + 1 not in index.search(new[0], 50).ids.tolist()


@pytest.mark.parametrize("k", [1, 7])
def test_empty_and_tiny_indexes(k):
    index = CollectionIndex(4, version=0, ann_min_items=10)
    assert index.search(np.ones(4, np.float32) / 2, k).ids.size == 0
    index.add(np.array([5]), np.array([[1, 0, 0, 0]], np.float32), ["image"])
    hits = index.search(np.array([1, 0, 0, 0], np.float32), k)
    assert hits.ids.tolist() == [5] and hits.scores[0] == pytest.approx(1.0)
