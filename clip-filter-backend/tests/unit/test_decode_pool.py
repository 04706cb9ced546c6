"""ml/decode_pool.py and ml/pixels.py: bounded decoding, threads vs worker processes, bit for bit."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import clip_filter.ml.factory  # noqa: F401 - registers the clip-filter-tiny config
from clip_filter.core.errors import ClipFilterError, OverloadedError
from clip_filter.images import ImageLimits, decode_image
from clip_filter.ml.decode_pool import DecodeBusyError, DecodePipeline
from clip_filter.ml.pixels import decode_to_pixels
from clip_filter.ml.preprocess import ImagePreprocessor

from .image_factory import encode, noise, photo, png_header_only

LIMITS = ImageLimits(max_bytes=25 * 1024 * 1024, max_pixels=50_000_000)


def settings(**overrides) -> SimpleNamespace:
    values = {
        "max_image_bytes": LIMITS.max_bytes,
        "max_image_pixels": LIMITS.max_pixels,
        "max_request_pixels": 256_000_000,
        "max_decoding_pixels": 512_000_000,
        "decode_processes": 0,
    }
    values.update(overrides)
    return SimpleNamespace(**values)


def sample_files() -> list[bytes]:
    return [
        encode(photo((640, 480)), "JPEG", quality=90),
        encode(photo((1600, 1000), 1), "JPEG", quality=85),
        encode(photo((1200, 900), 2), "PNG"),
        encode(noise((97, 513)), "PNG"),
        encode(photo((300, 200), 3).convert("L"), "PNG"),
        encode(photo((64, 900), 4).convert("RGBA"), "WEBP", lossless=True),
    ]


def tiny_preprocessor() -> ImagePreprocessor:
    return ImagePreprocessor(open_clip.create_model_and_transforms("clip-filter-tiny", pretrained=None)[2])


@pytest.fixture(scope="module")
def vit_preprocessor() -> ImagePreprocessor:
    return ImagePreprocessor(open_clip.image_transform(224, is_train=False))


def run(coroutine):
    return asyncio.run(coroutine)


def prepare(pipeline: DecodePipeline, items, plan):
    async def go():
        return await pipeline.prepare(items, plan)

    return run(go())


@pytest.fixture(scope="module")
def threads():
    pool = ThreadPoolExecutor(2)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def process_pipeline(threads):
    pipeline = DecodePipeline(settings(decode_processes=2), threads, jpeg_on_threads=False)  # every image: parity
    yield pipeline
    pipeline.close()


# ---- exactness ------------------------------------------------------------------------------------


def test_without_reduction_pixels_equal_the_encoder_preprocessing_of_the_full_decode(vit_preprocessor):
    plan = vit_preprocessor.plan(jpeg_draft=False, reduce=False)
    for data in sample_files():
        ours = decode_to_pixels(data, LIMITS, plan)
        reference = vit_preprocessor.image_to_tensor(decode_image(data, LIMITS)).numpy()
        assert ours.dtype == np.uint8 and ours.shape == (3, 224, 224)
        assert np.array_equal(ours, reference)


def test_plan_geometry_equals_torchvision_for_padding_and_squash():
    from torchvision import transforms as T

    for geometry in (
        [T.Resize(20), T.CenterCrop(32)],
        [T.Resize((40, 30)), T.CenterCrop((36, 30))],
        [T.Resize(48, max_size=60), T.CenterCrop(48)],
    ):
        transform = T.Compose([*geometry, T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
        pre = ImagePreprocessor(transform)
        assert pre.plan() is not None
        for image in (noise((97, 53)), noise((31, 200), 1)):
            reference = image
            for step in geometry:
                reference = step(reference)
            assert np.array_equal(pre.image_to_tensor(image).numpy(), np.asarray(reference).transpose(2, 0, 1))


@pytest.mark.parametrize("reduced", [False, True])
def test_processes_give_the_thread_path_pixels_bit_for_bit(threads, process_pipeline, vit_preprocessor, reduced):
    # reduced: the server's defaults (reduced-scale decoding and crop-first resizing), as the processes get them
    plan = vit_preprocessor.plan(jpeg_draft=reduced, reduce=reduced, crop_first=reduced)
    files = sample_files()
    in_threads = prepare(DecodePipeline(settings(), threads), files, plan)
    in_processes = prepare(process_pipeline, files, plan)
    for a, b in zip(in_threads, in_processes, strict=True):
        assert isinstance(a, np.ndarray) and a.flags.writeable
        assert np.array_equal(a, b)


def test_with_processes_jpeg_stays_on_the_threads_by_default_and_the_pixels_are_the_same(threads, vit_preprocessor):
    plan = vit_preprocessor.plan(jpeg_draft=True, reduce=True)
    files = sample_files()  # 2 JPEGs, 3 PNGs, 1 WebP
    in_threads = prepare(DecodePipeline(settings(), threads), files, plan)
    pipeline = DecodePipeline(settings(decode_processes=2), threads)
    try:
        mixed = prepare(pipeline, files, plan)
        assert pipeline.decoded == {"threads": 2, "processes": 4}
        for a, b in zip(in_threads, mixed, strict=True):
            assert np.array_equal(a, b)
    finally:
        pipeline.close()
    everything = DecodePipeline(settings(decode_processes=2), threads, jpeg_on_threads=False)
    try:
        prepare(everything, files, plan)
        assert everything.decoded == {"threads": 0, "processes": 6}
    finally:
        everything.close()
    only_threads = DecodePipeline(settings(), threads)
    prepare(only_threads, files, plan)
    assert only_threads.decoded == {"threads": 6, "processes": 0}


def test_processes_give_the_thread_path_embeddings_bit_for_bit(threads, process_pipeline):
    model, _, transform = open_clip.create_model_and_transforms("clip-filter-tiny", pretrained=None)
    pre = ImagePreprocessor(transform)
    plan = pre.plan(jpeg_draft=False, reduce=False)
    files = sample_files()
    reference = torch.stack([pre.image_to_tensor(decode_image(data, LIMITS)) for data in files])
    from_processes = torch.stack([torch.from_numpy(p) for p in prepare(process_pipeline, files, plan)])
    with torch.inference_mode():
        expected = model.encode_image(pre.normalise_batch(reference))
        actual = model.encode_image(pre.normalise_batch(from_processes))
    assert torch.equal(expected, actual)


def test_base64_items_decode_like_bytes(threads, vit_preprocessor):
    plan = vit_preprocessor.plan()
    files = sample_files()[:2]
    pipeline = DecodePipeline(settings(), threads)
    as_text = prepare(pipeline, [base64.b64encode(f).decode() for f in files], plan)
    as_bytes = prepare(pipeline, files, plan)
    assert all(np.array_equal(a, b) for a, b in zip(as_text, as_bytes, strict=True))


def test_without_a_plan_images_are_decoded_at_full_size(threads):
    [image] = prepare(DecodePipeline(settings(), threads), [sample_files()[1]], None)
    assert isinstance(image, Image.Image) and image.size == (1600, 1000)


# ---- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_a_bad_image_is_a_clear_error_in_its_slot_and_the_others_go_on(threads, process_pipeline, mode):
    pipeline = process_pipeline if mode == "processes" else DecodePipeline(settings(), threads)
    good = sample_files()[0]
    corrupt = good[:200] + bytes(range(256)) * 20 + good[-2:]
    results = prepare(
        pipeline, [good, b"not an image at all", corrupt, good[: len(good) // 2], good], tiny_preprocessor().plan()
    )
    assert isinstance(results[0], np.ndarray) and isinstance(results[4], np.ndarray)
    assert results[1].code == "not_an_image" and results[1].status == 415
    assert results[2].code in ("corrupt_image", "truncated_image") and results[2].status == 422
    assert results[3].code == "truncated_image" and results[3].status == 422


class CountingExecutor(ThreadPoolExecutor):
    """A real thread pool that counts the work handed to it: one call per thread hop."""

    submitted = 0

    def submit(self, *args, **kwargs):
        self.submitted += 1
        return super().submit(*args, **kwargs)


@pytest.mark.parametrize("reduced", [False, True])
def test_a_one_image_request_takes_one_hop_with_the_same_pixels_and_errors(vit_preprocessor, reduced):
    plan = vit_preprocessor.plan(jpeg_draft=reduced, reduce=reduced)
    with CountingExecutor(2) as executor:
        pipeline = DecodePipeline(settings(), executor)
        files = sample_files()
        for data in files:
            executor.submitted = 0
            [alone] = prepare(pipeline, [data], plan)
            assert executor.submitted == 1  # base64, header, admission and decode on one thread
            [_, in_pair] = prepare(pipeline, [files[3], data], plan)
            assert np.array_equal(alone, in_pair) and np.array_equal(alone, decode_to_pixels(data, LIMITS, plan))
        assert pipeline.decoded["threads"] == 3 * len(files) and pipeline.admission.in_use == 0
        [error] = prepare(pipeline, [b"not an image at all"], plan)  # an error in its slot, as in a larger request
        assert error.code == "not_an_image" and error.status == 415
        strict = DecodePipeline(settings(max_request_pixels=1_000_000), executor)
        with pytest.raises(ClipFilterError) as caught:  # 413 for the request, before any decode
            prepare(strict, [png_header_only(1200, 1000, idat=b"")], plan)
        assert caught.value.code == "request_too_many_pixels"
        assert strict.refused["request_too_many_pixels"] == 1 and strict.admission.in_use == 0


def test_request_pixel_budget_is_checked_from_headers_before_decoding(threads):
    # Headers claiming 5000x5000 with no real pixel data: decoding would fail with a per-image error,
    # the whole request is refused first.
    pipeline = DecodePipeline(settings(max_request_pixels=60_000_000), threads)
    header_only = png_header_only(5000, 5000, idat=b"")
    with pytest.raises(ClipFilterError) as caught:
        prepare(pipeline, [header_only] * 3, tiny_preprocessor().plan())
    assert caught.value.code == "request_too_many_pixels" and caught.value.status == 413
    assert caught.value.details == {"limit": 60_000_000, "actual": 75_000_000}
    assert pipeline.refused["request_too_many_pixels"] == 1 and pipeline.admission.in_use == 0
    [error, error2] = prepare(pipeline, [header_only] * 2, tiny_preprocessor().plan())  # 50 M: admitted
    assert error.code == "truncated_image" and error2.code == "truncated_image"


def test_jpeg_counts_its_reduced_decode_in_the_budget(threads, vit_preprocessor):
    big = encode(photo((3000, 2000)), "JPEG", quality=80)  # 6 M pixels, decoded at 1/4: 375 k
    pipeline = DecodePipeline(settings(max_request_pixels=1_000_000), threads)
    assert isinstance(prepare(pipeline, [big, big], vit_preprocessor.plan(jpeg_draft=True))[0], np.ndarray)
    with pytest.raises(ClipFilterError):
        prepare(pipeline, [big], vit_preprocessor.plan(jpeg_draft=False))


def test_decode_admission_refuses_with_429_while_others_hold_the_budget(threads, vit_preprocessor):
    pipeline = DecodePipeline(settings(max_decoding_pixels=1_000_000), threads)
    files = [sample_files()[0]]  # 640x480 = 307,200 pixels
    assert pipeline.admission.try_acquire(800_000)  # another request's decodes in flight
    with pytest.raises(DecodeBusyError) as caught:
        prepare(pipeline, files, vit_preprocessor.plan())
    error = caught.value
    assert isinstance(error, OverloadedError) and error.status == 429 and error.retry_after >= 1
    assert error.code == "decode_busy" and error.details["needed"] == 307_200
    pipeline.admission.release(800_000)
    assert isinstance(prepare(pipeline, files, vit_preprocessor.plan())[0], np.ndarray)
    assert pipeline.admission.in_use == 0  # released after decoding


# ---- worker crashes ---------------------------------------------------------------------------------


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # it may have exited between pids() and the kill
            os.kill(pid, signal.SIGKILL)


def test_pool_survives_its_workers_being_killed(threads, vit_preprocessor):
    pipeline = DecodePipeline(settings(decode_processes=2), threads)
    plan = vit_preprocessor.plan()
    files = sample_files()
    try:
        expected = prepare(pipeline, files, plan)
        pool = pipeline._processes
        kill_all(pool.pids())

        async def in_flight():
            # Kill the workers again while a request is in flight: its images are retried in a new pool.
            task = asyncio.ensure_future(pipeline.prepare(files * 3, plan))
            await asyncio.sleep(0)
            while not pool.pids() and not task.done():
                await asyncio.sleep(0.01)
            kill_all(pool.pids())
            return await asyncio.wait_for(task, 120)  # a hang guard, not a speed check

        results = run(in_flight())
        for got, want in zip(results, expected * 3, strict=True):
            crashed = isinstance(got, ClipFilterError) and got.code == "image_decoder_crashed"
            assert crashed or np.array_equal(got, want)
        assert pool.restarts >= 1
        after = prepare(pipeline, files, plan)  # a fresh pool serves normally
        assert all(np.array_equal(a, b) for a, b in zip(after, expected, strict=True))
    finally:
        pipeline.close()
