"""The loading path: random mode, local checkpoints with sha256, and clear failures (tiny architecture)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clip_filter.collections.embedder import model_key
from clip_filter.core.config import Settings
from clip_filter.ml.factory import ModelLoadError, load_encoder, resolve_weights_source


def tiny_settings(**overrides) -> Settings:
    values = {
        "CLIP_MODEL": "clip-filter-tiny",
        "CLIP_PRETRAINED": "random",
        "CLIP_DEVICE": "cpu",
        "CLIP_PRECISION": "fp32",
        **overrides,
    }
    return Settings(**values)


def sample_images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)) for _ in range(3)]


def test_random_mode_is_deterministic_and_flagged():
    first, second = load_encoder(tiny_settings()), load_encoder(tiny_settings())
    assert first.info.weights == "random" and first.info.pretrained == "random"
    assert first.info.dim == 64 and first.info.context_length == 77
    assert first.info.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # open_clip's init, not a hard-coded 100
    np.testing.assert_array_equal(first.encode_images(sample_images()), second.encode_images(sample_images()))
    texts = ["a dog", "a cat"]
    np.testing.assert_array_equal(first.encode_texts(texts).embeddings, second.encode_texts(texts).embeddings)


def test_another_random_seed_is_another_model():
    default, other = load_encoder(tiny_settings()), load_encoder(tiny_settings(CLIP_RANDOM_SEED=3))
    assert other.info.weights == "random" and other.info.pretrained == "random-seed-3"
    assert model_key(other.info) != model_key(default.info)  # a collection will not mix their embeddings
    assert not np.allclose(other.encode_images(sample_images()), default.encode_images(sample_images()))


def test_embeddings_are_unit_float32():
    encoder = load_encoder(tiny_settings())
    images = encoder.encode_images(sample_images())
    texts = encoder.encode_texts(["x", "a much longer caption about things"]).embeddings
    for matrix in (images, texts):
        assert matrix.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, str, object]:
    torch.manual_seed(123)  # different weights from random mode's seed 0
    import open_clip

    model = open_clip.create_model("clip-filter-tiny", pretrained=None)
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), model


def test_local_checkpoint_loads_its_weights_and_sha256_is_checked(checkpoint):
    path, digest, model = checkpoint
    encoder = load_encoder(tiny_settings(CLIP_PRETRAINED=str(path), CLIP_CHECKPOINT_SHA256=digest.upper()))
    assert encoder.info.weights == "checkpoint" and encoder.info.pretrained == str(path)
    assert torch.equal(encoder.model.visual.conv1.weight, model.visual.conv1.weight)
    random_encoder = load_encoder(tiny_settings())
    assert not np.allclose(encoder.encode_texts(["a"]).embeddings, random_encoder.encode_texts(["a"]).embeddings)


def test_checksum_mismatch_is_refused_with_a_fix(checkpoint):
    path, digest, _ = checkpoint
    with pytest.raises(ModelLoadError) as failure:
        load_encoder(tiny_settings(CLIP_PRETRAINED=str(path), CLIP_CHECKPOINT_SHA256="0" * 64))
    assert digest in failure.value.reason and "CLIP_CHECKPOINT_SHA256" in failure.value.fix


def test_missing_checkpoint_and_unknown_tag_and_model(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_encoder(tiny_settings(CLIP_PRETRAINED=str(tmp_path / "nope.pt")))
    with pytest.raises(ModelLoadError) as unknown_tag:
        resolve_weights_source(tiny_settings(CLIP_MODEL="ViT-B-32", CLIP_PRETRAINED="not-a-tag"))
    assert "openai" in unknown_tag.value.fix
    with pytest.raises(ModelLoadError, match="Unknown model"):
        load_encoder(tiny_settings(CLIP_MODEL="ViT-Nope"))


def test_corrupt_checkpoint_fails_cleanly(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelLoadError, match="Could not load"):
        load_encoder(tiny_settings(CLIP_PRETRAINED=str(bad)))


def test_pretrained_tag_without_cache_or_network_explains_the_fix(tmp_path):
    with pytest.raises(ModelLoadError) as failure:
        load_encoder(tiny_settings(CLIP_MODEL="ViT-B-32", CLIP_PRETRAINED="openai", CLIP_CACHE_DIR=str(tmp_path)))
    assert "CLIP_CACHE_DIR" in failure.value.fix and "random" in failure.value.fix
