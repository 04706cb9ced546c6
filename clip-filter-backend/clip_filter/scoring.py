"""The maths the API reports, on float32 NumPy arrays. No torch, no web.

Embeddings arriving here are already L2-normalised, so a dot product is the cosine.
"""

from __future__ import annotations

import numpy as np


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; an all-zero row stays zero instead of becoming NaN."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


def cosine_matrix(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """(n_images, n_texts) cosine similarities, clipped to [-1, 1] against float rounding."""
    cos = np.asarray(image_embeddings, np.float32) @ np.asarray(text_embeddings, np.float32).T
    return np.clip(cos, -1.0, 1.0)


def softmax_probabilities(cosines: np.ndarray, logit_scale: float) -> np.ndarray:
    """Per-image softmax over captions of `logit_scale * cosine`, as CLIP's zero-shot classifier.

    `logit_scale` is the model's own `logit_scale.exp()` (100 for OpenAI's weights, 1/0.07 for a
    freshly initialised model); computed in float64 with the max subtracted so it never overflows.
    """
    logits = np.asarray(cosines, np.float64) * float(logit_scale)
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=-1, keepdims=True)


def best_indices(cosines: np.ndarray) -> np.ndarray:
    """Index of the best caption per image. Ties go to the lowest caption index (np.argmax's rule)."""
    return np.argmax(np.asarray(cosines), axis=-1)


def clip_score(cosine: np.ndarray | float) -> np.ndarray | float:
    """CLIPScore (Hessel et al., 2021): 2.5 * max(cosine, 0)."""
    return 2.5 * np.maximum(cosine, 0.0)
