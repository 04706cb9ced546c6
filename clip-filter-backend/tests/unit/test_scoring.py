"""scoring.py against an independent NumPy/SciPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.special import softmax as scipy_softmax

from clip_filter.scoring import best_indices, clip_score, cosine_matrix, l2_normalise, softmax_probabilities


def reference_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty((len(a), len(b)))
    for i, u in enumerate(a.astype(np.float64)):
        for j, v in enumerate(b.astype(np.float64)):
            out[i, j] = u.dot(v) / (np.sqrt(u.dot(u)) * np.sqrt(v.dot(v)))
    return out


finite = st.floats(-10, 10, allow_nan=False, width=32).filter(lambda x: abs(x) > 1e-3)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, st.tuples(st.integers(1, 5), st.just(8)), elements=finite),
    arrays(np.float32, st.tuples(st.integers(1, 6), st.just(8)), elements=finite),
)
def test_cosine_matches_reference(images, texts):
    got = cosine_matrix(l2_normalise(images), l2_normalise(texts))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, reference_cosine(images, texts), atol=1e-5)
    assert np.all(np.abs(got) <= 1.0)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 7)), elements=st.floats(-1, 1)),
    st.floats(1.0, 100.0),
)
def test_softmax_matches_scipy_and_sums_to_one(cosines, scale):
    got = softmax_probabilities(cosines, scale)
    np.testing.assert_allclose(got, scipy_softmax(scale * cosines, axis=-1), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.sum(axis=-1), 1.0, atol=1e-12)


def test_softmax_never_overflows_at_large_scale():
    got = softmax_probabilities(np.array([[1.0, -1.0, 0.999]]), 1e4)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got.sum(), 1.0)


def test_softmax_uses_the_given_scale_not_100():
    cos = np.array([[0.30, 0.25]])
    at_model_scale = softmax_probabilities(cos, 1 / 0.07)
    expected = np.exp(0.30 / 0.07) / (np.exp(0.30 / 0.07) + np.exp(0.25 / 0.07))
    assert at_model_scale[0, 0] == pytest.approx(expected, rel=1e-12)
    assert softmax_probabilities(cos, 100.0)[0, 0] != pytest.approx(expected)


def test_ties_go_to_the_lowest_caption_index():
    cos = np.array([[0.2, 0.5, 0.5, 0.1], [0.3, 0.3, 0.3, 0.3], [0.1, 0.0, 0.4, 0.4]], dtype=np.float32)
    assert best_indices(cos).tolist() == [1, 0, 2]


def test_clip_score_is_2_5_times_positive_cosine():
    assert clip_score(0.3) == pytest.approx(0.75)
    assert clip_score(-0.2) == 0.0
    np.testing.assert_allclose(clip_score(np.array([0.0, 0.4, 1.0])), [0.0, 1.0, 2.5])


def test_l2_normalise_keeps_zero_rows_finite():
    got = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(got, [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)
