"""The test-only instant encoder (CLIP_PRETRAINED=instant-test): never by accident, flagged, real preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clip_filter.core.config import Settings
from clip_filter.ml.factory import ModelLoadError, load_encoder


def instant(**overrides) -> Settings:
    return Settings(**{"CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": "instant-test", **overrides})


def test_refused_unless_explicitly_allowed():
    with pytest.raises(ModelLoadError) as caught:
        load_encoder(instant())
    assert "CLIP_FILTER_ALLOW_TEST_ENCODER=1" in caught.value.fix
    with pytest.raises(ModelLoadError):
        load_encoder(instant(CLIP_FILTER_ALLOW_TEST_ENCODER="0"))


def test_flagged_and_returns_fixed_normalised_vectors_after_real_preprocessing():
    encoder = load_encoder(instant(CLIP_FILTER_ALLOW_TEST_ENCODER="1"))
    assert encoder.info.weights == "instant-test" and encoder.info.pretrained == "instant-test"
    assert encoder.info.dim == 512 and encoder.info.identity == "ViT-B-32/instant-test"
    plan = encoder.preprocessor.plan()
    assert plan is not None and plan.crop == (224, 224)  # ViT-B-32's own geometry
    pixels = torch.zeros((3, 3, 224, 224), dtype=torch.uint8)
    images = encoder.encode_pixels(pixels)
    assert images.shape == (3, 512) and np.allclose(np.linalg.norm(images, axis=1), 1.0)
    assert np.array_equal(images[0], images[2])
    texts = encoder.encode_texts(["a cat", "word " * 100])
    assert texts.embeddings.shape == (2, 512) and texts.truncated == [False, True]  # really tokenized
    assert not np.allclose(texts.embeddings[0], images[0])


def test_honours_torch_threads():
    """CLIP_TORCH_THREADS applies to the instant encoder too (its normalisation is torch work); in a fresh
    process, since the setting is process-wide."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from clip_filter.core.config import Settings\n"
        "from clip_filter.ml.factory import load_encoder\n"
        "load_encoder(Settings(CLIP_MODEL='ViT-B-32', CLIP_PRETRAINED='instant-test', "
        "CLIP_FILTER_ALLOW_TEST_ENCODER='1', CLIP_TORCH_THREADS='1'))\n"
        "print(torch.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "1"
