"""The split preprocessing (uint8 per image, normalised per batch) equals open_clip's transform exactly."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import clip_filter.ml.factory  # noqa: F401 - registers the clip-filter-tiny config
from clip_filter.ml.preprocess import ImagePreprocessor


def open_clip_transform(name: str):
    return open_clip.create_model_and_transforms(name, pretrained=None)[2]


def images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    out = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in [(320, 320), (97, 513), (600, 41), (224, 224), (5, 5)]
    ]
    out.append(Image.fromarray(rng.integers(0, 256, (120, 80), dtype=np.uint8)))  # grayscale: converted to RGB
    out.append(Image.fromarray(rng.integers(0, 256, (64, 90, 4), dtype=np.uint8), "RGBA"))
    return out


@pytest.mark.parametrize("name", ["clip-filter-tiny", "ViT-B-32"])
def test_split_path_is_bit_identical_to_open_clip(name):
    transform = open_clip_transform(name)
    pre = ImagePreprocessor(transform)
    assert pre.split, "open_clip's CLIP transform should take the split path"
    for image in images():
        queued = pre.image_to_tensor(image)
        assert queued.dtype == torch.uint8
        ours = pre.normalise_batch(torch.stack([queued, queued]))
        reference = transform(image)
        assert ours.dtype == torch.float32 and ours.shape[1:] == reference.shape
        assert torch.equal(ours[0], reference), f"max diff {(ours[0] - reference).abs().max()}"


def test_other_transforms_are_used_unchanged():
    transform = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor(), T.Lambda(lambda x: x * 2)])
    pre = ImagePreprocessor(transform)
    assert not pre.split
    image = Image.new("RGB", (40, 50), (10, 200, 30))
    out = pre.image_to_tensor(image)
    assert out.dtype == torch.float32
    assert torch.equal(pre.normalise_batch(out[None]), transform(image)[None])
