"""The GPU path on a real NVIDIA GPU: pinned, non-blocking staging, fp16 by default, prefetch on, GPU JPEG decoding.

Every test here needs CUDA; on a machine without it they are skipped (allowed in CI: CI has no GPU).
`bench/gpu_check.sh` runs this file on a GPU machine.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_filter.core.config import Settings
from clip_filter.ml.factory import load_encoder
from clip_filter.ml.gpu_decode import check_gpu_jpeg
from clip_filter.ml.service import READY, ModelService

from .image_factory import noise

pytestmark = [
    pytest.mark.may_skip(reason="needs an NVIDIA GPU (CUDA); bench/gpu_check.sh runs these on one"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to PyTorch on this machine"),
]


def tiny(**overrides) -> Settings:
    return Settings(
        **{"CLIP_MODEL": "clip-filter-tiny", "CLIP_PRETRAINED": "random", "CLIP_DEVICE": "cuda", **overrides}
    )


def pixels_of(encoder, count: int) -> list[torch.Tensor]:
    return [encoder.preprocess(noise((64 + 7 * i, 48 + 5 * i), i)) for i in range(count)]


def jpeg(size: tuple[int, int], seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    noise((size[0] // 8, size[1] // 8), seed).resize(size).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_auto_precision_is_fp16_on_cuda_and_staging_pins_and_copies_asynchronously():
    encoder = load_encoder(tiny(CLIP_BATCH_SIZE=4))
    assert encoder.info.dtype == "float16" and encoder.device.type == "cuda"
    pixels = pixels_of(encoder, 6)
    staged = encoder.stage_pixels(pixels)
    assert staged.host is not None and staged.host.is_pinned() and staged.ready is not None
    assert staged.tensor.device.type == "cuda" and staged.tensor.dtype == torch.float16
    staged.ready.synchronize()
    # Normalised on the GPU after the uint8 copy: the same float32 values as the CPU's normalisation.
    cpu_input = encoder.normalise(torch.stack(pixels))
    on_gpu = encoder.normalise(torch.stack(pixels).cuda()).cpu()
    assert torch.equal(on_gpu, cpu_input)
    assert torch.equal(staged.tensor.cpu(), cpu_input.half())


def test_fp16_embeddings_on_cuda_match_fp32_on_the_cpu():
    gpu = load_encoder(tiny(CLIP_BATCH_SIZE=4))  # chunks of 4: the second chunk is staged while the first runs
    cpu = load_encoder(tiny(CLIP_DEVICE="cpu", CLIP_PRECISION="fp32"))
    pixels = torch.stack(pixels_of(gpu, 10))
    got, want = gpu.encode_pixels(pixels), cpu.encode_pixels(pixels)
    cosines = (got * want).sum(axis=1)
    assert got.dtype == np.float32 and cosines.min() > 0.995, cosines
    assert np.array_equal(gpu.encode_pixels(pixels), got)  # deterministic run to run


def test_the_service_prefetches_on_cuda_by_default_and_serves_the_same_embeddings():
    service = ModelService(tiny(CLIP_BATCH_SIZE=8))
    service.start(wait=True)
    try:
        assert service.state == READY and service.batcher is not None and service.batcher.prefetch is True
        encoder = service.encoder
        pixels = pixels_of(encoder, 8)
        got = asyncio.run(service.embed_images([p.numpy() for p in pixels]))
        assert np.array_equal(got, encoder.run_staged(encoder.stage_pixels(pixels)))
    finally:
        service.close()


def test_gpu_jpeg_decoding_is_accepted_on_cuda_and_close_to_the_cpu_path():
    check_gpu_jpeg(torch.device("cuda"))
    service = ModelService(tiny(CLIP_FILTER_GPU_JPEG="1", CLIP_FILTER_JPEG_DRAFT="0"))
    service.start(wait=True)
    try:
        assert service.state == READY and service.gpu_decoder is not None
        png = io.BytesIO()
        noise((90, 70)).save(png, "PNG")
        items = [jpeg((640, 480)), jpeg((1920, 1080), 1), png.getvalue(), b"not an image"]
        got = asyncio.run(service.decode_images(items))
        assert [type(r).__name__ for r in got[:3]] == ["Tensor", "Tensor", "ndarray"]
        assert got[0].device.type == "cuda" and got[3].code == "not_an_image"
        assert service.gpu_decoder.decoded_on_gpu == 2
        cpu_service = ModelService(tiny(CLIP_DEVICE="cpu", CLIP_PRECISION="fp32", CLIP_FILTER_JPEG_DRAFT="0"))
        cpu_service.start(wait=True)
        try:
            want = asyncio.run(cpu_service.decode_images(items[:2]))
        finally:
            cpu_service.close()
        for gpu_pixels, cpu_pixels in zip(got[:2], want, strict=True):
            difference = np.abs(gpu_pixels.cpu().numpy().astype(np.int16) - cpu_pixels.astype(np.int16))
            print(f"GPU vs CPU JPEG pixels: mean |d| {difference.mean():.3f}, max {difference.max()}")
            assert difference.mean() < 2.0  # nvJPEG's IDCT/upsampling differ from libjpeg's slightly
        vectors = asyncio.run(service.embed_images(got[:3]))  # GPU tensors and CPU pixels in one batch
        assert vectors.shape == (3, service.info.dim)
    finally:
        service.close()


def test_staged_input_of_gpu_decoded_pixels_stays_on_the_device():
    encoder = load_encoder(tiny())
    pixels = [p.cuda() for p in pixels_of(encoder, 3)]
    staged = encoder.stage_pixels(pixels)
    assert staged.host is None and staged.tensor.device.type == "cuda"
    with torch.inference_mode():
        reference = F.normalize(encoder.model.encode_image(staged.tensor).float(), dim=-1).cpu().numpy()
    assert np.array_equal(encoder.run_staged(staged), reference)
