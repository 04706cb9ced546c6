"""Untrusted image bytes -> the model's uint8 input pixels in one step, without torch.

This is the part of preprocessing that runs per image (decode, resize, centre crop), written with
Pillow and NumPy only so that decode worker processes (ml/decode_pool.py) need not import torch
(importing torchvision costs a process about 800 MB). Without crop-first resizing (below) the geometry
reproduces torchvision's `Resize(size, interpolation)` + `CenterCrop(size)` on PIL images exactly (same
output size rule, same `Image.resize` call, same crop box and zero padding); tests/unit/test_preprocess.py
checks it bit for bit against open_clip's own transform. Normalisation stays per batch on the model thread.

Reduced-scale decoding (images.DecodeTarget): the decode may stop at twice the resize target on each
side, so the exact resize that follows still sees at least 2 source pixels per output pixel.

Crop-first resizing (`crop_first`, CLIP_FILTER_CROP_FIRST_RESIZE, on by default): when both sides shrink and
the centre crop drops part of the resized image, only the crop's source box is resized (`Image.resize(box=)`),
the same filter at the same scale, so 25-45 % less resampling for a 4:3 or 16:9 photo. Not bit-identical:
Pillow takes the box as 32-bit floats, which moves a few filter weights by one fixed-point step, so about
0.01 % of the values differ by 1/255 (at most 2/255 seen) and ViT-B-32 embeddings keep a cosine above
0.99999 (bench/draft_fidelity.py). Off, the geometry is open_clip's to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from clip_filter.images import DecodeTarget, ImageHeader, ImageLimits, decode_image, probe_image

# How far above the resize target a reduced decode stops (each side): >= 2 keeps the bicubic
# resize's antialiasing meaningful (Pillow's own `reducing_gap` advice).
REDUCE_GAP = 2


@dataclass(frozen=True)
class PixelPlan:
    """torchvision Resize + CenterCrop on PIL, as data (picklable, sent once to each worker process)."""

    resize: tuple[int, ...]  # (short side,) or (height, width)
    max_size: int | None
    resample: int  # a PIL resampling filter
    crop: tuple[int, int]  # (height, width)
    jpeg_draft: bool = False
    reduce: bool = False
    crop_first: bool = False  # resize only what the centre crop keeps (module docstring)

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize: torchvision's _compute_resized_output_size."""
        if len(self.resize) == 2:
            return self.resize[1], self.resize[0]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize[0], int(self.resize[0] * long / short)
        if self.max_size is not None and new_long > self.max_size:
            new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
        return (new_short, new_long) if width <= height else (new_long, new_short)

    @property
    def target(self) -> DecodeTarget | None:
        """The smallest decode that keeps this plan exact enough, or None for a full decode."""
        if not (self.jpeg_draft or self.reduce):
            return None
        if len(self.resize) == 2:
            min_w, min_h = self.resize[1], self.resize[0]
        else:
            min_w = min_h = self.resize[0]
        return DecodeTarget(REDUCE_GAP * min_w, REDUCE_GAP * min_h, jpeg_draft=self.jpeg_draft, reduce=self.reduce)

    def geometry(self, image: Image.Image) -> Image.Image:
        """Resize then centre-crop an RGB image, as torchvision does for PIL input (exactly, unless crop_first)."""
        width, height = image.size
        new_w, new_h = self.output_size(width, height)
        # Not for "1" and "P": Pillow resizes them with NEAREST, where a moved centre picks another pixel.
        if self.crop_first and image.mode not in ("1", "P"):
            box = crop_source_box((width, height), (new_w, new_h), self.crop)
            if box is not None:
                crop_h, crop_w = self.crop
                return image.resize((crop_w, crop_h), self.resample, box=box)
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), self.resample)
        return center_crop(image, self.crop)

    def pixels(self, image: Image.Image) -> np.ndarray:
        """An image -> (3, H, W) uint8, C-contiguous; converted to RGB after the geometry, as open_clip does."""
        image = self.geometry(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))


def crop_source_box(
    size: tuple[int, int], resized: tuple[int, int], crop: tuple[int, int]
) -> tuple[float, float, float, float] | None:
    """Where in the source image the centre crop of its resize lies, as Image.resize's `box`; None where
    crop-first does not apply: a side that grows (there a boxed resize was measured up to 21/255 off the exact
    one), a crop that pads, or nothing to crop."""
    (width, height), (new_w, new_h), (crop_h, crop_w) = size, resized, crop
    if new_w > width or new_h > height or crop_w > new_w or crop_h > new_h or (crop_w, crop_h) == (new_w, new_h):
        return None
    top = round((new_h - crop_h) / 2.0)  # center_crop's box, in resized pixels
    left = round((new_w - crop_w) / 2.0)
    scale_x, scale_y = width / new_w, height / new_h
    return (left * scale_x, top * scale_y, (left + crop_w) * scale_x, (top + crop_h) * scale_y)


def center_crop(image: Image.Image, crop: tuple[int, int]) -> Image.Image:
    """torchvision F.center_crop for PIL: zero padding when the crop is larger, then the rounded box."""
    crop_h, crop_w = crop
    width, height = image.size
    if crop_w > width or crop_h > height:
        left = (crop_w - width) // 2 if crop_w > width else 0
        top = (crop_h - height) // 2 if crop_h > height else 0
        right = (crop_w - width + 1) // 2 if crop_w > width else 0
        bottom = (crop_h - height + 1) // 2 if crop_h > height else 0
        padded = Image.new(image.mode, (width + left + right, height + top + bottom), 0)
        padded.paste(image, (left, top))
        image, (width, height) = padded, padded.size
        if (crop_w, crop_h) == (width, height):
            return image
    top = round((height - crop_h) / 2.0)  # torchvision: int(round(...)), the same for a float
    left = round((width - crop_w) / 2.0)
    return image.crop((left, top, left + crop_w, top + crop_h))


def probe(data: bytes, limits: ImageLimits, plan: PixelPlan | None) -> ImageHeader:
    return probe_image(data, limits, plan.target if plan is not None else None)


def decode_to_pixels(data: bytes, limits: ImageLimits, plan: PixelPlan) -> np.ndarray:
    """Bytes -> (3, H, W) uint8 model input; the full-size decode is dropped as soon as it is resized."""
    return plan.pixels(decode_image(data, limits, plan.target))
