"""Dynamic batching: concurrent requests' items are coalesced into model batches on one model thread.

Why one thread: on a CPU the model already uses every core for one batch, so two batches at once
only fight over them; on a GPU one stream of large batches is what keeps it busy. The event loop
never runs model code: it enqueues items and awaits futures that the model thread resolves.

Items of one kind ("image" or "text") form a batch. The thread waits at most `max_wait_s` after the
first queued item for more to arrive, so a lone request pays at most that much extra latency; and it
does not wait at all when the item found the model idle for longer than that: nothing suggests that
others are coming, and a lone client would pay the wait on every request (5 ms of a ~40 ms best match).
Under load items arrive while a batch runs, so the next batch forms from everything queued meanwhile.

`on_idle` runs on the model thread once the model has had nothing to do for `idle_after_s` after
a batch (the service hands freed memory back to the system there, see core/memory.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clip_filter.core.errors import OverloadedError

log = logging.getLogger(__name__)

# kind -> function that turns a list of payloads into a list of results, same order
BatchFunction = Callable[[list[Any]], Sequence[Any]]


@dataclass
class _Item:
    kind: str
    payload: Any
    loop: asyncio.AbstractEventLoop | None
    future: Any  # asyncio.Future (from the loop) or concurrent.futures.Future (from a thread)
    enqueued_at: float = field(default_factory=time.monotonic)


class _Idle:
    """_take_batch's answer when on_idle is due."""


class DynamicBatcher:
    def __init__(
        self,
        functions: dict[str, BatchFunction],
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        on_idle: Callable[[], Any] | None = None,
        idle_after_s: float = 1.0,
    ) -> None:
        self._functions = functions
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._free_since = float("-inf")  # when the model thread last finished a batch
        self._on_idle = on_idle
        self._idle_after_s = idle_after_s
        self._ran_since_idle = False  # a batch ran since on_idle last ran
        self.batches_run = 0
        self.items_run = 0
        self.busy_s = 0.0  # time spent running batches: with items_run, the model's own rate
        self._thread = threading.Thread(target=self._run, name="clip-model", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def has_room(self, count: int = 1) -> bool:
        """Whether `count` more items would be admitted now (an empty queue admits any request)."""
        with self._cond:
            return not self._queue or len(self._queue) + count <= self._max_queue

    async def submit(self, kind: str, payloads: Sequence[Any]) -> list[Any]:
        """Queue all payloads of one request (all or none), then await their results."""
        loop = asyncio.get_running_loop()
        items = [_Item(kind, payload, loop, loop.create_future()) for payload in payloads]
        self._enqueue(items)
        return list(await asyncio.gather(*(item.future for item in items)))

    def submit_blocking(self, kind: str, payloads: Sequence[Any], wait_for_room: bool = True) -> list[Any]:
        """The same for worker threads: blocks until the results are in. With `wait_for_room` (bulk jobs) it
        also waits for room in the queue; without it (HTTP uploads) a full queue raises OverloadedError (429)
        at once, so no request thread is held waiting for the model."""
        import concurrent.futures

        items = [_Item(kind, payload, None, concurrent.futures.Future()) for payload in payloads]
        self._enqueue(items, wait_for_room=wait_for_room)
        return [item.future.result() for item in items]

    def _enqueue(self, items: list[_Item], wait_for_room: bool = False) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            # A request larger than the whole queue is still admitted when the queue is empty.
            while self._queue and len(self._queue) + len(items) > self._max_queue:
                if not wait_for_room:
                    raise OverloadedError(retry_after=1)
                self._cond.wait(timeout=0.1)  # background jobs wait instead of being refused
            self._queue.extend(items)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    # ---- model thread --------------------------------------------------------------------------
    def _take_batch(self) -> list[_Item] | type[_Idle] | None:
        """The next batch; None once closed; _Idle when on_idle is due."""
        with self._cond:
            while not self._queue and not self._closed:
                if self._on_idle is not None and self._ran_since_idle:
                    remaining = self._free_since + self._idle_after_s - time.monotonic()
                    if remaining <= 0:
                        self._ran_since_idle = False
                        return _Idle
                    self._cond.wait(timeout=remaining)
                else:
                    self._cond.wait()
            if self._closed and not self._queue:
                return None
            first = self._queue[0]
            idle_before = first.enqueued_at - self._free_since
            deadline = first.enqueued_at + (0.0 if idle_before > self._max_wait_s else self._max_wait_s)
            while sum(1 for item in self._queue if item.kind == first.kind) < self._max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(timeout=remaining)
            batch: list[_Item] = []
            kept: deque[_Item] = deque()
            for item in self._queue:
                if item.kind == first.kind and len(batch) < self._max_batch:
                    batch.append(item)
                else:
                    kept.append(item)
            self._queue = kept
            self._cond.notify_all()  # wakes producers waiting for room
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not isinstance(batch, list):  # _Idle, which _take_batch answers only when on_idle is set
                assert self._on_idle is not None
                try:
                    self._on_idle()
                except Exception:  # noqa: BLE001 - housekeeping must never stop the model thread
                    log.exception("on_idle failed")
                continue
            started = time.monotonic()
            try:
                results = self._functions[batch[0].kind]([item.payload for item in batch])
                if len(results) != len(batch):
                    raise RuntimeError("batch function returned the wrong number of results")
                outcomes: list[tuple[Any, BaseException | None]] = [(r, None) for r in results]
            except BaseException as exc:  # noqa: BLE001 - a failed batch fails its requests, not the thread
                log.exception("model batch failed")
                outcomes = [(None, exc)] * len(batch)
            with self._cond:
                self._free_since = time.monotonic()
                self.busy_s += self._free_since - started
                self.batches_run += 1
                self.items_run += len(batch)
                self._ran_since_idle = True
            for item, (result, error) in zip(batch, outcomes, strict=True):
                _resolve(item, result, error)


def _resolve(item: _Item, result: Any, error: BaseException | None) -> None:
    if item.loop is None:
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(result)
        return

    def settle() -> None:
        if item.future.done():  # the request was cancelled (client went away)
            return
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        item.loop.call_soon_threadsafe(settle)
