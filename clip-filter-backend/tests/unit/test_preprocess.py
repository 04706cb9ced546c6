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

from .image_factory import photo


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


# ---- crop-first resizing (CLIP_FILTER_CROP_FIRST_RESIZE, ml/pixels.py) ----------------------------------------


CROPPED_SIZES = [(640, 480), (480, 640), (1920, 1080), (1000, 750), (513, 300), (301, 1999)]


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_crop_first_stays_within_a_step_of_open_clip_on_a_few_values(mode):
    transform = open_clip_transform("ViT-B-32")
    pre = ImagePreprocessor(transform)
    for seed, size in enumerate(CROPPED_SIZES):
        image = photo(size, seed).convert(mode)
        exact = pre.image_to_tensor(image).numpy().astype(np.int16)
        fast = pre.image_to_tensor(image, crop_first=True).numpy().astype(np.int16)
        assert fast.shape == exact.shape == (3, 224, 224)
        difference = np.abs(fast - exact)
        # Pillow's float32 box moves a few fixed-point weights: a wrong box (a shift or a scale) changes most values
        assert difference.max() <= 2, (size, mode, int(difference.max()))
        assert (difference > 0).mean() < 0.005, (size, mode, float((difference > 0).mean()))


def test_crop_first_is_exact_where_the_box_is_exact_and_off_where_it_does_not_apply():
    pre = ImagePreprocessor(open_clip_transform("ViT-B-32"))
    # 3000x2000 -> 336x224, crop from x = 56: the box (500.0, 0.0, 2500.0, 2000.0) is exact in float32
    exact_box = photo((3000, 2000), 1)
    assert torch.equal(pre.image_to_tensor(exact_box, crop_first=True), pre.image_to_tensor(exact_box))
    # a side that grows (97 -> 224), a crop that pads (5x5), a square (nothing to crop), a side exactly 224,
    # and palette / one-bit images (resized with NEAREST by Pillow: left on the exact path)
    palette, one_bit = photo((640, 480), 3).convert("P"), photo((480, 640), 4).convert("1")
    for image in (*images(), photo((224, 600), 2), palette, one_bit):
        assert torch.equal(pre.image_to_tensor(image, crop_first=True), pre.image_to_tensor(image)), image.size


def test_crop_first_embeddings_match_the_exact_resize():
    torch.manual_seed(0)
    model, _, transform = open_clip.create_model_and_transforms("clip-filter-tiny", pretrained=None)
    model.eval()
    pre = ImagePreprocessor(transform)
    batch = [photo(size, seed) for seed, size in enumerate(CROPPED_SIZES)]

    def embed(crop_first: bool) -> torch.Tensor:
        pixels = torch.stack([pre.image_to_tensor(image, crop_first=crop_first) for image in batch])
        with torch.inference_mode():
            return torch.nn.functional.normalize(model.encode_image(pre.normalise_batch(pixels)), dim=-1)

    exact, fast = embed(False), embed(True)
    cosine = (exact * fast).sum(-1)
    assert float(cosine.min()) > 0.9999, cosine


def test_the_setting_reaches_the_encoder_and_the_decode_plan():
    from clip_filter.core.config import Settings
    from clip_filter.ml.factory import load_encoder

    base = {"CLIP_MODEL": "clip-filter-tiny", "CLIP_PRETRAINED": "random", "CLIP_PRECISION": "fp32"}
    image = photo((640, 480), 5)
    on = load_encoder(Settings(**base))
    off = load_encoder(Settings(**base, CLIP_FILTER_CROP_FIRST_RESIZE="false"))
    assert on.pixel_plan().crop_first and not off.pixel_plan().crop_first
    assert torch.equal(off.preprocess(image), off.preprocessor.image_to_tensor(image))  # open_clip's to the bit
    assert torch.equal(on.preprocess(image), on.preprocessor.image_to_tensor(image, crop_first=True))
    assert np.array_equal(on.pixel_plan().pixels(image), on.preprocess(image).numpy())  # requests = collections
