"""The GPU path's device-agnostic parts, on the CPU: staged/prefetched batches give today's embeddings bit for bit,
the batcher's stage thread overlaps the model thread, a lone request never waits for the batch window, and
CLIP_FILTER_GPU_JPEG is refused clearly without a CUDA model. CUDA-only checks: tests/unit/test_gpu_cuda.py."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clip_filter.core.config import Settings
from clip_filter.ml import service as service_module
from clip_filter.ml.batcher import DynamicBatcher
from clip_filter.ml.factory import ModelLoadError, load_encoder
from clip_filter.ml.gpu_decode import GpuJpegUnavailableError, check_gpu_jpeg, geometry_on_tensor
from clip_filter.ml.service import FAILED, READY, ModelService

from .image_factory import noise


def tiny(**overrides) -> Settings:
    return Settings(
        **{"CLIP_MODEL": "clip-filter-tiny", "CLIP_PRETRAINED": "random", "CLIP_DEVICE": "cpu", **overrides}
    )


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(tiny(CLIP_BATCH_SIZE=3))


def pixels_of(encoder, count: int, seed: int = 0) -> torch.Tensor:
    return torch.stack([encoder.preprocess(noise((64 + 7 * i, 48 + 5 * i), seed + i)) for i in range(count)])


def reference_embeddings(encoder, pixels: torch.Tensor) -> np.ndarray:
    """The encoder path before staging existed: normalise, cast, forward, L2-normalise, chunk by chunk."""
    rows = []
    with torch.inference_mode():
        for start in range(0, len(pixels), encoder.batch_size):
            chunk = encoder.normalise(pixels[start : start + encoder.batch_size]).to(encoder.device, encoder.dtype)
            rows.append(F.normalize(encoder.model.encode_image(chunk).float(), dim=-1).cpu().numpy())
    return np.concatenate(rows)


def test_staged_chunks_give_the_same_embeddings_bit_for_bit(encoder):
    pixels = pixels_of(encoder, 7)  # chunks of 3, 3 and 1: each staged while the previous one runs
    assert np.array_equal(encoder.encode_pixels(pixels), reference_embeddings(encoder, pixels))
    staged = encoder.stage_pixels(list(pixels))  # a list of per-image tensors, as the batcher hands them over
    assert staged.ready is None and staged.host is None  # no stream, no pinned copy on the CPU
    assert staged.tensor.dtype == encoder.dtype and len(staged) == 7
    with torch.inference_mode():
        whole = F.normalize(encoder.model.encode_image(encoder.normalise(pixels).to(encoder.dtype)).float(), dim=-1)
    assert np.array_equal(encoder.run_staged(staged), whole.numpy())
    assert encoder.encode_pixels(pixels[:0]).shape == (0, encoder.info.dim)


def test_the_batcher_prepares_the_next_batch_while_the_model_runs_the_current_one():
    gate = threading.Event()
    prepared_on: list[tuple[str, list]] = []
    order: list[str] = []

    def prepare(payloads: list) -> list:
        prepared_on.append((threading.current_thread().name, list(payloads)))
        if payloads == [2]:
            gate.set()  # batch [2] is being prepared while batch [1] is still running (it waits for this)
        return [p * 10 for p in payloads]

    def run(prepared: list) -> list:
        order.append(threading.current_thread().name)
        if prepared == [10]:
            assert gate.wait(10), "the next batch was not prepared while this one ran"
        return [p + 1 for p in prepared]

    batcher = DynamicBatcher(
        {"image": run}, max_batch=1, max_wait_s=0.0, max_queue=10, prepare={"image": prepare}, prefetch=True
    )

    async def main():
        return await asyncio.gather(batcher.submit("image", [1]), batcher.submit("image", [2]))

    assert asyncio.run(asyncio.wait_for(main(), timeout=20)) == [[11], [21]]
    batcher.close()
    assert [name for name, _ in prepared_on] == ["clip-stage", "clip-stage"]
    assert order == ["clip-model", "clip-model"]


def test_without_prefetch_the_model_thread_prepares_and_a_failed_preparation_fails_only_its_batch():
    def prepare(payloads: list) -> list:
        if payloads == ["bad"]:
            raise ValueError("cannot stage")
        return [(threading.current_thread().name, p) for p in payloads]

    for prefetch in (False, True):
        batcher = DynamicBatcher(
            {"image": lambda staged: staged},
            max_batch=1,
            max_wait_s=0.0,
            max_queue=10,
            prepare={"image": prepare},
            prefetch=prefetch,
        )

        async def main(batcher=batcher):
            bad = await asyncio.gather(batcher.submit("image", ["bad"]), return_exceptions=True)
            return bad, await batcher.submit("image", ["ok"])

        bad, good = asyncio.run(asyncio.wait_for(main(), timeout=20))
        batcher.close()
        assert isinstance(bad[0], ValueError)
        assert good == [("clip-stage" if prefetch else "clip-model", "ok")]


@pytest.mark.parametrize("prefetch", ["on", "off"])
def test_the_service_gives_the_same_embeddings_with_and_without_prefetch(encoder, prefetch):
    service = ModelService(tiny(CLIP_BATCH_SIZE=3, CLIP_PREFETCH_BATCHES=prefetch))
    service.start(wait=True)
    try:
        assert service.state == READY and service.batcher is not None
        assert service.batcher.prefetch is (prefetch == "on")
        images = [noise((64 + 7 * i, 48 + 5 * i), i) for i in range(3)]  # one batch of 3
        got = asyncio.run(service.embed_images([service.encoder.preprocess(im).numpy() for im in images]))
        assert np.array_equal(got, reference_embeddings(encoder, pixels_of(encoder, 3)))
    finally:
        service.close()


def test_prefetch_is_off_on_the_cpu_by_default():
    service = ModelService(tiny())
    service.start(wait=True)
    try:
        assert service.batcher is not None and service.batcher.prefetch is False
    finally:
        service.close()


# ---- no batch window for a lone client ---------------------------------------------------------------
def test_a_lone_client_right_after_a_batch_does_not_wait_for_the_window():
    # A 60 s window: before, an item arriving within the window of the previous batch's end waited it out.
    batcher = DynamicBatcher({"image": lambda p: p}, max_batch=64, max_wait_s=60.0, max_queue=100)

    async def main():
        for i in range(3):  # back to back, each well inside the window after the previous batch
            assert await asyncio.wait_for(batcher.submit("image", [i]), timeout=10) == [i]

    asyncio.run(main())
    batcher.close()


def test_an_idle_model_waits_for_an_expected_request_and_batches_it_with_the_first():
    batches: list[list] = []
    batcher = DynamicBatcher(
        {"image": lambda p: batches.append(list(p)) or p}, max_batch=64, max_wait_s=30.0, max_queue=100
    )

    async def main():
        expected = batcher.expect()  # a second request is decoding
        first = asyncio.ensure_future(batcher.submit("image", [1]))
        await asyncio.sleep(0.2)
        assert not first.done(), "the model should wait for the expected request's items"
        second = await asyncio.wait_for(batcher.submit("image", [2], expected), timeout=10)
        return await first, second

    assert asyncio.run(main()) == ([1], [2])
    batcher.close()
    assert batches == [[1, 2]]


def test_a_withdrawn_or_expired_expectation_is_not_waited_for():
    batches: list[list] = []
    batcher = DynamicBatcher(
        {"image": lambda p: batches.append(list(p)) or p}, max_batch=64, max_wait_s=60.0, max_queue=100
    )

    async def main():
        gone = batcher.expect()
        first = asyncio.ensure_future(batcher.submit("image", [1]))
        await asyncio.sleep(0.1)
        gone.withdraw()  # its request failed while decoding
        assert await asyncio.wait_for(first, timeout=10) == [1]
        silent = batcher.expect()
        silent.arrive_within(0.05)  # decoded, but it never sends its images (an error answered after decoding)
        assert await asyncio.wait_for(batcher.submit("image", [2]), timeout=10) == [2]

    asyncio.run(main())
    batcher.close()
    assert batches == [[1], [2]]


def test_decode_images_announces_the_request_and_embed_images_ends_the_announcement():
    service = ModelService(tiny())
    service.start(wait=True)
    try:
        data = io.BytesIO()
        noise((80, 60)).save(data, "PNG")

        async def request():
            decoded = await service.decode_images([data.getvalue()])
            assert service.batcher is not None and len(service.batcher._expected) == 1  # decoded, images to come
            vectors = await service.embed_images(decoded)
            return vectors, len(service.batcher._expected)

        vectors, left = asyncio.run(request())
        assert vectors.shape == (1, service.info.dim) and left == 0
    finally:
        service.close()


# ---- GPU JPEG decoding: refused without a CUDA model ---------------------------------------------------
def test_gpu_jpeg_is_refused_at_start_up_on_the_cpu_with_a_clear_reason_and_fix():
    with pytest.raises(ModelLoadError) as caught:
        load_encoder(tiny(CLIP_FILTER_GPU_JPEG="1"))
    assert "CLIP_FILTER_GPU_JPEG=1 cannot be used" in caught.value.reason and "cpu" in caught.value.reason
    assert "Unset CLIP_FILTER_GPU_JPEG" in caught.value.fix
    service = ModelService(tiny(CLIP_FILTER_GPU_JPEG="1"))
    service.start(wait=True)
    try:
        status = service.status()
        assert service.state == FAILED and "CLIP_FILTER_GPU_JPEG" in status["reason"] and status["fix"]
    finally:
        service.close()
    with pytest.raises(GpuJpegUnavailableError, match="needs a CUDA device"):
        check_gpu_jpeg(torch.device("cpu"))


def test_gpu_jpeg_is_refused_for_the_instant_encoder_too():
    settings = Settings(
        CLIP_MODEL="ViT-B-32",
        CLIP_PRETRAINED="instant-test",
        CLIP_FILTER_ALLOW_TEST_ENCODER="1",
        CLIP_FILTER_GPU_JPEG="1",
    )
    with pytest.raises(ModelLoadError, match="CLIP_FILTER_GPU_JPEG"):
        load_encoder(settings)


def test_gpu_jpeg_is_off_by_default():
    assert Settings().gpu_jpeg is False and Settings().prefetch_batches == "auto"


# ---- the GPU path's geometry, run on CPU tensors --------------------------------------------------------
@pytest.mark.parametrize("size", [(640, 480), (300, 900), (150, 100)])  # downscale, tall, upscale + crop
def test_tensor_geometry_matches_the_pil_path_closely(encoder, size):
    plan = encoder.preprocessor.plan()
    image = Image.fromarray(np.asarray(noise((size[0] // 8, size[1] // 8), 3).resize(size, Image.BICUBIC)))
    cpu = plan.pixels(image)  # the CPU path: Pillow's resize + crop, (3, h, w) uint8
    tensor = geometry_on_tensor(torch.from_numpy(np.array(image)).permute(2, 0, 1), plan)
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == cpu.shape
    difference = np.abs(tensor.numpy().astype(np.int16) - cpu.astype(np.int16))
    # torchvision's tensor bicubic antialias filter approximates Pillow's: within a grey level or so.
    assert difference.mean() < 0.5 and difference.max() <= 3


# ---- captions encoded while the images decode ----------------------------------------------------------
def test_prefetched_captions_are_encoded_once_and_equal_the_plain_path():
    service = ModelService(
        tiny(CLIP_TEXT_CACHE_SIZE=0, CLIP_PREFETCH_BATCHES="on")
    )  # no cache: a second encoding would show in items_run
    service.start(wait=True)
    try:
        texts = ["a cat", "a dog on a sofa", "a cat"]

        async def request():
            service.prefetch_texts(texts)  # started before the (here: absent) image decode
            assert service.batcher is not None
            return await service.embed_texts(texts), service.batcher.items_run

        prefetched, items_run = asyncio.run(request())
        plain = asyncio.run(service.embed_texts(texts))
        assert np.array_equal(prefetched.embeddings, plain.embeddings) and prefetched.truncated == plain.truncated
        assert items_run == 2  # the two distinct captions, once
        assert service.batcher.items_run == 4  # the plain call encoded them again (no cache)
    finally:
        service.close()


def test_prefetch_is_skipped_for_cached_captions_and_other_captions_take_the_plain_path():
    service = ModelService(tiny(CLIP_PREFETCH_BATCHES="on"))
    service.start(wait=True)
    try:
        asyncio.run(service.embed_texts(["cached"]))
        assert service.batcher is not None and service.batcher.items_run == 1

        async def request():
            service.prefetch_texts(["cached"])  # all cached: nothing started
            assert service.batcher.items_run == 1
            service.prefetch_texts(["new one"])
            return await service.embed_texts(["something else"])  # not what was prefetched: encoded itself

        other = asyncio.run(request())
        assert other.embeddings.shape == (1, service.info.dim)
    finally:
        service.close()


def test_prefetched_captions_are_queued_before_prefetch_texts_returns():
    service = ModelService(tiny(CLIP_TEXT_CACHE_SIZE=0, CLIP_PREFETCH_BATCHES="on"))
    service.start(wait=True)
    try:

        async def request():
            service.prefetch_texts(["a red kite", "a blue boat"])
            assert service.batcher is not None
            deadline = time.monotonic() + 10
            # The event loop is held here (no await): only captions already queued can be encoded meanwhile.
            while service.batcher.items_run < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            ran = service.batcher.items_run
            return ran, await service.embed_texts(["a red kite", "a blue boat"])

        ran, batch = asyncio.run(request())
        assert ran == 2 and batch.embeddings.shape == (2, service.info.dim)
        assert service.batcher.items_run == 2  # awaited the prefetched work, not encoded again
    finally:
        service.close()


def test_captions_are_not_prefetched_on_a_cpu_model_by_default():
    service = ModelService(tiny())
    service.start(wait=True)
    try:

        async def request():
            service.prefetch_texts(["a green tram"])
            started = service_module._TEXTS_STARTED.get()  # what embed_texts would await
            assert service.batcher is not None
            return started, service.batcher.queued, await service.embed_texts(["a green tram"])

        started, queued, batch = asyncio.run(request())
        assert started is None and queued == 0 and batch.embeddings.shape == (1, service.info.dim)
    finally:
        service.close()


def test_a_batch_of_captions_does_not_wait_for_expected_images():
    batcher = DynamicBatcher({"text": lambda p: p, "image": lambda p: p}, max_batch=64, max_wait_s=60.0, max_queue=100)

    async def main():
        images = batcher.expect("image")  # a request is decoding its images
        texts = await asyncio.wait_for(batcher.submit("text", ["a cat"]), timeout=10)  # not held for them
        images.withdraw()
        return texts

    assert asyncio.run(main()) == ["a cat"]
    batcher.close()
