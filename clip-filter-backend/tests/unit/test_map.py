"""Map layouts: method by size, coordinates in [-1, 1], deterministic, projections consistent, cache by version."""

from __future__ import annotations

import numpy as np
import pytest

from clip_filter.collections.map import MapCache, compute_layout


def data(n: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return np.arange(1, n + 1), v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("n", "method"), [(0, "trivial"), (1, "trivial"), (2, "trivial"), (3, "pca"), (14, "pca"), (40, "umap")]
)
def test_method_by_size_and_coordinates_in_range(n, method):
    ids, vectors = data(n)
    layout = compute_layout(ids, vectors)
    assert layout.method == method and layout.total == n
    assert layout.coords.shape == (n, 2) and layout.ids.tolist() == ids.tolist()
    if n:
        assert np.all(np.abs(layout.coords) <= 1 + 1e-9)
        x, y = layout.project(vectors[0])
        assert np.isfinite(x) and np.isfinite(y)


def test_pca_layout_is_deterministic_and_projects_items_onto_their_points():
    ids, vectors = data(10)
    first, second = compute_layout(ids, vectors), compute_layout(ids, vectors)
    np.testing.assert_allclose(first.coords, second.coords)
    for row in range(10):
        np.testing.assert_allclose(first.project(vectors[row]), first.coords[row], atol=1e-5)


def test_two_items_project_towards_the_more_similar_one():
    ids, vectors = data(2)
    layout = compute_layout(ids, vectors)
    assert layout.project(vectors[1])[0] > layout.project(vectors[0])[0]


def test_cache_is_keyed_by_version():
    cache, calls = MapCache(), []
    ids, vectors = data(5)

    def compute(version):
        def run():
            calls.append(version)
            return version, compute_layout(ids, vectors)

        return run

    a = cache.get(1, 7, compute(7))
    assert cache.get(1, 7, compute(7)) is a and calls == [7]
    cache.get(1, 8, compute(8))
    assert calls == [7, 8]
    cache.drop(1)
    cache.get(1, 8, compute(8))
    assert calls == [7, 8, 8]


def test_cache_keeps_its_layout_across_writes_that_keep_the_vectors():
    from clip_filter.collections.store import Change

    cache, calls = MapCache(), []
    ids, vectors = data(5)

    def compute(version):
        def run():
            calls.append(version)
            return version, compute_layout(ids, vectors)

        return run

    layout = cache.get(1, 3, compute(3))
    cache.apply(Change(1, 4))  # a description or metadata PATCH: same vectors
    assert cache.get_or_stale(1, 4, compute(4)) == (layout, False) and calls == [3]
    cache.apply(Change(1, 5, added_ids=[9], added_vectors=[vectors[0]], added_kinds=["text"]))
    stale, is_stale = cache.get_or_stale(1, 5, compute(5))
    assert stale is layout and is_stale  # the previous layout, while the new one is computed
    cache.close()


def test_cache_is_bounded_least_recently_used_first():
    cache, calls = MapCache(max_entries=2), []
    ids, vectors = data(5)

    def compute(key):
        def run():
            calls.append(key)
            return 1, compute_layout(ids, vectors)

        return run

    cache.get(1, 1, compute(1))
    cache.get(2, 1, compute(2))
    cache.get(1, 1, compute(1))  # 1 is now the most recently used
    cache.get(3, 1, compute(3))  # evicts 2
    cache.get(1, 1, compute(1))
    cache.get(2, 1, compute(2))
    assert calls == [1, 2, 3, 2]
