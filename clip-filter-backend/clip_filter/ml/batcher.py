"""Dynamic batching: concurrent requests' items are coalesced into model batches on one model thread.

Why one thread: on a CPU the model already uses every core for one batch, so two batches at once
only fight over them; on a GPU one stream of large batches is what keeps it busy. The event loop
never runs model code: it enqueues items and awaits futures that the model thread resolves.

Items of one kind ("image" or "text") form a batch. The thread waits for more items only while other
requests are known to be on their way (`expect()`: the service announces each request while it decodes
its images, and the announcement ends when its items are queued or it gives up), and then at most
`max_wait_s` after the first queued item, stopping as soon as nobody else is expected. So a lone client
never pays the window (before, an item arriving within `max_wait_s` of the previous batch's end waited
it out: 5 ms of a ~30 ms best match), while concurrent clients still share batches. Under load items
arrive while a batch runs, so the next batch forms from everything queued meanwhile.

Prefetch (`prefetch=True`, the service's default on CUDA): a second thread, "clip-stage", takes the next
batch and runs its `prepare` function (stack, pinned host memory, the copy to the GPU on a side stream)
while the model thread runs the current one; the model thread then finds its input already on the
device. At most one batch is staged ahead. Without prefetch the model thread runs `prepare` itself,
right before the batch function: the same calls, so the same results (tests compare them).

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

# kind -> function that turns a list of payloads (or what `prepare` made of them) into results, same order
BatchFunction = Callable[[Any], Sequence[Any]]
# kind -> function that turns a list of payloads into the batch function's input (on the staging thread)
PrepareFunction = Callable[[list[Any]], Any]


@dataclass
class _Item:
    kind: str
    payload: Any
    loop: asyncio.AbstractEventLoop | None
    future: Any  # asyncio.Future (from the loop) or concurrent.futures.Future (from a thread)
    enqueued_at: float = field(default_factory=time.monotonic)


class _Idle:
    """_take_batch's answer when on_idle is due."""


class Expectation:
    """A request on its way to the batcher (decoding its images): while one is live, an idle model waits
    (up to max_wait_s) for its items instead of running a batch without them. Ends when its items are
    queued (`submit(..., expectation=...)`) or by `withdraw()`; `arrive_within(s)` bounds its life once
    its decode is over, so a request that never submits (a 4xx after decoding) costs one window at most.
    Only a batch of the same kind waits for it (a batch of captions does not wait for images)."""

    def __init__(self, batcher: DynamicBatcher, kind: str) -> None:
        self._batcher = batcher
        self.kind = kind
        self.live = True
        self.expires_at = float("inf")

    def arrive_within(self, seconds: float) -> None:
        with self._batcher._cond:
            self.expires_at = time.monotonic() + seconds

    def withdraw(self) -> None:
        with self._batcher._cond:
            self._end()

    def _end(self) -> None:  # under the batcher's lock
        if self.live:
            self.live = False
            self._batcher._expected.discard(self)
            self._batcher._cond.notify_all()


@dataclass
class _Staged:
    batch: list[_Item]
    prepared: Any = None
    error: BaseException | None = None
    started: float = field(default_factory=time.monotonic)  # preparing counts as busy on the model thread


class DynamicBatcher:
    def __init__(
        self,
        functions: dict[str, BatchFunction],
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        on_idle: Callable[[], Any] | None = None,
        idle_after_s: float = 1.0,
        prepare: dict[str, PrepareFunction] | None = None,
        prefetch: bool = False,
    ) -> None:
        self._functions = functions
        self._prepare = prepare or {}
        self.prefetch = prefetch
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._queue: deque[_Item] = deque()
        self._expected: set[Expectation] = set()
        self._staged: deque[_Staged | type[_Idle]] = deque()  # prefetch: staged batches for the model thread
        self._cond = threading.Condition()
        self._closed = False
        self._free_since = float("-inf")  # when the model thread last finished a batch
        self._on_idle = on_idle
        self._idle_after_s = idle_after_s
        self._ran_since_idle = False  # a batch ran since on_idle last ran
        self._running = False  # the model thread is running a batch
        self.batches_run = 0
        self.items_run = 0
        self.busy_s = 0.0  # time spent running batches: with items_run, the model's own rate
        self._thread = threading.Thread(target=self._run, name="clip-model", daemon=True)
        self._stager: threading.Thread | None = None
        if prefetch:
            self._stager = threading.Thread(target=self._stage_loop, name="clip-stage", daemon=True)
            self._stager.start()
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def has_room(self, count: int = 1) -> bool:
        """Whether `count` more items would be admitted now (an empty queue admits any request)."""
        with self._cond:
            return not self._queue or len(self._queue) + count <= self._max_queue

    def expect(self, kind: str = "image") -> Expectation:
        """Announce a request whose items of `kind` will follow (see Expectation)."""
        expectation = Expectation(self, kind)
        with self._cond:
            self._expected.add(expectation)
        return expectation

    async def submit(self, kind: str, payloads: Sequence[Any], expectation: Expectation | None = None) -> list[Any]:
        """Queue all payloads of one request (all or none), then await their results. `expectation`: the
        announcement this request made (ended here, in the same step as its items are queued)."""
        return await self.submit_now(kind, payloads, expectation)

    def submit_now(
        self, kind: str, payloads: Sequence[Any], expectation: Expectation | None = None
    ) -> asyncio.Future[list[Any]]:
        """submit, with the items queued before this returns (from the event loop's thread): the model can
        start on them while the caller goes on with other work; the returned future gives the results."""
        loop = asyncio.get_running_loop()
        items = [_Item(kind, payload, loop, loop.create_future()) for payload in payloads]
        self._enqueue(items, expectation=expectation)
        return asyncio.gather(*(item.future for item in items))

    def submit_blocking(self, kind: str, payloads: Sequence[Any], wait_for_room: bool = True) -> list[Any]:
        """The same for worker threads: blocks until the results are in. With `wait_for_room` (bulk jobs) it
        also waits for room in the queue; without it (HTTP uploads) a full queue raises OverloadedError (429)
        at once, so no request thread is held waiting for the model."""
        import concurrent.futures

        items = [_Item(kind, payload, None, concurrent.futures.Future()) for payload in payloads]
        self._enqueue(items, wait_for_room=wait_for_room)
        return [item.future.result() for item in items]

    def _enqueue(self, items: list[_Item], wait_for_room: bool = False, expectation: Expectation | None = None) -> None:
        with self._cond:
            if expectation is not None:
                expectation._end()  # queued (below) or refused: either way it is no longer on its way
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
        if self._stager is not None:
            self._stager.join(timeout=10)

    # ---- model thread --------------------------------------------------------------------------
    def _take_batch(self) -> list[_Item] | type[_Idle] | None:
        """The next batch; None once closed; _Idle when on_idle is due."""
        with self._cond:
            while not self._queue and not self._closed:
                if self._on_idle is not None and self._ran_since_idle and not self._running:
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
            deadline = first.enqueued_at + self._max_wait_s
            while sum(1 for item in self._queue if item.kind == first.kind) < self._max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._others_expected(first.kind):
                    break
                self._cond.wait(timeout=min(remaining, self._next_expiry() - time.monotonic()))
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

    def _others_expected(self, kind: str) -> bool:
        """Whether a live announcement of `kind` is left (expired ones are dropped here). Under the lock."""
        now = time.monotonic()
        for expectation in [e for e in self._expected if e.expires_at <= now]:
            expectation._end()
        return any(e.kind == kind for e in self._expected)

    def _next_expiry(self) -> float:
        return min((e.expires_at for e in self._expected), default=float("inf"))

    def _stage(self, batch: list[_Item]) -> _Staged:
        """Run the batch's prepare function (if its kind has one); its failure fails the batch later."""
        staged = _Staged(batch)
        prepare = self._prepare.get(batch[0].kind)
        try:
            staged.prepared = (
                [item.payload for item in batch] if prepare is None else prepare([item.payload for item in batch])
            )
        except BaseException as exc:  # noqa: BLE001 - a failed preparation fails its requests, not the thread
            log.exception("preparing a model batch failed")
            staged.error = exc
        return staged

    def _stage_loop(self) -> None:
        """prefetch: take and prepare the next batch while the model thread runs the current one."""
        while True:
            with self._cond:
                while self._staged and not self._closed:  # one staged batch ahead at most
                    self._cond.wait()
            batch = self._take_batch()
            if batch is None:
                with self._cond:
                    self._staged.append(_Idle)  # wakes the model thread, which then sees closed
                    self._cond.notify_all()
                return
            staged: _Staged | type[_Idle] = batch if not isinstance(batch, list) else self._stage(batch)
            with self._cond:
                self._staged.append(staged)
                self._cond.notify_all()

    def _next_staged(self) -> _Staged | type[_Idle] | None:
        """The model thread's next unit of work: staged by the stage thread (prefetch) or here."""
        if not self.prefetch:
            batch = self._take_batch()
            return batch if batch is None or not isinstance(batch, list) else self._stage(batch)
        with self._cond:
            while not self._staged:
                self._cond.wait()
            staged = self._staged.popleft()
            self._cond.notify_all()  # the stage thread may take the next batch
            if staged is _Idle and self._closed and not self._queue and not self._staged:
                return None
            return staged

    def _run(self) -> None:
        while True:
            staged = self._next_staged()
            if staged is None:
                return
            if not isinstance(staged, _Staged):  # _Idle, which _take_batch answers only when on_idle is set
                if self._on_idle is not None:
                    try:
                        self._on_idle()
                    except Exception:  # noqa: BLE001 - housekeeping must never stop the model thread
                        log.exception("on_idle failed")
                continue
            batch = staged.batch
            started = time.monotonic() if self.prefetch else staged.started
            with self._cond:
                self._running = True
            try:
                if staged.error is not None:
                    raise staged.error
                results = self._functions[batch[0].kind](staged.prepared)
                if len(results) != len(batch):
                    raise RuntimeError("batch function returned the wrong number of results")
                outcomes: list[tuple[Any, BaseException | None]] = [(r, None) for r in results]
            except BaseException as exc:  # noqa: BLE001 - a failed batch fails its requests, not the thread
                log.exception("model batch failed")
                outcomes = [(None, exc)] * len(batch)
            with self._cond:
                self._running = False
                self._cond.notify_all()  # the stage thread's idle clock starts now
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
