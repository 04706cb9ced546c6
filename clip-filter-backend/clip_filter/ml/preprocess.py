"""Image preprocessing split in two: per-image geometry on worker threads, per-batch normalisation.

open_clip's transform for CLIP models is Resize -> CenterCrop -> convert to RGB -> ToTensor (float,
/255) -> Normalize(mean, std), all per image. The last two turn 150k uint8 pixels into float32 one
image at a time on the request threads, which competed with the model for the CPU (about a third of
the preprocessing time in a profile of 16 concurrent clients). Here the worker threads stop at a uint8
tensor (4x smaller in the queue) and the model thread normalises the whole batch at once, with the same
float32 operations in the same order, so the result is bit-identical to open_clip's transform (a unit
test checks it). Any transform that does not have that shape is used unchanged.

The per-image geometry itself is ml/pixels.py's PixelPlan (Pillow only, so decode worker processes
can run it without torch); `plan()` describes this transform's geometry as one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms.functional import pil_modes_mapping

from clip_filter.ml.pixels import PixelPlan


class ImagePreprocessor:
    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform
        self._geometry, self._mean, self._std = _split(transform)
        self._plan = _plan_of(self._geometry) if self._geometry is not None else None
        self._crop_first_plan = replace(self._plan, crop_first=True) if self._plan is not None else None
        self._device_stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def split(self) -> bool:
        """Whether images go through the fast split path (uint8 per image, normalised per batch)."""
        return self._geometry is not None

    def plan(self, jpeg_draft: bool = False, reduce: bool = False, crop_first: bool = False) -> PixelPlan | None:
        """The geometry as a PixelPlan (with the given reduced-decoding and crop-first options), or None when
        the transform is not the usual Resize + CenterCrop (such images go through image_to_tensor)."""
        if self._plan is None:
            return None
        return replace(self._plan, jpeg_draft=jpeg_draft, reduce=reduce, crop_first=crop_first)

    def image_to_tensor(self, image: Image.Image, crop_first: bool = False) -> torch.Tensor:
        """One image -> (3, H, W) tensor: uint8 on the split path, else the transform's float32 output.

        `crop_first`: the plan's crop-first resize (ml/pixels.py), as the decode path uses it."""
        if self._geometry is None:
            return self.transform(image)
        if self._plan is not None:
            plan = self._crop_first_plan if crop_first and self._crop_first_plan is not None else self._plan
            return torch.from_numpy(plan.pixels(image))  # geometry in the image's own mode, then RGB
        for step in self._geometry:
            image = step(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)  # a writable copy, as ToTensor makes

    def normalise_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) from image_to_tensor -> float32 model input, as open_clip's transform makes it."""
        if pixels.dtype != torch.uint8:
            return pixels  # already normalised by the transform itself
        # uint8 pixels come only from the split transform (image_to_tensor, plan()), which has mean and std.
        assert self._mean is not None and self._std is not None
        # Exactly ToTensor's `.float().div(255)` then Normalize's `.sub_(mean).div_(std)`.
        mean, std, scale = self._stats_on(pixels.device)  # CUDA: normalised on the GPU, after the uint8 copy
        return pixels.contiguous().float().div(scale).sub_(mean).div_(std)

    def _stats_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int | torch.Tensor]:
        """mean, std and the 255 divisor for `device`, copied there once (the CPU's are the originals).

        On CUDA the divisor is a tensor on the device: divided by a Python scalar, CUDA multiplies by its
        reciprocal (one bit less exact); divided by a tensor it divides, as the CPU does, so the values match."""
        assert self._mean is not None and self._std is not None
        if device.type == "cpu":
            return self._mean, self._std, 255
        stats = self._device_stats.get(device)
        if stats is None:
            stats = (self._mean.to(device), self._std.to(device), torch.tensor(255.0, device=device))
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the copies are complete before any stream reads them
            self._device_stats[device] = stats
        return stats


def _split(transform: Any) -> tuple[list[Any] | None, torch.Tensor | None, torch.Tensor | None]:
    """(geometry steps, mean, std) when the transform is [geometry..., to RGB, ToTensor, Normalize]."""
    steps = list(getattr(transform, "transforms", []))
    if len(steps) < 3 or not isinstance(steps[-1], T.Normalize) or not isinstance(steps[-2], T.ToTensor):
        return None, None, None
    geometry = steps[:-2]
    if geometry and _is_rgb_conversion(geometry[-1]):
        geometry = geometry[:-1]
    if not all(isinstance(step, (T.Resize, T.CenterCrop)) for step in geometry):
        return None, None, None
    normalize: T.Normalize = steps[-1]
    mean = torch.as_tensor(normalize.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(normalize.std, dtype=torch.float32).view(-1, 1, 1)
    return geometry, mean, std


def _is_rgb_conversion(step: Any) -> bool:
    name = getattr(step, "__name__", type(step).__name__)
    return name in ("MaybeConvertMode", "_convert_to_rgb") and getattr(step, "mode", "RGB") == "RGB"


def _plan_of(geometry: list[Any]) -> PixelPlan | None:
    """[Resize, CenterCrop] as a PixelPlan; None for any other geometry (run by torchvision's steps)."""
    if len(geometry) != 2 or not isinstance(geometry[0], T.Resize) or not isinstance(geometry[1], T.CenterCrop):
        return None
    resize, crop = geometry
    size = (resize.size,) if isinstance(resize.size, int) else tuple(int(v) for v in resize.size)
    if len(size) not in (1, 2) or resize.interpolation not in pil_modes_mapping:
        return None
    crop_size = tuple(int(v) for v in crop.size)
    crop_hw = (crop_size[0], crop_size[0]) if len(crop_size) == 1 else (crop_size[0], crop_size[1])
    return PixelPlan(
        resize=size, max_size=resize.max_size, resample=int(pil_modes_mapping[resize.interpolation]), crop=crop_hw
    )
