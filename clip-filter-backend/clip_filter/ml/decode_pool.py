"""Request images -> model input pixels: bounded before decoding, then decoded on threads or worker processes.

For each request (`DecodePipeline.prepare`):
1. base64 is decoded and every image's header read (format, byte and pixel limits, and the size its
   decode will have, reduced-scale JPEG included), one thread hop for the whole request (a one-image
   request on the threads does steps 1-3 in a single hop: `_prepare_one`);
2. the decoded pixels of the whole request are checked against CLIP_FILTER_MAX_REQUEST_PIXELS (413
   `request_too_many_pixels`) and admitted against the process-wide CLIP_FILTER_MAX_DECODING_PIXELS
   (429 `decode_busy` + Retry-After when other requests' decodes hold it), before any pixel is decoded;
3. each image is decoded, reduced when large (images.DecodeTarget) and turned into the model's uint8
   (3, H, W) input (ml/pixels.py) in one step, so a request never holds a full-size decoded image
   after its resize. One bad image is an error in its own slot; the others go on.

Where step 3 runs: on the service's decode threads (CLIP_DECODE_WORKERS, the default), or with
CLIP_FILTER_DECODE_PROCESSES=N in N worker processes (spawned, torch-free; JPEGs stay on the threads, where
they measured cheaper), whose pixels come back
through one shared-memory arena (`multiprocessing.shared_memory`): the parent only copies 150 KB out
of a slot, no array is pickled. A worker that dies (a crashing decoder, the OOM killer) breaks the
process pool: it is replaced and the images that were in flight are tried once more; an image that
kills a worker twice is answered 422 `image_decoder_crashed`. Nothing waits forever.

This module imports no torch (worker processes import it to find `_work`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import threading
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np
from PIL import Image

from clip_filter.core.errors import ClipFilterError, OverloadedError
from clip_filter.image_base64 import base64_image_bytes
from clip_filter.images import ImageHeader, ImageLimits, decode_image
from clip_filter.ml.pixels import PixelPlan, decode_to_pixels, probe

log = logging.getLogger(__name__)

# What one slot of a request answers: model pixels (a plan was given), a decoded image (no plan), or an error.
Prepared = np.ndarray | Image.Image | ClipFilterError


class DecodeBusyError(OverloadedError):
    """Other requests' decodes hold the process-wide pixel budget (429 + Retry-After)."""

    def __init__(self, needed: int, limit: int, retry_after: int = 1) -> None:
        super().__init__(retry_after)
        self.code = "decode_busy"
        self.message = (
            f"The server is decoding other images ({limit:,} pixels at most at once); this request needs "
            f"{needed:,}. Retry shortly."
        )
        self.details.update(needed=needed, limit=limit)


class PixelAdmission:
    """At most `limit` decoded pixels admitted at once (process-wide); never waits, the caller refuses."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        return self._used

    def try_acquire(self, pixels: int) -> bool:
        with self._lock:
            if self._used + pixels > self.limit and self._used > 0:
                return False
            self._used += pixels
            return True

    def release(self, pixels: int) -> None:
        with self._lock:
            self._used = max(0, self._used - pixels)


@dataclass
class _Checked:
    data: bytes | None = None
    header: ImageHeader | None = None
    error: ClipFilterError | None = None


def _check_all(items: Sequence[bytes | str], limits: ImageLimits, plan: PixelPlan | None) -> list[_Checked]:
    """Step 1, for a whole request on one thread: base64 -> bytes, header -> decoded size."""
    out = []
    for item in items:
        try:
            data = base64_image_bytes(item, limits) if isinstance(item, str) else item
            out.append(_Checked(data, probe(data, limits, plan)))
        except ClipFilterError as exc:
            out.append(_Checked(error=exc))
    return out


class DecodePipeline:
    def __init__(self, settings: Any, threads: Executor, jpeg_on_threads: bool = True) -> None:
        """`jpeg_on_threads`: with worker processes, JPEGs still decode on the threads (see _in_process);
        False sends every image to the processes (the parity tests)."""
        self.limits = ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
        self.max_request_pixels = min(settings.max_request_pixels, settings.max_decoding_pixels)
        self.admission = PixelAdmission(settings.max_decoding_pixels)
        self._threads = threads
        self._n_processes = settings.decode_processes
        self._jpeg_on_threads = jpeg_on_threads
        self._processes: ProcessPixelPool | None = None
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()  # the counters below are also kept from decode threads
        self.refused = {"request_too_many_pixels": 0, "decode_busy": 0}
        self.decoded = {"threads": 0, "processes": 0}  # images decoded to model pixels on each path

    @property
    def mode(self) -> str:
        return f"processes:{self._n_processes}" if self._n_processes else "threads"

    def close(self) -> None:
        if self._processes is not None:
            self._processes.close()

    def _process_pool(self, plan: PixelPlan) -> ProcessPixelPool:
        slot_bytes = 3 * plan.crop[0] * plan.crop[1]
        with self._lock:
            if self._processes is None or self._processes.slot_bytes < slot_bytes:  # one plan per server
                old, self._processes = self._processes, ProcessPixelPool(self._n_processes, slot_bytes)
                if old is not None:
                    old.close()
            return self._processes

    def admit(self, needed: int) -> None:
        """Reserve `needed` decoded pixels for one request, or refuse it before anything is decoded: 413
        `request_too_many_pixels` over the per-request budget, 429 `decode_busy` when other decodes hold the
        process-wide one. The caller releases them (`admission.release(needed)`) when its decodes are done."""
        if needed > self.max_request_pixels:
            self._count(self.refused, "request_too_many_pixels")
            raise ClipFilterError(
                "request_too_many_pixels",
                f"The images of this request would decode to {needed:,} pixels; at most "
                f"{self.max_request_pixels:,} are accepted per request. Send fewer or smaller images.",
                413,
                limit=self.max_request_pixels,
                actual=needed,
            )
        if not self.admission.try_acquire(needed):
            self._count(self.refused, "decode_busy")
            raise DecodeBusyError(needed, self.admission.limit)

    def _count(self, counters: dict[str, int], key: str) -> None:
        with self._count_lock:
            counters[key] += 1

    async def prepare(self, items: Sequence[bytes | str], plan: PixelPlan | None) -> list[Prepared]:
        """One request's images -> model pixels per slot (a decoded image without a plan), errors in place.

        Raises 413 `request_too_many_pixels` or 429 `decode_busy` for the request as a whole, before decoding.
        """
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if len(items) == 1 and plan is not None and not self._n_processes:
            # The original one-image request: the same steps in the same order on one decode thread, one hop
            # instead of two (each hop wakes the event loop and hands the GIL over twice).
            return [await loop.run_in_executor(self._threads, self._prepare_one, items[0], plan)]
        checked = await loop.run_in_executor(self._threads, _check_all, items, self.limits, plan)
        needed = sum(c.header.decoded_pixels for c in checked if c.header is not None)
        self.admit(needed)
        try:
            return list(await asyncio.gather(*(self._decode_one(loop, c, plan) for c in checked)))
        finally:
            self.admission.release(needed)

    def _prepare_one(self, item: bytes | str, plan: PixelPlan) -> Prepared:
        """prepare() for one image on the threads, on a decode thread: check, admit (raises 413 / 429 for the
        request), decode to model pixels, release."""
        [checked] = _check_all([item], self.limits, plan)
        if checked.error is not None:
            return checked.error
        assert checked.header is not None and checked.data is not None  # _check_all: no error, so both
        needed = checked.header.decoded_pixels
        self.admit(needed)
        try:
            self._count(self.decoded, "threads")
            return decode_to_pixels(checked.data, self.limits, plan)
        except ClipFilterError as exc:
            return exc
        finally:
            self.admission.release(needed)

    async def _decode_one(self, loop: asyncio.AbstractEventLoop, checked: _Checked, plan: PixelPlan | None) -> Prepared:
        if checked.error is not None:
            return checked.error
        assert checked.data is not None  # _check_all: an item without an error has its bytes
        try:
            if plan is None:
                return await loop.run_in_executor(self._threads, decode_image, checked.data, self.limits, None)
            if self._in_process(checked):
                self._count(self.decoded, "processes")
                return await self._process_pool(plan).decode(checked.data, self.limits, plan)
            self._count(self.decoded, "threads")
            return await loop.run_in_executor(self._threads, decode_to_pixels, checked.data, self.limits, plan)
        except ClipFilterError as exc:
            return exc

    def _in_process(self, checked: _Checked) -> bool:
        """Where an image decodes when there are worker processes. JPEG stays on the threads by default: with
        DCT scaling its decode is short, and on 2 cores the process hop cost more than it relieved (640x480
        and 1920x1080 JPEG: 4.4 vs 5.1 and 11.0 vs 11.9 ms of server CPU per image, lower rates too), while
        PNG screenshots split both ways at the same CPU; longer decodes are what processes can take off
        the GIL on more cores (docs/benchmarks-pipeline.md, the threads/processes rule)."""
        if not self._n_processes:
            return False
        jpeg = checked.header is not None and checked.header.mimetype == "image/jpeg"
        return not (self._jpeg_on_threads and jpeg)


# ---- worker processes ----------------------------------------------------------------------------


class ProcessPixelPool:
    """N spawned worker processes that decode into slots of one shared-memory arena."""

    def __init__(self, workers: int, slot_bytes: int, slots: int | None = None) -> None:
        self.workers = workers
        self.slot_bytes = slot_bytes
        self._slots = slots or 8 * workers
        self._arena = shared_memory.SharedMemory(create=True, size=self._slots * slot_bytes)
        self._free = list(range(self._slots))
        self._lock = threading.Lock()
        self._executor = self._start()
        self.restarts = 0

    def _start(self) -> ProcessPoolExecutor:
        # spawn: the server process has threads (and torch); a forked child could inherit a held lock.
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._arena.close()
        with contextlib.suppress(FileNotFoundError):
            self._arena.unlink()

    def _take_slot(self) -> tuple[str, int, shared_memory.SharedMemory | None]:
        """(segment name, byte offset, a one-off segment to remove after use or None)."""
        with self._lock:
            if self._free:
                return self._arena.name, self._free.pop() * self.slot_bytes, None
        extra = shared_memory.SharedMemory(create=True, size=self.slot_bytes)  # more in flight than slots
        return extra.name, 0, extra

    def _give_slot(self, offset: int, extra: shared_memory.SharedMemory | None) -> None:
        if extra is not None:
            extra.close()
            extra.unlink()
            return
        with self._lock:
            self._free.append(offset // self.slot_bytes)

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is not broken:
                return  # another caller replaced it already
            self._executor = self._start()
            self.restarts += 1
        log.warning("a decode worker process died; the pool was restarted")
        broken.shutdown(wait=False, cancel_futures=True)

    async def decode(self, data: bytes, limits: ImageLimits, plan: PixelPlan) -> np.ndarray:
        name, offset, extra = self._take_slot()
        try:
            for attempt in (1, 2):
                executor = self._executor
                try:
                    job = executor.submit(_work, data, limits, plan, name, offset, extra is None)
                    outcome = await asyncio.wrap_future(job)
                    break
                except BrokenProcessPool:
                    self._restart(executor)
                    if attempt == 2:
                        raise ClipFilterError(
                            "image_decoder_crashed",
                            "Decoding this image crashed the decoder process twice; the file is probably "
                            "malformed. Send a valid image.",
                            422,
                        ) from None
            if outcome[0] == "error":
                _, code, message, status, details = outcome
                raise ClipFilterError(code, message, status, **details)
            shape = outcome[1]
            segment = extra if extra is not None else self._arena
            assert segment.buf is not None  # mapped until _give_slot / close
            count = int(np.prod(shape))
            return np.frombuffer(segment.buf, np.uint8, count, offset).reshape(shape).copy()
        finally:
            self._give_slot(offset, extra)

    def pids(self) -> list[int]:
        """The live worker processes (for tests and diagnostics)."""
        return [p.pid for p in list(getattr(self._executor, "_processes", {}).values()) if p.is_alive()]


_attached: dict[str, shared_memory.SharedMemory] = {}


def _attach(name: str) -> shared_memory.SharedMemory:
    segment = shared_memory.SharedMemory(name=name)
    # Attaching registers the segment with the resource tracker, which would remove it when this
    # worker exits; the parent owns it.
    resource_tracker.unregister(segment._name, "shared_memory")  # type: ignore[attr-defined]
    return segment


def _work(data: bytes, limits: ImageLimits, plan: PixelPlan, name: str, offset: int, arena: bool) -> tuple[Any, ...]:
    """In a worker process: decode into the slot; errors come back as plain values (always picklable)."""
    try:
        pixels = decode_to_pixels(data, limits, plan)
    except ClipFilterError as exc:
        return ("error", exc.code, exc.message, exc.status, exc.details)
    segment = _attached.get(name) if arena else None
    if segment is None:
        segment = _attach(name)
        if arena:
            _attached[name] = segment  # the arena stays mapped for the worker's life
    assert segment.buf is not None  # just attached
    np.frombuffer(segment.buf, np.uint8, pixels.size, offset)[:] = pixels.reshape(-1)
    if not arena:
        segment.close()
    return ("ok", pixels.shape)
