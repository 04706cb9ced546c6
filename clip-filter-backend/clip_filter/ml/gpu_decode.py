"""Optional GPU JPEG decoding (CLIP_FILTER_GPU_JPEG): nvJPEG through torchvision, then the model's geometry on the GPU.

For a CUDA model whose CPU cores cannot keep up with decoding (a GPU is tens of times faster than the
CPU path's decode + resize), JPEG request images are decoded on the GPU in one batched call
(`torchvision.io.decode_jpeg(list, device="cuda")`), then resized (bicubic, antialiased) and centre-cropped
there with torchvision's tensor functions using the same output size rule and crop box as the CPU path
(ml/pixels.py `PixelPlan`). The pixels stay on the GPU: the batcher stacks and normalises them there.

The same checks as the CPU path come first (ml/decode_pool.py): base64, header, byte and pixel limits, the
request pixel budget (a GPU JPEG is counted at its full size: nvJPEG has no reduced-scale decode) and the
process-wide decode admission. Everything else goes through the CPU path image by image: other formats, a
JPEG with an EXIF orientation (nvJPEG does not apply it), and a JPEG nvJPEG refuses (CMYK, corrupt data:
the CPU decoder then gives the usual 4xx error).

Pixels differ slightly from the CPU path: nvJPEG's IDCT and chroma upsampling are not libjpeg's, the CPU
path decodes large JPEGs at reduced scale (Image.draft) where the GPU decodes at full size, and
torchvision's tensor bicubic antialias filter is close to Pillow's but not identical (`geometry_on_tensor`;
docs/benchmarks-pipeline.md "GPU" gives the measured differences). Off by default.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np
import torch
from PIL import Image

from clip_filter.core.errors import ClipFilterError
from clip_filter.image_base64 import base64_image_bytes
from clip_filter.images import ImageHeader
from clip_filter.ml.decode_pool import DecodePipeline
from clip_filter.ml.pixels import PixelPlan, decode_to_pixels, probe

EXIF_ORIENTATION = 0x0112


class GpuJpegUnavailableError(Exception):
    """Why GPU JPEG decoding cannot be used on this machine (a startup refusal)."""


def check_gpu_jpeg(device: torch.device) -> None:
    """Refuse CLIP_FILTER_GPU_JPEG unless the model's device is CUDA and torchvision decodes JPEG on it."""
    if device.type != "cuda":
        raise GpuJpegUnavailableError(f"the model runs on {device}, and GPU JPEG decoding needs a CUDA device")
    try:
        from torchvision.io import ImageReadMode, decode_jpeg

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision >= 0.29 marks its image decoders deprecated
            decoded = decode_jpeg([_tiny_jpeg()], mode=ImageReadMode.RGB, device=device)
        torch.cuda.synchronize(device)
        if decoded[0].device.type != "cuda":
            raise GpuJpegUnavailableError("torchvision decoded the JPEG on the CPU")
    except GpuJpegUnavailableError:
        raise
    except Exception as exc:  # torchvision without nvJPEG raises RuntimeError or friends
        raise GpuJpegUnavailableError(f"torchvision cannot decode JPEG on {device}: {exc}") from exc


def _tiny_jpeg() -> torch.Tensor:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 90)).save(buffer, "JPEG")
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def geometry_on_tensor(image: torch.Tensor, plan: PixelPlan) -> torch.Tensor:
    """(3, H, W) uint8 on any device -> the plan's resize + centre crop, (3, h, w) uint8 on the same device.

    The output size and crop box are PixelPlan's (torchvision's rules, as on the CPU path); the resize is
    torchvision's tensor bicubic with antialiasing, which approximates Pillow's filter (not bit-exact)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    height, width = int(image.shape[-2]), int(image.shape[-1])
    new_w, new_h = plan.output_size(width, height)
    if (new_w, new_h) != (width, height):
        mode = {
            Image.Resampling.BICUBIC: InterpolationMode.BICUBIC,
            Image.Resampling.BILINEAR: InterpolationMode.BILINEAR,
        }
        interpolation = mode.get(Image.Resampling(plan.resample), InterpolationMode.BICUBIC)
        image = TF.resize(image, [new_h, new_w], interpolation=interpolation, antialias=True)
    return TF.center_crop(image, list(plan.crop)).contiguous()


def _oriented(data: bytes) -> bool:
    """Whether the JPEG carries an EXIF orientation other than 'normal' (header only)."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            return int(opened.getexif().get(EXIF_ORIENTATION, 1)) != 1
    except Exception:  # noqa: BLE001 - unreadable EXIF: let the CPU path decide
        return True


class _Slot:
    def __init__(self) -> None:
        self.data: bytes | None = None
        self.header: ImageHeader | None = None
        self.error: ClipFilterError | None = None
        self.on_gpu = False

    @property
    def pixels(self) -> int:
        if self.header is None:
            return 0
        width, height = self.header.size if self.on_gpu else self.header.decoded_size
        return width * height


class GpuJpegDecoder:
    """The GPU variant of DecodePipeline.prepare, sharing its limits, budget and admission."""

    def __init__(self, pipeline: DecodePipeline, device: torch.device, threads: Executor) -> None:
        self.pipeline = pipeline
        self.device = device
        self._threads = threads
        self.decoded_on_gpu = 0
        self.fell_back = 0

    def _check_all(self, items: Sequence[bytes | str], plan: PixelPlan) -> list[_Slot]:
        slots = []
        for item in items:
            slot = _Slot()
            try:
                slot.data = base64_image_bytes(item, self.pipeline.limits) if isinstance(item, str) else item
                slot.header = probe(slot.data, self.pipeline.limits, plan)
                slot.on_gpu = slot.header.mimetype == "image/jpeg" and not _oriented(slot.data)
            except ClipFilterError as exc:
                slot.error = exc
            slots.append(slot)
        return slots

    async def prepare(self, items: Sequence[bytes | str], plan: PixelPlan) -> list[Any]:
        """Like DecodePipeline.prepare: model pixels per slot (CUDA tensors for GPU-decoded JPEGs, NumPy
        arrays for the rest) or an error in place; 413/429 for the whole request before decoding."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        slots = await loop.run_in_executor(self._threads, self._check_all, items, plan)
        needed = sum(slot.pixels for slot in slots)
        self.pipeline.admit(needed)  # the same budget and admission as the CPU path
        try:
            return await loop.run_in_executor(self._threads, self._decode_all, slots, plan)
        finally:
            self.pipeline.admission.release(needed)

    def _decode_all(self, slots: list[_Slot], plan: PixelPlan) -> list[Any]:
        """On a decode thread: the GPU JPEGs in one nvJPEG call, the rest (and refused JPEGs) on the CPU."""
        out: list[Any] = [slot.error for slot in slots]
        gpu = [i for i, slot in enumerate(slots) if slot.error is None and slot.on_gpu]
        if gpu:
            from torchvision.io import ImageReadMode, decode_jpeg

            inputs = [torch.frombuffer(bytearray(slots[i].data or b""), dtype=torch.uint8) for i in gpu]
            try:
                with warnings.catch_warnings(), torch.inference_mode():
                    warnings.simplefilter("ignore")
                    decoded = decode_jpeg(inputs, mode=ImageReadMode.RGB, device=self.device)
                    for i, image in zip(gpu, decoded, strict=True):
                        out[i] = geometry_on_tensor(image, plan)
                self.decoded_on_gpu += len(gpu)
            except Exception:  # noqa: BLE001 - nvJPEG refused one of them: each goes through the CPU decoder
                for i in gpu:
                    slots[i].on_gpu = False
                self.fell_back += len(gpu)
        for i, slot in enumerate(slots):
            if slot.error is None and not slot.on_gpu:
                assert slot.data is not None  # _check_all: an item without an error has its bytes
                try:
                    out[i] = decode_to_pixels(slot.data, self.pipeline.limits, plan)
                except ClipFilterError as exc:
                    out[i] = exc
        return out


def as_pixels(result: Any) -> torch.Tensor:
    """A decode result (NumPy from the CPU path, a tensor from the GPU path) as a (3, H, W) uint8 tensor."""
    return result if isinstance(result, torch.Tensor) else torch.from_numpy(np.asarray(result))
