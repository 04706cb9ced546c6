"""ModelService: the async face of the model for the web layer.

It loads the model in the background (the server answers liveness at once and readiness when the
model is there), preprocesses images on a small thread pool so the model never waits for them, and
sends the model work through the dynamic batcher.

Thread hops of one best-match request (one image, cached captions): event loop -> decode thread (base64 and
header checks) -> decode thread (decode to model pixels) -> model thread (stack, normalise, forward pass) ->
event loop; cached captions never leave the event loop. While a request decodes, the batcher is told to
expect it (`DynamicBatcher.expect`), so an idle model waits for concurrent requests' images but never
for a lone client's.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image

from clip_filter.core.config import Settings
from clip_filter.core.errors import ModelUnavailableError, OverloadedError
from clip_filter.core.memory import freeze_long_lived_objects, release_free_memory
from clip_filter.images import DecodeTarget
from clip_filter.ml.batcher import DynamicBatcher, Expectation
from clip_filter.ml.decode_pool import DecodePipeline, Prepared
from clip_filter.ml.encoder import ClipEncoder, ModelInfo, StagedPixels, TextBatch, TextLookup
from clip_filter.ml.factory import ModelLoadError, load_encoder

log = logging.getLogger(__name__)

LOADING, READY, FAILED = "loading", "ready", "failed"

# The announcement a request made while decoding (decode_images), ended when its images are queued (embed_images).
_EXPECTED: contextvars.ContextVar[Expectation | None] = contextvars.ContextVar("clip_filter_expected", default=None)
# Captions whose encoding prefetch_texts started for this request, and the task computing them.
_TEXTS_STARTED: contextvars.ContextVar[tuple[list[str], asyncio.Future[TextBatch]] | None] = contextvars.ContextVar(
    "clip_filter_texts_started", default=None
)


class ModelService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = LOADING
        self.reason: str | None = "The model is loading."
        self.fix: str | None = "Wait until GET /health/ready answers 200."
        self.encoder: ClipEncoder | None = None
        self.batcher: DynamicBatcher | None = None
        self._pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="clip-preprocess")
        self.decoder = DecodePipeline(settings, self._pool)  # request images -> model pixels (ml/decode_pool.py)
        self.gpu_decoder: Any = None  # ml/gpu_decode.py GpuJpegDecoder, with CLIP_FILTER_GPU_JPEG on a CUDA model
        self._loader: threading.Thread | None = None
        self.texts_prefetched = 0  # captions prefetch_texts queued ahead of their request's images (/info)

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self, wait: bool = False) -> None:
        self._loader = threading.Thread(target=self._load, name="clip-loader", daemon=True)
        self._loader.start()
        if wait:
            self._loader.join()

    def _load(self) -> None:
        try:
            encoder = load_encoder(self.settings)
        except ModelLoadError as exc:
            self._fail(exc.reason, exc.fix)
            return
        except Exception as exc:  # noqa: BLE001 - any load failure must leave a live, explaining server
            log.exception("model load failed")
            self._fail(f"Loading the model failed: {exc}", "Check the server log and the CLIP_* settings.")
            return
        # torch, open_clip and the model live as long as the process: out of the cyclic collector's sight, so a
        # full collection no longer walks them while holding the GIL (200-300 ms, see core/memory.py).
        frozen = freeze_long_lived_objects()
        log.debug("%d long-lived objects frozen for the garbage collector", frozen)
        release_free_memory()  # what loading and the precision cast freed (the fp32 weights, for bf16)
        if self.settings.gpu_jpeg:  # load_encoder refused it unless the model is on a CUDA device that can
            from clip_filter.ml.gpu_decode import GpuJpegDecoder

            self.gpu_decoder = GpuJpegDecoder(self.decoder, encoder.device, self._pool)
        prefetch = self.settings.prefetch_batches
        self.batcher = DynamicBatcher(
            {"image": self._run_image_batch, "text": self._run_text_batch},
            max_batch=self.settings.batch_size,
            max_wait_s=self.settings.max_batch_wait_ms / 1000.0,
            max_queue=self.settings.max_queue,
            on_idle=release_free_memory,  # activation memory kept for reuse under load, handed back when idle
            prepare={"image": encoder.stage_pixels},  # stack + normalise + to the device (pinned, async on CUDA)
            prefetch=prefetch == "on" or (prefetch == "auto" and encoder.device.type == "cuda"),
        )
        self.encoder = encoder
        self.state, self.reason, self.fix = READY, None, None

    def _fail(self, reason: str, fix: str) -> None:
        log.error("model unavailable: %s Fix: %s", reason, fix)
        self.state, self.reason, self.fix = FAILED, reason, fix

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.decoder.close()

    # ---- state ----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.state == READY

    def require_ready(self) -> ClipEncoder:
        if self.encoder is None or self.state != READY:
            message = (
                "The model is loading; try again shortly." if self.state == LOADING else "The model is unavailable."
            )
            raise ModelUnavailableError(message, reason=self.reason or self.state, fix=self.fix)
        return self.encoder

    @property
    def info(self) -> ModelInfo:
        return self.require_ready().info

    def model_summary(self) -> dict[str, Any]:
        info = self.info
        return {"name": info.model, "pretrained": info.pretrained, "weights": info.weights, "dim": info.dim}

    def status(self) -> dict[str, Any]:
        """Everything /info reports about the model, whatever its state."""
        out: dict[str, Any] = {"state": self.state}
        if self.reason:
            out["reason"] = self.reason
        if self.fix:
            out["fix"] = self.fix
        if self.encoder is not None:
            out.update(self.encoder.info.to_dict())
        else:
            out.update(
                model=self.settings.model_name,
                pretrained=self.settings.pretrained,
                weights="random" if self.settings.is_random else None,
                device=None,
                dtype=None,
                dim=None,
                logit_scale=None,
                context_length=None,
            )
        return out

    def batching_stats(self) -> dict[str, int | float]:
        """Counters since start: how well concurrent requests are being coalesced."""
        if self.batcher is None:
            return {"batches_run": 0, "items_run": 0, "busy_s": 0.0, "queued": 0, "texts_prefetched": 0}
        return {
            "batches_run": self.batcher.batches_run,
            "items_run": self.batcher.items_run,
            "busy_s": round(self.batcher.busy_s, 3),
            "queued": self.batcher.queued,
            "texts_prefetched": self.texts_prefetched,
        }

    def queue_has_room(self, count: int = 1) -> bool:
        """Whether the model queue would admit `count` more items now (False while there is no batcher)."""
        return self.batcher is not None and self.batcher.has_room(count)

    # ---- model work (async, for the web layer) ---------------------------------------------------
    async def decode_images(self, items: list[bytes | str]) -> list[Prepared]:
        """Request images (bytes or base64) -> model pixels per slot, or an error in place (ml/decode_pool.py;
        with CLIP_FILTER_GPU_JPEG, JPEG slots are CUDA tensors from ml/gpu_decode.py)."""
        plan = self.encoder.pixel_plan() if self.encoder is not None else None
        expectation = self.batcher.expect() if self.batcher is not None and items else None
        _EXPECTED.set(expectation)  # this request's task (and the tasks it gathers) hand it to embed_images
        try:
            if self.gpu_decoder is not None and plan is not None:
                prepared = await self.gpu_decoder.prepare(items, plan)
            else:
                prepared = await self.decoder.prepare(items, plan)
        except BaseException:
            if expectation is not None:
                expectation.withdraw()
            raise
        if expectation is not None:
            # Its images follow within a few event-loop steps; a request that never sends them (an error
            # answered after decoding) stops being waited for after one batch window.
            expectation.arrive_within(self.settings.max_batch_wait_ms / 1000.0)
        return prepared

    async def embed_images(self, images: Sequence[Image.Image | np.ndarray | torch.Tensor]) -> np.ndarray:
        encoder = self.require_ready()
        if not images:
            return np.zeros((0, encoder.info.dim), np.float32)
        loop = asyncio.get_running_loop()
        expectation = _EXPECTED.get()
        decoded = [im for im in images if isinstance(im, (np.ndarray, torch.Tensor))]
        if len(decoded) == len(images):  # all model pixels already (decode_images): no thread hop, no await
            pixels: Sequence[torch.Tensor] = [_as_tensor(im) for im in decoded]
        else:
            pixels = await asyncio.gather(*(self._pixels(loop, encoder, im) for im in images))
        rows = await self._batcher().submit("image", pixels, expectation)
        return np.stack(rows).astype(np.float32, copy=False)

    async def embed_texts(self, texts: list[str]) -> TextBatch:
        # Cached captions skip the queue entirely: repeated captions cost no model time.
        started = _TEXTS_STARTED.get()
        if started is not None and started[0] == texts:  # prefetch_texts began these while the images decoded
            _TEXTS_STARTED.set(None)
            return await started[1]
        lookup = self.require_ready().lookup_texts(texts)
        if lookup.missing:
            lookup.add(dict(zip(lookup.missing, await self._batcher().submit("text", lookup.missing), strict=True)))
        return lookup.batch()

    def prefetch_texts(self, texts: list[str]) -> None:
        """Start encoding a request's captions now, before its images are decoded, so that the model thread
        encodes them while a decode thread decodes the images; the same request's later embed_texts(texts)
        awaits that work instead of queueing the captions again. Captions all cached: nothing to start.

        Only with prefetch on (CLIP_PREFETCH_BATCHES: `auto` = a CUDA model): on a CPU model the caption
        encoding and the image decode share the same cores, and the request was measured no faster (on
        2 cores, slower: docs/benchmarks-pipeline.md, "Best match")."""
        if (
            not texts
            or self.encoder is None
            or self.state != READY
            or self.batcher is None
            or not self.batcher.prefetch
        ):
            return
        lookup = self.encoder.lookup_texts(list(texts))
        if not lookup.missing:
            return
        # Queued now, not from a task the event loop would start later (a decode thread holding the GIL can
        # delay that by the interpreter's 5 ms switch interval): the model starts on them at once.
        try:
            rows = self._batcher().submit_now("text", lookup.missing)
        except OverloadedError:
            return  # a full queue: embed_texts answers the request's 429 as without prefetching
        self.texts_prefetched += len(lookup.missing)
        task = asyncio.ensure_future(_finish_lookup(lookup, rows))
        task.add_done_callback(_consume_error)  # a request that fails before awaiting it: no unretrieved error
        _TEXTS_STARTED.set((list(texts), task))

    async def _pixels(self, loop: asyncio.AbstractEventLoop, encoder: ClipEncoder, image: Any) -> torch.Tensor:
        if isinstance(image, (np.ndarray, torch.Tensor)):  # already the model's uint8 input (decode_images)
            return _as_tensor(image)
        return await loop.run_in_executor(self._pool, encoder.preprocess, image)

    # ---- model work (blocking, for worker threads such as bulk ingest jobs) ----------------------
    def embed_images_blocking(self, images: list[Image.Image], wait_for_room: bool = True) -> np.ndarray:
        """embed_images for a worker thread: the same preprocessing pool and batcher.

        `wait_for_room=False`: a full queue raises OverloadedError (429) instead of waiting (HTTP uploads).
        """
        encoder = self.require_ready()
        if not images:
            return np.zeros((0, encoder.info.dim), np.float32)
        pixels = list(self._pool.map(encoder.preprocess, images))
        rows = self._batcher().submit_blocking("image", pixels, wait_for_room)
        return np.stack(rows).astype(np.float32, copy=False)

    def embed_texts_blocking(self, texts: list[str], wait_for_room: bool = True) -> TextBatch:
        lookup = self.require_ready().lookup_texts(texts)
        if lookup.missing:
            rows = self._batcher().submit_blocking("text", lookup.missing, wait_for_room)
            lookup.add(dict(zip(lookup.missing, rows, strict=True)))
        return lookup.batch()

    def blocking_embedder(self, wait_for_room: bool = True) -> BlockingEmbedder:
        """`wait_for_room=False`: a full queue raises OverloadedError (429) instead of waiting (HTTP uploads)."""
        return BlockingEmbedder(self, wait_for_room)

    def _batcher(self) -> DynamicBatcher:
        assert self.batcher is not None  # set before the state turns ready, which require_ready checked
        return self.batcher

    # ---- run on the model thread -----------------------------------------------------------------
    # The batcher exists only once a model is loaded; a batch that finds none fails its requests.
    def _run_image_batch(self, staged: StagedPixels) -> list[np.ndarray]:
        """A batch staged by encoder.stage_pixels (the batcher's prepare step, on this thread or the stage thread)."""
        assert self.encoder is not None
        return list(self.encoder.run_staged(staged))

    def _run_text_batch(self, texts: list[str]) -> list[tuple[np.ndarray, bool]]:
        assert self.encoder is not None
        batch = self.encoder.encode_texts(texts)
        return list(zip(batch.embeddings, batch.truncated, strict=True))


async def _finish_lookup(lookup: TextLookup, rows: asyncio.Future[list[Any]]) -> TextBatch:
    lookup.add(dict(zip(lookup.missing, await rows, strict=True)))
    return lookup.batch()


def _consume_error(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _as_tensor(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    return pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(pixels)


class BlockingEmbedder:
    """The collections Embedder protocol for worker threads, going through the same batcher."""

    def __init__(self, service: ModelService, wait_for_room: bool = True) -> None:
        self._service = service
        self._wait = wait_for_room

    @property
    def info(self) -> ModelInfo:
        return self._service.info

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return self._service.embed_images_blocking(images, self._wait)

    def encode_texts(self, texts: list[str]) -> TextBatch:
        return self._service.embed_texts_blocking(texts, self._wait)

    @property
    def decode_target(self) -> DecodeTarget | None:
        """The decode `decode_images` uses for the matching routes: the same bytes give the same pixels."""
        return self._service.require_ready().decode_target
